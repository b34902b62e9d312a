"""What a transport is: the structural protocols the core talks to.

A transport moves bytes; it never builds keys, serializes rows or knows about the ORM.

* :class:`CacheTransport` / :class:`AsyncCacheTransport` — the three-method contract of
  sqlmodel-cache 0.1.1 (``get``, ``set``, ``delete``). Any object with these methods works.
* :class:`AtomicCacheTransport` / :class:`AsyncAtomicCacheTransport` — the optional extension
  that the built-in transports implement. It does each cache step in one atomic server-side
  operation, which is what makes fills race-safe (SPEC C2) and a commit one round trip.

Entry layout that ``fetch`` relies on (built by the core, opaque to the transport except for
its prefix)::

    entry := tag_1 ... tag_n  schema  body

Each ``tag_i`` is the current value of ``tag_keys[i]`` when the entry was filled, ``schema``
identifies the payload format and model schema, ``body`` is the encoded data. An entry is
valid only while its prefix equals the *current* tags followed by the reader's schema; a lease
is a value that starts with :data:`LEASE_PREFIX`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

TAG_SIZE = 16
"""Length of a tag in bytes (16 hex characters)."""

LEASE_PREFIX = b"L"
"""The first byte of every lease marker. Entries start with hex tags, so no entry starts
with it; ``fetch`` uses it to tell another reader's lease from an entry."""


class Fetched(NamedTuple):
    """What one ``fetch`` saw.

    Attributes:
        entry: the stored entry when it is valid for ``tags + schema``; ``None`` otherwise.
        leased: ``True`` when the key was empty (or held an outdated entry) and now holds the
            caller's lease: only then may the caller ``fill`` it.
        tags: the current value of every tag key, in order (missing tags were created).
            Empty when ``entry`` is returned.
        expires_in_ms: with an entry, the milliseconds it has left when the transport
            knows (the near cache keeps its copy no longer); ``None`` otherwise.
    """

    entry: bytes | None
    leased: bool
    tags: tuple[bytes, ...]
    expires_in_ms: int | None = None


@runtime_checkable
class CacheTransport(Protocol):
    """The minimal synchronous transport: bytes in, bytes out."""

    def get(self, key: str) -> bytes | None:
        """Return the value stored under ``key``, or ``None``."""

    def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""

    def delete(self, *keys: str) -> None:
        """Remove ``keys``; missing keys are ignored."""


@runtime_checkable
class AsyncCacheTransport(Protocol):
    """The minimal asyncio transport: coroutine twins of ``CacheTransport``."""

    async def get(self, key: str) -> bytes | None:
        """Return the value stored under ``key``, or ``None``."""

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""

    async def delete(self, *keys: str) -> None:
        """Remove ``keys``; missing keys are ignored."""


@runtime_checkable
class AtomicCacheTransport(CacheTransport, Protocol):
    """Synchronous transport with the atomic operations behind the consistency guarantees."""

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        """Atomically: read every tag (creating missing ones with ``new_tag``), then return
        the entry under ``key`` if it starts with ``tags + schema``; otherwise, unless another
        reader's lease is there, store ``lease`` under ``key`` for ``lease_ttl_ms``."""

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        """Atomically store ``value`` for ``ttl`` seconds if ``key`` still holds ``lease``."""

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        """Atomically delete ``delete_keys`` and set every key of ``tag_keys`` to ``new_tag``."""


@runtime_checkable
class AsyncAtomicCacheTransport(AsyncCacheTransport, Protocol):
    """Coroutine twins of ``AtomicCacheTransport``."""

    async def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        """See ``AtomicCacheTransport.fetch``."""

    async def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        """See ``AtomicCacheTransport.fill``."""

    async def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        """See ``AtomicCacheTransport.invalidate``."""
