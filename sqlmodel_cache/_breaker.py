"""A circuit breaker for cache reads (SPEC F2): a dead cache must cost almost nothing.

Closed: every read goes to the cache. After ``threshold`` consecutive failures it opens:
reads skip the cache (straight to the database, no timeout to wait for) for ``reset_after``
seconds. Then it half-opens: one read probes the cache; success closes the breaker, failure
opens it again. Pure logic with an injectable clock; the driver calls it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    """Counts consecutive failures and decides whether the next read may use the cache."""

    def __init__(
        self,
        threshold: int = 5,
        reset_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    def allow(self) -> bool:
        """Whether a read may try the cache now (in half-open state: only one at a time)."""
        if self._opened_at is None:  # closed: the hot path, no lock (one attribute read)
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset_after:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        if not self._failures and self._opened_at is None:
            return  # nothing to reset (every hit says so: no lock)
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> bool:
        """Count a failure; ``True`` when this failure opened (or re-opened) the breaker."""
        with self._lock:
            self._failures += 1
            if self._probing or (self._opened_at is None and self._failures >= self.threshold):
                self._opened_at = self._clock()
                self._probing = False
                return True
            return False
