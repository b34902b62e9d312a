"""How the ``stats()`` counters map onto metric families, shared by every exporter.

A family is one metric name whose samples all carry the same attribute names, e.g.
``hits{model="Hero", kind="get"}``; ``("Hero", "query_bypass:text")`` becomes
``bypasses{model="Hero", kind="query", reason="text"}``.
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
}

Sample = tuple[dict[str, str], int]


def classify(label: str, event: str) -> tuple[str, dict[str, str]]:
    """The family and attributes of one ``stats()`` counter."""
    kind = "query" if event.startswith("query_") else "get"
    base = event.removeprefix("query_")
    if base in ("hits", "misses", "fills"):
        return base, {"model": label, "kind": kind}
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
