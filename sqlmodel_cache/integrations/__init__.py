"""Optional exporters of ``SQLModelCache.stats()``: :mod:`.prometheus` and :mod:`.opentelemetry`.

Both read the counters when metrics are collected, so they add nothing to the read path.
"""
