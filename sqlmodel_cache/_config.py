"""Per-model opt-in (`CacheConfig`) and the validated global settings (`CacheSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel_cache._errors import ConfigurationError
from sqlmodel_cache._near import NearCache


def check_ttl(value: object, what: str) -> int:
    """Return ``value`` if it is a positive whole number of seconds, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"{what} must be a positive whole number of seconds, got {value!r}; "
            "use enabled=False (or omit __cache_config__) to turn caching off instead"
        )
    return value


@dataclass(frozen=True)
class CacheConfig:
    """Per-model cache configuration.

    Assign it as a class attribute of a SQLModel table model to cache that model:

    ```python
    class Hero(SQLModel, table=True):
        __cache_config__ = CacheConfig(ttl=600)
        id: int | None = Field(default=None, primary_key=True)
    ```

    Invalid values raise ``ConfigurationError`` when the ``CacheConfig`` is created.

    Attributes:
        enabled: ``False`` keeps the model out of the cache (every read goes to the database).
        ttl: seconds an entry lives; ``None`` uses ``SQLModelCache.configure(default_ttl=...)``.
        queries: ``False`` caches ``session.get()`` only: ``select()`` statements that read
            this model's table go to the database.
        query_ttl: seconds a query result lives; ``None`` uses ``ttl``. A query over several
            models lives as long as the shortest of their TTLs.
    """

    enabled: bool = True
    ttl: int | None = None
    queries: bool = True
    query_ttl: int | None = None

    def __post_init__(self) -> None:
        for name in ("enabled", "queries"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"CacheConfig.{name} must be a bool, got {getattr(self, name)!r}"
                )
        if self.ttl is not None:
            check_ttl(self.ttl, "CacheConfig.ttl")
        if self.query_ttl is not None:
            check_ttl(self.query_ttl, "CacheConfig.query_ttl")


@dataclass(frozen=True)
class CacheSettings:
    """The active global configuration, as returned by ``SQLModelCache.get_config()``.

    Built and validated by ``SQLModelCache.configure()``, whose arguments of the same names
    describe each field.

    Attributes:
        transport: the transport entries are stored in.
        default_ttl: seconds an entry lives when its model's ``CacheConfig.ttl`` is None.
        key_prefix: the start of every key.
        enabled: ``False`` when ``configure(enabled=False)`` installed nothing.
        max_entry_bytes: entries larger than this are not stored.
        lease_ttl: seconds a reader that missed may take to fill the entry.
        lease_wait: seconds a reader waits for another reader's fill of the same entry.
        signing_key: the HMAC-SHA256 key entries are signed with, or None (not shown in
            ``repr()``).
        raise_on_invalidation_error: whether ``commit()`` raises ``InvalidationError``
            when its invalidation fails.
        near_cache: the near cache's settings, or None when there is none.
    """

    transport: object
    default_ttl: int = 300
    key_prefix: str = "sqlmodelcache"
    enabled: bool = True
    max_entry_bytes: int = 1_048_576
    lease_ttl: float = 5.0
    lease_wait: float = 0.1
    signing_key: bytes | None = field(default=None, repr=False)
    raise_on_invalidation_error: bool = False
    near_cache: NearCache | None = None
