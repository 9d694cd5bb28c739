"""The official SDKs (google-genai, the legacy vertexai SDK) against a real gateway."""
