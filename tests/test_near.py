"""The near cache (SPEC T4): what it serves, what removes entries from it, and that any
doubt about the invalidation stream flushes and bypasses it. Against a real Redis.

The whole get and query suites also run through it (the ``*-near-*`` envs in conftest)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlmodel import Session, select

from sqlmodel_cache import ConfigurationError, NearCache, SQLModelCache, _state
from sqlmodel_cache.transport import (
    Fetched,
    MemoryTransport,
    RedisAsyncTransport,
    RedisSyncTransport,
)
from sqlmodel_cache.transport._redis.near import NearStore
from sqlmodel_cache.transport._redis.resp import Incomplete, ProtocolError, command, parse
from sqlmodel_cache.transport._redis.tracking import read_reply
from tests import servers
from tests.helpers import hero_database, wait_for, write_behind_the_cache
from tests.models import Hero

pytestmark = pytest.mark.redis


class Setup:
    """A file SQLite database with one hero, and the cache over Redis with a near cache."""

    def __init__(self, tmp_path: Path, url: str, **near: Any) -> None:
        self.path = tmp_path / "near.db"
        self.engine = hero_database(self.path)
        self.statements: list[str] = []
        event.listen(
            self.engine,
            "before_cursor_execute",
            lambda conn, cursor, statement, *args: self.statements.append(statement),
        )
        self.prefix = f"n{os.urandom(6).hex()}"
        self.client = redis.Redis.from_url(url)
        SQLModelCache.configure(
            RedisSyncTransport.from_url(url), key_prefix=self.prefix, near_cache=NearCache(**near)
        )
        wait_for(lambda: self.near.tracker.live)

    @property
    def near(self) -> NearStore:
        assert _state.runtime is not None
        near = _state.runtime.driver.near
        assert near is not None
        return near

    def name(self) -> str:
        with Session(self.engine) as session:
            hero = session.get(Hero, 1)
            assert hero is not None
            return hero.name

    def rename(self, name: str) -> None:
        """Change the hero's name through the cache, in a committed session."""
        with Session(self.engine) as session:
            hero = session.get(Hero, 1)
            assert hero is not None
            hero.name = name
            session.add(hero)
            session.commit()

    def warm(self) -> None:
        """Miss (fill), then a Redis hit, which the near cache keeps."""
        self.name()
        time.sleep(0.02)  # the push of our own fill drops nothing we keep
        self.name()
        assert self.near.size()[0] == 2  # the row and its table's row tag

    def counts(self, label: str = "Hero") -> dict[str, int]:
        return SQLModelCache.stats().get(label, {})

    def evalshas(self) -> int:
        stats = self.client.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
        return int(stats["calls"])

    def kill_clients(self, flag: str) -> None:
        """Kill every connection to the server whose ``CLIENT LIST`` flags hold ``flag``."""
        ids = [c["id"] for c in self.client.client_list() if flag in c["flags"]]
        assert ids
        for client_id in ids:
            self.client.client_kill_filter(_id=client_id)

    def write_behind_the_cache(self, name: str) -> None:
        write_behind_the_cache(self.path, self.client, self.prefix, name)

    def close(self) -> None:
        SQLModelCache.reset()
        self.client.close()
        self.engine.dispose()


@pytest.fixture
def setup(tmp_path: Path, redis_server: servers.RedisServer) -> Iterator[Setup]:
    built = Setup(tmp_path, redis_server.url, heartbeat=0.1)
    yield built
    built.close()


def test_a_hot_get_is_served_in_process_without_sql_or_redis(setup: Setup) -> None:
    setup.warm()
    setup.statements.clear()
    before = setup.evalshas()
    assert [setup.name() for _ in range(5)] == ["Spider"] * 5
    assert setup.statements == []
    assert setup.evalshas() == before  # the evalsha INFO itself is not one
    counts = setup.counts()
    assert counts["l1_hits"] == 5
    assert counts["hits"] == 6  # the Redis hit of warm() and the five near hits


def test_the_first_reads_fill_redis_and_the_near_cache_keeps_a_redis_hit(setup: Setup) -> None:
    setup.name()
    assert setup.counts()["fills"] == 1
    time.sleep(0.02)
    setup.name()  # a Redis hit
    setup.name()  # a near hit
    counts = setup.counts()
    assert (counts["misses"], counts["hits"], counts["l1_hits"]) == (1, 2, 1)


def test_another_process_s_write_is_seen_by_the_next_read(setup: Setup) -> None:
    for round_ in range(20):
        setup.warm()
        setup.write_behind_the_cache(f"Spider {round_}")
        # No sleep: the read drains the pushes that arrived before it serves.
        assert setup.name() == f"Spider {round_}"
    assert SQLModelCache.stats()["*"]["l1_invalidations"] >= 20


def test_own_commit_clears_the_near_cache_before_commit_returns(setup: Setup) -> None:
    setup.warm()
    setup.near.tracker._drain = lambda: None  # type: ignore[method-assign] # pushes never arrive
    setup.rename("Spider-Man")
    assert setup.name() == "Spider-Man"


def test_manual_invalidation_clears_the_near_cache(setup: Setup) -> None:
    setup.warm()
    with contextlib.closing(sqlite3.connect(setup.path)) as connection, connection:
        connection.execute("UPDATE hero SET name = 'Ghost' WHERE id = 1")
    setup.near.tracker._drain = lambda: None  # type: ignore[method-assign]
    SQLModelCache.invalidate(Hero, 1)
    assert setup.name() == "Ghost"


def test_an_invalidation_during_a_redis_fetch_cancels_keeping_it(setup: Setup) -> None:
    setup.name()
    key = f"{setup.prefix}:{{hero}}:r:[1]"
    tag_key = f"{setup.prefix}:{{hero}}:rt"
    entry = setup.client.get(key)
    ticket = setup.near.begin(key, (tag_key,))
    setup.client.set(tag_key, os.urandom(8).hex())  # a commit lands while we fetch
    time.sleep(0.02)
    setup.near.remember(ticket, key, (tag_key,), Fetched(entry, False, (), 60_000))
    assert setup.near.size() == (0, 0)
    untouched = setup.near.begin(key, (tag_key,))
    setup.near.remember(untouched, key, (tag_key,), Fetched(entry, False, (), 60_000))
    assert setup.near.size()[0] == 2  # the same entry without a write in between is kept


def test_an_invalidation_still_unread_when_the_fetch_returns_cancels_keeping_it(
    setup: Setup,
) -> None:
    """The push of a write made after the fetch is still in the socket when the reader
    stores: storing must apply it first (found by the stale-read checker)."""
    setup.name()
    key = f"{setup.prefix}:{{hero}}:r:[1]"
    tag_key = f"{setup.prefix}:{{hero}}:rt"
    near = setup.near
    with near._lock:  # the tracker thread cannot drain the push before the reader does
        ticket = near.begin(key, (tag_key,))
        entry = setup.client.get(key)
        setup.client.delete(key)  # another process commits
        setup.client.set(tag_key, os.urandom(8).hex())
        time.sleep(0.05)
        near.remember(ticket, key, (tag_key,), Fetched(entry, False, (), 60_000))
    assert near.size() == (0, 0)


def test_a_copy_lives_no_longer_than_the_redis_entry(setup: Setup) -> None:
    setup.name()
    key = f"{setup.prefix}:{{hero}}:r:[1]"
    tag_key = f"{setup.prefix}:{{hero}}:rt"
    entry = setup.client.get(key)
    assert entry is not None
    setup.near.tracker._drain = lambda: None  # type: ignore[method-assign] # no expiry push
    setup.near.remember(
        setup.near.begin(key, (tag_key,)), key, (tag_key,), Fetched(entry, False, (), 50)
    )
    schema = entry[16:32]
    assert setup.near.lookup("Hero", "", key, (tag_key,), schema) == entry
    time.sleep(0.06)
    assert setup.near.lookup("Hero", "", key, (tag_key,), schema) is None
    assert setup.near.size()[0] == 1  # the tag stays: tags do not expire in Redis either


def test_nothing_is_served_while_a_push_is_half_received(
    tmp_path: Path, redis_server: servers.RedisServer
) -> None:
    setup = Setup(tmp_path, redis_server.url, heartbeat=5)
    try:
        setup.warm()
        with setup.near._lock:
            setup.near.tracker._drain = lambda: None  # type: ignore[method-assign]
            setup.near.tracker._buffer += b">2\r\n$10\r\ninvali"
        assert setup.name() == "Spider"
        assert setup.counts().get("l1_hits", 0) == 0
        with setup.near._lock:
            setup.near.tracker._buffer.clear()
        assert setup.name() == "Spider"
        assert setup.counts()["l1_hits"] == 1
    finally:
        setup.close()


def test_a_killed_tracking_connection_flushes_bypasses_then_recovers(setup: Setup) -> None:
    setup.warm()
    setup.kill_clients("t")  # tracking
    setup.write_behind_the_cache("Venom")  # a write while the pushes cannot arrive
    assert setup.name() == "Venom"
    assert setup.near.size() == (0, 0)
    assert SQLModelCache.stats()["*"]["l1_flushes"] == 1
    wait_for(lambda: setup.near.tracker.live)
    setup.warm()
    before = setup.counts()["l1_hits"]
    assert setup.name() == "Venom"
    assert setup.counts()["l1_hits"] == before + 1


def test_a_silent_tracking_connection_is_treated_as_lost(setup: Setup) -> None:
    setup.warm()
    setup.client.execute_command("CLIENT", "PAUSE", "700", "ALL")  # no PONG, no pushes
    time.sleep(0.5)  # more than three heartbeats of 0.1 s
    assert not setup.near.tracker.live
    assert setup.near.size() == (0, 0)
    wait_for(lambda: setup.near.tracker.live)
    assert setup.name() == "Spider"


def test_a_server_flush_empties_the_near_cache(setup: Setup) -> None:
    setup.warm()
    setup.client.flushdb()
    wait_for(lambda: setup.near.size() == (0, 0))
    assert setup.near.tracker.live
    assert setup.name() == "Spider"


def test_an_entry_expiring_in_redis_leaves_the_near_cache(
    tmp_path: Path, redis_server: servers.RedisServer
) -> None:
    setup = Setup(tmp_path, redis_server.url, heartbeat=0.1)
    try:
        with Session(setup.engine) as session:
            session.get(Hero, 1, execution_options={"cache_ttl": 1})
            time.sleep(0.02)
            session.expunge_all()
            session.get(Hero, 1, execution_options={"cache_ttl": 1})
        assert setup.near.size()[0] == 2
        wait_for(lambda: setup.near.size()[0] == 1, timeout=4)  # the tag has no TTL
        setup.statements.clear()
        assert setup.name() == "Spider"
        assert len(setup.statements) == 1
    finally:
        setup.close()


def test_a_failed_invalidation_flushes_the_near_cache(setup: Setup) -> None:
    setup.warm()
    transport = _state.runtime.driver.transport  # type: ignore[union-attr]

    def failing(*args: Any) -> None:
        raise redis.ConnectionError("down")

    transport.invalidate = failing
    setup.rename("Spider-Woman")
    assert setup.near.size() == (0, 0)
    assert SQLModelCache.stats()["*"]["invalidation_errors"] == 1
    assert setup.name() == "Spider-Woman"  # the pending invalidation bypasses the cache


@pytest.mark.parametrize(("max_entries", "max_bytes"), [(3, 1_000_000), (1_000, 800)])
def test_it_is_bounded_by_entries_and_by_bytes(
    tmp_path: Path, redis_server: servers.RedisServer, max_entries: int, max_bytes: int
) -> None:
    setup = Setup(tmp_path, redis_server.url, max_entries=max_entries, max_bytes=max_bytes)
    try:
        with Session(setup.engine) as session:
            session.add_all(Hero(id=i, name=f"hero {i}") for i in range(2, 6))
            session.commit()
        for _ in range(2):
            for i in range(1, 6):
                with Session(setup.engine) as session:
                    session.get(Hero, i)
            time.sleep(0.02)
        entries, size = setup.near.size()
        assert 0 < entries <= max_entries
        assert size <= max_bytes
        assert SQLModelCache.stats()["*"]["l1_evictions"] >= 2
        assert [setup.name() for _ in range(2)] == ["Spider"] * 2
    finally:
        setup.close()


def test_a_select_is_served_from_the_near_cache(setup: Setup) -> None:
    def names() -> list[str]:
        with Session(setup.engine) as session:
            return list(session.exec(select(Hero.name).where(Hero.id == 1)))

    names()
    time.sleep(0.02)
    names()
    setup.statements.clear()
    assert names() == ["Spider"]
    assert setup.statements == []
    assert setup.counts()["query_l1_hits"] == 1
    setup.write_behind_the_cache("ignored")  # a row tag: queries check data tags
    setup.client.set(f"{setup.prefix}:{{hero}}:dt", os.urandom(8).hex())
    assert names() == ["ignored"]


def test_async_gets_are_served_from_the_near_cache(
    tmp_path: Path, redis_server: servers.RedisServer
) -> None:
    import asyncio

    path = tmp_path / "async.db"
    hero_database(path).dispose()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    async def main() -> list[str]:
        transport = RedisAsyncTransport.from_url(redis_server.url)
        SQLModelCache.configure(
            transport, key_prefix=f"a{os.urandom(6).hex()}", near_cache=NearCache()
        )
        near = _state.runtime.driver.near  # type: ignore[union-attr]
        assert near is not None
        while not near.tracker.live:
            await asyncio.sleep(0.01)
        names = []
        for _ in range(4):
            async with AsyncSession(engine) as session:
                hero = await session.get(Hero, 1)
                assert hero is not None
                names.append(hero.name)
            await asyncio.sleep(0.02)
        SQLModelCache.reset()
        await transport.client.aclose()
        await engine.dispose()
        return names

    SQLModelCache.reset()
    stats: dict[str, int] = {}
    SQLModelCache.subscribe(
        lambda label, event, n: stats.__setitem__(event, stats.get(event, 0) + n)
    )
    assert asyncio.run(main()) == ["Spider"] * 4
    assert stats["l1_hits"] == 2


def test_a_forked_child_does_not_use_the_parent_s_near_cache(setup: Setup) -> None:
    setup.warm()
    pid = os.fork()
    if pid == 0:  # the child: its reads go to Redis, never to the inherited near cache
        try:
            setup.name()
            served = SQLModelCache.stats()["Hero"].get("l1_hits", 0)
            os._exit(0 if served == 0 and setup.near._forked else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert setup.name() == "Spider"
    assert setup.counts()["l1_hits"] == 1  # the parent still uses its own


def test_an_unreachable_server_costs_no_exception(tmp_path: Path) -> None:
    engine = hero_database(tmp_path / "x.db")
    port = servers._free_port()
    SQLModelCache.configure(
        RedisSyncTransport.from_url(f"redis://127.0.0.1:{port}", timeout=0.05),
        near_cache=NearCache(heartbeat=0.05),
    )
    for _ in range(3):
        with Session(engine) as session:
            hero = session.get(Hero, 1)
            assert hero is not None
            assert hero.name == "Spider"
    assert "l1_hits" not in SQLModelCache.stats().get("Hero", {})
    engine.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_entries": 0}, "max_entries"),
        ({"max_bytes": True}, "max_bytes"),
        ({"heartbeat": "1"}, "heartbeat"),
        ({"heartbeat": 0.001}, "heartbeat"),
        ({"invalidation": "pubsub"}, "invalidation"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        NearCache(**options)


def test_it_needs_a_single_node_redis_transport(redis_server: servers.RedisServer) -> None:
    with pytest.raises(ConfigurationError, match="RedisSyncTransport or RedisAsyncTransport"):
        SQLModelCache.configure(MemoryTransport(), near_cache=NearCache())
    with pytest.raises(ConfigurationError, match="near_cache must be a NearCache"):
        SQLModelCache.configure(MemoryTransport(), near_cache={"max_entries": 10})  # type: ignore[arg-type]
    assert not SQLModelCache.is_configured()


def test_sentinel_is_refused() -> None:
    sentinel = redis.Sentinel([("127.0.0.1", servers._free_port())])
    with pytest.raises(ConfigurationError, match="Sentinel"):
        SQLModelCache.configure(
            RedisSyncTransport(sentinel.master_for("primary", socket_timeout=0.1)),
            near_cache=NearCache(),
        )


def test_keyspace_mode_is_refused_on_a_cluster(redis_cluster: servers.RedisCluster) -> None:
    with pytest.raises(ConfigurationError, match="Cluster"):
        SQLModelCache.configure(
            RedisSyncTransport.from_url(redis_cluster.url, cluster=True),
            near_cache=NearCache(invalidation="keyspace"),
        )


def test_reset_stops_the_tracking_connection(
    tmp_path: Path, redis_server: servers.RedisServer
) -> None:
    setup = Setup(tmp_path, redis_server.url)
    tracker = setup.near.tracker
    setup.close()
    assert not tracker._thread.is_alive()
    client = redis.Redis.from_url(redis_server.url)
    assert not [c for c in client.client_list() if "t" in c["flags"]]
    client.close()


# -- the RESP3 reader -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"+OK\r\n", b"OK"),
        (b":42\r\n", 42),
        (b"_\r\n", None),
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n:1\r\n", [b"a", 1]),
        (b"%1\r\n+k\r\n+v\r\n", [b"k", b"v"]),
        (b"~1\r\n#t\r\n", [b"t"]),
        (b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n", ("push", [b"invalidate", [b"key"]])),
        (b">2\r\n$10\r\ninvalidate\r\n_\r\n", ("push", [b"invalidate", None])),
        (b"|1\r\n+a\r\n+b\r\n+after\r\n", b"after"),
    ],
)
def test_parse_reads_resp3(raw: bytes, value: Any) -> None:
    assert parse(raw + b"+next\r\n", 0) == (value, len(raw))


def test_parse_errors_and_partial_input() -> None:
    error, _ = parse(b"-ERR nope\r\n", 0)
    assert isinstance(error, ProtocolError)
    assert "nope" in str(error)
    blob, _ = parse(b"!3\r\nbad\r\n", 0)
    assert isinstance(blob, ProtocolError)
    for partial in (b"$5\r\nhel", b"*2\r\n+a\r\n", b"+OK"):
        with pytest.raises(Incomplete):
            parse(partial, 0)
    with pytest.raises(ProtocolError):
        parse(b"?\r\n", 0)
    assert command("PING") == b"*1\r\n$4\r\nPING\r\n"


@pytest.mark.parametrize("size", [0, 1, 511, 512, 70_000])
def test_command_packs_every_kind_of_part(size: int) -> None:
    """Text, numbers and bytes of any size, packed as RESP and read back the same."""
    blob = b"x" * size
    packed = command("SET", "ключ", blob, 5)
    head = b"*4\r\n$3\r\nSET\r\n$8\r\n" + "ключ".encode() + b"\r\n"
    assert packed == head + b"$%d\r\n%s\r\n$1\r\n5\r\n" % (size, blob)
    assert parse(packed, 0) == ([b"SET", "ключ".encode(), blob, b"5"], len(packed))


def test_invalidations_right_behind_the_tracking_reply_are_kept() -> None:
    import socket

    ours, server = socket.socketpair()
    push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    server.sendall(b"+O")
    server.sendall(b"K\r\n" + push)
    assert read_reply(ours) == (b"OK", push)
    server.close()
    with pytest.raises(ConnectionError):
        read_reply(ours)
    ours.close()


# -- keyspace notifications: the fallback for servers without client tracking ---------------


@pytest.fixture
def notifying(redis_server: servers.RedisServer) -> Iterator[redis.Redis]:
    """The test server publishing keyspace notifications (a client for it)."""
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("notify-keyspace-events", "KA")
    yield client
    client.config_set("notify-keyspace-events", "")
    client.close()


@pytest.fixture
def keyspace(
    tmp_path: Path, redis_server: servers.RedisServer, notifying: redis.Redis
) -> Iterator[Setup]:
    built = Setup(tmp_path, redis_server.url, heartbeat=0.1, invalidation="keyspace")
    assert built.near.tracker.mode == "keyspace"
    yield built
    built.close()


def test_keyspace_mode_serves_and_sees_other_processes_writes(keyspace: Setup) -> None:
    keyspace.warm()
    keyspace.statements.clear()
    assert keyspace.name() == "Spider"
    assert keyspace.statements == []
    assert keyspace.counts()["l1_hits"] == 1
    tag_key = f"{keyspace.prefix}:{{hero}}:rt"
    for round_ in range(10):
        keyspace.warm()
        keyspace.write_behind_the_cache(f"Spider {round_}")
        # Unlike a tracking push, a notification can reach this socket some microseconds
        # after the writer's reply (Redis writes the writer's socket first): wait for it.
        wait_for(lambda: tag_key not in keyspace.near._data)
        assert keyspace.name() == f"Spider {round_}"


def test_keyspace_mode_own_commit_and_flush(keyspace: Setup) -> None:
    keyspace.warm()
    keyspace.near.tracker._drain = lambda: None  # type: ignore[method-assign]
    keyspace.rename("Spider-Man")
    assert keyspace.name() == "Spider-Man"
    del keyspace.near.tracker._drain  # back to the class's method
    keyspace.warm()
    keyspace.client.flushdb()  # no notification says so: the marker check does
    wait_for(lambda: keyspace.near.size() == (0, 0))
    assert keyspace.client.exists(f"{keyspace.prefix}:near-cache-marker")  # set again
    assert keyspace.name() == "Spider-Man"


def test_keyspace_mode_lost_subscriber_flushes_and_recovers(keyspace: Setup) -> None:
    keyspace.warm()
    keyspace.kill_clients("P")  # pattern subscribers
    keyspace.write_behind_the_cache("Venom")
    assert keyspace.name() == "Venom"
    wait_for(lambda: keyspace.near.tracker.live)
    before = keyspace.counts().get("l1_hits", 0)

    def served_again() -> bool:
        assert keyspace.name() == "Venom"
        return keyspace.counts().get("l1_hits", 0) > before

    wait_for(served_again)


def test_a_server_refusing_tracking_gets_no_near_cache_unless_keyspace_is_asked_for(
    tmp_path: Path,
    redis_server: servers.RedisServer,
    notifying: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = f"near{os.urandom(4).hex()}"
    notifying.acl_setuser(
        user, enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all", "-client"],
    )  # fmt: skip
    url = redis_server.url.replace("redis://", f"redis://{user}:secret@")
    try:
        engine = hero_database(tmp_path / "acl.db")
        SQLModelCache.configure(
            RedisSyncTransport.from_url(url),
            key_prefix=f"a{os.urandom(6).hex()}",
            near_cache=NearCache(heartbeat=0.05),
        )
        wait_for(lambda: 'invalidation="keyspace"' in caplog.text)  # the hint
        for _ in range(3):
            with Session(engine) as session:
                assert session.get(Hero, 1) is not None
        assert "l1_hits" not in SQLModelCache.stats()["Hero"]  # never silently weaker
        SQLModelCache.reset()
        engine.dispose()

        setup = Setup(tmp_path, url, heartbeat=0.1, invalidation="keyspace")
        try:
            setup.warm()
            assert setup.name() == "Spider"
            assert setup.counts()["l1_hits"] == 1
        finally:
            setup.close()
    finally:
        notifying.acl_deluser(user)


def test_keyspace_mode_stops_when_notifications_are_turned_off(
    keyspace: Setup, notifying: redis.Redis
) -> None:
    keyspace.warm()
    notifying.config_set("notify-keyspace-events", "")
    wait_for(lambda: not keyspace.near.tracker.live)  # noticed at the next heartbeat
    assert keyspace.near.size() == (0, 0)
    notifying.config_set("notify-keyspace-events", "KA")
    wait_for(lambda: keyspace.near.tracker.live)


def test_keyspace_mode_needs_the_server_to_notify(
    tmp_path: Path, redis_server: servers.RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    engine = hero_database(tmp_path / "k.db")
    SQLModelCache.configure(
        RedisSyncTransport.from_url(redis_server.url),
        key_prefix=f"k{os.urandom(6).hex()}",
        near_cache=NearCache(heartbeat=0.05, invalidation="keyspace"),
    )
    wait_for(lambda: "notify-keyspace-events KA" in caplog.text)
    for _ in range(3):
        with Session(engine) as session:
            hero = session.get(Hero, 1)
            assert hero is not None
            assert hero.name == "Spider"
    assert "l1_hits" not in SQLModelCache.stats()["Hero"]
    engine.dispose()
