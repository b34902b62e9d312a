"""Observability (SPEC O1): per-model counters, subscriber hooks, the Prometheus and
OpenTelemetry exporters, and logs that never carry field values."""

from __future__ import annotations

import importlib
import logging
import sys
import time
import uuid
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, col, select

from sqlmodel_cache import MissingDependencyError, NearCache, SQLModelCache, _state
from sqlmodel_cache.integrations._families import samples
from sqlmodel_cache.transport import MemoryTransport, RedisSyncTransport
from tests import servers
from tests.helpers import Env, wait_for
from tests.models import METADATAS, Hero, Team

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


def _points(reader: Any) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    """Every data point an OpenTelemetry reader holds: (name, sorted attributes) -> value."""
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = tuple(sorted(point.attributes.items()))
                    points[(metric.name, attributes)] = point.value
    return points


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

    points = _points(reader)
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


# -- the near cache's counters ---------------------------------------------------------------


def test_near_cache_events_have_families_of_their_own() -> None:
    grouped = samples(
        {
            "Hero": {"l1_hits": 3, "query_l1_hits": 2, "l1_misses": 1, "query_l1_misses": 4},
            "*": {"l1_evictions": 5, "l1_invalidations": 6, "l1_flushes": 7, "invalidations": 8},
        }
    )
    assert sorted(grouped["l1_hits"], key=str) == [
        ({"model": "Hero", "kind": "get"}, 3),
        ({"model": "Hero", "kind": "query"}, 2),
    ]
    assert sorted(grouped["l1_misses"], key=str) == [
        ({"model": "Hero", "kind": "get"}, 1),
        ({"model": "Hero", "kind": "query"}, 4),
    ]
    assert grouped["l1_evictions"] == [({}, 5)]
    assert grouped["l1_invalidations"] == [({}, 6)]
    assert grouped["l1_flushes"] == [({}, 7)]
    assert grouped["invalidated_keys"] == [({}, 8)]
    assert "events" not in grouped  # nothing of the near cache left in the catch-all


#: Long enough for the server's invalidation of our own fill to arrive (loopback).
SETTLE = 0.05


@pytest.mark.redis
def test_near_cache_counters_are_exported(redis_server: servers.RedisServer) -> None:
    """Hits and misses per kind, evictions, server invalidations and flushes of a real near
    cache, through Prometheus and OpenTelemetry alike."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from sqlmodel_cache.integrations.opentelemetry import instrument as otel_instrument
    from sqlmodel_cache.integrations.prometheus import instrument as prometheus_instrument

    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    for metadata in METADATAS:
        metadata.create_all(engine)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_server.url)
    # Three entries: a row and its row tag, then a query and its table tag evict the row.
    SQLModelCache.configure(
        RedisSyncTransport.from_url(redis_server.url),
        key_prefix=prefix,
        near_cache=NearCache(max_entries=3),
    )
    registry = CollectorRegistry()
    prometheus_instrument(registry)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel_instrument(provider)
    try:
        with Session(engine) as session:
            session.add(Hero(id=1, name="Spider", secret_name=SECRET))
            session.commit()
        near = _state.runtime.driver.near if _state.runtime is not None else None
        assert near is not None
        wait_for(lambda: near.tracker.live, timeout=5.0)

        def get(session: Session) -> None:
            assert session.get(Hero, 1) is not None

        def query(session: Session) -> None:
            assert session.exec(select(Hero).where(col(Hero.power) >= 0)).all()

        for body in (get, query):
            # A miss fills Redis; a Redis hit is kept in the near cache; then a near hit.
            for read in range(3):
                with Session(engine) as session:
                    body(session)
                if read == 0:
                    time.sleep(SETTLE)
        assert near.size()[0] == 3
        # Another process's commit to the table: the server invalidates the table tag.
        [data_tag] = [k for k in client.scan_iter(f"{prefix}:*") if k.endswith(b":dt")]
        client.set(data_tag, uuid.uuid4().hex[:16])
        wait_for(
            lambda: SQLModelCache.stats().get("*", {}).get("l1_invalidations", 0) >= 1, timeout=5.0
        )
        # The tracking connection is lost: the near cache is emptied.
        with Session(engine) as session:
            get(session)  # a Redis hit, kept: the near cache holds something to flush
        assert near.size()[0] > 0
        for connection in client.client_list():
            if "t" in connection["flags"]:
                client.client_kill_filter(_id=connection["id"])
        wait_for(lambda: SQLModelCache.stats().get("*", {}).get("l1_flushes", 0) >= 1, timeout=5.0)

        stats = SQLModelCache.stats()
        expected = {
            ("l1_hits", (("kind", "get"), ("model", "Hero"))): 1,
            ("l1_hits", (("kind", "query"), ("model", "Hero"))): 1,
            ("l1_misses", (("kind", "get"), ("model", "Hero"))): stats["Hero"]["l1_misses"],
            ("l1_misses", (("kind", "query"), ("model", "Hero"))): 2,
            ("l1_evictions", ()): stats["*"]["l1_evictions"],
            ("l1_invalidations", ()): stats["*"]["l1_invalidations"],
            ("l1_flushes", ()): 1,
        }
        assert stats["Hero"]["l1_misses"] == 3  # two before the near hit, one after
        assert stats["*"]["l1_evictions"] >= 1
        assert stats["*"]["l1_invalidations"] >= 1

        for (name, attributes), value in expected.items():
            found = registry.get_sample_value(f"sqlmodel_cache_{name}_total", dict(attributes))
            assert found == value, (name, attributes)

        points = _points(reader)
        for (name, attributes), value in expected.items():
            assert points[(f"sqlmodel_cache.{name}", attributes)] == value, (name, attributes)
    finally:
        provider.shutdown()
        SQLModelCache.reset()
        client.close()
        engine.dispose()
