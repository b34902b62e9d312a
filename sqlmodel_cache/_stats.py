"""Counters: what the cache did, per model. Cheap enough for the hot path."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

logger = logging.getLogger("sqlmodel_cache")


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
