"""The transport as the core sees it: the atomic operations, one round trip each.

Sync code calls :class:`Driver`'s methods: an async transport is wrapped in
:class:`_AwaitingFacade`, whose methods run the coroutine with SQLAlchemy's ``await_only``
(valid inside ``AsyncSession``'s greenlet), and a transport with only
``get``/``set``/``delete`` is given the atomic operations by :class:`_EmulatedAtomic`, with
the weaker guarantee documented on it. A coroutine (``AsyncSession.get``'s fast path) awaits
an async atomic transport itself (:attr:`Driver.awaitable`). So the read protocol
(``_flow``) and the invalidation path are the same for every kind of session and transport.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel_cache._compat import await_only, in_async_session_context
from sqlmodel_cache.transport._protocols import Fetched

if TYPE_CHECKING:
    from sqlmodel_cache.transport._redis.near import NearStore

#: How long emulated tags live on a transport without native tag support (30 days).
EMULATED_TAG_TTL = 30 * 24 * 3600

_ATOMIC = ("fetch", "fill", "invalidate")


class _AwaitingFacade:
    """Sync view of an async transport, for code running inside SQLAlchemy's greenlet."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._transport, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return await_only(method(*args, **kwargs))

        return call


class _EmulatedAtomic:
    """The atomic operations built from ``get``/``set``/``delete``.

    NOTE: without a server-side check the fill is a plain ``set``: a reader that read the
    database before a concurrent commit can store its older row after that commit's
    invalidation (SPEC C2 does not hold). Tags and invalidation still work, so a commit is
    never missed by readers that start after it.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        tags = []
        for tag_key in tag_keys:
            tag = self._transport.get(tag_key)
            if tag is None:
                tag = new_tag
                self._transport.set(tag_key, tag, EMULATED_TAG_TTL)
            tags.append(bytes(tag))
        entry = self._transport.get(key)
        if entry is not None and bytes(entry).startswith(b"".join(tags) + schema):
            return Fetched(bytes(entry), False, ())
        return Fetched(None, True, tuple(tags))

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        self._transport.set(key, value, ttl)
        return True

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        if delete_keys:
            self._transport.delete(*delete_keys)
        for tag_key in tag_keys:
            self._transport.set(tag_key, new_tag, EMULATED_TAG_TTL)

    def delete(self, *keys: str) -> None:
        self._transport.delete(*keys)


class Driver:
    """The transport as the core sees it: sync calls, atomic operations, one round trip each."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.is_async = inspect.iscoroutinefunction(transport.get)
        self.is_atomic = all(callable(getattr(transport, name, None)) for name in _ATOMIC)
        #: A coroutine may await the transport's atomic operations itself (``adelete``,
        #: ``transport.fetch`` and ``transport.fill``), with no greenlet.
        self.awaitable = self.is_async and self.is_atomic
        ops: Any = _AwaitingFacade(transport) if self.is_async else transport
        self._ops: Any = ops if self.is_atomic else _EmulatedAtomic(ops)
        #: The near cache in front of the transport, if configured (reads consult it in
        #: ``_flow.read``; every write here goes through it).
        self.near: NearStore | None = None

    def usable_here(self) -> bool:
        """False for an async transport called from a plain sync ``Session``."""
        return not self.is_async or in_async_session_context()

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        fetched: Fetched = self._ops.fetch(key, tag_keys, schema, new_tag, lease, lease_ttl_ms)
        return fetched

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        return bool(self._ops.fill(key, value, ttl, lease))

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        near = self.near
        if near is None:
            self._ops.invalidate(delete_keys, tag_keys, new_tag)
            return
        # Before: this process stops serving the old entries now. After: a reader of this
        # process that fetched them from Redis meanwhile does not keep them.
        keys = (*delete_keys, *tag_keys)
        near.discard(keys)
        try:
            self._ops.invalidate(delete_keys, tag_keys, new_tag)
        except BaseException:
            near.flush("an invalidation failed")
            raise
        near.discard(keys)

    def delete(self, *keys: str) -> None:
        if self.near is not None:
            self.near.discard(keys)
        self._ops.delete(*keys)

    async def adelete(self, *keys: str) -> None:
        """:meth:`delete`, awaited directly (only when :attr:`awaitable`)."""
        if self.near is not None:
            self.near.discard(keys)
        await self.transport.delete(*keys)
