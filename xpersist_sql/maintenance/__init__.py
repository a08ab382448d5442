"""Keeping a store healthy: garbage collection, integrity checks, size-bounded eviction.

Each module works on a :class:`~xpersist_sql.backend.StoreBackend`; ``CacheStore.gc``,
``CacheStore.verify`` and ``CacheStore.evict`` (and the command line) call them.
"""
