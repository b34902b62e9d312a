"""Optional exporters of ``SQLModelCache.stats()``: ``prometheus`` and ``opentelemetry``.

Both read the counters when metrics are collected, so they add nothing to the read path.
"""
