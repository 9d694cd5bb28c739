"""The provider quota: shared windows per model, priority headroom, the wait queue, quota news."""
