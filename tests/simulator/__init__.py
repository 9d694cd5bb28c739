"""The Gemini-compatible simulator, on its own and through the official SDK."""
