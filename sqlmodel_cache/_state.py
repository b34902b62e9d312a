"""All global state in one place: the active runtime, set by configure() and dropped by reset()."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel_cache._breaker import CircuitBreaker
from sqlmodel_cache._codec import Framing
from sqlmodel_cache._config import CacheSettings
from sqlmodel_cache._driver import Driver
from sqlmodel_cache._models import ModelPlan, ModelRegistry
from sqlmodel_cache._pending import PendingInvalidations
from sqlmodel_cache._shapes import ShapeCache
from sqlmodel_cache._stats import Stats
from sqlmodel_cache.transport._redis.near import NearStore, check_client


@dataclass
class Runtime:
    """What the listeners use while the cache is configured."""

    settings: CacheSettings
    driver: Driver
    registry: ModelRegistry
    framing: Framing
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    pending: PendingInvalidations = field(default_factory=PendingInvalidations)
    stats: Stats = field(default_factory=Stats)
    shapes: ShapeCache[Any] = field(default_factory=ShapeCache)
    #: ``Session.get()``'s fast path: entity (class or mapper) -> its plan, or None.
    get_plans: dict[Any, ModelPlan | None] = field(default_factory=dict)

    #: The longest TTL this process has stored an entry with (pending invalidations last
    #: that long: every entry they would have removed has expired by then).
    max_ttl: int = 0

    #: ``settings.lease_ttl`` in milliseconds, as every fetch passes it.
    lease_ttl_ms: int = 5000

    #: The clock lease waits are timed with (a test may pass its own).
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def start(cls, settings: CacheSettings) -> Runtime:
        """The runtime of ``settings``: a near cache is started only when caching is on."""
        stats = Stats()
        driver = Driver(settings.transport)
        near_cache = settings.near_cache
        if near_cache is not None and settings.enabled:
            client = check_client(settings.transport, near_cache)
            driver.near = NearStore(near_cache, client, settings.key_prefix, stats)
        return cls(
            settings=settings,
            driver=driver,
            registry=ModelRegistry(settings.key_prefix, settings.default_ttl),
            framing=Framing(settings.signing_key),
            breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_reset),
            stats=stats,
            lease_ttl_ms=max(1, int(settings.lease_ttl * 1000)),
        )


#: ``None`` until configure(); the listeners read it on every event.
runtime: Runtime | None = None
