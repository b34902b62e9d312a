"""The embedded default: an in-process, thread-safe, bounded store with TTLs."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from sqlmodel_cache._errors import ConfigurationError
from sqlmodel_cache.transport._protocols import LEASE_PREFIX, Fetched


class MemoryTransport:
    """An in-process cache store, usable from sync and async sessions alike.

    It implements the atomic protocol, so within one process it gives the same guarantees
    as the Redis transports. It is bounded: past ``max_entries`` keys the least recently
    used key is evicted (tag keys included, which is safe: a missing tag is recreated with
    a fresh value, so the entries that carried the evicted one simply stop matching).

    For tests and inspection it also has ``len(transport)`` (the number of live keys),
    ``keys()``, ``ttl(key)`` and ``clear()``.

    Args:
        max_entries: the most keys kept at once.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(
                f"MemoryTransport(max_entries=...) must be a positive int, got {max_entries!r}"
            )
        self.max_entries = max_entries
        # key -> (value, monotonic deadline or None for "no expiry")
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for key in list(self._data) if self._read(key) is not None)

    def keys(self) -> list[str]:
        """Every live key (for tests and inspection; O(n))."""
        with self._lock:
            return [key for key in list(self._data) if self._read(key) is not None]

    def ttl(self, key: str) -> float | None:
        """Seconds ``key`` has left; ``None`` when it is missing or never expires."""
        with self._lock:
            if self._read(key) is None:
                return None
            deadline = self._data[key][1]
            return None if deadline is None else deadline - time.monotonic()

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._data.clear()

    # -- the basic protocol -------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._read(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        with self._lock:
            self._write(key, value, ttl)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    # -- the atomic protocol ------------------------------------------------------------

    def fetch(
        self,
        key: str,
        tag_keys: Sequence[str],
        schema: bytes,
        new_tag: bytes,
        lease: bytes,
        lease_ttl_ms: int,
    ) -> Fetched:
        with self._lock:
            tags = []
            for tag_key in tag_keys:
                tag = self._read(tag_key)
                if tag is None:
                    tag = new_tag
                    self._write(tag_key, tag, None)
                tags.append(tag)
            entry = self._read(key)
            if entry is not None:
                if entry.startswith(LEASE_PREFIX):
                    return Fetched(None, False, tuple(tags))
                if entry.startswith(b"".join(tags) + schema):
                    deadline = self._data[key][1]
                    left = None if deadline is None else int((deadline - time.monotonic()) * 1000)
                    return Fetched(entry, False, (), left)
            self._write(key, lease, lease_ttl_ms / 1000)
            return Fetched(None, True, tuple(tags))

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        with self._lock:
            if self._read(key) != lease:
                return False
            self._write(key, value, ttl)
            return True

    def invalidate(
        self, delete_keys: Sequence[str], tag_keys: Sequence[str], new_tag: bytes
    ) -> None:
        with self._lock:
            for key in delete_keys:
                self._data.pop(key, None)
            for tag_key in tag_keys:
                self._write(tag_key, new_tag, None)

    # -- internals (callers hold the lock) ----------------------------------------------

    def _read(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, deadline = item
        if deadline is not None and deadline <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _write(self, key: str, value: bytes, ttl: float | None) -> None:
        deadline = None if ttl is None else time.monotonic() + ttl
        self._data[key] = (value, deadline)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
