"""``SQLModelCache``: the application-level entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel_cache import _invalidation, _listeners, _state, _stats
from sqlmodel_cache._compat import greenlet_spawn
from sqlmodel_cache._config import CacheSettings
from sqlmodel_cache._errors import ConfigurationError
from sqlmodel_cache._state import Runtime
from sqlmodel_cache.transport._redis.near import NearCache


class SQLModelCache:
    """Configure, inspect and reset the cache. All methods are class methods; there is
    one cache configuration per process."""

    @classmethod
    def configure(
        cls,
        transport: object,
        *,
        default_ttl: int = 300,
        key_prefix: str = "sqlmodelcache",
        enabled: bool = True,
        max_entry_bytes: int = 1_048_576,
        lease_ttl: float = 5.0,
        lease_wait: float = 0.1,
        signing_key: bytes | None = None,
        breaker_threshold: int = 5,
        breaker_reset: float = 5.0,
        raise_on_invalidation_error: bool = False,
        near_cache: NearCache | None = None,
    ) -> None:
        """Turn caching on for every SQLAlchemy/SQLModel session in the process.

        Calling it again replaces the previous configuration.

        Args:
            transport: where entries live: ``MemoryTransport()``, ``RedisSyncTransport``,
                ``RedisAsyncTransport``, or any object with ``get``/``set``/``delete``.
            default_ttl: seconds an entry lives when its model's ``CacheConfig.ttl`` is None.
            key_prefix: starts every key, isolating applications and tenants on one Redis.
            enabled: ``False`` installs nothing: no reads from, writes to or invalidations
                of the cache.
            max_entry_bytes: entries larger than this are not stored.
            lease_ttl: seconds a reader that missed may take to fill the entry; a fill
                arriving later is dropped (it might be stale).
            lease_wait: seconds a reader that missed waits for another reader that is
                filling the same entry (stampede control), before it reads the database
                itself; ``0`` never waits.
            signing_key: when set, entries are signed with HMAC-SHA256 and unsigned or
                forged entries are misses; use it when others can write to the Redis.
            breaker_threshold: consecutive cache failures after which the circuit breaker
                opens: reads skip the cache, so a dead cache costs no more timeouts.
            breaker_reset: seconds the breaker stays open; then one read probes the cache,
                and an answer closes the breaker.
            raise_on_invalidation_error: ``True`` makes ``commit()`` raise
                ``InvalidationError`` (after the database commit succeeded) when the cache
                could not be invalidated; by default it is logged at ERROR, counted, and
                retried.
            near_cache: ``NearCache(...)`` keeps hot entries in this process too, in front
                of a Redis transport, invalidated by the Redis server (see the near cache
                guide); ``None`` (the default) has none.

        Raises:
            ConfigurationError: a value is invalid; the message says which and why.
        """
        settings = CacheSettings(
            transport=transport,
            default_ttl=default_ttl,
            key_prefix=key_prefix,
            enabled=enabled,
            max_entry_bytes=max_entry_bytes,
            lease_ttl=lease_ttl,
            lease_wait=lease_wait,
            signing_key=signing_key,
            raise_on_invalidation_error=raise_on_invalidation_error,
            near_cache=near_cache,
            breaker_threshold=breaker_threshold,
            breaker_reset=breaker_reset,
        )
        _listeners.uninstall()
        _close(_state.runtime)
        _state.runtime = Runtime.start(settings)
        if enabled:
            _listeners.install()

    @classmethod
    def get_config(cls) -> CacheSettings:
        """The active configuration.

        Raises:
            ConfigurationError: ``configure()`` has not been called (or ``reset()`` since).
        """
        return _runtime().settings

    @classmethod
    def is_configured(cls) -> bool:
        """Whether ``configure()`` is in effect."""
        return _state.runtime is not None

    @classmethod
    def reset(cls) -> None:
        """Remove every listener, subscriber and all state; for test teardown. Safe to call
        anytime."""
        _listeners.uninstall()
        _close(_state.runtime)
        _state.runtime = None
        _stats.subscribers = ()

    @classmethod
    def stats(cls) -> dict[str, dict[str, int]]:
        """Counters since ``configure()``: ``{label: {event: count}}``.

        Labels are model class names (for a query: its first entity's class, or its first
        table's name) and ``"*"`` for what is not about one model. Events:

        * ``hits``, ``misses``, ``fills`` (gets); ``query_hits``, ``query_misses``,
          ``query_fills`` (``select()``);
        * ``bypass:<reason>`` and ``query_bypass:<reason>``: reads that skipped the cache;
        * ``fill_skipped:<reason>``, ``fill_rejected`` (a fill lost to an invalidation);
        * ``bytes_read`` (entry bytes served by hits), ``bytes_written`` (by fills);
        * ``lease_waits``, ``lease_wait_timeouts`` (stampede control);
        * ``invalidations``: commits and manual invalidations of the model's table;
        * ``errors``: failed or undecodable reads;
        * with a near cache: ``l1_hits``, ``l1_misses`` (``query_l1_hits``,
          ``query_l1_misses``): reads it answered or sent on to Redis;
        * under ``"*"``: ``invalidations`` (keys), ``invalidation_errors``,
          ``circuit_opened``; with a near cache, ``l1_invalidations`` (copies dropped on
          the server's word), ``l1_flushes`` (emptied while holding copies),
          ``l1_evictions`` (dropped for room).

        Empty when not configured.
        """
        runtime = _state.runtime
        return {} if runtime is None else runtime.stats.snapshot()

    @classmethod
    def subscribe(cls, callback: Callable[[str, str, int], None]) -> Callable[[], None]:
        """Call ``callback(label, event, amount)`` for every count ``stats()`` records,
        e.g. ``("Hero", "hits", 1)``, and return a function that unsubscribes it.

        The callback runs synchronously on the read or commit path, so keep it cheap; an
        exception from it is logged and ignored. Subscriptions survive ``configure()`` and
        are removed by ``reset()``.
        """
        if not callable(callback):
            raise ConfigurationError(f"subscribe() needs a callable, got {callback!r}")
        _stats.subscribers = (*_stats.subscribers, callback)

        def unsubscribe() -> None:
            _stats.subscribers = tuple(s for s in _stats.subscribers if s is not callback)

        return unsubscribe

    # -- manual invalidation (SPEC W5) --------------------------------------------------

    @classmethod
    def invalidate(cls, model: type, *pks: Any) -> None:
        """Invalidate cached rows of ``model`` by primary key, and every cached query over
        its tables. Use after changing rows behind SQLAlchemy's back (raw SQL from other
        programs). A composite key is a tuple: ``invalidate(Membership, ("acme", 1))``.

        Raises:
            InvalidationError: the transport failed, or is async (use ``ainvalidate()``).
        """
        runtime = _runtime()
        _invalidation.apply(runtime, *_invalidation.rows(runtime, model, pks))

    @classmethod
    def invalidate_model(cls, model: type) -> None:
        """Invalidate every cached row of ``model`` and every cached query over its tables,
        in O(1) (no key scan).

        Raises:
            InvalidationError: the transport failed, or is async (use ``ainvalidate_model()``).
        """
        runtime = _runtime()
        _invalidation.apply(runtime, *_invalidation.model(runtime, model))

    @classmethod
    def invalidate_tables(cls, *table_names: str) -> None:
        """Invalidate everything cached from the named tables (for tables without a model,
        such as association tables): their rows and every query that reads them.

        Raises:
            ConfigurationError: a name is not a non-empty string.
            InvalidationError: the transport failed, or is async (use ``ainvalidate_tables()``).
        """
        runtime = _runtime()
        _invalidation.apply(runtime, *_invalidation.tables(runtime, table_names))

    @classmethod
    async def ainvalidate(cls, model: type, *pks: Any) -> None:
        """Async twin of ``invalidate()``, for async transports."""
        await greenlet_spawn(cls.invalidate, model, *pks)

    @classmethod
    async def ainvalidate_model(cls, model: type) -> None:
        """Async twin of ``invalidate_model()``."""
        await greenlet_spawn(cls.invalidate_model, model)

    @classmethod
    async def ainvalidate_tables(cls, *table_names: str) -> None:
        """Async twin of ``invalidate_tables()``."""
        await greenlet_spawn(cls.invalidate_tables, *table_names)


def _close(runtime: Runtime | None) -> None:
    """Stop what a runtime being replaced runs in the background (the near cache)."""
    if runtime is not None and runtime.driver.near is not None:
        runtime.driver.near.close()


def _runtime() -> Runtime:
    runtime = _state.runtime
    if runtime is None:
        raise ConfigurationError(
            "sqlmodel-cache is not configured: call "
            "SQLModelCache.configure(transport=...) once at application startup"
        )
    return runtime
