"""``memory://``: the in-process store, MemoryStore (in .store; its cache-side operations in .cache)."""

from knowctl.store.memory.store import MemoryStore

__all__ = ["MemoryStore"]
