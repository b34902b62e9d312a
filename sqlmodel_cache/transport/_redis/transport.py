"""Redis / Valkey transports over redis-py clients (sync and asyncio, single node or Cluster).

Both classes are thin: the atomic operations are Lua scripts shipped as package files
(``lua/*.lua``) and run with EVALSHA, so every operation is one round trip. Argument
building and reply parsing are shared; only the call differs between the two classes.

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

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

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


class _Script:
    """A script run with a bare ``EVALSHA``, on the transport's lane when the client has one
    (see ``connections``). redis-py's ``Script`` object is kept to load the script when
    the server does not have it (a new or restarted server, ``SCRIPT FLUSH``)."""

    def __init__(self, client: Any, source: str, lane: Any) -> None:
        self._client = client
        self._script = client.register_script(source)
        self._no_script: type[Exception] = _import_redis().exceptions.NoScriptError
        #: The lane's call, ``(packed, key, replies=1)``: sync or awaited, as the script is.
        self._on_lane: Any = None if lane is None else self._lane_call(lane)

    @staticmethod
    def _lane_call(lane: Any) -> Any:
        return lane.execute

    def _arguments(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self._script.sha, len(keys), *keys, *args)

    def _with_get(self, keys: Sequence[Any], args: Sequence[Any]) -> bytes:
        """The script's command and a GET of its first key after it, packed together."""
        return command(*self._arguments(keys, args)) + command("GET", keys[0])


class _SyncScript(_Script):
    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        arguments = self._arguments(keys, args)
        try:
            if self._on_lane is not None:
                try:
                    return self._on_lane(command(*arguments), keys[0])
                except Rerouted:
                    pass  # a cluster's layout changed: the client finds the way
            return self._client.execute_command(*arguments)
        except self._no_script:
            return self._script(keys=keys, args=args)

    def with_get(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any] | None:
        """The script's reply and the value of ``keys[0]`` read right after it, in one
        round trip on the lane; ``None`` when that cannot be done (no lane, a cluster
        redirection, a server without the script): then call the script alone."""
        if self._on_lane is None:
            return None
        try:
            replies: list[Any] = self._on_lane(self._with_get(keys, args), keys[0], 2)
        except (Rerouted, self._no_script):
            return None
        return replies


class _AsyncScript(_Script):
    @staticmethod
    def _lane_call(lane: Any) -> Any:
        # Cluster lanes serve sync and asyncio clients: their awaited call is aexecute().
        return lane.aexecute if isinstance(lane, ClusterLanes) else lane.execute

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        arguments = self._arguments(keys, args)
        try:
            if self._on_lane is not None:
                try:
                    return await self._on_lane(command(*arguments), keys[0])
                except Rerouted:
                    pass  # a cluster's layout changed: the client finds the way
            return await self._client.execute_command(*arguments)
        except self._no_script:
            return await self._script(keys=keys, args=args)

    async def with_get(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any] | None:
        """As :meth:`_SyncScript.with_get`, awaited."""
        if self._on_lane is None:
            return None
        try:
            replies: list[Any] = await self._on_lane(self._with_get(keys, args), keys[0], 2)
        except (Rerouted, self._no_script):
            return None
        return replies


def _scripts_for(client: Any, kind: str, script: type[_Script]) -> tuple[Any, Any, Any]:
    """Check ``client`` for a transport of ``kind`` and register the scripts on it."""
    _check_client(client, kind)
    _warn_if_unbounded(client, kind)
    lane = lane_for(client)
    fetch, fill, invalidate = (
        script(client, _script_source(f"{name}.lua"), lane) for name in _SCRIPTS
    )
    return fetch, fill, invalidate


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
        redis = _import_redis()
        client_class = redis.RedisCluster if cluster else redis.Redis
        return cls(client_class.from_url(url, **_bounded(options, timeout)))

    def __init__(self, client: Any) -> None:
        self.client = client
        self._fetch, self._fill, self._invalidate = _scripts_for(
            client, "RedisSyncTransport", _SyncScript
        )
        self._cluster = is_cluster(client)
        self._large = _LargeEntries()

    def get(self, key: str) -> bytes | None:
        value = self.client.get(key)
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.client.set(key, value, ex=ttl)

    def delete(self, *keys: str) -> None:
        if keys:
            self.client.delete(*keys)

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        args: list[Any] = [schema, new_tag, lease, lease_ttl_ms, _WHOLE]
        if self._cluster and not _one_slot(key, tag_keys):
            pipe = self.client.pipeline(transaction=False)
            _queue_tag_reads(pipe, tag_keys, new_tag)
            args += _tag_values(pipe.execute(), new_tag)
            tag_keys = ()
        keys = [key, *tag_keys]
        if key in self._large:
            replies = self._fetch.with_get(keys, [*args[:4], _PEEK, *args[5:]])
            fetched = None if replies is None else _parse_peeked(replies)
            if fetched is not None:
                return self._large.learn(key, fetched)
        return self._large.learn(key, _parse_fetch(self._fetch(keys, args)))

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return bool(self._fill([key], [lease, value, ttl]))

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        keys = [*delete_keys, *tag_keys]
        if not keys:
            return
        if self._cluster and not _one_slot(keys[0], keys):
            pipe = self.client.pipeline(transaction=False)
            _queue_invalidation(pipe, delete_keys, tag_keys, new_tag)
            pipe.execute()
        else:
            self._invalidate(keys, [len(delete_keys), new_tag])


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
        _import_redis()
        import redis.asyncio

        client_class = redis.asyncio.RedisCluster if cluster else redis.asyncio.Redis
        return cls(client_class.from_url(url, **_bounded(options, timeout)))

    def __init__(self, client: Any) -> None:
        self.client = client
        self._fetch, self._fill, self._invalidate = _scripts_for(
            client, "RedisAsyncTransport", _AsyncScript
        )
        self._cluster = is_cluster(client)
        self._large = _LargeEntries()

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(key)
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self.client.set(key, value, ex=ttl)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.client.delete(*keys)

    async def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        args: list[Any] = [schema, new_tag, lease, lease_ttl_ms, _WHOLE]
        if self._cluster and not _one_slot(key, tag_keys):
            pipe = self.client.pipeline(transaction=False)
            _queue_tag_reads(pipe, tag_keys, new_tag)
            args += _tag_values(await pipe.execute(), new_tag)
            tag_keys = ()
        keys = [key, *tag_keys]
        if key in self._large:
            replies = await self._fetch.with_get(keys, [*args[:4], _PEEK, *args[5:]])
            fetched = None if replies is None else _parse_peeked(replies)
            if fetched is not None:
                return self._large.learn(key, fetched)
        return self._large.learn(key, _parse_fetch(await self._fetch(keys, args)))

    async def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return bool(await self._fill([key], [lease, value, ttl]))

    async def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        keys = [*delete_keys, *tag_keys]
        if not keys:
            return
        if self._cluster and not _one_slot(keys[0], keys):
            pipe = self.client.pipeline(transaction=False)
            _queue_invalidation(pipe, delete_keys, tag_keys, new_tag)
            await pipe.execute()
        else:
            await self._invalidate(keys, [len(delete_keys), new_tag])
