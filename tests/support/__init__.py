"""Helpers the tests share: free ports, real processes, real servers."""
