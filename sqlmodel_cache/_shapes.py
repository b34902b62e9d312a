"""A bounded, thread-safe memo of statement shapes (see ``_queries``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Shapes remembered per process; the least recently used ones are forgotten past this.
MAX_SHAPES = 4096


class ShapeCache(Generic[T]):
    """Shapes by (dialect, SQLAlchemy statement cache key), least recently used evicted."""

    def __init__(self, max_size: int = MAX_SHAPES) -> None:
        self._shapes: OrderedDict[Hashable, T] = OrderedDict()
        self._max_size = max_size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> T | None:
        with self._lock:
            shape = self._shapes.get(key)
            if shape is not None:
                self._shapes.move_to_end(key)
            return shape

    def put(self, key: Hashable, shape: T) -> None:
        with self._lock:
            self._shapes[key] = shape
            while len(self._shapes) > self._max_size:
                self._shapes.popitem(last=False)
