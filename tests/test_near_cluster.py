"""The near cache on Redis Cluster: a tracking connection per primary, against a real
3-primary cluster (SPEC T4 with T3).

Writes reach the primary that serves their slot, and only that node pushes the
invalidation: the near cache serves only while every primary is tracked and live, and
keeps only what a tracked primary served, per the client's slot map before and after the
fetch."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from sqlmodel_cache import NearCache, SQLModelCache, _state
from sqlmodel_cache.transport import RedisAsyncTransport, RedisSyncTransport
from sqlmodel_cache.transport._redis.near import NearStore
from tests import servers
from tests.helpers import hero_database, wait_for, write_behind_the_cache
from tests.models import Hero

pytestmark = pytest.mark.redis


def _near() -> NearStore:
    assert _state.runtime is not None
    near = _state.runtime.driver.near
    assert near is not None
    return near


def _counts() -> dict[str, int]:
    return SQLModelCache.stats().get("Hero", {})


class ClusterSetup:
    """One hero in a SQLite file; the cache over the cluster with a near cache; sync or
    asyncio; ``raw`` writes as another process would."""

    def __init__(self, tmp_path: Path, url: str, mode: str) -> None:
        self.path = tmp_path / "near.db"
        self.engine = hero_database(self.path)
        self.prefix = f"c{os.urandom(6).hex()}"
        self.raw = redis.RedisCluster.from_url(url)
        self.loop = asyncio.new_event_loop() if mode == "async" else None
        if self.loop is None:
            self.client: Any = redis.RedisCluster.from_url(url, socket_timeout=0.5)
            transport: Any = RedisSyncTransport(self.client)
        else:
            self.client = redis.asyncio.RedisCluster.from_url(url, socket_timeout=0.5)
            self.async_engine = create_async_engine(f"sqlite+aiosqlite:///{self.path}")
            self.loop.run_until_complete(self.client.initialize())
            transport = RedisAsyncTransport(self.client)
        SQLModelCache.configure(
            transport, key_prefix=self.prefix, near_cache=NearCache(heartbeat=0.1)
        )
        wait_for(lambda: _near().tracker.live)

    def name(self, pk: int = 1) -> str | None:
        if self.loop is None:
            with Session(self.engine) as session:
                hero = session.get(Hero, pk)
                return None if hero is None else hero.name

        async def read() -> str | None:
            async with AsyncSession(self.async_engine) as session:
                hero = await session.get(Hero, pk)
                return None if hero is None else hero.name

        return self.loop.run_until_complete(read())

    def warm(self) -> None:
        self.name()
        wait_for(lambda: (self.name(), _near().size()[0] == 2)[1])

    def write_behind_the_cache(self, name: str) -> None:
        write_behind_the_cache(self.path, self.raw, self.prefix, name)

    def close(self) -> None:
        SQLModelCache.reset()
        self.raw.close()
        if self.loop is None:
            self.client.close()
        else:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.run_until_complete(self.async_engine.dispose())
            self.loop.close()
        self.engine.dispose()


@pytest.fixture(params=["sync", "async"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, redis_cluster: servers.RedisCluster
) -> Iterator[ClusterSetup]:
    built = ClusterSetup(tmp_path, redis_cluster.url, request.param)
    yield built
    built.close()


def test_every_primary_is_tracked_and_hits_come_from_process_memory(
    setup: ClusterSetup, redis_cluster: servers.RedisCluster
) -> None:
    tracked_nodes = 0
    for node in redis_cluster.nodes:
        inspector = redis.Redis.from_url(node.url)
        tracked_nodes += any("t" in client["flags"] for client in inspector.client_list())
        inspector.close()
    assert tracked_nodes == len(redis_cluster.nodes)
    setup.warm()
    before = _counts().get("l1_hits", 0)
    assert setup.name() == "Spider"
    assert _counts()["l1_hits"] == before + 1


def test_a_write_on_the_slots_primary_reaches_the_near_cache(setup: ClusterSetup) -> None:
    setup.warm()
    setup.write_behind_the_cache("Iron")
    wait_for(lambda: setup.name() == "Iron")
    assert SQLModelCache.stats()["*"]["l1_invalidations"] >= 1


def test_a_lost_tracking_connection_on_one_primary_empties_the_near_cache(
    setup: ClusterSetup, redis_cluster: servers.RedisCluster
) -> None:
    """Another primary's tracking connection lost (not the one serving the hero): what was
    held is gone all the same, since that node's pushes may have been missed; the near
    cache serves again once it tracks again."""
    setup.warm()
    flushes = SQLModelCache.stats().get("*", {}).get("l1_flushes", 0)
    owner = setup.raw.get_node_from_key("{hero}")
    other = next(node for node in redis_cluster.nodes if str(node.port) != str(owner.port))
    killer = redis.Redis.from_url(other.url)
    for client in killer.client_list():
        if "t" in client["flags"]:
            killer.client_kill_filter(_id=client["id"])
    killer.close()
    wait_for(lambda: SQLModelCache.stats().get("*", {}).get("l1_flushes", 0) > flushes)
    assert _near().size()[0] == 0
    wait_for(lambda: _near().tracker.live)
    hits = _counts().get("l1_hits", 0)
    setup.warm()
    assert setup.name() == "Spider"
    assert _counts()["l1_hits"] > hits


def test_nothing_is_kept_from_a_fetch_whose_slot_moved(setup: ClusterSetup) -> None:
    """The client's slot map names another primary than the one that answers (a
    resharding it has not seen): the fetch is redirected, and the near cache keeps nothing
    from it, since the slot map at the start and at the end of the fetch differ."""
    setup.name()  # fill
    nodes = setup.client.nodes_manager
    slot = key_slot(b"hero")
    owner = nodes.slots_cache[slot][0]
    stranger = next(node for node in setup.client.get_primaries() if node.name != owner.name)
    nodes.slots_cache[slot] = [stranger]
    assert setup.name() == "Spider"  # a Redis hit, through the redirection
    assert _near().size()[0] == 0
    assert nodes.slots_cache[slot][0].name == owner.name
    setup.warm()  # the map is right again: kept
    assert _near().size()[0] == 2


def _migrate_slot(cluster: servers.RedisCluster, slot: int, source: Any, target: Any) -> None:
    """Move ``slot`` and its keys from node ``source`` to node ``target`` (servers.RedisServer),
    as ``redis-cli --cluster reshard`` does."""
    clients = {node.port: redis.Redis.from_url(node.url) for node in cluster.nodes}
    ids = {
        port: client.execute_command("CLUSTER", "MYID").decode() for port, client in clients.items()
    }
    src, dst = clients[source.port], clients[target.port]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for client in clients.values():
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
    for client in clients.values():
        client.close()


def test_a_slot_migrated_to_another_primary_drops_what_was_kept(tmp_path: Path) -> None:
    """Resharding: the source deletes the keys it hands over, and that deletion is pushed
    like a write; from then on the slot's writes happen on a primary that is tracked too."""
    cluster = servers.start_redis_cluster()
    try:
        setup = ClusterSetup(tmp_path, cluster.url, "sync")
        try:
            setup.warm()
            slot = key_slot(b"hero")
            owner = setup.raw.get_node_from_key("{hero}")
            source = next(node for node in cluster.nodes if node.port == int(owner.port))
            target = next(node for node in cluster.nodes if node is not source)
            flushes = SQLModelCache.stats().get("*", {}).get("l1_flushes", 0)
            _migrate_slot(cluster, slot, source, target)
            wait_for(lambda: _near().size()[0] == 0)
            star = SQLModelCache.stats()["*"]
            assert star["l1_invalidations"] >= 2  # the row and its tag, pushed by the source
            assert star.get("l1_flushes", 0) == flushes
            assert setup.name() == "Spider"  # redirected: read, not kept
            setup.write_behind_the_cache("Iron")  # on the new primary
            wait_for(lambda: setup.name() == "Iron")
            setup.warm()
            assert setup.name() == "Iron"
            assert _counts()["l1_hits"] >= 1
        finally:
            setup.close()
            with warnings.catch_warnings():
                # redis-py's cluster client drops, unclosed, the connections of the node
                # objects it replaces after the resharding: collect them here, quietly.
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
    finally:
        cluster.stop()


def test_a_primary_that_says_its_cluster_is_not_ok_stops_the_near_cache(
    setup: ClusterSetup, redis_cluster: servers.RedisCluster
) -> None:
    """A primary whose heartbeat answer says ``cluster_state:fail`` empties the near cache
    and stops it until the node says ``ok`` again: a primary cut off from the rest of its
    cluster says so after cluster-node-timeout, and a replica promoted in its place takes
    writes this process would not hear of. Here the node says so because it dropped one of
    its slots (no partition needed); the other primaries stay ok."""
    setup.warm()
    flushes = SQLModelCache.stats().get("*", {}).get("l1_flushes", 0)
    owner = setup.raw.get_node_from_key("{hero}")
    dropper = next(node for node in redis_cluster.nodes if str(node.port) != str(owner.port))
    admin = redis.Redis.from_url(dropper.url)
    slot = next(iter(admin.cluster("SLOTS")))[0]  # the first slot of its first range
    admin.execute_command("CLUSTER", "DELSLOTS", slot)
    try:
        wait_for(lambda: SQLModelCache.stats().get("*", {}).get("l1_flushes", 0) > flushes)
        assert _near().size()[0] == 0
        hits = _counts().get("l1_hits", 0)
        for _ in range(3):
            assert setup.name() == "Spider"  # from Redis: the hero's node is fine
        assert _counts().get("l1_hits", 0) == hits
        assert not _near().tracker.live
    finally:
        admin.execute_command("CLUSTER", "ADDSLOTS", slot)
        admin.close()
    wait_for(lambda: _near().tracker.live)
    setup.warm()
    hits = _counts().get("l1_hits", 0)
    assert setup.name() == "Spider"
    assert _counts()["l1_hits"] == hits + 1


def _add_replica(cluster: servers.RedisCluster, primary: servers.RedisServer) -> redis.Redis:
    """Start one more cluster node, make it a synced replica of ``primary`` and return an
    admin client of it (the node is stopped with ``cluster``)."""
    with socket.socket() as probe:  # the cluster bus port
        probe.bind(("127.0.0.1", 0))
        bus = probe.getsockname()[1]
    options = ("--cluster-enabled", "yes", "--cluster-port", str(bus))
    node = servers.start_redis(extra_args=(*options, "--cluster-node-timeout", "2000"))
    cluster.nodes.append(node)
    replica = redis.Redis.from_url(node.url)
    with redis.Redis.from_url(primary.url) as admin:
        admin.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        primary_id = admin.execute_command("CLUSTER", "MYID").decode()
        # Sync now, not in 5 s; and replicate a ping every second: the nodes list a replica
        # only once its replication offset is not 0.
        admin.config_set("repl-diskless-sync-delay", 0)
        admin.config_set("repl-ping-replica-period", 1)
    wait_for(lambda: primary_id.encode() in replica.execute_command("CLUSTER", "NODES"), 10)
    replica.execute_command("CLUSTER", "REPLICATE", primary_id)
    wait_for(lambda: replica.info("replication").get("master_link_status") == "up", 10)
    for member in cluster.nodes:  # every node lists it, so every new client knows it
        with redis.Redis.from_url(member.url) as client:
            wait_for(lambda c=client: _lists_replica(c, node.port), 10)
    return replica


def _lists_replica(client: redis.Redis, port: int) -> bool:
    return any(
        int(replica[1]) == port
        for _first, _last, _primary, *replicas in client.execute_command("CLUSTER", "SLOTS")
        for replica in replicas
    )


def test_a_new_primary_empties_the_near_cache_when_its_tracking_starts(tmp_path: Path) -> None:
    """Failover: a replica becomes the slot's primary. Writes it takes before this process
    tracks it are pushed by no connection of ours (the old primary's was closed when the
    client saw the switch), so the near cache empties when the new primary's tracking
    starts, and never serves what it held from the old one. Here the new primary refuses
    tracking for a while (an ACL), and another process commits in between."""
    cluster = servers.start_redis_cluster()
    try:
        with redis.RedisCluster.from_url(cluster.url) as probe:
            owner = int(probe.get_node_from_key("{hero}").port)
        old = next(node for node in cluster.nodes if node.port == owner)
        new = _add_replica(cluster, old)
        setup = ClusterSetup(tmp_path, cluster.url, "sync")  # its client knows the replica
        try:
            setup.warm()
            new.execute_command("ACL", "SETUSER", "default", "-client|tracking")
            new.execute_command("CLUSTER", "FAILOVER")
            wait_for(lambda: new.execute_command("ROLE")[0] == b"master", 10)
            assert setup.name(2) is None  # a near miss: our client is redirected (MOVED)
            with redis.Redis.from_url(old.url) as old_admin:
                wait_for(lambda: not [c for c in old_admin.client_list() if "t" in c["flags"]])
            assert not _near().tracker.live  # the new primary refuses to track
            setup.write_behind_the_cache("Iron")  # committed on the new primary meanwhile
            new.execute_command("ACL", "SETUSER", "default", "+client|tracking")
            wait_for(lambda: _near().tracker.live, 5)
            assert setup.name() == "Iron"
            setup.warm()
            hits = _counts().get("l1_hits", 0)
            assert setup.name() == "Iron"
            assert _counts()["l1_hits"] == hits + 1  # and the near cache serves again
        finally:
            setup.close()
            new.close()
            with warnings.catch_warnings():
                # As after a resharding: the node objects redis-py replaced, unclosed.
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
    finally:
        cluster.stop()
