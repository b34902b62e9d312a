"""Prometheus export of ``SQLModelCache.stats()`` (``pip install sqlmodel-cache[prometheus]``).

::

    from sqlmodel_cache.integrations.prometheus import instrument

    instrument()  # registers with prometheus_client's default registry

Exposes counters such as ``sqlmodel_cache_hits_total{model="Hero",kind="get"}``, and for
the near cache ``sqlmodel_cache_l1_hits_total{model="Hero",kind="get"}``, ``l1_misses``,
``l1_evictions``, ``l1_invalidations`` and ``l1_flushes``; see ``FAMILIES`` for the full
list. Values are read
from ``stats()`` at scrape time, so they restart from zero after ``configure()``, which
Prometheus treats as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlmodel_cache._errors import MissingDependencyError
from sqlmodel_cache.integrations._families import FAMILIES, samples

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised only without the extra installed
    raise MissingDependencyError("prometheus_client", "prometheus") from None


class CacheCollector(Collector):
    """A custom collector: one counter family per kind of cache event."""

    def __init__(self, namespace: str = "sqlmodel_cache") -> None:
        self.namespace = namespace

    def collect(self) -> Iterator[CounterMetricFamily]:
        from sqlmodel_cache._api import SQLModelCache

        grouped = samples(SQLModelCache.stats())
        for name, (description, unit) in FAMILIES.items():
            found = grouped.get(name, [])
            label_names = sorted(found[0][0]) if found else []
            family = CounterMetricFamily(
                f"{self.namespace}_{name}",
                description,
                labels=label_names,
                unit="bytes" if unit == "By" else "",
            )
            for attributes, value in found:
                family.add_metric([attributes[label] for label in label_names], value)
            yield family


def instrument(
    registry: CollectorRegistry | None = None, *, namespace: str = "sqlmodel_cache"
) -> CacheCollector:
    """Register a ``CacheCollector`` with ``registry`` (default: the global one) and
    return it (``registry.unregister(collector)`` undoes it)."""
    collector = CacheCollector(namespace)
    target: Any = REGISTRY if registry is None else registry
    target.register(collector)
    return collector
