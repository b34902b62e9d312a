"""The atomic transport contract, run against every built-in transport on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from sqlmodel_cache import CacheSettings, ConfigurationError
from sqlmodel_cache.transport import (
    AsyncCacheTransport,
    AtomicCacheTransport,
    CacheTransport,
    MemoryTransport,
    RedisAsyncTransport,
    RedisSyncTransport,
)
from sqlmodel_cache.transport._protocols import Fetched
from sqlmodel_cache.transport._redis import transport as redis_transport
from tests import servers

SCHEMA = b"1" + b"a" * 15
TAG_A = b"0" * 16
TAG_B = b"1" * 16


class SyncView:
    """Calls a transport's methods synchronously, whether it is sync or async."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.transport = transport
        self.loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.transport, name)
        if self.loop is None:
            return method  # type: ignore[no-any-return]
        loop = self.loop
        return lambda *args: loop.run_until_complete(method(*args))


@pytest.fixture(
    params=["memory", "redis-sync", "redis-async", "redis-sync-large", "redis-async-large"]
)
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncView]:
    """Each built-in transport, driven synchronously. The ``-large`` ones take every entry
    for a large one, and key ``k`` for one seen large already: each of their fetches of
    ``k`` checks the entry in the script and reads it with a GET after it."""
    if request.param == "memory":
        yield SyncView(MemoryTransport(), None)
        return
    server: servers.RedisServer = request.getfixturevalue("redis_server")
    redis.Redis.from_url(server.url).flushdb()
    large = request.param.endswith("-large")
    if large:
        monkeypatch.setattr(redis_transport, "LARGE_ENTRY", 1)
    with redis_store(server.url, request.param.removesuffix("-large")) as store:
        if large:
            store.transport._operations.large.learn("k", Fetched(b"x", False, ()))
        yield store


@contextlib.contextmanager
def redis_store(url: str, kind: str, cluster: bool = False) -> Iterator[SyncView]:
    """A Redis transport of ``kind`` (``redis-sync`` or ``redis-async``) on a client of
    ``url`` (a cluster client with ``cluster``), driven synchronously; the client is
    closed after."""
    loop = None if kind == "redis-sync" else asyncio.new_event_loop()
    if cluster:
        client_class: Any = redis.RedisCluster if loop is None else redis.asyncio.RedisCluster
    else:
        client_class = redis.Redis if loop is None else redis.asyncio.Redis
    client: Any = client_class.from_url(url)
    transport = (RedisSyncTransport if loop is None else RedisAsyncTransport)(client)
    try:
        yield SyncView(transport, loop)
    finally:
        if loop is not None:
            loop.run_until_complete(client.aclose())
            loop.close()
        else:
            client.close()


def _fetch(store: SyncView, lease: bytes = b"Lmine", tag: bytes = TAG_A) -> Any:
    return store.fetch("k", ["tag"], SCHEMA, tag, lease, 5000)


def test_basic_get_set_delete(store: SyncView) -> None:
    """get/set/delete behave as the 0.1.1 protocol says, with TTLs."""
    assert store.get("x") is None
    store.set("x", b"value", 60)
    assert store.get("x") == b"value"
    store.delete("x", "missing")
    assert store.get("x") is None


def test_fetch_on_empty_key_creates_tags_and_grants_the_lease(store: SyncView) -> None:
    """An empty key is leased to the first reader; a missing tag is created."""
    fetched = _fetch(store)
    assert fetched.entry is None
    assert fetched.leased
    assert fetched.tags == (TAG_A,)
    assert store.get("tag") == TAG_A
    assert store.get("k") == b"Lmine"


def test_second_reader_does_not_get_the_lease(store: SyncView) -> None:
    """While a lease is held, other readers miss without a lease (one filler per key)."""
    _fetch(store, b"Lfirst")
    fetched = _fetch(store, b"Lsecond")
    assert fetched.entry is None
    assert not fetched.leased
    assert not store.fill("k", TAG_A + SCHEMA + b"[1]", 60, b"Lsecond")


def test_fill_with_the_lease_then_hit(store: SyncView) -> None:
    """The lease holder's fill is stored; the next fetch returns it."""
    fetched = _fetch(store)
    entry = b"".join(fetched.tags) + SCHEMA + b"[1]"
    assert store.fill("k", entry, 60, b"Lmine")
    hit = _fetch(store, b"Lother")
    assert hit[:3] == (entry, False, ())
    assert hit.expires_in_ms is not None
    assert 59_000 < hit.expires_in_ms <= 60_000


def test_invalidation_between_fetch_and_fill_drops_the_fill(store: SyncView) -> None:
    """The classic race: a value read before a commit's invalidation is never stored."""
    fetched = _fetch(store)
    store.invalidate(["k"], [], TAG_B)
    assert not store.fill("k", b"".join(fetched.tags) + SCHEMA + b"[old]", 60, b"Lmine")
    assert store.get("k") is None


def test_tag_change_makes_entries_stale_and_reclaimable(store: SyncView) -> None:
    """After a tag moves, an entry under the old tag is a miss and its key is re-leased."""
    fetched = _fetch(store)
    store.fill("k", b"".join(fetched.tags) + SCHEMA + b"[1]", 60, b"Lmine")
    store.invalidate([], ["tag"], TAG_B)
    refetched = _fetch(store, b"Lnext")
    assert refetched.entry is None
    assert refetched.leased
    assert refetched.tags == (TAG_B,)


def test_other_schema_is_a_miss(store: SyncView) -> None:
    """An entry written by another app version (other schema id) is never returned."""
    fetched = _fetch(store)
    store.fill("k", b"".join(fetched.tags) + b"1" + b"b" * 15 + b"[1]", 60, b"Lmine")
    assert _fetch(store, b"Lnext").entry is None


def test_fill_sets_the_ttl(store: SyncView) -> None:
    """A filled entry expires after its TTL."""
    _fetch(store)
    store.fill("k", TAG_A + SCHEMA + b"[1]", 1, b"Lmine")
    time.sleep(1.2)
    assert store.get("k") is None


def test_expired_lease_lets_the_next_reader_lease(store: SyncView) -> None:
    """A lease is short-lived: a reader that died does not block fills for long."""
    store.fetch("k", ["tag"], SCHEMA, TAG_A, b"Ldead", 50)
    time.sleep(0.2)
    assert _fetch(store).leased


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis-sync", "redis-async"])
@pytest.mark.parametrize("large", [False, True])
def test_scripts_are_reloaded_after_script_flush(
    redis_server: servers.RedisServer, kind: str, large: bool
) -> None:
    """A server that lost the scripts (restart, SCRIPT FLUSH) gets them again on first use,
    also when a large entry's check and GET meet a server without the script."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushdb()
    body = b"[" + b"7" * redis_transport.LARGE_ENTRY * large + b"]"
    with redis_store(redis_server.url, kind) as store:
        for _ in range(2):
            admin.script_flush()
            fetched = _fetch(store, lease=b"Lmine")
            assert fetched.leased
            admin.script_flush()
            entry = b"".join(fetched.tags) + SCHEMA + body
            assert store.fill("k", entry, 60, b"Lmine")
            for _ in range(2):  # the second read of a large entry checks it, then GETs it
                admin.script_flush()
                assert _fetch(store, lease=b"Lother").entry == entry
            assert ("k" in store.transport._operations.large) is large
            admin.script_flush()
            store.invalidate(["k"], ["tag"], TAG_B)
            assert admin.get("k") is None
            assert admin.get("tag") == TAG_B
    admin.close()


def test_builtin_transports_satisfy_the_protocols() -> None:
    """The built-in classes are structural implementations of the public protocols."""
    assert isinstance(MemoryTransport(), AtomicCacheTransport)
    assert isinstance(MemoryTransport(), CacheTransport)
    assert issubclass(RedisAsyncTransport, AsyncCacheTransport)


def test_memory_transport_is_bounded() -> None:
    """Past max_entries the least recently used key is evicted."""
    transport = MemoryTransport(max_entries=2)
    transport.set("a", b"1", 60)
    transport.set("b", b"2", 60)
    transport.get("a")
    transport.set("c", b"3", 60)
    assert transport.keys() == ["a", "c"]
    assert len(transport) == 2
    transport.clear()
    assert transport.keys() == []


def test_memory_transport_rejects_bad_sizes() -> None:
    """A non-positive bound is a configuration error."""
    with pytest.raises(ConfigurationError):
        MemoryTransport(max_entries=0)


def test_redis_transport_refuses_decode_responses(redis_server: servers.RedisServer) -> None:
    """decode_responses=True would corrupt bytes entries: refused with the fix in the message."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisSyncTransport(client)
    async_client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisAsyncTransport(async_client)
    client.close()


def test_redis_transport_refuses_non_clients() -> None:
    """Passing something that is not a redis-py client fails at construction."""
    with pytest.raises(ConfigurationError, match="redis-py client"):
        RedisSyncTransport(object())


def test_settings_refuse_non_transports() -> None:
    """An object without get/set/delete is not a transport."""
    with pytest.raises(ConfigurationError, match="lacks get, set, delete"):
        CacheSettings(transport=object())


def test_from_url_bounds_timeouts(redis_server: servers.RedisServer) -> None:
    """from_url() clients have bounded socket and connect timeouts by default."""
    transport = RedisSyncTransport.from_url(redis_server.url)
    kwargs = transport.client.get_connection_kwargs()
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.25)
    transport.set("k", b"v", 10)
    assert transport.get("k") == b"v"
    transport.client.close()
    async_transport = RedisAsyncTransport.from_url(redis_server.url, timeout=0.5)
    assert async_transport.client.get_connection_kwargs()["socket_timeout"] == 0.5


def test_a_client_without_timeouts_is_accepted_with_a_warning(
    redis_server: servers.RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No socket_timeout: accepted, but the log says what it risks and how to fix it."""
    import logging

    client = redis.Redis.from_url(redis_server.url)
    with caplog.at_level(logging.WARNING, logger="sqlmodel_cache"):
        RedisSyncTransport(client)
    assert any("no socket_timeout" in record.message for record in caplog.records)
    client.close()


def test_a_black_holed_server_costs_at_most_the_timeout() -> None:
    """A server that accepts connections and never answers: a from_url() transport gives up
    after its timeout instead of hanging."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    transport = RedisSyncTransport.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        transport.get("k")
    assert time.monotonic() - started < 2.0
    listener.close()


def _getrange_calls(admin: redis.Redis) -> int:
    stats = admin.info("commandstats").get("cmdstat_getrange", {})
    return int(stats.get("calls", 0))


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis-sync", "redis-async"])
def test_a_key_seen_large_is_checked_in_the_script_and_read_by_a_get(
    redis_server: servers.RedisServer, kind: str
) -> None:
    """From the second read of a large entry on, the script only checks its header (a
    GETRANGE, counted by the server) and a GET after it returns the entry; once the entry
    is small again, the key is read whole by the script again."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushdb()
    large = TAG_A + SCHEMA + b"[" + b"7" * redis_transport.LARGE_ENTRY + b"]"
    small = TAG_A + SCHEMA + b"[1]"
    with redis_store(redis_server.url, kind) as store:
        assert _fetch(store).leased
        assert store.fill("k", large, 60, b"Lmine")
        admin.config_resetstat()
        served = []
        for expected_checks in (0, 1, 1):
            hit = _fetch(store, b"Lother")
            served.append(hit[:3] == (large, False, ()) and 59_000 < hit.expires_in_ms <= 60_000)
            assert _getrange_calls(admin) == expected_checks
            admin.config_resetstat()
        assert served == [True, True, True]
        admin.set("k", small)  # as if refilled with a small entry
        assert _fetch(store, b"Lother").entry == small
        assert _getrange_calls(admin) == 1  # checked, and now known to be small
        admin.config_resetstat()
        assert _fetch(store, b"Lother").entry == small
        assert _getrange_calls(admin) == 0
    admin.close()


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis-sync", "redis-async"])
def test_a_large_entry_replaced_between_its_check_and_its_get_is_fetched_again(
    redis_server: servers.RedisServer, kind: str
) -> None:
    """Fault injection: another client's write lands between the script and the GET. A
    value that does not start with the header the script checked is not returned; the
    transport fetches again with the whole script."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushdb()
    large = TAG_A + SCHEMA + b"[" + b"7" * redis_transport.LARGE_ENTRY + b"]"

    class WriteInBetween:
        """The fetch script, with another value than the checked one under the key by
        the time the GET runs."""

        def __init__(self, script: Any) -> None:
            self.script = script

        def __getattr__(self, name: str) -> Any:
            return getattr(self.script, name)

        def run_with_get(self, keys: Any, args: Any) -> Any:
            reply, _ = yield from self.script.run_with_get(keys, args)
            return [reply, TAG_B + SCHEMA + b"[written in between]"]

    with redis_store(redis_server.url, kind) as store:
        _fetch(store)
        store.fill("k", large, 60, b"Lmine")
        _fetch(store, b"Lother")  # seen large
        operations = store.transport._operations
        operations.fetch_script = WriteInBetween(operations.fetch_script)
        admin.config_resetstat()
        hit = _fetch(store, b"Lother")
    scripts = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
    admin.close()
    assert hit.entry == large
    assert scripts == 2  # the check, then the whole script


def test_the_keys_of_large_entries_are_remembered_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past its bound the memory of large keys starts over; a key whose entry came back
    small, or that had no entry, is not remembered."""
    monkeypatch.setattr(redis_transport, "LARGE_KEYS", 3)
    large = redis_transport._LargeEntries()
    big = Fetched(b"x" * redis_transport.LARGE_ENTRY, False, ())
    for key in "abc":
        large.learn(key, big)
    assert [key in large for key in "abc"] == [True, True, True]
    large.learn("d", big)
    assert [key in large for key in "abcd"] == [False, False, False, True]
    large.learn("d", Fetched(b"x", False, ()))
    large.learn("e", Fetched(None, True, ()))
    assert [key in large for key in "de"] == [False, False]


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["redis-sync", "redis-async"])
def test_the_acl_the_docs_give_is_enough(redis_server: servers.RedisServer, kind: str) -> None:
    """The ACL line of docs/transports.md, run as written, lets a user do every cache step:
    load the scripts, read (a small entry whole, a large one checked then read with a GET),
    fill and invalidate."""
    text = (Path(__file__).parent.parent / "docs" / "transports.md").read_text("utf-8")
    [line] = [line for line in text.splitlines() if line.startswith("ACL SETUSER cache-user")]
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushdb()
    admin.script_flush()
    admin.execute_command(*line.split())
    url = redis_server.url.replace("redis://", "redis://cache-user:s3cret@")
    with redis_store(url, kind) as store:
        for body in (b"[1]", b"[" + b"7" * redis_transport.LARGE_ENTRY + b"]"):
            fetched = store.fetch("myapp:k", ["myapp:tag"], SCHEMA, TAG_A, b"Lmine", 5000)
            assert fetched.leased
            entry = b"".join(fetched.tags) + SCHEMA + body
            assert store.fill("myapp:k", entry, 60, b"Lmine")
            for _ in range(2):
                hit = store.fetch("myapp:k", ["myapp:tag"], SCHEMA, TAG_A, b"Lother", 5000)
                assert hit.entry == entry
            store.invalidate(["myapp:k"], ["myapp:tag"], TAG_B)
            assert admin.get("myapp:k") is None
    admin.acl_deluser("cache-user")
    admin.close()


def _public_methods(cls: type) -> dict[str, Any]:
    return {name: member for name, member in inspect.getmembers(cls) if not name.startswith("_")}


def _signature(method: Any, cls: type) -> str:
    """The method's signature, with its own class's name (``from_url`` returns one) made
    neutral."""
    return str(inspect.signature(method)).replace(cls.__name__, "Self")


def test_the_sync_and_async_redis_transports_have_the_same_methods() -> None:
    """RedisAsyncTransport has exactly RedisSyncTransport's public methods, with the same
    signatures: each a coroutine function where the sync one is a plain function, and
    ``from_url`` a plain class method in both."""
    sync_methods = _public_methods(RedisSyncTransport)
    async_methods = _public_methods(RedisAsyncTransport)
    assert sync_methods.keys() == async_methods.keys()
    assert {"from_url", "fetch"} <= sync_methods.keys()  # the derivation found them
    for name, method in sync_methods.items():
        twin = async_methods[name]
        assert _signature(twin, RedisAsyncTransport) == _signature(method, RedisSyncTransport)
        assert not inspect.iscoroutinefunction(method), name
        if inspect.ismethod(method):  # bound to the class: a class method
            assert inspect.ismethod(twin), name
            assert not inspect.iscoroutinefunction(twin), name
        else:
            assert inspect.isfunction(method), name
            assert inspect.iscoroutinefunction(twin), name


@pytest.mark.redis
def test_the_sync_and_async_redis_transports_have_the_same_attributes(
    redis_server: servers.RedisServer,
) -> None:
    """An instance of each, made by ``from_url``, has the same public attributes."""
    sync_transport = RedisSyncTransport.from_url(redis_server.url)
    async_transport = RedisAsyncTransport.from_url(redis_server.url)
    public = [
        {name for name in vars(transport) if not name.startswith("_")}
        for transport in (sync_transport, async_transport)
    ]
    assert public[0] == public[1] == {"client"}
    assert isinstance(sync_transport.client, redis.Redis)
    assert isinstance(async_transport.client, redis.asyncio.Redis)
    sync_transport.client.close()


def _parity_steps(store: SyncView, prefix: str, flush_scripts: Callable[[], None]) -> list[Any]:
    """One sequence of every kind of operation, on keys under ``prefix`` laid out as the
    cache lays them out (a table's keys share its ``{table}`` slot); what each returned.
    Remaining lifetimes are counted in whole seconds, to compare across runs."""
    row, team_row = f"{prefix}:{{hero}}:r:1", f"{prefix}:{{team}}:r:1"
    hero_tag, team_tag = f"{prefix}:{{hero}}:t", f"{prefix}:{{team}}:t"
    query, big = f"{prefix}:{{hero}}:q:1", f"{prefix}:{{hero}}:q:2"
    both = [hero_tag, team_tag]
    large_body = b"[" + b"7" * redis_transport.LARGE_ENTRY + b"]"
    tag_c = b"2" * 16
    seen: list[Any] = []

    def note(value: Any) -> Any:
        if isinstance(value, Fetched) and value.expires_in_ms is not None:
            value = value._replace(expires_in_ms=math.ceil(value.expires_in_ms / 1000))
        seen.append(value)
        return value

    def fetch(key: str, tags: list[str], lease: bytes, new_tag: bytes = TAG_A) -> Any:
        return note(store.fetch(key, tags, SCHEMA, new_tag, lease, 5000))

    plain = [f"{prefix}:plain:{n}" for n in range(3)]
    for n, key in enumerate(plain):
        note(store.set(key, b"value %d" % n, 60 * n + 1))
    note([store.get(key) for key in plain])
    note(store.delete(plain[1], plain[2], f"{prefix}:missing"))
    note(store.delete())
    note([store.get(key) for key in plain])
    fetched = fetch(row, [hero_tag], b"Lfirst")  # a miss: the lease
    fetch(row, [hero_tag], b"Lsecond")  # another reader's lease: no lease
    note(store.fill(row, b"".join(fetched.tags) + SCHEMA + b"[1]", 60, b"Lsecond"))
    note(store.fill(row, b"".join(fetched.tags) + SCHEMA + b"[1]", 60, b"Lfirst"))
    fetch(row, [hero_tag], b"Lthird")  # a hit
    fetched = fetch(query, both, b"Lquery", TAG_B)  # tags of two tables, one created
    note(store.fill(query, b"".join(fetched.tags) + SCHEMA + b"[2]", 60, b"Lquery"))
    fetch(query, both, b"Lother")
    fetched = fetch(big, [hero_tag], b"Lbig")
    note(store.fill(big, b"".join(fetched.tags) + SCHEMA + large_body, 60, b"Lbig"))
    fetch(big, [hero_tag], b"Lother")  # read whole, then known to be large
    fetch(big, [hero_tag], b"Lother")  # checked by the script, read by a GET
    flush_scripts()
    fetch(big, [hero_tag], b"Lother")  # neither the check nor the whole script is there
    fetch(row, [hero_tag], b"Lother")
    note(store.invalidate([row], [], tag_c))
    fetch(row, [hero_tag], b"Lrow")  # a miss again
    note(store.invalidate([], [team_tag], tag_c))
    fetched = fetch(query, both, b"Lquery2")  # one of its tables moved: a miss
    note(store.invalidate([row, team_row, query], both, tag_c))  # rows and tags, two slots
    note(store.fill(query, b"".join(fetched.tags) + SCHEMA + b"[3]", 60, b"Lquery2"))
    fetch(big, [hero_tag], b"Lbig2")
    fetch(query, both, b"Lquery3")
    note(store.invalidate([], [], tag_c))
    note(store.get(hero_tag))
    note(store.get(team_tag))
    return seen


def _contents(nodes: list[servers.RedisServer], prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` on the servers, without the prefix: its value and the
    whole seconds it has left (-1: none)."""
    found: dict[str, Any] = {}
    for node in nodes:
        client = redis.Redis.from_url(node.url)
        for key in client.scan_iter(match=f"{prefix}:*"):
            left = client.pttl(key)
            lifetime = left if left < 0 else math.ceil(left / 1000)
            found[key.decode().removeprefix(prefix)] = (client.get(key), lifetime)
        client.close()
    return found


@pytest.mark.redis
@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_the_sync_and_async_redis_transports_behave_alike(
    request: pytest.FixtureRequest, where: str
) -> None:
    """The same sequence of operations (misses and leases, another reader's lease, fills,
    hits, large entries, tags of several tables, scripts lost by the server, invalidations
    of rows and of tags) through each transport returns the same results and leaves the
    same keys and values, on a single server and on a cluster (where several tables' tags
    live in several slots)."""
    if where == "redis":
        server: servers.RedisServer = request.getfixturevalue("redis_server")
        nodes, url, cluster = [server], server.url, False
    else:
        redis_cluster: servers.RedisCluster = request.getfixturevalue("redis_cluster")
        nodes, url, cluster = redis_cluster.nodes, redis_cluster.url, True

    def flush_scripts() -> None:
        for node in nodes:
            client = redis.Redis.from_url(node.url)
            client.script_flush()
            client.close()

    run = uuid.uuid4().hex[:8]
    results, contents = {}, {}
    for kind in ("redis-sync", "redis-async"):
        prefix = f"parity{run}{kind}"
        with redis_store(url, kind, cluster) as store:
            results[kind] = _parity_steps(store, prefix, flush_scripts)
            assert f"{prefix}:{{hero}}:q:2" in store.transport._operations.large
        contents[kind] = _contents(nodes, prefix)
    assert results["redis-async"] == results["redis-sync"]
    assert contents["redis-async"] == contents["redis-sync"]
    fetches = [value for value in results["redis-sync"] if isinstance(value, Fetched)]
    assert [bool(fetched.entry) for fetched in fetches].count(True) == 6
    assert [fetched.leased for fetched in fetches].count(True) == 7
    assert sorted(contents["redis-sync"]) == [
        ":plain:0",
        ":{hero}:q:1",
        ":{hero}:q:2",
        ":{hero}:t",
        ":{team}:t",
    ]
