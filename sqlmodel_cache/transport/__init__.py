"""Transports: where cache entries live.

Built in: ``MemoryTransport`` (in-process, the embedded default),
``RedisSyncTransport`` and ``RedisAsyncTransport`` (Redis / Valkey via redis-py).
Any object with ``get``/``set``/``delete`` (see ``CacheTransport``) also works.
"""

from sqlmodel_cache.transport._memory import MemoryTransport
from sqlmodel_cache.transport._protocols import (
    LEASE_PREFIX,
    AsyncAtomicCacheTransport,
    AsyncCacheTransport,
    AtomicCacheTransport,
    CacheTransport,
    Fetched,
)
from sqlmodel_cache.transport._redis.transport import RedisAsyncTransport, RedisSyncTransport

__all__ = [
    "LEASE_PREFIX",
    "AsyncAtomicCacheTransport",
    "AsyncCacheTransport",
    "AtomicCacheTransport",
    "CacheTransport",
    "Fetched",
    "MemoryTransport",
    "RedisAsyncTransport",
    "RedisSyncTransport",
]
