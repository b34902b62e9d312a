"""Invalidations that failed (SPEC F3): kept, retried, and never silently forgotten.

When a commit's invalidation cannot reach the cache, its keys are kept here. Until they are
delivered, this process does not read the affected tables from the cache, and every later
invalidation carries them along (one call delivers everything). They are dropped once the
longest TTL this process stores entries with has passed since the failure: by then every
entry the invalidation would have removed has expired by itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Pending:
    row_keys: set[str]
    tag_keys: set[str]
    tables: set[str]
    expires: float


class PendingInvalidations:
    """The undelivered invalidations of this process, with retry pacing."""

    #: Seconds between delivery attempts after a failure, doubling up to :attr:`MAX_BACKOFF`.
    #: NOTE: the cap bounds how long other processes may serve stale entries after the cache
    #: recovers; each attempt on a dead cache costs one request a timeout.
    FIRST_BACKOFF = 0.05
    MAX_BACKOFF = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._items: list[_Pending] = []
        self._tables: frozenset[str] = frozenset()
        self._next_retry = 0.0
        self._backoff = self.FIRST_BACKOFF

    def __bool__(self) -> bool:
        return bool(self._items)

    def blocks(self, tables: Iterable[str]) -> bool:
        """True when an undelivered invalidation covers one of ``tables`` (hot path: one
        attribute read when nothing is pending)."""
        pending = self._tables
        return bool(pending) and not pending.isdisjoint(tables)

    def add(
        self, row_keys: Iterable[str], tag_keys: Iterable[str], tables: Iterable[str], ttl: float
    ) -> None:
        """Keep an undelivered invalidation for ``ttl`` seconds (the longest entry lifetime)."""
        item = _Pending(set(row_keys), set(tag_keys), set(tables), self._clock() + ttl)
        with self._lock:
            self._items.append(item)
            self._refresh()

    def take(self) -> tuple[list[_Pending], set[str], set[str]]:
        """The pending items and all their keys, to deliver along with the next invalidation
        (expired ones are dropped first). Then call :meth:`delivered` with those items, or
        :meth:`failed`. Items stay pending until delivered: concurrent deliveries may send
        the same keys twice, which is harmless, and never lose one."""
        with self._lock:
            now = self._clock()
            self._items = [item for item in self._items if item.expires > now]
            self._refresh()
            rows: set[str] = set()
            tags: set[str] = set()
            for item in self._items:
                rows |= item.row_keys
                tags |= item.tag_keys
            return list(self._items), rows, tags

    def retry_due(self) -> bool:
        """Whether a read should try to deliver now (paced with a growing backoff)."""
        with self._lock:
            return bool(self._items) and self._clock() >= self._next_retry

    def delivered(self, items: list[_Pending]) -> None:
        """``items`` (as taken) reached the cache."""
        done = {id(item) for item in items}
        with self._lock:
            self._items = [item for item in self._items if id(item) not in done]
            self._refresh()
            self._backoff = self.FIRST_BACKOFF

    def failed(self) -> None:
        with self._lock:
            self._next_retry = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)

    def size(self) -> int:
        with self._lock:
            return len(self._items)

    def _refresh(self) -> None:
        self._tables = frozenset(table for item in self._items for table in item.tables)
