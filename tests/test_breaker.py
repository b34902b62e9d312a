"""SPEC F2: the circuit breaker makes a dead cache cost almost nothing, and probes it back."""

from __future__ import annotations

import logging
import time

import pytest
from sqlmodel import Session

from sqlmodel_cache import ConfigurationError, SQLModelCache
from sqlmodel_cache._breaker import CircuitBreaker
from tests.helpers import Clock, Env, Flaky
from tests.models import Hero


def test_breaker_opens_after_the_threshold_and_half_opens_for_one_probe() -> None:
    """Closed until `threshold` consecutive failures; open for `reset_after`; then exactly one
    probe; a failed probe re-opens, a successful one closes."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, reset_after=10.0, clock=clock)
    assert [breaker.record_failure() for _ in range(3)] == [False, False, True]
    assert not breaker.allow()
    clock.now += 10.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    assert breaker.record_failure()  # failed probe: open again
    clock.now += 5.0
    assert not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open
    assert breaker.allow()


def test_a_success_resets_the_failure_count() -> None:
    """Only consecutive failures count."""
    breaker = CircuitBreaker(threshold=2, reset_after=1.0, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    assert not breaker.record_failure()
    assert breaker.allow()


def test_open_breaker_skips_the_cache_then_probes_it_back(
    mem_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """After 3 failed reads the transport is not called any more (reads go straight to the
    database); once the cache is back, the probe closes the breaker and reads hit again."""
    mem_env.run(lambda s: (s.add(Hero(id=1, name="Spider")), s.commit()))
    flaky = Flaky(mem_env.transport)
    SQLModelCache.configure(
        flaky, key_prefix=mem_env.prefix, breaker_threshold=3, breaker_reset=0.2
    )

    def name(session: Session) -> str:
        return session.get(Hero, 1).name  # type: ignore[union-attr]

    flaky.failing = True
    with caplog.at_level(logging.WARNING, logger="sqlmodel_cache"):
        assert [mem_env.run(name) for _ in range(10)] == ["Spider"] * 10
    assert flaky.calls == 3  # the 7 reads after the breaker opened never touched the cache
    stats = SQLModelCache.stats()
    assert stats["Hero"]["bypass:circuit_open"] == 7
    assert stats["*"]["circuit_opened"] == 1
    assert any("reads skip it" in record.message for record in caplog.records)

    flaky.failing = False
    time.sleep(0.25)
    mem_env.run(name)  # the probe: a miss that fills
    mem_env.reset_sql()
    assert mem_env.run(name) == "Spider"
    assert mem_env.statements == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"breaker_threshold": 0}, "breaker_threshold"),
        ({"breaker_threshold": 2.5}, "breaker_threshold"),
        ({"breaker_reset": 0}, "breaker_reset"),
    ],
)
def test_bad_breaker_settings_are_refused(options: dict[str, object], message: str) -> None:
    """Breaker settings are validated at configure() time."""
    from sqlmodel_cache.transport import MemoryTransport

    with pytest.raises(ConfigurationError, match=message):
        SQLModelCache.configure(MemoryTransport(), **options)  # type: ignore[arg-type]
