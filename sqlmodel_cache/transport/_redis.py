"""Redis / Valkey transports over redis-py clients (sync and asyncio).

Both classes are thin: the atomic operations are Lua scripts shipped as package files
(``lua/*.lua``) and run with EVALSHA, so every operation is one round trip. Argument
building and reply parsing are shared; only the call differs between the two classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from sqlmodel_cache._errors import ConfigurationError, MissingDependencyError
from sqlmodel_cache.transport._protocols import Fetched


def _script_source(name: str) -> str:
    return resources.files("sqlmodel_cache.transport").joinpath(f"lua/{name}").read_text("utf-8")


_SCRIPTS = ("fetch", "fill", "invalidate")

logger = logging.getLogger("sqlmodel_cache")


def _connection_kwargs(client: Any) -> dict[str, Any]:
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if callable(get_kwargs):
        return dict(get_kwargs())
    pool = getattr(client, "connection_pool", None)
    return dict(getattr(pool, "connection_kwargs", {}) or {})


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
    if _connection_kwargs(client).get("decode_responses"):
        raise ConfigurationError(
            f"{kind} needs a client created with decode_responses=False (the default): "
            "cache entries are bytes, and decoding them to str would corrupt them"
        )


def _parse_fetch(reply: Sequence[Any]) -> Fetched:
    entry = reply[0]
    if entry:
        return Fetched(bytes(entry), False, ())
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
    kwargs = _connection_kwargs(client)
    if kwargs and kwargs.get("socket_timeout") is None:
        logger.warning(
            "%s: the client has no socket_timeout, so an unreachable Redis can block a read "
            "for the OS TCP timeout; pass socket_timeout=... or use %s.from_url()",
            kind,
            kind,
        )


def _scripts_for(client: Any, kind: str) -> tuple[Any, Any, Any]:
    """Check ``client`` for a transport of ``kind`` and register the scripts on it."""
    _check_client(client, kind)
    _warn_if_unbounded(client, kind)
    fetch, fill, invalidate = (
        client.register_script(_script_source(f"{name}.lua")) for name in _SCRIPTS
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
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any
    ) -> RedisSyncTransport:
        """A transport over ``redis.Redis.from_url(url)`` with bounded timeouts."""
        return cls(_import_redis().Redis.from_url(url, **_bounded(options, timeout)))

    def __init__(self, client: Any) -> None:
        self.client = client
        self._fetch, self._fill, self._invalidate = _scripts_for(client, "RedisSyncTransport")

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
        args = [schema, new_tag, lease, lease_ttl_ms]
        return _parse_fetch(self._fetch(keys=[key, *tag_keys], args=args))

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return bool(self._fill(keys=[key], args=[lease, value, ttl]))

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        if delete_keys or tag_keys:
            self._invalidate(keys=[*delete_keys, *tag_keys], args=[len(delete_keys), new_tag])


class RedisAsyncTransport:
    """Asyncio transport over a ``redis.asyncio.Redis`` client (Redis or Valkey).

    Used by ``AsyncSession`` (called from inside SQLAlchemy's greenlet) and by the async
    admin API. A plain sync ``Session`` cannot drive it and bypasses the cache with a warning.

    Args:
        client: a configured client created with ``decode_responses=False`` (the default).
    """

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any
    ) -> RedisAsyncTransport:
        """A transport over ``redis.asyncio.Redis.from_url(url)`` with bounded timeouts."""
        _import_redis()
        import redis.asyncio

        return cls(redis.asyncio.Redis.from_url(url, **_bounded(options, timeout)))

    def __init__(self, client: Any) -> None:
        self.client = client
        self._fetch, self._fill, self._invalidate = _scripts_for(client, "RedisAsyncTransport")

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
        args = [schema, new_tag, lease, lease_ttl_ms]
        return _parse_fetch(await self._fetch(keys=[key, *tag_keys], args=args))

    async def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return bool(await self._fill(keys=[key], args=[lease, value, ttl]))

    async def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        if delete_keys or tag_keys:
            await self._invalidate(keys=[*delete_keys, *tag_keys], args=[len(delete_keys), new_tag])
