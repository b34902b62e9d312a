"""sqlmodel-cache: transparent, never-stale caching of SQLModel / SQLAlchemy reads.

::

    SQLModelCache.configure(transport=MemoryTransport())

    class Hero(SQLModel, table=True):
        __cache_config__ = CacheConfig(ttl=600)
        ...

    session.get(Hero, 1)   # a hit issues no SQL; a commit that changes hero 1 invalidates it
"""

from sqlmodel_cache._api import SQLModelCache
from sqlmodel_cache._config import CacheConfig, CacheSettings
from sqlmodel_cache._errors import (
    CacheError,
    ConfigurationError,
    InvalidationError,
    MissingDependencyError,
)
from sqlmodel_cache.transport._redis.near import NearCache

__version__ = "0.2.0"

__all__ = [
    "CacheConfig",
    "CacheError",
    "CacheSettings",
    "ConfigurationError",
    "InvalidationError",
    "MissingDependencyError",
    "NearCache",
    "SQLModelCache",
    "__version__",
]
