"""knowctl: a quota-and-cache gateway for Google's Gemini models, and its operator CLI."""

__version__ = "0.1.0"
