"""Window store access shared by the provider quota and the callers' limits, and the local
share each daemon admits alone while the shared store is down."""
