"""Server-assisted invalidation for the near cache: one RESP3 connection in tracking mode.

The connection runs ``CLIENT TRACKING ON BCAST PREFIX <key_prefix>:``: from then on the
server pushes ``invalidate [key, ...]`` for every write to a key under the prefix, by any
client, and ``invalidate nil`` when the database is flushed. Broadcast mode, rather than
tracking the keys this process read, because the reads are Lua scripts and because it
costs the server no memory per key.

redis-py's own client-side caching is sync-only and caches plain ``GET`` replies, so the
connection is opened with redis-py (for AUTH, TLS, unix sockets, database selection),
then read here with a small RESP3 reader, without ever blocking on it: a reader drains
whatever has arrived before it serves from the near cache, and a daemon thread drains,
pings and reconnects in the background. The same thread-based tracker serves sync and
asyncio transports, since invalidations never need the event loop.

Anything that might have lost a push (a closed or silent connection, an error reply)
calls ``on_flush`` and stops the near cache serving until ``on_ready`` says a new
connection tracks again.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from sqlmodel_cache.transport._redis.resp import Incomplete, ProtocolError, command, parse

logger = logging.getLogger("sqlmodel_cache")


def read_reply(sock: socket.socket) -> tuple[Any, bytes]:
    """The reply to the tracking command, and what followed it: invalidations of writes
    made as soon as tracking started."""
    buffer = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the tracking handshake")
        buffer += chunk
        try:
            value, pos = parse(buffer, 0)
        except Incomplete:
            continue
        return value, bytes(buffer[pos:])


#: Why a cluster's tracking connection stops (see ``Tracker``'s ``cluster``).
CLUSTER_NOT_OK = "the primary says its cluster is not ok (cluster_state)"


def cluster_ok(info: Any) -> bool:
    """Whether a ``CLUSTER INFO`` reply says ``cluster_state:ok``: not when the node cannot
    reach most of the other primaries, or some slot has no node."""
    text = info if isinstance(info, bytes) else str(info).encode()
    return b"cluster_state:ok" in text


class Refused(Exception):
    """The server answered the tracking handshake with an error (no RESP3 or no client
    tracking, or an ACL that forbids it), rather than failing to answer."""


def keyspace_flags_ok(flags: bytes) -> bool:
    """Whether ``notify-keyspace-events`` announces every event a cache key can have:
    writes (``$``), deletes (``g``), expiry (``x``) and eviction (``e``), per key (``K``)."""
    return b"K" in flags and (b"A" in flags or all(c in flags for c in (b"g", b"$", b"x", b"e")))


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class Tracker:
    """One tracking connection, kept alive by a daemon thread.

    Two ways to hear of writes (``mode``):

    * ``"tracking"``: RESP3 ``CLIENT TRACKING ON BCAST``, as described above;
    * ``"keyspace"``: for servers without client tracking (Redis before 6, or an ACL that
      forbids ``CLIENT``), ``PSUBSCRIBE`` to the keyspace notifications of the prefix's
      keys, which the server must publish (``notify-keyspace-events KA``). Notifications say
      nothing of ``FLUSHALL``/``FLUSHDB``, so a second connection checks every heartbeat
      that a marker key under the prefix still exists, and empties the near cache if not.
      Weaker: Redis queues a notification before the writer's reply but may write it to
      the socket after, where a tracking push is written first.

    Args:
        connect: makes a redis-py sync connection (``protocol=3``, or the ``protocol``
            passed), not yet connected.
        prefix: the key prefix to track.
        on_keys: called with the keys the server invalidated.
        on_flush: called when everything must go: the server flushed its keys, or
            invalidations may have been lost (the argument says why).
        on_ready: called when tracking (re)starts, before the near cache serves again.
        lock: the near cache's lock; every callback runs holding it.
        heartbeat: seconds between two PINGs; a connection that has not answered a PING
            sent within the last three heartbeats counts as lost (silent, or so slow
            that invalidations arrive late).
        cluster: the server is a primary of a Redis Cluster. The heartbeat is then
            ``CLUSTER INFO`` rather than ``PING`` (answered in the same order), and the
            connection counts as lost when the node says its cluster is not ``ok``: a
            primary cut off from the rest of its cluster says so after
            ``cluster-node-timeout``, the time the others wait before promoting one of its
            replicas, whose writes would not reach this connection.
    """

    def __init__(
        self,
        connect: Callable[..., Any],
        prefix: str,
        on_keys: Callable[[Sequence[bytes]], None],
        on_flush: Callable[[str], None],
        on_ready: Callable[[], None],
        heartbeat: float,
        lock: threading.RLock,
        mode: str = "tracking",
        db: int = 0,
        cluster: bool = False,
    ) -> None:
        self._connect = connect
        self._prefix = prefix
        self.mode = mode
        self._cluster = cluster
        self._heartbeat_command = command("CLUSTER", "INFO") if cluster else command("PING")
        self._keyspace = f"__keyspace@{db}__:".encode()
        self._marker = f"{prefix}near-cache-marker"
        self._probe: Any = None  # keyspace mode: the connection that checks the marker
        self._check_flags = True  # keyspace mode: whether CONFIG GET may be read
        self._on_keys = on_keys
        self._on_flush = on_flush
        self._on_ready = on_ready
        self.heartbeat = heartbeat
        self.max_silence = 3 * heartbeat
        self.lock = lock
        self._connection: Any = None
        self._sock: socket.socket | None = None
        self._poll: select.poll | None = None
        self._buffer = bytearray()
        self._last_ping = 0.0
        # When the newest answered PING was sent: everything the server pushed before
        # then has arrived. Send times of the PINGs not answered yet, oldest first.
        self._heard_at = 0.0
        self._pings: deque[float] = deque()
        self._stopped = threading.Event()
        # The thread sleeps in select() on this pair too, so close() and a lost connection
        # wake it at once instead of after a timeout.
        self._waker, self._wakeup = socket.socketpair()
        self._waker.setblocking(False)
        self._failing = False
        #: True while the connection tracks and has been heard from recently.
        self.live = False
        self._thread = threading.Thread(
            target=self._run, name="sqlmodel-cache-tracking", daemon=True
        )
        self._thread.start()

    # -- called by readers (holding the lock) ------------------------------------------

    def fresh(self) -> bool:
        """Apply every invalidation that has arrived; ``True`` if the near cache may serve."""
        if not self.live:
            return False
        poll = self._poll
        if poll is not None and poll.poll(0):
            self._drain()
        if self.live and time.monotonic() - self._heard_at > self.max_silence:
            self._lose("the tracking connection went silent")
        # A push whose end has not arrived yet may name a key about to be served.
        return self.live and not self._buffer

    def close(self) -> None:
        self._stopped.set()
        self._wake()
        with self.lock:
            self._close_socket()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._waker.close()
        self._wakeup.close()

    # -- the background thread ---------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stopped.is_set():
            if self._sock is None:
                if self._open():
                    backoff = 0.05
                else:
                    self._sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                continue
            sock = self._sock
            readable = self._sleep(self.heartbeat / 2, sock)
            beat = time.monotonic() - self._last_ping >= self.heartbeat
            flushed = self._marker_gone() if beat and self._probe is not None else False
            with self.lock:
                if self._sock is not sock:
                    continue
                if readable:
                    self._drain()
                if flushed is None:
                    self._lose("the keyspace check failed (or notifications were turned off)")
                    continue
                if flushed:
                    self._on_flush("the server flushed its keys")
                now = time.monotonic()
                if self._sock is not None and beat:
                    self._send(self._heartbeat_command)
                    self._pings.append(now)
                    self._last_ping = now
                if self.live and now - self._heard_at > self.max_silence:
                    self._lose("the tracking connection went silent")

    def _sleep(self, seconds: float, sock: socket.socket | None = None) -> bool:
        """Wait until ``sock`` is readable (``True``), a wake-up, or ``seconds``."""
        waiting = select.poll()  # not select(): it fails on descriptors above 1023
        try:
            waiting.register(self._wakeup, select.POLLIN)
            if sock is not None:
                waiting.register(sock, select.POLLIN | select.POLLPRI)
            events = dict(waiting.poll(seconds * 1000))
        except (OSError, ValueError):  # a socket closed under us
            return False
        if self._wakeup.fileno() in events:
            with contextlib.suppress(OSError):
                self._wakeup.recv(4096)
        return sock is not None and events.get(sock.fileno(), 0) != 0

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._waker.send(b"x")

    def _open(self) -> bool:
        opened: list[Any] = []  # connections to close if the handshake fails
        try:
            if self.mode == "keyspace":
                connection, sock, pushed = self._start_keyspace(opened)
            else:
                connection, sock, pushed = self._start_tracking(opened)
            sock.setblocking(False)
        except Exception as exc:  # noqa: BLE001 - any failure: retry later, cache bypassed
            self._close_all(opened)  # a half-set-up tracking client must not linger
            if not self._failing:  # once per outage
                hint = (
                    '; a server without client tracking can use NearCache(invalidation="keyspace")'
                    if isinstance(exc, Refused)
                    else ""
                )
                logger.warning(
                    "near cache: cannot start server tracking (%r); retrying%s", exc, hint
                )
            self._failing = True
            return False
        self._failing = False
        with self.lock:
            if self._stopped.is_set():
                self._close_all(opened)
                return False
            self._connection, self._sock = connection, sock
            self._probe = opened[0] if self.mode == "keyspace" else None
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN | select.POLLPRI)
            self._buffer = bytearray(pushed)
            self._heard_at = self._last_ping = time.monotonic()
            self._pings.clear()
            self._on_ready()
            self.live = True
            self._dispatch()
        return True

    def _start_tracking(self, opened: list[Any]) -> tuple[Any, socket.socket, bytes]:
        connection = self._connect()
        opened.append(connection)
        try:
            connection.connect()  # HELLO 3: a server without RESP3 refuses it
        except Exception as exc:
            if type(exc).__name__ in ("ResponseError", "NoPermissionError"):
                raise Refused(exc) from exc
            raise
        if self._cluster:
            connection.send_command("CLUSTER", "INFO")
            if not cluster_ok(connection.read_response()):
                raise RuntimeError(CLUSTER_NOT_OK)
        sock = connection._sock
        sock.sendall(command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix))
        reply, pushed = read_reply(sock)
        if isinstance(reply, ProtocolError):
            raise Refused(reply)
        return connection, sock, pushed

    def _start_keyspace(self, opened: list[Any]) -> tuple[Any, socket.socket, bytes]:
        probe = self._connect(protocol=2)
        opened.append(probe)
        probe.connect()
        self._check_flags = True
        if self._notifications_off(probe):
            raise RuntimeError(
                "the server does not publish keyspace notifications: run "
                "CONFIG SET notify-keyspace-events KA (or set it in redis.conf)"
            )
        probe.send_command("SET", self._marker, "1")
        probe.read_response()
        connection = self._connect(protocol=2)
        opened.append(connection)
        connection.connect()
        sock = connection._sock
        pattern = self._keyspace.decode() + glob_escape(self._prefix) + "*"
        sock.sendall(command("PSUBSCRIBE", pattern))
        reply, pushed = read_reply(sock)
        if isinstance(reply, ProtocolError):
            raise reply
        return connection, sock, pushed

    def _notifications_off(self, probe: Any) -> bool:
        """Whether the server is known not to publish the notifications keyspace mode needs
        (when ``CONFIG GET`` is forbidden, nothing is known: the docs say what to set)."""
        if not self._check_flags:
            return False
        try:
            probe.send_command("CONFIG", "GET", "notify-keyspace-events")
            flags = probe.read_response()[1]
        except Exception as exc:
            if type(exc).__name__ not in ("ResponseError", "NoPermissionError"):
                raise
            logger.debug("near cache: cannot read notify-keyspace-events (%r)", exc)
            self._check_flags = False
            return False
        return not keyspace_flags_ok(bytes(flags))

    def _marker_gone(self) -> bool | None:
        """Keyspace mode: whether the marker key is gone (the server was flushed; it is set
        again), or ``None`` when the check failed or notifications were turned off."""
        probe = self._probe
        try:
            if self._notifications_off(probe):
                return None
            probe.send_command("EXISTS", self._marker)
            if probe.read_response():
                return False
            probe.send_command("SET", self._marker, "1")
            probe.read_response()
        except Exception:  # noqa: BLE001 - any failure: reconnect
            return None
        return True

    @staticmethod
    def _close_all(connections: list[Any]) -> None:
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.disconnect()
        connections.clear()

    # -- internals (callers hold the lock) ---------------------------------------------

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                chunk = sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                break
            except Exception as exc:  # noqa: BLE001 - ssl.SSLWantReadError and friends
                if "WantRead" in type(exc).__name__:
                    break
                self._lose(f"the tracking connection failed: {exc!r}")
                return
            if not chunk:
                self._lose("the tracking connection was closed")
                return
            self._buffer += chunk
        self._dispatch()

    def _dispatch(self) -> None:
        buffer = self._buffer
        pos = 0
        try:
            while pos < len(buffer):
                value, pos = parse(buffer, pos)
                self._handle(value)
        except Incomplete:
            pass
        except (ProtocolError, ValueError) as exc:
            self._lose(f"the tracking connection sent garbage: {exc!r}")
            return
        del buffer[:pos]

    def _handle(self, value: Any) -> None:
        if isinstance(value, tuple) and value[0] == "push":
            items = value[1]
            if items and items[0] == b"invalidate":
                keys = items[1] if len(items) > 1 else None
                if keys is None:
                    self._on_flush("the server flushed its keys")
                else:
                    self._on_keys(keys)
        elif (
            value == b"PONG"
            or (type(value) is list and value[:1] == [b"pong"])
            or (type(value) is bytes and b"cluster_state:" in value)  # CLUSTER INFO
        ):
            self._heard_at = self._pings.popleft() if self._pings else time.monotonic()
            if self._cluster and not cluster_ok(value):
                self._lose(CLUSTER_NOT_OK)
        elif type(value) is list and value[:1] == [b"pmessage"] and len(value) == 4:
            channel = value[2]  # keyspace mode: __keyspace@<db>__:<key>, the event as data
            if channel.startswith(self._keyspace):
                self._on_keys([channel[len(self._keyspace) :]])
        elif isinstance(value, ProtocolError):
            raise value

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendall(data)
        except Exception as exc:  # noqa: BLE001 - a dead socket: reconnect
            self._lose(f"the tracking connection failed: {exc!r}")

    def _lose(self, reason: str) -> None:
        was_live = self.live
        self.live = False
        self._close_socket()
        self._on_flush(reason)
        if was_live:
            logger.warning("near cache: %s; bypassed until tracking is back", reason)
        self._wake()

    def _close_socket(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.disconnect()
        connection, self._connection = self._connection, None
        self._sock = None
        self._poll = None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a broken socket
                connection.disconnect()


class ClusterTracking:
    """Tracking on Redis Cluster: a :class:`Tracker` per primary, kept in step with the
    cluster client's view of its primaries (checked every heartbeat, no round trip).

    A write reaches the primary that serves its key's slot, and only that node pushes its
    invalidation, so the near cache may serve only while every primary is tracked and
    live (:attr:`live`, :meth:`fresh`), and may keep only what a tracked primary served
    (:meth:`tracks`, checked by the store per fetch). A primary that appears gets a tracker
    (which flushes the store when it starts, like any tracker); one that goes (a failover,
    a node removed) has its tracker closed.

    Args:
        primaries: the client's current primaries, ``{name: node}`` (no I/O).
        make_tracker: a :class:`Tracker` for one node, reporting to the store.
        heartbeat: seconds between two checks of the primaries.
    """

    def __init__(
        self,
        primaries: Callable[[], dict[str, Any]],
        make_tracker: Callable[[Any], Tracker],
        heartbeat: float,
    ) -> None:
        self._primaries = primaries
        self._make_tracker = make_tracker
        self._heartbeat = heartbeat
        #: Replaced, never changed in place, so readers iterate it without a lock.
        self._trackers: dict[str, Tracker] = {}
        self._stopped = threading.Event()
        self._follow_primaries()
        self._thread = threading.Thread(
            target=self._watch, name="sqlmodel-cache-cluster-tracking", daemon=True
        )
        self._thread.start()

    @property
    def live(self) -> bool:
        trackers = self._trackers
        return bool(trackers) and all(tracker.live for tracker in trackers.values())

    def fresh(self) -> bool:
        """Apply what every tracking connection has received; ``True`` if all are fresh."""
        trackers = self._trackers
        fresh = bool(trackers)
        for tracker in trackers.values():
            fresh = tracker.fresh() and fresh  # no short cut: every connection is drained
        return fresh

    def tracks(self, name: str) -> bool:
        """True when the primary ``name`` is tracked and live."""
        tracker = self._trackers.get(name)
        return tracker is not None and tracker.live

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for tracker in self._trackers.values():
            tracker.close()

    def _watch(self) -> None:
        while not self._stopped.wait(self._heartbeat):
            try:
                self._follow_primaries()
            except Exception as exc:  # noqa: BLE001 - keep the trackers we have; retry
                logger.debug("near cache: cannot read the cluster's primaries: %r", exc)

    def _follow_primaries(self) -> None:
        wanted = self._primaries()
        current = self._trackers
        if wanted.keys() == current.keys() or self._stopped.is_set():
            return
        self._trackers = {
            name: current.get(name) or self._make_tracker(node) for name, node in wanted.items()
        }
        for name, tracker in current.items():
            if name not in wanted:
                tracker.close()
