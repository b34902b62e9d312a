"""Counters: what the cache did, per model. Cheap enough for the hot path.

Every count can also be pushed to subscribers (``SQLModelCache.subscribe``); the metrics
integrations do not need that: they read :meth:`Stats.snapshot` when scraped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger("sqlmodel_cache")

#: ``callback(label, event, amount)``, called for every count.
Subscriber = Callable[[str, str, int], None]

#: Process-wide, so subscriptions made at import time survive ``configure()``;
#: ``reset()`` clears them. A tuple, replaced on change, so the hot path reads it unlocked.
subscribers: tuple[Subscriber, ...] = ()


class Stats:
    """Thread-safe counters keyed by (model name, event), plus rate-limited warnings."""

    #: Seconds between two log lines about the same kind of failure.
    WARN_INTERVAL = 30.0

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._last_warned: dict[str, float] = {}

    def add(self, model: str, event: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[(model, event)] += amount
        if subscribers:
            self._notify(model, event, amount)

    def _notify(self, model: str, event: str, amount: int) -> None:
        for subscriber in subscribers:
            try:
                subscriber(model, event, amount)
            except Exception as exc:  # noqa: BLE001 - a broken hook must not break a read
                self.warn("subscriber", "a stats subscriber raised %r; ignored", exc)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{label: {event: count}}`` (see ``SQLModelCache.stats()`` for the events)."""
        with self._lock:
            result: dict[str, dict[str, int]] = {}
            for (model, event), count in sorted(self._counts.items()):
                result.setdefault(model, {})[event] = count
            return result

    def warn(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Log at most one line per ``kind`` every :attr:`WARN_INTERVAL` seconds."""
        now = time.monotonic()
        with self._lock:
            last = self._last_warned.get(kind)
            if last is not None and now - last < self.WARN_INTERVAL:
                return
            self._last_warned[kind] = now
        logger.log(level, message, *args)
