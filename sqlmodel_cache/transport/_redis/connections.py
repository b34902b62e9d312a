"""Connections of the transports' own: for the scripts every read runs, and for the tracker.

Every cache read is one ``EVALSHA``. Sent through the client (``client.execute_command``)
it cost 42 µs on the benchmark machine, where the same command on a connection costs 16:
the client packs each argument, checks a connection out of its pool with a health probe,
records its observability metrics and wraps the call in its retry policy; with asyncio it
is 83 µs against 20. That overhead was a third of a whole ``session.get()`` hit, so the
transports send their scripts on connections they keep at hand (a *lane*):

* sync: a few connections that threads take turns on, made as the client's pool makes its
  connections (same class and options: host or unix socket, TLS, credentials, database,
  timeouts), but outside the pool;
* asyncio: per event loop, a few connections checked out of the client's own pool and kept
  (surplus ones go back), so ``await client.aclose()`` closes them like any other.

redis-py makes and connects them; the sync lane then uses its public connection API
(``send_packed_command`` / ``read_response``), which does the protocol, the timeout and the
disconnect on any error; the asyncio lane does that exchange itself (see
:class:`AsyncLane`). A broken connection reconnects on its next use.

On Redis Cluster, :class:`ClusterLanes` keeps such a lane per primary and sends each
script to the one that serves its key's slot; a redirection or an unreachable node sends
that call through the client, which follows it and refreshes its slot map. Sentinel
clients, whose pool picks the server per connection, have no lane.

What a lane gives up is the client's retry policy: a failed read is a cache miss anyway
(fail open), and a failed invalidation is retried by the core.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sqlmodel_cache.transport._redis.resp import Incomplete, ProtocolError, parse

#: Connections a sync lane keeps between calls; a burst of concurrent reads from more
#: threads opens more and closes them after.
SYNC_IDLE_LIMIT = 16

#: Connections an asyncio lane keeps per event loop between calls (at most a quarter of
#: the pool's ``max_connections``, so the application's own commands always find some); a
#: burst of concurrent reads above this checks more out of the pool and gives them back.
ASYNC_IDLE_LIMIT = 8

#: Bytes an asyncio lane asks its stream for at a time.
READ_SIZE = 65536


def connection_kwargs(client: Any) -> dict[str, Any]:
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if callable(get_kwargs):
        return dict(get_kwargs())
    pool = getattr(client, "connection_pool", None)
    return dict(getattr(pool, "connection_kwargs", {}) or {})


def _sync_connection_class(client: Any) -> Any:
    """The redis-py sync connection class matching ``client``'s (sync or asyncio) pool."""
    import redis.connection

    pool = getattr(client, "connection_pool", None)
    name = type(pool).__name__ if pool is None else pool.connection_class.__name__
    if "Unix" in name:
        return redis.connection.UnixDomainSocketConnection
    if "SSL" in name:
        return redis.connection.SSLConnection
    return redis.connection.Connection


def _accepted(connection_class: Any) -> set[str]:
    names: set[str] = set()
    for klass in connection_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    return names - {"self", "args", "kwargs"}


def connection_factory(
    client: Any, timeout: float | None = None, connection_class: Any = None
) -> Callable[..., Any]:
    """A function making a new sync connection (RESP3 unless told ``protocol=2``), not yet
    connected, to the server behind ``client``: of ``connection_class`` (by default
    redis-py's class for the kind of server), with the client's options, where ``timeout``
    replaces its socket and connect timeouts."""
    connection_class = connection_class or _sync_connection_class(client)
    accepted = _accepted(connection_class)
    options = {k: v for k, v in connection_kwargs(client).items() if k in accepted}
    options["protocol"] = 3
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    # redis-py 7+'s maintenance notifications hook into its own pool and parser, which
    # these connections do not belong to (and which needs RESP3).
    for name in [name for name in options if name.startswith("maint_notifications")]:
        options[name] = None
    for unwanted in ("client_name", "retry", "health_check_interval", "credential_provider"):
        if unwanted in options and options[unwanted] is None:
            del options[unwanted]
    return lambda protocol=3: connection_class(**{**options, "protocol": protocol})


def node_connection_factory(node: Any, timeout: float) -> Callable[..., Any]:
    """:func:`connection_factory` for one node of a cluster client, sync or asyncio."""
    client = getattr(node, "redis_connection", None)
    if client is not None:  # a sync cluster node holds a client of its own
        return connection_factory(client, timeout)
    # An asyncio cluster node has the options of its connections (and their asyncio class,
    # mapped to redis-py's sync class of the same kind); its retry policy is asyncio's.
    options = {k: v for k, v in node.connection_kwargs.items() if k != "retry"}
    pool = SimpleNamespace(connection_class=node.connection_class, connection_kwargs=options)
    return connection_factory(SimpleNamespace(connection_pool=pool), timeout)


def _has_plain_pool(client: Any, module: Any) -> bool:
    """True when every connection of ``client``'s pool goes to the one server it names
    (a Sentinel pool is a subclass that asks the sentinels)."""
    pool: Any = getattr(client, "connection_pool", None)
    return type(pool) in (module.ConnectionPool, module.BlockingConnectionPool) and issubclass(
        pool.connection_class,
        (module.Connection, module.SSLConnection, module.UnixDomainSocketConnection),
    )


class SyncLane:
    """A few idle connections that any thread takes one of for a call and puts back.

    Not one per thread: a server that starts a thread per request would then connect
    per request. ``list.pop`` and ``list.append`` are atomic, so no lock is needed; a
    connection a forked child inherits is left to the parent."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._idle: list[Any] = []

    def execute(self, packed: bytes, key: str = "", replies: int = 1) -> Any:
        """Send packed commands and return the reply (the list of ``replies`` replies when
        ``packed`` holds several commands); raises what redis-py raises (an error reply as
        ``ResponseError``, after every reply was read, so the connection is still fine).
        ``key``, a key the commands name, only matters to :class:`ClusterLanes`."""
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._make()
        if connection.pid != os.getpid():
            connection = self._make()  # the parent's socket: never written to here
        try:
            connection.send_packed_command([packed], check_health=False)
            if replies == 1:
                return connection.read_response()
            return _first_error_raised([_reply_or_error(connection) for _ in range(replies)])
        finally:
            # redis-py disconnected it on any failure; it reconnects on its next use.
            if len(self._idle) < SYNC_IDLE_LIMIT:
                self._idle.append(connection)
            else:
                connection.disconnect()


class AsyncLane:
    """Per event loop, connections checked out of the client's pool and kept idle here.

    redis-py connects them (handshake, TLS, credentials); the exchange itself is done
    here, on the connection's stream, because redis-py's asyncio send and read add 30 µs
    to a 20 µs round trip (a task per send for its timeout, a parser built for streaming).
    A connection class that overrides either (instrumentation, say) is used through them."""

    def __init__(self, pool: Any) -> None:
        from redis.asyncio.connection import Connection

        self._pool = pool
        self._direct = all(
            getattr(pool.connection_class, name) is getattr(Connection, name)
            for name in ("send_packed_command", "read_response")
        )
        # redis-py before 5.3 wants a command name when checking a connection out.
        wants_name = inspect.signature(pool.get_connection).parameters.get("command_name")
        self._checkout = () if wants_name is None or wants_name.default is None else ("EVALSHA",)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLane] = (
            weakref.WeakKeyDictionary()
        )
        pool_size = getattr(pool, "max_connections", None) or ASYNC_IDLE_LIMIT * 4
        self._keep = min(ASYNC_IDLE_LIMIT, pool_size // 4)

    async def execute(self, packed: bytes, key: str = "", replies: int = 1) -> Any:
        """As :meth:`SyncLane.execute`, awaited."""
        loop = asyncio.get_running_loop()
        here = self._loops.get(loop)
        if here is None:
            here = self._loops[loop] = _LoopLane()
        idle = here.idle
        connection = idle.pop() if idle else await self._pool.get_connection(*self._checkout)
        try:
            if self._direct:
                return await _direct_exchange(connection, packed, here.deadlines, replies)
            await connection.send_packed_command([packed], check_health=False)
            if replies == 1:
                return await connection.read_response()
            return _first_error_raised([await _areply_or_error(connection) for _ in range(replies)])
        finally:
            if len(idle) < self._keep:
                idle.append(connection)
            else:
                await self._pool.release(connection)


class _LoopLane:
    """What an :class:`AsyncLane` keeps for one event loop."""

    __slots__ = ("deadlines", "idle")

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.deadlines = _Deadlines()


class _Deadlines:
    """The read timeouts of a lane's exchanges on one event loop, kept with one timer.

    ``asyncio.timeout()`` around each exchange (a timer scheduled and cancelled per call)
    cost 11 µs of a 130 µs hit. Here a call only notes its deadline and crosses it off
    when its reply is in; the one timer fires when the earliest deadline noted is due,
    fails the read of every exchange past its deadline with redis-py's ``TimeoutError``
    (through its stream), and is set again for the earliest deadline still noted, if any.
    Under steady traffic it fires once per timeout period."""

    def __init__(self) -> None:
        # NOTE: the loop is asked for, not kept: a lane's state per loop is held weakly
        # by its loop, which must not be kept alive by it.
        self._due: dict[asyncio.StreamReader, float] = {}
        self._armed = False  # the timer is set (its handle would keep the loop alive)

    def watch(self, reader: asyncio.StreamReader, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._due[reader] = loop.time() + seconds
        if not self._armed:
            # The lane's connections share their pool's timeout, so deadlines are noted
            # in the order they fall due: the first one pending is the earliest.
            loop.call_at(self._due[reader], self._expire)
            self._armed = True

    def forget(self, reader: asyncio.StreamReader) -> None:
        self._due.pop(reader, None)

    def _expire(self) -> None:
        self._armed = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        for reader, when in list(self._due.items()):
            if when <= now:
                del self._due[reader]
                reader.set_exception(_redis_exceptions().TimeoutError("timeout reading the reply"))
        if self._due:
            # A deadline not quite reached (the loop may run a timer a little early) is
            # simply set again: call_at() runs a past time on the next iteration.
            loop.call_at(min(self._due.values()), self._expire)
            self._armed = True


async def _direct_exchange(
    connection: Any, packed: bytes, deadlines: _Deadlines, replies: int = 1
) -> Any:
    """Commands and their replies on the stream of a redis-py asyncio connection."""
    try:
        if not connection.is_connected:
            await connection.connect()
        reader = connection._reader
        if connection.socket_timeout is not None:
            deadlines.watch(reader, connection.socket_timeout)
        try:
            values = await _exchange(reader, connection._writer, packed, replies)
        finally:
            deadlines.forget(reader)
        if reader.exception() is not None:
            # The deadline passed as the reply came: the reply is good, the stream is not.
            await connection.disconnect(nowait=True)
    except BaseException:
        # Whatever happened (a timeout, a cancellation), the reply may still come: a
        # connection is only reused in step with the server.
        await connection.disconnect(nowait=True)
        raise
    if replies == 1:
        (value,) = values
        if isinstance(value, ProtocolError):
            raise _error_reply(str(value))
        return value
    return _first_error_raised(
        [_error_reply(str(v)) if isinstance(v, ProtocolError) else v for v in values]
    )


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, packed: bytes, replies: int
) -> list[Any]:
    """Send commands, read their ``replies`` replies (RESP3 pushes among them are skipped);
    an error reply is returned as a :class:`ProtocolError`."""
    writer.write(packed)
    buffer = bytearray()
    values: list[Any] = []
    while True:
        chunk = await reader.read(READ_SIZE)
        if not chunk:
            raise _redis_exceptions().ConnectionError("the server closed the connection")
        buffer += chunk
        while True:
            try:
                value, end = parse(buffer, 0)
            except Incomplete:
                break
            del buffer[:end]
            if type(value) is tuple:  # a push (a maintenance notification): not a reply
                continue
            values.append(value)
            if len(values) < replies:
                continue
            if buffer:
                raise ProtocolError("bytes after the reply")
            return values


def _first_error_raised(values: list[Any]) -> list[Any]:
    """Replies read in full, raising the first error reply among them: a call reads every
    reply before it raises, so its connection stays in step with the server."""
    for value in values:
        if isinstance(value, Exception):
            raise value
    return values


def _reply_or_error(connection: Any) -> Any:
    """The next reply on a redis-py sync connection, an error reply as its exception."""
    try:
        return connection.read_response()
    except _redis_exceptions().ResponseError as exc:
        return exc


async def _areply_or_error(connection: Any) -> Any:
    """:func:`_reply_or_error` on a redis-py asyncio connection."""
    try:
        return await connection.read_response()
    except _redis_exceptions().ResponseError as exc:
        return exc


def _error_reply(message: str) -> Exception:
    """The redis-py exception for an error reply (the transport looks for NOSCRIPT)."""
    exceptions = _redis_exceptions()
    if message.startswith("NOSCRIPT"):
        return exceptions.NoScriptError(message)  # type: ignore[no-any-return]
    return exceptions.ResponseError(message)  # type: ignore[no-any-return]


def _redis_exceptions() -> Any:
    import redis.exceptions

    return redis.exceptions


class Rerouted(Exception):
    """A cluster lane could not serve the call (the slot moved, the node is unreachable):
    send it through the client, which follows redirections and refreshes its slot map."""


#: Error replies that mean the cluster's layout changed under the call.
_REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class ClusterLanes:
    """Redis Cluster: a lane per primary, the call sent to the one that serves its key's
    slot according to the client's slot map (the transport's scripts touch one slot)."""

    def __init__(self, client: Any, make_lane: Callable[[Any], Any]) -> None:
        self._client = client
        self._make_lane = make_lane
        self._lanes: dict[str, tuple[Any, Any]] = {}  # node name -> (node, its lane)

    def lane_of(self, key: str) -> Any:
        node = self._client.get_node_from_key(key)
        if node is None:
            raise Rerouted(key)
        known = self._lanes.get(node.name)
        if known is None or known[0] is not node:  # new, or rebuilt by a topology refresh
            known = self._lanes[node.name] = (node, self._make_lane(node))
        return known[1]

    def execute(self, packed: bytes, key: str = "", replies: int = 1) -> Any:
        try:
            return self.lane_of(key).execute(packed, key, replies)
        except Exception as exc:
            if _client_may_recover(exc):
                raise Rerouted(str(exc)) from exc
            raise

    async def aexecute(self, packed: bytes, key: str = "", replies: int = 1) -> Any:
        try:
            return await self.lane_of(key).execute(packed, key, replies)
        except Exception as exc:
            if _client_may_recover(exc):
                raise Rerouted(str(exc)) from exc
            raise


def _client_may_recover(exc: Exception) -> bool:
    """True for a failure the cluster client handles itself: a redirection, a node it
    cannot reach (it refreshes its slot map), a slot map it has not read yet (an asyncio
    cluster client reads it at its first command)."""
    exceptions = _redis_exceptions()
    recoverable = (
        exceptions.ConnectionError,
        exceptions.TimeoutError,
        exceptions.RedisClusterException,  # SlotNotCoveredError: no node for the slot yet
        exceptions.ClusterError,  # CLUSTERDOWN
        exceptions.AskError,  # and MovedError, as redis-py's parser reports them
        exceptions.TryAgainError,
        Rerouted,
    )
    if isinstance(exc, recoverable):
        return True
    # The asyncio lane's own parser reports every error reply as a plain ResponseError.
    return isinstance(exc, exceptions.ResponseError) and str(exc).startswith(_REDIRECTIONS)


class _NodeConnections:
    """An asyncio cluster node's own connections, as the pool an :class:`AsyncLane` takes
    its connections from (``await client.aclose()`` closes them with the node's)."""

    def __init__(self, node: Any) -> None:
        self._node = node
        self.connection_class = node.connection_class
        self.max_connections = node.max_connections

    async def get_connection(self) -> Any:
        return self._node.acquire_connection()

    async def release(self, connection: Any) -> None:
        self._node.release(connection)


def _cluster_lanes(client: Any) -> ClusterLanes | None:
    import redis.asyncio.cluster
    import redis.cluster

    if isinstance(client, redis.cluster.RedisCluster):

        def sync_lane(node: Any) -> Any:
            lane = lane_for(node.redis_connection)
            if lane is None:
                raise Rerouted(node.name)
            return lane

        return ClusterLanes(client, sync_lane)
    node_class = redis.asyncio.cluster.ClusterNode
    if isinstance(client, redis.asyncio.cluster.RedisCluster) and all(
        callable(getattr(node_class, name, None)) for name in ("acquire_connection", "release")
    ):
        return ClusterLanes(client, lambda node: AsyncLane(_NodeConnections(node)))
    return None


def lane_for(client: Any) -> SyncLane | AsyncLane | ClusterLanes | None:
    """The lane for a redis-py client: plain (one server) or cluster, sync or asyncio;
    ``None`` for anything else (a Sentinel client, a client-like object)."""
    import redis.asyncio.connection
    import redis.connection

    if _has_plain_pool(client, redis.connection):
        make = connection_factory(client, connection_class=client.connection_pool.connection_class)
        return SyncLane(lambda: make(protocol=2))
    if _has_plain_pool(client, redis.asyncio.connection):
        return AsyncLane(client.connection_pool)
    return _cluster_lanes(client)
