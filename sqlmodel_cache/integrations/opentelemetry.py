"""OpenTelemetry export of ``SQLModelCache.stats()``.

Install with ``pip install 'sqlmodel-cache[opentelemetry]'``.

::

    from sqlmodel_cache.integrations.opentelemetry import instrument

    instrument()  # uses the global MeterProvider

Creates one observable counter per kind of cache event (``sqlmodel_cache.hits`` with
attributes ``model`` and ``kind``, ...; the near cache's are ``sqlmodel_cache.l1_hits``,
``l1_misses``, ``l1_evictions``, ``l1_invalidations`` and ``l1_flushes``), read from
``stats()`` at collection time, so the read path pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from sqlmodel_cache import __version__
from sqlmodel_cache._errors import MissingDependencyError
from sqlmodel_cache.integrations._families import FAMILIES, samples

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, ObservableCounter, Observation
except ImportError:  # pragma: no cover - exercised only without the extra installed
    raise MissingDependencyError("opentelemetry-api", "opentelemetry") from None


def _observe(family: str, options: CallbackOptions) -> Iterable[Observation]:
    from sqlmodel_cache._api import SQLModelCache

    found = samples(SQLModelCache.stats()).get(family, [])
    return [Observation(value, attributes) for attributes, value in found]


def instrument(meter_provider: MeterProvider | None = None) -> list[ObservableCounter]:
    """Create the observable counters on ``meter_provider`` (default: the global one)."""
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter("sqlmodel_cache", __version__)
    return [
        meter.create_observable_counter(
            f"sqlmodel_cache.{name}",
            callbacks=[partial(_observe, name)],
            unit=unit,
            description=description,
        )
        for name, (description, unit) in FAMILIES.items()
    ]
