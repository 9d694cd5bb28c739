"""The answer cache: L1 in front of the store's L2, stale copies, coalescing of misses."""
