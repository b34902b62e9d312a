"""The near cache (SPEC T4): an in-process copy of Redis entries, invalidated by Redis.

It holds entries exactly as Redis returned them (bytes), together with the tags they were
checked against, and answers ``fetch`` when the entry and every tag it needs are present:
the same check the Lua script makes, without the round trip. Bytes rather than decoded
rows, because a decoded row's values (a JSON column's dict) would be shared by every
instance built from it, and one session mutating its instance would change the others'.

Consistency rests on three rules:

* **the server invalidates**: a :class:`~sqlmodel_cache.transport._redis.tracking.Tracker`
  receives every write to a key under the prefix; a reader applies whatever has arrived
  before it serves, and nothing is served while the tracking connection is down or silent;
* **no late inserts**: a reader registers a *ticket* for the keys it is about to fetch
  from Redis; an invalidation of one of them (or a flush) that arrives before the entry is
  stored here cancels the ticket, so an entry read before a write cannot land after the
  write's invalidation was applied;
* **own writes first**: this process's invalidations drop the keys here before and after
  the Redis call (``discard``), and a failed one flushes everything.

On Redis Cluster, where only the primary serving a key's slot pushes its invalidation, a
:class:`~sqlmodel_cache.transport._redis.tracking.ClusterTracking` tracks every primary, and a
ticket also names the primaries that serve its keys: the entry is kept only if the slot map
names the same tracked, live primaries when the fetch ends.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlmodel_cache._errors import ConfigurationError
from sqlmodel_cache.transport._protocols import TAG_SIZE, Fetched
from sqlmodel_cache.transport._redis.connections import (
    connection_factory,
    connection_kwargs,
    node_connection_factory,
)
from sqlmodel_cache.transport._redis.tracking import ClusterTracking, Tracker
from sqlmodel_cache.transport._redis.transport import (
    RedisAsyncTransport,
    RedisSyncTransport,
    is_cluster,
)

#: Bytes a stored entry costs beyond its key and value bytes: the ``str``, ``bytes``,
#: tuple and float objects, the ordered dict's slot and link. tracemalloc measures 230 to
#: 260 on CPython 3.11.
ENTRY_OVERHEAD = 260


#: How the server can tell a near cache of writes (see ``NearCache.invalidation``).
INVALIDATION_MODES = ("tracking", "keyspace")


@dataclass(frozen=True)
class NearCache:
    """Settings of the near cache: pass one to ``SQLModelCache.configure(near_cache=...)``.

    Only with ``RedisSyncTransport`` / ``RedisAsyncTransport`` on a Redis or Valkey server or
    cluster (not Sentinel; on a cluster, ``invalidation="tracking"`` only).

    Args:
        max_entries: the most entries (rows, query results and the tags they carry) kept;
            past it the least recently used go.
        max_bytes: the most bytes kept, counting keys, values and per-entry overhead.
        heartbeat: seconds between two pings on the tracking connection; when no ping
            sent in the last three heartbeats has been answered, the connection is treated
            as lost (the near cache is flushed and bypassed until it is back). Keep it well
            above the round trip to Redis.
        invalidation: how the server tells of writes: ``"tracking"`` (RESP3 client
            tracking, Redis 6+ / Valkey; the default), or ``"keyspace"``, the fallback for
            servers without it: keyspace notifications, which the server must publish
            (``notify-keyspace-events KA``). Redis may send a notification a little after
            the writer's reply, so this mode leaves a window of a few milliseconds after
            another process's commit (see the consistency page); it is never chosen on its
            own.
    """

    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    heartbeat: float = 0.5
    invalidation: str = "tracking"

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"NearCache({name}=...) must be a positive int, got {value!r}"
                )
        heartbeat = self.heartbeat
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)):
            raise ConfigurationError(
                f"NearCache(heartbeat=...) must be a number, got {heartbeat!r}"
            )
        if not 0.01 <= heartbeat <= 60:
            raise ConfigurationError(
                f"NearCache(heartbeat=...) must be between 0.01 and 60 seconds, got {heartbeat}"
            )
        if self.invalidation not in INVALIDATION_MODES:
            raise ConfigurationError(
                f"NearCache(invalidation=...) must be one of {', '.join(INVALIDATION_MODES)}, "
                f"got {self.invalidation!r}"
            )


class Counts(Protocol):
    """Where the near cache counts what it does (the runtime's ``Stats``)."""

    def add(self, model: str, event: str, amount: int = 1) -> None: ...


class _Ticket:
    __slots__ = ("__weakref__", "cancelled", "keys", "nodes", "started")

    def __init__(self, keys: frozenset[str], nodes: tuple[str, ...] | None) -> None:
        self.keys = keys
        self.nodes = nodes  # Redis Cluster: the tracked primaries serving them, in order
        self.cancelled = False
        self.started = time.monotonic()


class NearStore:
    """The near cache of one configured runtime: bounded store, tickets, tracker."""

    def __init__(self, settings: NearCache, client: Any, key_prefix: str, stats: Counts) -> None:
        self.settings = settings
        self.stats = stats
        # key -> (value, monotonic deadline): an entry goes when Redis's copy would expire,
        # even if the server's expiry (and its invalidation) comes later.
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        # Weak: a fetch that ends without remember() (it failed, or its task was cancelled)
        # leaves nothing behind once its ticket is dropped.
        self._tickets: weakref.WeakSet[_Ticket] = weakref.WeakSet()
        self._lock = threading.RLock()
        self._forked = False
        timeout = max(1.0, settings.heartbeat)

        def tracker(connect: Any, db: int, cluster: bool = False) -> Tracker:
            return Tracker(
                connect,
                f"{key_prefix}:",
                on_keys=self._invalidated,
                on_flush=self._flush,
                on_ready=self._ready,
                heartbeat=settings.heartbeat,
                lock=self._lock,
                mode=settings.invalidation,
                db=db,
                cluster=cluster,
            )

        self.tracker: Tracker | ClusterTracking
        #: Redis Cluster: the name of the primary serving a key, per the client's slot map.
        self._node_of: Callable[[str], str | None] | None = None
        if is_cluster(client):
            self.tracker = ClusterTracking(
                lambda: {node.name: node for node in client.get_primaries()},
                lambda node: tracker(node_connection_factory(node, timeout), 0, cluster=True),
                settings.heartbeat,
            )
            self._node_of = _node_namer(client)
        else:
            db = int(connection_kwargs(client).get("db") or 0)
            self.tracker = tracker(connection_factory(client, timeout), db)
        _STORES.add(self)

    # -- reads ------------------------------------------------------------------------

    def lookup(
        self, label: str, events: str, key: str, tag_keys: Sequence[str], schema: bytes
    ) -> bytes | None:
        """The entry under ``key`` if it is here and valid for the tags here; else ``None``.
        Counted as ``{events}l1_hits`` or ``{events}l1_misses`` of ``label``."""
        entry = self._lookup(key, tag_keys, schema)
        self.stats.add(label, f"{events}l1_misses" if entry is None else f"{events}l1_hits")
        return entry

    def _lookup(self, key: str, tag_keys: Sequence[str], schema: bytes) -> bytes | None:
        if self._forked:
            return None
        with self._lock:
            if not self.tracker.fresh():
                return None
            data = self._data
            item = data.get(key)
            if item is None:
                return None
            entry, deadline = item
            if deadline <= time.monotonic():
                self._drop((key,))
                return None
            tags = []
            for tag_key in tag_keys:
                tag_item = data.get(tag_key)
                if tag_item is None:
                    return None
                tags.append(tag_item[0])
            if not entry.startswith(b"".join(tags) + schema):
                return None
            data.move_to_end(key)
            for tag_key in tag_keys:
                data.move_to_end(tag_key)
            return entry

    def begin(self, key: str, tag_keys: Sequence[str]) -> _Ticket | None:
        """Register a fetch from Redis of ``key`` (checked against ``tag_keys``)."""
        if self._forked or not self.tracker.live:
            return None
        nodes = None
        if self._node_of is not None:
            nodes = self._tracked_nodes((key, *tag_keys))
            if nodes is None:
                return None  # a slot no tracked primary serves: fetch, keep nothing
        ticket = _Ticket(frozenset((key, *tag_keys)), nodes)
        with self._lock:
            self._tickets.add(ticket)
        return ticket

    def remember(
        self, ticket: _Ticket | None, key: str, tag_keys: Sequence[str], fetched: Fetched
    ) -> None:
        """Keep the entry ``fetched`` (valid in Redis when fetched) for as long as Redis keeps
        it, unless an invalidation since :meth:`begin` says it may not be current any more."""
        if ticket is None:
            return
        with self._lock:
            # Apply what has arrived while the ticket is still registered, so that an
            # invalidation of a write made after the fetch cancels it.
            fresh = self.tracker.fresh()
            self._tickets.discard(ticket)
            entry, expires_in_ms = fetched.entry, fetched.expires_in_ms
            if entry is None or expires_in_ms is None or expires_in_ms <= 0:
                return  # no entry, or no TTL to bound the copy by
            if not fresh or ticket.cancelled:
                return
            if ticket.nodes is not None and self._tracked_nodes((key, *tag_keys)) != ticket.nodes:
                return  # a slot moved during the fetch: who served it is not known
            # From before the request: the copy never outlives the entry it copies.
            deadline = ticket.started + expires_in_ms / 1000
            size = TAG_SIZE
            self._put(key, entry, deadline)
            for index, tag_key in enumerate(tag_keys):  # tags never expire in Redis either
                self._put(tag_key, entry[index * size : (index + 1) * size], _NEVER)

    def _tracked_nodes(self, keys: Sequence[str]) -> tuple[str, ...] | None:
        """The primaries serving ``keys`` if every one is tracked and live, else ``None``."""
        assert isinstance(self.tracker, ClusterTracking)
        assert self._node_of is not None
        names = []
        for key in keys:
            name = self._node_of(key)
            if name is None or not self.tracker.tracks(name):
                return None
            names.append(name)
        return tuple(names)

    # -- this process's writes ----------------------------------------------------------

    def discard(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` now (this process is writing them)."""
        if self._forked:
            return
        with self._lock:
            self._drop(keys)

    def flush(self, reason: str) -> None:
        """Drop everything (an invalidation of this process failed)."""
        if self._forked:
            return
        with self._lock:
            self._flush(reason)

    # -- inspection and shutdown --------------------------------------------------------

    def size(self) -> tuple[int, int]:
        """``(entries, bytes)`` held now."""
        with self._lock:
            return len(self._data), self._bytes

    def close(self) -> None:
        _STORES.discard(self)
        if self._forked:  # the parent's thread and lock: not ours to touch
            return
        self.tracker.close()
        with self._lock:
            self._data.clear()
            self._bytes = 0

    # -- internals (callers hold the lock) ----------------------------------------------

    def _put(self, key: str, value: bytes, deadline: float) -> None:
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._bytes -= _cost(key, old[0])
        data[key] = (value, deadline)
        self._bytes += _cost(key, value)
        settings = self.settings
        evicted = 0
        while len(data) > settings.max_entries or self._bytes > settings.max_bytes:
            gone_key, (gone, _) = data.popitem(last=False)
            self._bytes -= _cost(gone_key, gone)
            evicted += 1
        if evicted:
            self.stats.add("*", "l1_evictions", evicted)

    def _drop(self, keys: Iterable[str]) -> int:
        dropped = 0
        data = self._data
        for key in keys:
            item = data.pop(key, None)
            if item is not None:
                self._bytes -= _cost(key, item[0])
                dropped += 1
            for ticket in self._tickets:
                if key in ticket.keys:
                    ticket.cancelled = True
        return dropped

    def _invalidated(self, keys: Sequence[bytes]) -> None:
        dropped = self._drop(key.decode("utf-8", "surrogateescape") for key in keys)
        if dropped:
            self.stats.add("*", "l1_invalidations", dropped)

    def _flush(self, reason: str) -> None:
        if self._data:
            self.stats.add("*", "l1_flushes")
        self._data.clear()
        self._bytes = 0
        for ticket in self._tickets:
            ticket.cancelled = True

    def _ready(self) -> None:
        self._flush("tracking (re)started")


_NEVER = float("inf")


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


#: Every open near cache, so that a forked child can turn them off: it shares the parent's
#: tracking socket but not its thread, and a lock may have been held at the fork. The child
#: reads Redis directly until it calls ``configure()`` itself.
_STORES: weakref.WeakSet[NearStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _node_namer(client: Any) -> Callable[[str], str | None]:
    def node_of(key: str) -> str | None:
        try:
            node = client.get_node_from_key(key)
        except Exception:  # noqa: BLE001 - no slot map yet (an asyncio client before use)
            return None
        return None if node is None else str(node.name)

    return node_of


def check_client(transport: Any, settings: NearCache) -> Any:
    """The redis-py client behind ``transport`` when a near cache can front it."""
    if not isinstance(transport, (RedisSyncTransport, RedisAsyncTransport)):
        raise ConfigurationError(
            "near_cache needs RedisSyncTransport or RedisAsyncTransport (it is invalidated by "
            f"the Redis server), got {type(transport).__name__}"
        )
    if is_cluster(transport.client) and settings.invalidation != "tracking":
        raise ConfigurationError(
            'near_cache on Redis Cluster needs invalidation="tracking" (client tracking on '
            "every primary): keyspace notifications are not supported there"
        )
    pool = getattr(transport.client, "connection_pool", None)
    if "Sentinel" in type(pool).__name__:
        # Its tracking connection would need the current primary on every reconnect.
        raise ConfigurationError(
            "near_cache does not support Redis Sentinel clients yet: configure it without "
            "near_cache, or give it a client of the primary"
        )
    return transport.client
