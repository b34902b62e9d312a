"""The transports' own connections (``transport/_redis/connections.py``), against a real Redis.

A hit sends its script on a lane, not through the client; these tests pin that down and
check what the client would otherwise have given: reconnecting, timeouts, forks, scripts
the server lost, pool limits, and clients that must keep going through redis-py."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.sentinel
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.transport import RedisAsyncTransport, RedisSyncTransport
from sqlmodel_cache.transport._redis.connections import AsyncLane, ClusterLanes, SyncLane, lane_for
from tests import servers
from tests.helpers import NoClientCalls, hero_database
from tests.models import Hero

pytestmark = pytest.mark.redis


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    built = hero_database(tmp_path / "lanes.db")
    yield built
    built.dispose()


@pytest.fixture
def sync_cache(redis_server: servers.RedisServer, engine: Engine) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.25)
    SQLModelCache.configure(RedisSyncTransport(client), key_prefix=f"l{os.urandom(4).hex()}")
    yield client
    SQLModelCache.reset()
    client.close()


def _name(engine: Engine) -> str | None:
    with Session(engine) as session:
        hero = session.get(Hero, 1)
        return None if hero is None else hero.name


def _counts() -> tuple[int, int, int]:
    stats = SQLModelCache.stats()["Hero"]
    return stats.get("hits", 0), stats.get("misses", 0), stats.get("errors", 0)


def _lane_connections(client: redis.Redis) -> list[dict[str, Any]]:
    """Connections of the lanes: every client connection but the inspecting one."""
    me = client.client_id()
    return [c for c in client.client_list() if int(c["id"]) != me]


def _kill_lane_connections(url: str) -> None:
    inspector = redis.Redis.from_url(url)
    for connection in _lane_connections(inspector):
        inspector.client_kill_filter(_id=connection["id"])
    inspector.close()


def test_hits_misses_and_fills_go_through_the_lane(sync_cache: redis.Redis, engine: Engine) -> None:
    # The server may not have the scripts yet: loading them uses the client.
    _name(engine)
    SQLModelCache.invalidate(Hero, 1)
    with NoClientCalls(sync_cache):
        SQLModelCache.invalidate(Hero, 1)
        assert _name(engine) == "Spider"  # miss: fetch, then fill
        assert _name(engine) == "Spider"  # hit
    assert _counts() == (1, 2, 0)
    assert sync_cache.info("commandstats")["cmdstat_evalsha"]["calls"] >= 5


def test_a_killed_lane_connection_costs_one_miss_then_reconnects(
    sync_cache: redis.Redis, engine: Engine, redis_server: servers.RedisServer
) -> None:
    _name(engine)
    assert _name(engine) == "Spider"
    _kill_lane_connections(redis_server.url)
    assert _name(engine) == "Spider"  # the read failed open to the database
    assert _name(engine) == "Spider"  # and the lane reconnected
    assert _counts() == (2, 1, 1)


def test_a_flushed_script_is_loaded_again(sync_cache: redis.Redis, engine: Engine) -> None:
    _name(engine)
    sync_cache.script_flush()
    assert _name(engine) == "Spider"
    assert _counts() == (1, 1, 0)  # NOSCRIPT is no error: the script is loaded and run


def test_threads_take_turns_on_the_lane_connections(
    sync_cache: redis.Redis, engine: Engine, redis_server: servers.RedisServer
) -> None:
    """A thread per request must not mean a connection per request; threads reading at
    the same time each get a connection of their own (no reply goes to the wrong one)."""
    import threading

    _name(engine)
    inspector = redis.Redis.from_url(redis_server.url)
    before = len(_lane_connections(inspector))
    for _ in range(5):
        thread = threading.Thread(target=_name, args=(engine,))
        thread.start()
        thread.join()
    assert len(_lane_connections(inspector)) == before  # reused, none opened

    names: list[str | None] = []

    def read_many() -> None:
        names.extend(_name(engine) for _ in range(200))

    threads = [threading.Thread(target=read_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert names == ["Spider"] * 1200
    assert _counts() == (1205, 1, 0)
    assert len(_lane_connections(inspector)) <= before + 5  # at most one per reader
    inspector.close()


def _child_reads(engine_url: str, redis_url: str, results: Any) -> None:
    from sqlmodel import create_engine

    engine = create_engine(engine_url)
    names = [_name(engine), _name(engine)]
    inspector = redis.Redis.from_url(redis_url)
    results.put([*names, _counts(), len(_lane_connections(inspector))])
    inspector.close()


def test_a_forked_child_opens_its_own_connection(
    sync_cache: redis.Redis, engine: Engine, redis_server: servers.RedisServer
) -> None:
    _name(engine)
    assert _name(engine) == "Spider"
    inspector = redis.Redis.from_url(redis_server.url)
    parents = len(_lane_connections(inspector))
    inspector.close()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_reads, args=(str(engine.url), redis_server.url, results))
    child.start()
    got = results.get(timeout=10)
    child.join(10)
    assert got[:2] == ["Spider", "Spider"]
    assert got[2][2] == 0  # no errors
    assert got[3] == parents + 1  # the child's own lane connection, next to the parent's
    assert _name(engine) == "Spider"  # and the parent's still works
    assert _counts() == (2, 1, 0)


def test_which_clients_get_which_lane(redis_cluster: servers.RedisCluster) -> None:
    """A Sentinel client's pool picks its server per connection: no lane. A cluster client
    gets a lane per primary (tests/test_cluster.py)."""
    cluster = redis.RedisCluster.from_url(redis_cluster.url)
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", 1)]).master_for("nowhere")
    assert isinstance(lane_for(cluster), ClusterLanes)
    assert isinstance(
        lane_for(redis.asyncio.RedisCluster.from_url(redis_cluster.url)), ClusterLanes
    )
    assert lane_for(sentinel) is None
    assert isinstance(lane_for(redis.Redis()), SyncLane)
    assert isinstance(lane_for(redis.asyncio.Redis()), AsyncLane)
    cluster.close()


# -- asyncio -------------------------------------------------------------------------------


@pytest.fixture
def async_setup(
    redis_server: servers.RedisServer, engine: Engine
) -> Iterator[tuple[asyncio.AbstractEventLoop, Any, Any]]:
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=0.25)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{engine.url.database}")
    SQLModelCache.configure(RedisAsyncTransport(client), key_prefix=f"l{os.urandom(4).hex()}")
    yield loop, client, async_engine
    SQLModelCache.reset()
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(async_engine.dispose())
    loop.close()


async def _aname(async_engine: Any) -> str | None:
    async with AsyncSession(async_engine) as session:
        hero = await session.get(Hero, 1)
        return None if hero is None else hero.name


def test_async_hits_go_through_the_lane(async_setup: Any) -> None:
    loop, client, async_engine = async_setup
    with NoClientCalls(client):
        assert loop.run_until_complete(_aname(async_engine)) == "Spider"
        assert loop.run_until_complete(_aname(async_engine)) == "Spider"
    assert _counts() == (1, 1, 0)


def test_async_lane_times_out_then_reconnects(
    async_setup: Any, redis_server: servers.RedisServer
) -> None:
    loop, _, async_engine = async_setup
    loop.run_until_complete(_aname(async_engine))
    inspector = redis.Redis.from_url(redis_server.url)
    inspector.execute_command("CLIENT", "PAUSE", "600", "ALL")
    assert loop.run_until_complete(_aname(async_engine)) == "Spider"  # failed open
    assert _counts()[2] == 1
    inspector.execute_command("CLIENT", "UNPAUSE")
    assert loop.run_until_complete(_aname(async_engine)) == "Spider"
    assert _counts() == (1, 1, 1)  # the late reply was not taken for the next one's
    assert loop.run_until_complete(_aname(async_engine)) == "Spider"
    assert _counts() == (2, 1, 1)
    inspector.close()


def test_async_lane_keeps_a_few_connections_and_gives_the_rest_back(async_setup: Any) -> None:
    loop, client, async_engine = async_setup
    loop.run_until_complete(_aname(async_engine))

    async def burst() -> list[str | None]:
        return list(await asyncio.gather(*(_aname(async_engine) for _ in range(30))))

    assert loop.run_until_complete(burst()) == ["Spider"] * 30
    pool = client.connection_pool
    assert len(pool._in_use_connections) <= 8  # kept by the lane, idle
    assert len(pool._available_connections) >= 1  # the surplus went back


def test_async_lane_of_a_small_pool_keeps_nothing(
    redis_server: servers.RedisServer, engine: Engine
) -> None:
    """A pool of 2 is the user's: the lane borrows and always gives back."""
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(redis_server.url, max_connections=2)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{engine.url.database}")
    SQLModelCache.configure(RedisAsyncTransport(client), key_prefix=f"l{os.urandom(4).hex()}")
    try:
        assert loop.run_until_complete(_aname(async_engine)) == "Spider"
        assert loop.run_until_complete(_aname(async_engine)) == "Spider"
        assert len(client.connection_pool._in_use_connections) == 0
        assert loop.run_until_complete(client.ping())
    finally:
        SQLModelCache.reset()
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(async_engine.dispose())
        loop.close()


def test_a_custom_connection_class_is_used_with_its_overrides(
    redis_server: servers.RedisServer, engine: Engine
) -> None:
    """A client built with its own connection class (instrumentation, say) gets lane
    connections of that class, sync and asyncio, and sees every command they send."""
    sent: list[str] = []

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append("sync")
            super().send_packed_command(command, check_health)

    class AsyncCounting(redis.asyncio.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append("async")
            await super().send_packed_command(command, check_health)

    client = redis.Redis.from_url(redis_server.url, connection_class=Counting)
    SQLModelCache.configure(RedisSyncTransport(client), key_prefix=f"l{os.urandom(4).hex()}")
    _name(engine)
    sent.clear()
    assert _name(engine) == "Spider"
    assert sent == ["sync"]
    SQLModelCache.reset()
    client.close()

    loop = asyncio.new_event_loop()
    async_client = redis.asyncio.Redis.from_url(redis_server.url, connection_class=AsyncCounting)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{engine.url.database}")
    SQLModelCache.configure(RedisAsyncTransport(async_client), key_prefix="l-custom")
    try:
        loop.run_until_complete(_aname(async_engine))
        sent.clear()
        assert loop.run_until_complete(_aname(async_engine)) == "Spider"
        assert sent == ["async"]
    finally:
        SQLModelCache.reset()
        loop.run_until_complete(async_client.aclose())
        loop.run_until_complete(async_engine.dispose())
        loop.close()


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server reachable only over a unix socket with a password: (socket path, password)."""
    path = str(tmp_path_factory.mktemp("sock") / "redis.sock")
    server = servers.start_redis(extra_args=("--unixsocket", path, "--databases", "4"))
    redis.Redis(unix_socket_path=path).config_set("requirepass", "s3cret")
    yield path, "s3cret"
    server.stop()


def test_lanes_connect_as_the_client_does(private_server: tuple[str, str], engine: Engine) -> None:
    """Unix socket, password and database number all come from the client's own options,
    sync and asyncio: the entries land in database 3, read through the lanes."""
    path, password = private_server
    inspector = redis.Redis(unix_socket_path=path, password=password, db=3)
    client = redis.Redis(unix_socket_path=path, password=password, db=3)
    SQLModelCache.configure(RedisSyncTransport(client), key_prefix="sync")
    _name(engine)
    SQLModelCache.invalidate(Hero, 1)
    with NoClientCalls(client):
        _name(engine)
        assert _name(engine) == "Spider"
    assert _counts() == (1, 2, 0)
    SQLModelCache.reset()
    client.close()

    loop = asyncio.new_event_loop()
    async_client = redis.asyncio.Redis(unix_socket_path=path, password=password, db=3)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{engine.url.database}")
    SQLModelCache.configure(RedisAsyncTransport(async_client), key_prefix="async")
    try:
        loop.run_until_complete(_aname(async_engine))
        with NoClientCalls(async_client):
            assert loop.run_until_complete(_aname(async_engine)) == "Spider"
        assert _counts() == (1, 1, 0)
    finally:
        SQLModelCache.reset()
        loop.run_until_complete(async_client.aclose())
        loop.run_until_complete(async_engine.dispose())
        loop.close()
    assert {key.split(b":")[0] for key in inspector.scan_iter()} == {b"sync", b"async"}
    assert redis.Redis(unix_socket_path=path, password=password, db=0).dbsize() == 0
    inspector.close()


def test_a_cancelled_async_call_leaves_no_reply_behind(
    redis_server: servers.RedisServer,
) -> None:
    """A call cancelled while its reply is on the way must not hand that reply to the next
    call on the same connection."""
    from sqlmodel_cache.transport._redis.resp import command

    inspector = redis.Redis.from_url(redis_server.url)
    inspector.mset({"lane:a": b"first", "lane:b": b"second"})
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(redis_server.url)
    lane = lane_for(client)
    assert isinstance(lane, AsyncLane)

    async def cancelled_then_call() -> Any:
        await lane.execute(command("PING"))  # one connection, kept idle
        inspector.execute_command("CLIENT", "PAUSE", "200", "ALL")  # hold the reply
        calling = asyncio.ensure_future(lane.execute(command("GET", "lane:a")))
        await asyncio.sleep(0.05)
        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        await asyncio.sleep(0.3)  # the server has answered the cancelled call now
        return await lane.execute(command("GET", "lane:b"))

    try:
        assert loop.run_until_complete(cancelled_then_call()) == b"second"
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
        inspector.close()


def test_a_killed_async_lane_connection_costs_one_miss_then_reconnects(
    async_setup: Any, redis_server: servers.RedisServer
) -> None:
    loop, _, async_engine = async_setup
    loop.run_until_complete(_aname(async_engine))
    _kill_lane_connections(redis_server.url)
    assert loop.run_until_complete(_aname(async_engine)) == "Spider"  # failed open
    assert loop.run_until_complete(_aname(async_engine)) == "Spider"  # reconnected
    assert _counts() == (1, 1, 1)


def test_async_lanes_with_different_timeouts_each_time_out_on_time(
    redis_server: servers.RedisServer,
) -> None:
    """Two transports on one loop, waiting at once: each call times out after its own
    client's socket_timeout, and the connection works again after."""
    from sqlmodel_cache.transport._redis.resp import command

    inspector = redis.Redis.from_url(redis_server.url)
    loop = asyncio.new_event_loop()
    patient = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=0.6)
    hasty = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=0.1)
    patient_lane, hasty_lane = lane_for(patient), lane_for(hasty)
    assert isinstance(patient_lane, AsyncLane)
    assert isinstance(hasty_lane, AsyncLane)

    async def timed(lane: AsyncLane) -> float:
        started = loop.time()
        with pytest.raises(redis.exceptions.TimeoutError):
            await lane.execute(command("PING"))
        return loop.time() - started

    async def both() -> tuple[float, float]:
        await patient_lane.execute(command("PING"))  # connected before the pause
        await hasty_lane.execute(command("PING"))
        inspector.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        waits = await asyncio.gather(timed(patient_lane), timed(hasty_lane))
        return waits[0], waits[1]

    try:
        patient_wait, hasty_wait = loop.run_until_complete(both())
        assert 0.1 <= hasty_wait < 0.4
        assert 0.6 <= patient_wait < 1.2
        inspector.execute_command("CLIENT", "UNPAUSE")
        assert loop.run_until_complete(hasty_lane.execute(command("PING"))) == b"PONG"
    finally:
        inspector.execute_command("CLIENT", "UNPAUSE")
        loop.run_until_complete(patient.aclose())
        loop.run_until_complete(hasty.aclose())
        loop.close()
        inspector.close()


def test_a_reply_that_beats_its_deadline_by_a_hair_is_kept_and_its_stream_dropped() -> None:
    """The deadline passes after the reply arrived but before the call resumed: the reply
    is good; the stream, whose reads now fail, is disconnected rather than reused."""
    from sqlmodel_cache.transport._redis.connections import _Deadlines, _direct_exchange

    loop = asyncio.new_event_loop()

    class Writer:
        def write(self, data: bytes) -> None:
            loop.call_soon(reply_then_deadline)

    class Connection:  # fault injection: a redis-py connection with a timely stream
        is_connected = True
        socket_timeout = 0.0
        disconnected = False
        _writer = Writer()

        async def disconnect(self, nowait: bool = False) -> None:
            self.disconnected = True

    def reply_then_deadline() -> None:
        # In one loop iteration, while the call waits: the reply arrives (waking the
        # call), then the timer finds its deadline passed.
        reader.feed_data(b"+PONG\r\n")
        deadlines._expire()

    async def exchange() -> Any:
        return await _direct_exchange(connection, b"*1\r\n$4\r\nPING\r\n", deadlines)

    reader = asyncio.StreamReader(loop=loop)
    deadlines = _Deadlines()
    connection = Connection()
    connection._reader = reader  # type: ignore[attr-defined]
    try:
        assert loop.run_until_complete(exchange()) == b"PONG"
        assert isinstance(reader.exception(), redis.exceptions.TimeoutError)
        assert connection.disconnected
    finally:
        loop.close()


class _AsyncOverriding(redis.asyncio.Connection):
    """A connection class with its own read: the asyncio lane goes through redis-py's."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        return await super().read_response(*args, **kwargs)


@pytest.mark.parametrize("kind", ["sync", "asyncio", "asyncio-custom-class"])
def test_several_commands_in_one_call_get_every_reply_in_order(
    redis_server: servers.RedisServer, kind: str
) -> None:
    """A script and a GET sent together (how a large entry is read): both replies come
    back in order; an error reply among them is raised after every reply was read, so the
    next call on the same connection gets its own reply."""
    from sqlmodel_cache.transport._redis.resp import command

    inspector = redis.Redis.from_url(redis_server.url)
    inspector.mset({"lane:a": b"first", "lane:b": b"second"})
    pair = command("GET", "lane:a") + command("GET", "lane:b")
    failing_pair = command("EVALSHA", "0" * 40, 0) + command("GET", "lane:b")
    loop = asyncio.new_event_loop()
    if kind == "sync":
        client: Any = redis.Redis.from_url(redis_server.url)
        lane: Any = lane_for(client)

        def call(packed: bytes, replies: int = 1) -> Any:
            return lane.execute(packed, "", replies)
    else:
        options = {"connection_class": _AsyncOverriding} if kind.endswith("class") else {}
        client = redis.asyncio.Redis.from_url(redis_server.url, **options)
        lane = lane_for(client)

        def call(packed: bytes, replies: int = 1) -> Any:
            return loop.run_until_complete(lane.execute(packed, "", replies))

    try:
        if kind != "sync":  # a class with its own read is used through redis-py's calls
            assert lane._direct is (kind == "asyncio")
        assert call(pair, 2) == [b"first", b"second"]
        with pytest.raises(redis.exceptions.NoScriptError):
            call(failing_pair, 2)
        assert call(command("GET", "lane:a")) == b"first"
    finally:
        if kind == "sync":
            client.close()
        else:
            loop.run_until_complete(client.aclose())
        loop.close()
        inspector.close()
