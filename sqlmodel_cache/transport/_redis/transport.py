"""Redis / Valkey transports over redis-py clients (sync and asyncio, single node or Cluster).

The atomic operations are Lua scripts shipped as package files (``lua/*.lua``) and run
with EVALSHA, so every operation is one round trip. Each operation is written once, as a
*flow* (see :data:`Flow`): a generator that yields the calls it needs (a script on the
lane, a script and a GET, a pipeline) and holds all the policy around them: arguments,
replies, the cluster split below, large entries, reloading a script the server lost,
falling back from the lane to the client. The two classes only run the flows, one with
:func:`drive`, which makes each call, the other with :func:`adrive`, which awaits it.

A large entry (a query result) is read with the fetch script told to check it only,
followed in the same request by a ``GET`` of it: returning a value from Lua costs the
server two copies of it (see ``docs/transports.md``, "Large entries").

On Redis Cluster a script may only touch keys of one slot. The key layout puts a table's
rows, tags and single-table query entries in one slot (the ``{table}`` hash tag), so most
operations run exactly as on a single node. The two that span slots are split:

* a query over several tables reads (or creates) the tags of its tables first, in one
  pipelined round, then checks its entry against them in the entry's slot. Tags only have to
  be read before the database is, which this keeps (see ``docs/transports.md``);
* a commit touching several tables deletes and re-tags per key in one pipelined round
  (commands to different nodes are sent in parallel). Each key's step is atomic, and a
  failure anywhere fails the whole call, which the core then retries as a whole.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Generator, Sequence
from importlib import resources
from typing import Any, TypeVar

from sqlmodel_cache._errors import ConfigurationError, MissingDependencyError
from sqlmodel_cache.transport._protocols import Fetched
from sqlmodel_cache.transport._redis.connections import (
    ClusterLanes,
    Rerouted,
    connection_kwargs,
    lane_for,
)
from sqlmodel_cache.transport._redis.resp import command


def _script_source(name: str) -> str:
    return (
        resources.files("sqlmodel_cache.transport._redis")
        .joinpath(f"lua/{name}")
        .read_text("utf-8")
    )


_SCRIPTS = ("fetch", "fill", "invalidate")

logger = logging.getLogger("sqlmodel_cache")


def _check_client(client: object, kind: str) -> None:
    """Refuse clients the transport cannot work with, saying how to fix them."""
    if not all(callable(getattr(client, name, None)) for name in ("get", "set", "delete")):
        raise ConfigurationError(
            f"{kind} needs a redis-py client (redis.Redis / redis.asyncio.Redis or a cluster "
            f"client), got {type(client).__name__}"
        )
    if not callable(getattr(client, "register_script", None)):
        raise ConfigurationError(
            f"{kind} needs a redis-py client with register_script(), got {type(client).__name__}"
        )
    if connection_kwargs(client).get("decode_responses"):
        raise ConfigurationError(
            f"{kind} needs a client created with decode_responses=False (the default): "
            "cache entries are bytes, and decoding them to str would corrupt them"
        )


def is_cluster(client: Any) -> bool:
    return callable(getattr(client, "get_primaries", None))


def _one_slot(key: str, others: Sequence[str]) -> bool:
    from redis.crc import key_slot

    slot = key_slot(key.encode())
    return all(key_slot(other.encode()) == slot for other in others)


def _queue_tag_reads(pipe: Any, tag_keys: Sequence[str], new_tag: bytes) -> None:
    for tag_key in tag_keys:
        pipe.set(tag_key, new_tag, nx=True)  # SET NX then GET: Redis 6 has no SET NX GET
        pipe.get(tag_key)


def _tag_values(replies: Sequence[Any], new_tag: bytes) -> list[bytes]:
    # A tag evicted between its SET and GET reads as None: stamping the entry with new_tag,
    # which then exists nowhere, only makes that entry a miss.
    return [new_tag if value is None else bytes(value) for value in replies[1::2]]


def _queue_invalidation(
    pipe: Any, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
) -> None:
    for key in delete_keys:
        pipe.delete(key)
    for tag_key in tag_keys:
        pipe.set(tag_key, new_tag)


#: The fetch script's last fixed argument: return the entry, or only check it (the caller
#: reads it with a GET sent right after the script, in the same round trip).
_WHOLE, _PEEK = "0", "1"

#: Entries of this many bytes or more are read with that GET: copying a value through Lua
#: costs the server about 1.5 ns per byte (a 20 KB query result: 46 µs for the script,
#: 22 µs for the script checking it and a GET returning it).
LARGE_ENTRY = 2048

#: How many keys of large entries a transport remembers; past that it starts over.
LARGE_KEYS = 4096


class _LargeEntries:
    """The keys whose last entry read was large, so the next fetch of each reads it with
    a GET. Learned per key (query results, and rows with large columns); set operations
    are atomic, so threads need no lock."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def learn(self, key: str, fetched: Fetched) -> Fetched:
        entry = fetched.entry
        if entry is not None:
            if len(entry) < LARGE_ENTRY:
                self._keys.discard(key)
            elif key not in self._keys:
                if len(self._keys) >= LARGE_KEYS:
                    self._keys.clear()
                self._keys.add(key)
        return fetched


def _parse_peeked(replies: Sequence[Any]) -> Fetched | None:
    """What the fetch script, run to check the entry only, and the GET after it saw;
    ``None`` when the entry the script checked was replaced before the GET read it (a new
    fill), or the GET did not run: then the caller fetches again the usual way.

    An entry the GET returns that starts with the header the script checked was filled
    under the tags current at the check, so after every commit that had returned when the
    fetch began (each deletes the key or replaces a tag): a commit it misses ran while the
    fetch did, as with any read."""
    reply, value = replies
    header = reply[0]
    if not header:
        return _parse_fetch(reply)
    if not isinstance(value, bytes) or not value.startswith(bytes(header)):
        return None
    return Fetched(value, False, (), int(reply[1]))


def _parse_fetch(reply: Sequence[Any]) -> Fetched:
    entry = reply[0]
    if entry:
        expires_in_ms = int(reply[1]) if len(reply) > 1 else None
        return Fetched(bytes(entry), False, (), expires_in_ms)
    return Fetched(None, bool(reply[1]), tuple(bytes(tag) for tag in reply[2:]))


#: Default socket and connect timeout of ``from_url()`` clients, in seconds: a black-holed
#: cache server costs at most this per operation until the circuit breaker opens.
DEFAULT_TIMEOUT = 0.25


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingDependencyError("redis", "redis") from None
    return redis


def _bounded(options: dict[str, Any], timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, **options}


def _warn_if_unbounded(client: Any, kind: str) -> None:
    kwargs = connection_kwargs(client)
    if kwargs and kwargs.get("socket_timeout") is None:
        logger.warning(
            "%s: the client has no socket_timeout, so an unreachable Redis can block a read "
            "for the OS TCP timeout; pass socket_timeout=... or use %s.from_url()",
            kind,
            kind,
        )


T = TypeVar("T")

#: One piece of IO a flow asks for: a function and its arguments. The sync driver calls it;
#: the asyncio driver calls it and awaits what it returns.
Call = tuple[Callable[..., Any], tuple[Any, ...]]

#: An operation written once for both transports: a generator that yields the calls it
#: needs, is sent each call's reply (or has its exception thrown in at the ``yield``), and
#: returns the operation's result.
Flow = Generator[Call, Any, T]


def drive(flow: Flow[T]) -> T:
    """Run ``flow``, making each call it asks for."""
    try:
        call, args = next(flow)
        while True:
            try:
                reply = call(*args)
            except Exception as exc:  # noqa: BLE001 - the flow handles it, or raises it
                call, args = flow.throw(exc)
            else:
                call, args = flow.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


async def adrive(flow: Flow[T]) -> T:
    """Run ``flow``, awaiting each call it asks for."""
    try:
        call, args = next(flow)
        while True:
            try:
                reply = await call(*args)
            except Exception as exc:  # noqa: BLE001 - the flow handles it, or raises it
                call, args = flow.throw(exc)
            else:
                call, args = flow.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


class _Script:
    """A script run with a bare ``EVALSHA``, on the transport's lane when the client has one
    (see ``connections``). redis-py's ``Script`` object is kept to load the script when
    the server does not have it (a new or restarted server, ``SCRIPT FLUSH``)."""

    def __init__(self, client: Any, source: str, on_lane: Callable[..., Any] | None) -> None:
        self._client = client
        self._script = client.register_script(source)
        self._no_script: type[Exception] = _import_redis().exceptions.NoScriptError
        #: The lane's call, ``(packed, key, replies=1)``, or ``None`` without a lane.
        self._on_lane = on_lane

    def _arguments(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self._script.sha, len(keys), *keys, *args)

    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> Call:
        """The first try: the script on the lane, or through the client without one."""
        arguments = self._arguments(keys, args)
        if self._on_lane is None:
            return self._client.execute_command, arguments
        return self._on_lane, (command(*arguments), keys[0])

    def recover(self, failure: Exception, keys: Sequence[Any], args: Sequence[Any]) -> Flow[Any]:
        """The script's reply after :meth:`call` failed with ``failure``: when the lane
        could not serve it (a cluster's layout changed), through the client, which finds
        the way; when the server lacks the script, after sending it. Any other failure is
        raised again."""
        if isinstance(failure, Rerouted):
            try:
                return (yield self._client.execute_command, self._arguments(keys, args))
            except self._no_script:
                pass
        elif not isinstance(failure, self._no_script):
            raise failure
        return (yield self._script, (keys, args))

    def run(self, keys: Sequence[Any], args: Sequence[Any]) -> Flow[Any]:
        """The script's reply."""
        try:
            return (yield self.call(keys, args))
        except Exception as failure:  # noqa: BLE001 - recover() raises what it cannot handle
            return (yield from self.recover(failure, keys, args))

    def run_with_get(self, keys: Sequence[Any], args: Sequence[Any]) -> Flow[list[Any] | None]:
        """The script's reply and the value of ``keys[0]`` read right after it, in one
        round trip on the lane; ``None`` when that cannot be done (no lane, a cluster
        redirection, a server without the script): then run the script alone."""
        if self._on_lane is None:
            return None
        packed = command(*self._arguments(keys, args)) + command("GET", keys[0])
        try:
            replies: list[Any] = yield self._on_lane, (packed, keys[0], 2)
        except (Rerouted, self._no_script):
            return None
        return replies


def _client_from_url(
    module_name: str, url: str, timeout: float, cluster: bool, options: dict[str, Any]
) -> Any:
    """``from_url`` of redis-py's client (or cluster client) in ``module_name``."""
    _import_redis()
    module = importlib.import_module(module_name)
    client_class = module.RedisCluster if cluster else module.Redis
    return client_class.from_url(url, **_bounded(options, timeout))


class _Operations:
    """The operations of both transports, each a flow (see :data:`Flow`): everything but
    the IO, which the transport's driver does.

    Args:
        client: the transport's redis-py client, checked here.
        kind: the transport's class name, for messages.
        lane_call: what makes the transport's call on a lane (the lane's sync or awaited
            ``execute``).
    """

    def __init__(
        self, client: Any, kind: str, lane_call: Callable[[Any], Callable[..., Any]]
    ) -> None:
        _check_client(client, kind)
        _warn_if_unbounded(client, kind)
        self.client = client
        lane = lane_for(client)
        on_lane = None if lane is None else lane_call(lane)
        self.fetch_script, self.fill_script, self.invalidate_script = (
            _Script(client, _script_source(f"{name}.lua"), on_lane) for name in _SCRIPTS
        )
        self.cluster = is_cluster(client)
        self.large = _LargeEntries()

    def get(self, key: str) -> Flow[bytes | None]:
        value = yield self.client.get, (key,)
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes, ttl: int) -> Flow[None]:
        yield self.client.set, (key, value, ttl)  # set(name, value, ex)

    def delete(self, keys: Sequence[str]) -> Flow[None]:
        if keys:
            yield self.client.delete, tuple(keys)

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Flow[Fetched]:
        args: list[Any] = [schema, new_tag, lease, lease_ttl_ms, _WHOLE]
        if self.cluster and not _one_slot(key, tag_keys):
            pipe = self.client.pipeline(transaction=False)
            _queue_tag_reads(pipe, tag_keys, new_tag)
            args += _tag_values((yield pipe.execute, ()), new_tag)
            tag_keys = ()
        keys = [key, *tag_keys]
        if key in self.large:
            peek = [*args[:4], _PEEK, *args[5:]]
            replies = yield from self.fetch_script.run_with_get(keys, peek)
            fetched = None if replies is None else _parse_peeked(replies)
            if fetched is not None:
                return self.large.learn(key, fetched)
        # NOTE: the script's run() written out, so that a hit (the hot path) costs one
        # generator, not two.
        try:
            reply = yield self.fetch_script.call(keys, args)
        except Exception as failure:  # noqa: BLE001 - recover() raises what it cannot handle
            reply = yield from self.fetch_script.recover(failure, keys, args)
        return self.large.learn(key, _parse_fetch(reply))

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> Flow[bool]:
        return bool((yield from self.fill_script.run([key], [lease, value, ttl])))

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> Flow[None]:
        keys = [*delete_keys, *tag_keys]
        if not keys:
            return
        if self.cluster and not _one_slot(keys[0], keys):
            pipe = self.client.pipeline(transaction=False)
            _queue_invalidation(pipe, delete_keys, tag_keys, new_tag)
            yield pipe.execute, ()
        else:
            yield from self.invalidate_script.run(keys, [len(delete_keys), new_tag])


def _sync_lane_call(lane: Any) -> Callable[..., Any]:
    return lane.execute  # type: ignore[no-any-return]


def _async_lane_call(lane: Any) -> Callable[..., Any]:
    # Cluster lanes serve sync and asyncio clients: their awaited call is aexecute().
    return lane.aexecute if isinstance(lane, ClusterLanes) else lane.execute


class RedisSyncTransport:
    """Synchronous transport over a ``redis.Redis`` client (Redis or Valkey).

    Args:
        client: a configured client created with ``decode_responses=False`` (the default).
            Timeouts, TLS (``rediss://``), ACL users and pools are set on the client; a
            client without ``socket_timeout`` is accepted with a warning.
    """

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, cluster: bool = False, **options: Any
    ) -> RedisSyncTransport:
        """A transport over ``redis.Redis.from_url(url)``, or ``redis.RedisCluster.from_url(url)``.

        Args:
            url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, credentials included.
            timeout: socket and connect timeout in seconds (default 0.25), unless
                ``options`` set ``socket_timeout`` / ``socket_connect_timeout`` themselves.
            cluster: build a Redis Cluster client (the URL names any one node).
            **options: passed to redis-py's ``from_url``.
        """
        return cls(_client_from_url("redis", url, timeout, cluster, options))

    def __init__(self, client: Any) -> None:
        self.client = client
        self._operations = _Operations(client, "RedisSyncTransport", _sync_lane_call)

    def get(self, key: str) -> bytes | None:
        return drive(self._operations.get(key))

    def set(self, key: str, value: bytes, ttl: int) -> None:
        drive(self._operations.set(key, value, ttl))

    def delete(self, *keys: str) -> None:
        drive(self._operations.delete(keys))

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        return drive(self._operations.fetch(key, tag_keys, schema, new_tag, lease, lease_ttl_ms))

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return drive(self._operations.fill(key, value, ttl, lease))

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        drive(self._operations.invalidate(delete_keys, tag_keys, new_tag))


class RedisAsyncTransport:
    """Asyncio transport over a ``redis.asyncio.Redis`` client (Redis or Valkey).

    Used by ``AsyncSession`` (called from inside SQLAlchemy's greenlet) and by the async
    admin API. A plain sync ``Session`` cannot drive it and bypasses the cache with a warning.

    Args:
        client: a configured client created with ``decode_responses=False`` (the default).
    """

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, cluster: bool = False, **options: Any
    ) -> RedisAsyncTransport:
        """A transport over ``redis.asyncio.Redis.from_url(url)``, or
        ``redis.asyncio.RedisCluster.from_url(url)``.

        Args:
            url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, credentials included.
            timeout: socket and connect timeout in seconds (default 0.25), unless
                ``options`` set ``socket_timeout`` / ``socket_connect_timeout`` themselves.
            cluster: build a Redis Cluster client (the URL names any one node).
            **options: passed to redis-py's ``from_url``.
        """
        return cls(_client_from_url("redis.asyncio", url, timeout, cluster, options))

    def __init__(self, client: Any) -> None:
        self.client = client
        self._operations = _Operations(client, "RedisAsyncTransport", _async_lane_call)

    async def get(self, key: str) -> bytes | None:
        return await adrive(self._operations.get(key))

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await adrive(self._operations.set(key, value, ttl))

    async def delete(self, *keys: str) -> None:
        await adrive(self._operations.delete(keys))

    async def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        return await adrive(
            self._operations.fetch(key, tag_keys, schema, new_tag, lease, lease_ttl_ms)
        )

    async def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return await adrive(self._operations.fill(key, value, ttl, lease))

    async def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        await adrive(self._operations.invalidate(delete_keys, tag_keys, new_tag))
