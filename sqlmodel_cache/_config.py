"""Per-model opt-in (`CacheConfig`) and the validated global settings (`CacheSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel_cache._errors import ConfigurationError
from sqlmodel_cache.transport._redis.near import NearCache, check_client


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

    ``SQLModelCache.configure()`` builds it from its arguments of the same names, which
    describe each field; it validates itself when created, so a value it holds is one the
    cache can use.

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
        breaker_threshold: consecutive cache failures that open the circuit breaker.
        breaker_reset: seconds the circuit breaker stays open before a read probes the cache.

    Raises:
        ConfigurationError: a value is invalid; the message says which and why.
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
    breaker_threshold: int = 5
    breaker_reset: float = 5.0

    def __post_init__(self) -> None:
        transport, prefix, key = self.transport, self.key_prefix, self.signing_key
        missing = [
            name
            for name in ("get", "set", "delete")
            if not callable(getattr(transport, name, None))
        ]
        if missing:
            raise ConfigurationError(
                f"{type(transport).__name__} is not a cache transport: it lacks "
                f"{', '.join(missing)}(). Pass MemoryTransport(), RedisSyncTransport(client), "
                "RedisAsyncTransport(client) or an object with get/set/delete methods."
            )
        check_ttl(self.default_ttl, "default_ttl")
        self._require("key_prefix", isinstance(prefix, str) and prefix != "", "a non-empty str")
        self._require(
            "key_prefix", not any(c.isspace() for c in prefix), "a str without whitespace"
        )
        self._require("enabled", _is_bool(self.enabled), "a bool")
        self._require(
            "raise_on_invalidation_error", _is_bool(self.raise_on_invalidation_error), "a bool"
        )
        self._require("max_entry_bytes", _is_int(self.max_entry_bytes, 64), "an int of at least 64")
        self._require(
            "lease_ttl", _is_number(self.lease_ttl) and self.lease_ttl > 0, "a positive number"
        )
        self._require(
            "lease_wait",
            _is_number(self.lease_wait) and 0 <= self.lease_wait < self.lease_ttl,
            "a number from 0 to below lease_ttl",
        )
        self._require(
            "breaker_threshold", _is_int(self.breaker_threshold, 1), "an int of at least 1"
        )
        self._require(
            "breaker_reset",
            _is_number(self.breaker_reset) and self.breaker_reset > 0,
            "a positive number",
        )
        self._require(
            "signing_key",
            key is None or (isinstance(key, bytes) and len(key) >= 16),
            "None or bytes of at least 16 bytes",
            secret=True,
        )
        self._require(
            "near_cache",
            self.near_cache is None or isinstance(self.near_cache, NearCache),
            "a NearCache(...) or None",
        )
        if self.near_cache is not None:
            check_client(transport, self.near_cache)
        for name in ("lease_ttl", "lease_wait", "breaker_reset"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def _require(self, name: str, ok: bool, requirement: str, *, secret: bool = False) -> None:
        """The one way a setting is refused: a ``ConfigurationError`` that names it, says
        what it must be and shows the value given (unless it is a secret)."""
        if not ok:
            shown = "" if secret else f", got {getattr(self, name)!r}"
            raise ConfigurationError(f"{name} must be {requirement}{shown}")


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_int(value: object, at_least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
