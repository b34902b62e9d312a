"""Observability (SPEC O1): per-model counters, subscriber hooks, the Prometheus and
OpenTelemetry exporters, and logs that never carry field values."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlmodel import Session, col, select

from sqlmodel_cache import MissingDependencyError, SQLModelCache
from sqlmodel_cache.transport import MemoryTransport
from tests.conftest import Env
from tests.models import Hero, Team

SECRET = "s3cr3t-identity"


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        session.add(Team(id=1, name="Avengers"))
        session.add(Hero(id=1, name="Spider", secret_name=SECRET, team_id=1))
        session.commit()

    env.run(body)
    env.reset_sql()


def _get_twice_query_twice_update(env: Env) -> None:
    def get(session: Session) -> None:
        assert session.get(Hero, 1) is not None

    def query(session: Session) -> None:
        assert session.exec(select(Hero).where(col(Hero.power) >= 0)).all()

    def update(session: Session) -> None:
        hero = session.get(Hero, 1)
        assert hero is not None
        hero.power = 5
        session.commit()

    for body in (get, get, query, query, update):
        env.run(body)


def test_stats_count_per_model_with_bytes_and_invalidations(mem_env: Env) -> None:
    _seed(mem_env)
    _get_twice_query_twice_update(mem_env)
    hero = SQLModelCache.stats()["Hero"]
    assert hero["misses"] == 1
    assert hero["fills"] == 1
    assert hero["hits"] == 2  # the second get, and the get inside the update's session
    assert hero["query_misses"] == 1
    assert hero["query_fills"] == 1
    assert hero["query_hits"] == 1
    assert hero["invalidations"] == 2  # the seeding commit and the update
    assert SQLModelCache.stats()["Team"]["invalidations"] == 1  # the seeding commit only
    assert mem_env.row_keys() == []  # the update removed the row
    assert hero["bytes_written"] > 0
    assert hero["bytes_read"] > 0
    assert "bypass:own_writes" not in hero  # the update's get came before its flush
    assert SQLModelCache.stats()["*"]["invalidations"] >= 2  # keys: the row + tags


def test_subscribers_see_every_count_until_unsubscribed(mem_env: Env) -> None:
    _seed(mem_env)
    seen: list[tuple[str, str, int]] = []
    unsubscribe = SQLModelCache.subscribe(lambda *event: seen.append(event))
    mem_env.run(lambda s: s.get(Hero, 1))
    mem_env.run(lambda s: s.get(Hero, 1))
    assert ("Hero", "misses", 1) in seen
    assert ("Hero", "hits", 1) in seen
    assert any(event[:2] == ("Hero", "bytes_read") and event[2] > 0 for event in seen)
    unsubscribe()
    seen.clear()
    mem_env.run(lambda s: s.get(Hero, 1))
    assert seen == []
    assert SQLModelCache.stats()["Hero"]["hits"] == 2


def test_a_failing_subscriber_never_breaks_a_read(
    mem_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(mem_env)

    def broken(label: str, event: str, amount: int) -> None:
        raise RuntimeError("hook down")

    SQLModelCache.subscribe(broken)
    with caplog.at_level(logging.WARNING, logger="sqlmodel_cache"):
        assert mem_env.run(lambda s: s.get(Hero, 1).name) == "Spider"
        assert mem_env.run(lambda s: s.get(Hero, 1).name) == "Spider"
    assert SQLModelCache.stats()["Hero"]["hits"] == 1
    assert "hook down" in caplog.text


def test_subscriptions_survive_configure_and_end_with_reset(mem_env: Env) -> None:
    _seed(mem_env)
    seen: list[str] = []
    SQLModelCache.subscribe(lambda label, event, amount: seen.append(event))
    SQLModelCache.configure(MemoryTransport(), key_prefix=mem_env.prefix)
    mem_env.run(lambda s: s.get(Hero, 1))
    assert "misses" in seen
    SQLModelCache.reset()
    SQLModelCache.configure(MemoryTransport(), key_prefix=mem_env.prefix)
    seen.clear()
    mem_env.run(lambda s: s.get(Hero, 1))
    assert seen == []


def test_subscribe_refuses_a_non_callable() -> None:
    with pytest.raises(Exception, match="callable"):
        SQLModelCache.subscribe("not a function")  # type: ignore[arg-type]


def test_prometheus_collector_exports_the_counters(mem_env: Env) -> None:
    from sqlmodel_cache.integrations.prometheus import instrument

    _seed(mem_env)
    registry = CollectorRegistry()
    collector = instrument(registry)
    _get_twice_query_twice_update(mem_env)
    mem_env.run(lambda s: s.get(Hero, 1, execution_options={"cache": False}))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"sqlmodel_cache_{name}", labels)

    assert value("hits_total", model="Hero", kind="get") == 2
    assert value("hits_total", model="Hero", kind="query") == 1
    assert value("misses_total", model="Hero", kind="get") == 1
    assert value("fills_total", model="Hero", kind="query") == 1
    assert value("bypasses_total", model="Hero", kind="get", reason="option") == 1
    assert value("invalidations_total", model="Hero") == 2
    assert (value("bytes_total", model="Hero", direction="read") or 0) > 0
    assert (value("invalidated_keys_total") or 0) >= 2
    registry.unregister(collector)
    assert value("hits_total", model="Hero", kind="get") is None


def test_opentelemetry_observable_counters(mem_env: Env) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from sqlmodel_cache.integrations.opentelemetry import instrument

    _seed(mem_env)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = instrument(provider)
    assert len(instruments) >= 8
    _get_twice_query_twice_update(mem_env)

    points: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = tuple(sorted(point.attributes.items()))
                    points[(metric.name, attributes)] = point.value
    assert points[("sqlmodel_cache.hits", (("kind", "get"), ("model", "Hero")))] == 2
    assert points[("sqlmodel_cache.misses", (("kind", "query"), ("model", "Hero")))] == 1
    assert points[("sqlmodel_cache.invalidations", (("model", "Hero"),))] == 2
    provider.shutdown()


@pytest.mark.parametrize(
    ("module", "package"),
    [("prometheus", "prometheus_client"), ("opentelemetry", "opentelemetry")],
)
def test_integrations_without_their_package_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    monkeypatch.delitem(sys.modules, f"sqlmodel_cache.integrations.{module}", raising=False)
    with pytest.raises(MissingDependencyError, match=r"sqlmodel-cache\["):
        importlib.import_module(f"sqlmodel_cache.integrations.{module}")
    monkeypatch.delitem(sys.modules, f"sqlmodel_cache.integrations.{module}", raising=False)


def test_logs_never_carry_field_values(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Every log line the cache writes while reading, filling, failing and invalidating a
    row with a secret column is free of that column's value."""
    _seed(env)
    with caplog.at_level(logging.DEBUG, logger="sqlmodel_cache"):
        env.run(lambda s: s.get(Hero, 1))  # miss + fill
        [key] = env.row_keys()
        entry = env.raw_get(key)
        assert entry is not None
        assert SECRET.encode() in entry  # the value is in the cache, so logs could leak it
        env.raw_set(key, entry[:-3] + b"!!!")  # corrupt: logged as a bad entry
        env.run(lambda s: s.get(Hero, 1))
        env.run(lambda s: s.exec(select(Hero).where(Hero.secret_name == SECRET)).all())
    ours = [record for record in caplog.records if record.name.startswith("sqlmodel_cache")]
    assert any("undecodable cache entry" in record.getMessage() for record in ours)
    for record in ours:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.args)


def test_manual_invalidations_are_counted_per_model(mem_env: Env) -> None:
    _seed(mem_env)
    before = SQLModelCache.stats()
    SQLModelCache.invalidate(Hero, 1)
    SQLModelCache.invalidate_model(Hero)
    SQLModelCache.invalidate_tables("team", "hero")
    after = SQLModelCache.stats()
    assert after["Hero"]["invalidations"] - before["Hero"]["invalidations"] == 3
    assert after["Team"]["invalidations"] - before["Team"]["invalidations"] == 1
