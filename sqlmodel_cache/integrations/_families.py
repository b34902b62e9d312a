"""How the ``stats()`` counters map onto metric families, shared by every exporter.

A family is one metric name whose samples all carry the same attribute names, e.g.
``hits{model="Hero", kind="get"}``; ``("Hero", "query_bypass:text")`` becomes
``bypasses{model="Hero", kind="query", reason="text"}``.

The near cache (``NearCache``) has families of its own, prefixed ``l1_``: its hits and
misses per model and kind (a read it answers is also counted in ``hits``: ``l1_hits`` is
the part of them that needed no Redis round trip), and, for the whole process, entries it
evicted, entries the Redis server invalidated, and the times it was emptied.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Family name -> (description, unit).
FAMILIES: dict[str, tuple[str, str]] = {
    "hits": ("Reads answered by the cache", "1"),
    "misses": ("Cacheable reads the cache could not answer", "1"),
    "fills": ("Entries stored after a miss", "1"),
    "bypasses": ("Reads that skipped the cache, by reason", "1"),
    "bytes": ("Entry bytes read by hits and written by fills", "By"),
    "invalidations": ("Commits and manual invalidations of a model's table", "1"),
    "invalidated_keys": ("Keys deleted or re-tagged by invalidations", "1"),
    "errors": ("Failed cache operations (the application never sees them)", "1"),
    "events": ("Other cache events: leases, rejected or skipped fills, breaker", "1"),
    "l1_hits": ("Reads answered by the near cache, in process (no Redis round trip)", "1"),
    "l1_misses": ("Reads the near cache could not answer (they went on to Redis)", "1"),
    "l1_evictions": ("Near cache entries evicted to stay within its max_entries/max_bytes", "1"),
    "l1_invalidations": ("Near cache entries dropped as the Redis server invalidated them", "1"),
    "l1_flushes": (
        "Times the near cache was emptied: a server flush, a lost tracking connection, "
        "a failed invalidation",
        "1",
    ),
}

#: Near cache events counted for the whole process (label ``"*"``), without attributes.
_L1_PROCESS_EVENTS = frozenset(("l1_evictions", "l1_invalidations", "l1_flushes"))

Sample = tuple[dict[str, str], int]


def classify(label: str, event: str) -> tuple[str, dict[str, str]]:
    """The family and attributes of one ``stats()`` counter."""
    kind = "query" if event.startswith("query_") else "get"
    base = event.removeprefix("query_")
    if base in ("hits", "misses", "fills", "l1_hits", "l1_misses"):
        return base, {"model": label, "kind": kind}
    if label == "*" and event in _L1_PROCESS_EVENTS:
        return event, {}
    if base.startswith("bypass:"):
        return "bypasses", {"model": label, "kind": kind, "reason": base.partition(":")[2]}
    if event in ("bytes_read", "bytes_written"):
        return "bytes", {"model": label, "direction": event.removeprefix("bytes_")}
    if event == "invalidations":
        return ("invalidated_keys", {}) if label == "*" else ("invalidations", {"model": label})
    if event in ("errors", "invalidation_errors"):
        operation = "read" if event == "errors" else "invalidate"
        return "errors", {"model": label, "operation": operation}
    return "events", {"model": label, "event": event}


def samples(snapshot: Mapping[str, Mapping[str, int]]) -> dict[str, list[Sample]]:
    """``stats()`` regrouped by family: ``{family: [(attributes, value), ...]}``."""
    grouped: dict[str, list[Sample]] = {}
    for label, events in snapshot.items():
        for event, value in events.items():
            family, attributes = classify(label, event)
            grouped.setdefault(family, []).append((attributes, value))
    return grouped
