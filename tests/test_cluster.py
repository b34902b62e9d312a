"""Redis Cluster (SPEC T3): operations whose keys span slots work, with no CROSSSLOT error.

The ``env`` fixture already runs the whole get/query/write suite on a real 3-primary
cluster (``*-cluster-sqlite``). These tests pin down the two operations the transport splits
across slots: a query over tables in different slots, and a commit writing several tables;
they also check that nothing was silently absorbed by fail-open (no error counted).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from sqlalchemy import update
from sqlmodel import Session, col, select

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.transport import RedisSyncTransport
from tests import servers
from tests.helpers import Env, NoClientCalls, make_env
from tests.models import Hero, Team

pytestmark = pytest.mark.redis


@pytest.fixture(params=["sync", "async"])
def cluster_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(request, tmp_path, request.param, "cluster", "sqlite")


def _failures() -> dict[str, int]:
    """Every error counter: on a cluster, a CROSSSLOT error would show up here."""
    return {
        f"{label}:{event}": count
        for label, events in SQLModelCache.stats().items()
        for event, count in events.items()
        if "error" in event
    }


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        session.add_all([Team(id=1, name="Avengers"), Team(id=2, name="Defenders")])
        session.add_all(
            [
                Hero(id=1, name="Spider", power=10, team_id=1),
                Hero(id=2, name="Daredevil", power=15, team_id=2),
            ]
        )
        session.commit()

    env.run(body)
    env.reset_sql()


def _team_roster(session: Session) -> list[tuple[str, str]]:
    statement = select(Hero.name, Team.name).join(Team).order_by(col(Hero.id))
    return [(hero, team) for hero, team in session.exec(statement).all()]


def test_the_test_tables_live_in_different_slots() -> None:
    """Otherwise the tests below would not cross slots at all."""
    assert key_slot(b"{hero}") != key_slot(b"{team}")


def test_query_over_tables_in_two_slots_is_cached_and_invalidated(cluster_env: Env) -> None:
    env = cluster_env
    _seed(env)
    assert env.run(_team_roster) == [("Spider", "Avengers"), ("Daredevil", "Defenders")]
    env.reset_sql()
    assert env.run(_team_roster) == [("Spider", "Avengers"), ("Daredevil", "Defenders")]
    assert env.selects() == []  # a hit, checked against tags in two other slots
    [key] = [key for key in env.cache_keys() if ":q:" in key]
    assert key.startswith(f"{env.prefix}:{{hero}}:q:")  # the first table's slot

    def rename_team(session: Session) -> None:
        team = session.get(Team, 2)
        assert team is not None
        team.name = "Thunderbolts"
        session.commit()

    env.run(rename_team)  # a write to the *other* table's slot
    env.reset_sql()
    assert env.run(_team_roster) == [("Spider", "Avengers"), ("Daredevil", "Thunderbolts")]
    assert len(env.selects()) == 1
    assert _failures() == {}


def test_commit_writing_tables_in_several_slots_invalidates_all(cluster_env: Env) -> None:
    env = cluster_env
    _seed(env)

    def read_all(session: Session) -> tuple[str, str, list[tuple[str, str]]]:
        hero, team = session.get(Hero, 1), session.get(Team, 1)
        assert hero is not None
        assert team is not None
        return hero.name, team.name, _team_roster(session)

    env.run(read_all)
    env.reset_sql()
    env.run(read_all)
    assert env.selects() == []

    def write_both(session: Session) -> None:
        hero, team = session.get(Hero, 1), session.get(Team, 1)
        assert hero is not None
        assert team is not None
        hero.name, team.name = "Spider-Man", "New Avengers"
        session.execute(update(Hero).where(col(Hero.id) == 2).values(power=99))  # bulk: row tag
        session.commit()

    env.run(write_both)
    env.reset_sql()
    assert env.run(read_all) == (
        "Spider-Man",
        "New Avengers",
        [("Spider-Man", "New Avengers"), ("Daredevil", "Defenders")],
    )
    assert len(env.selects()) == 3
    assert _failures() == {}


def test_manual_invalidation_of_several_tables(cluster_env: Env) -> None:
    env = cluster_env
    _seed(env)
    env.run(_team_roster)
    if env.mode == "sync":
        SQLModelCache.invalidate_tables("hero", "team")
    else:
        assert env.loop is not None
        env.loop.run_until_complete(SQLModelCache.ainvalidate_tables("hero", "team"))
    env.reset_sql()
    env.run(_team_roster)
    assert len(env.selects()) == 1
    assert _failures() == {}


def test_from_url_builds_a_cluster_client(redis_cluster: servers.RedisCluster) -> None:
    transport = RedisSyncTransport.from_url(redis_cluster.url, cluster=True)
    try:
        assert isinstance(transport.client, redis.RedisCluster)
        assert len(transport.client.get_primaries()) == 3
        transport.set("x:{t}:probe", b"v", 10)
        assert transport.get("x:{t}:probe") == b"v"
    finally:
        transport.client.close()


def test_scripts_are_reloaded_on_every_node_after_script_flush(
    cluster_env: Env, redis_cluster: servers.RedisCluster
) -> None:
    """Nodes that lost the scripts (restart, failover to a fresh replica) get them again."""
    env = cluster_env
    _seed(env)
    env.run(_team_roster)
    for node in redis_cluster.nodes:
        client = redis.Redis.from_url(node.url)
        client.script_flush()
        client.close()

    def read(session: Session) -> str:
        hero = session.get(Hero, 1)
        assert hero is not None
        return hero.name

    assert env.run(read) == "Spider"  # miss: fetch and fill reload the scripts
    env.reset_sql()
    assert env.run(read) == "Spider"
    assert env.run(_team_roster) == [("Spider", "Avengers"), ("Daredevil", "Defenders")]
    assert env.selects() == []
    assert _failures() == {}


def _hero_name(session: Session) -> str:
    hero = session.get(Hero, 1)
    assert hero is not None
    return hero.name


def test_reads_go_to_the_slots_node_on_the_transports_own_connections(
    cluster_env: Env,
) -> None:
    """A single-slot script goes straight to the primary that serves the slot (the
    transport's lane), not through the cluster client."""
    env = cluster_env
    _seed(env)
    env.run(_hero_name)  # miss: the first command of an asyncio client reads the slot map
    env.reset_sql()
    with NoClientCalls(env.transport.client):
        assert env.run(_hero_name) == "Spider"
    assert env.selects() == []
    assert SQLModelCache.stats()["Hero"]["hits"] == 1
    assert _failures() == {}


def test_a_slot_that_moved_is_followed_through_the_client(cluster_env: Env) -> None:
    """When the client's slot map is out of date (a resharding, a failover), the node the
    lane asks answers MOVED: that call goes through the client, which follows it and
    corrects its map, and the next read takes the lane to the right node again."""
    env = cluster_env
    _seed(env)
    env.run(_hero_name)
    client = env.transport.client
    slot = key_slot(b"hero")
    owner = client.nodes_manager.slots_cache[slot][0]
    stranger = next(node for node in client.get_primaries() if node.name != owner.name)
    client.nodes_manager.slots_cache[slot] = [stranger]
    env.reset_sql()
    assert env.run(_hero_name) == "Spider"  # a hit, served after the redirection
    assert client.nodes_manager.slots_cache[slot][0].name == owner.name
    with NoClientCalls(client):
        assert env.run(_hero_name) == "Spider"
    assert env.selects() == []
    assert SQLModelCache.stats()["Hero"]["hits"] == 2
    assert _failures() == {}


def test_large_entries_are_checked_then_read_on_the_slots_node(
    cluster_env: Env, redis_cluster: servers.RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every entry counted as large, each read after the first checks the entry in
    the script and reads it with a GET on the same node's lane: a row, and a query over
    tables in two slots (its tags read first from their own slots)."""
    from sqlmodel_cache.transport._redis import transport as redis_transport

    monkeypatch.setattr(redis_transport, "LARGE_ENTRY", 1)
    env = cluster_env
    _seed(env)
    expected = ([("Spider", "Avengers"), ("Daredevil", "Defenders")], "Spider")

    def both(session: Session) -> tuple[list[tuple[str, str]], str]:
        return _team_roster(session), _hero_name(session)

    assert env.run(both) == expected  # misses: filled
    assert env.run(both) == expected  # hits: read whole, now known to be large
    nodes = [redis.Redis.from_url(node.url) for node in redis_cluster.nodes]
    for node in nodes:
        node.config_resetstat()
    env.reset_sql()
    with NoClientCalls(env.transport.client):
        assert env.run(_hero_name) == "Spider"
    assert env.run(both) == expected
    checks = sum(
        node.info("commandstats").get("cmdstat_getrange", {}).get("calls", 0) for node in nodes
    )
    assert checks == 3
    assert env.selects() == []
    assert _failures() == {}
    for node in nodes:
        node.close()
