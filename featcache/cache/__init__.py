"""Feature caches: the HDF5 shard format, crash-safe writing, vectorised reading and the store.

Public API::

    from featcache.cache import CacheStore, FeatureCache, open_cache
"""

from featcache.cache.format import FORMAT_VERSION, Manifest, ShardInfo, TeacherInfo
from featcache.cache.reader import FeatureCache
from featcache.cache.store import CacheEntry, CacheLock, CacheStore, VerifyReport, default_cache_dir, open_cache

__all__ = [
    "FORMAT_VERSION",
    "CacheEntry",
    "CacheLock",
    "CacheStore",
    "FeatureCache",
    "Manifest",
    "ShardInfo",
    "TeacherInfo",
    "VerifyReport",
    "default_cache_dir",
    "open_cache",
]
