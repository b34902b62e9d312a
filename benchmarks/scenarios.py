"""The benchmark catalogue: every scenario, the variants that run it, and the targets of
issue 6 (the cache) and issue 7 (the near cache).

Pure data on the standard library: ``run.py`` reads it to plan and report, ``worker.py``
(which runs in all three virtual environments) reads it to know what a scenario name means.
How each operation is timed is described in ``benchmarks/README.md`` and in ``worker.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

DBS = ("sqlite", "pg")
APIS = ("sync", "async")
TRANSPORTS = ("memory", "redis")

#: Cached operations, in table order, each with the uncached operation it is compared with.
CACHED_OPS = {
    "get_hit": "get",
    "get_miss": "get",
    "select1_hit": "select1",
    "select1_miss": "select1",
    "select100_hit": "select100",
    "select100_miss": "select100",
    "commit1": "commit1",
    "commit100": "commit100",
}
UNCACHED_OPS = ("get", "select1", "select100", "commit1", "commit100")
#: Reference points that involve no cache library: a redis-py GET of 200 bytes, and opening
#: and closing a Session.
BASELINE_OPS = ("redis_get", "session")

LABELS = {
    "get_hit": "get hit",
    "get_miss": "get miss",
    "select1_hit": "select 1 row hit",
    "select1_miss": "select 1 row miss",
    "select100_hit": "select 100 rows hit",
    "select100_miss": "select 100 rows miss",
    "commit1": "commit 1 row",
    "commit100": "commit 100 rows",
    "redis_get": "redis-py GET 200 B",
    "session": "Session open + close",
}

#: What sqlmodel-cache 0.1.1 cannot do (reported as n/a, with this reason).
PEER_NA = frozenset(("select1_hit", "select1_miss", "select100_hit", "select100_miss"))
PEER_NA_REASON = "0.1.1 caches session.get() only; its select() of a cached model raises"


@dataclass(frozen=True)
class Scenario:
    """One measured operation: ``op`` through ``api`` on ``db`` with ``transport``.

    ``db`` and ``transport`` are empty where they do not apply (uncached operations have no
    transport; baselines have neither)."""

    op: str
    api: str
    db: str = ""
    transport: str = ""

    @property
    def name(self) -> str:
        return ".".join(part for part in (self.db, self.api, self.op, self.transport) if part)

    @property
    def base(self) -> str:
        """The operation without its cache state: ``get_hit`` -> ``get``."""
        return CACHED_OPS.get(self.op, self.op)

    @property
    def state(self) -> str:
        """``hit``, ``miss`` or ``""``."""
        return self.op.rpartition("_")[2] if self.op.endswith(("_hit", "_miss")) else ""

    @property
    def needs_redis(self) -> bool:
        return self.transport == "redis" or self.op == "redis_get"

    @property
    def needs_postgres(self) -> bool:
        return self.db == "pg"


CACHED = [
    Scenario(op, api, db, transport)
    for db in DBS
    for api in APIS
    for op in CACHED_OPS
    for transport in TRANSPORTS
]
UNCACHED = [Scenario(op, api, db) for db in DBS for api in APIS for op in UNCACHED_OPS]
#: What the near cache (an in-process L1 in front of Redis) is measured on: hot reads. Its
#: scenarios are the Redis scenarios of the same names, run by the ``near`` variants.
NEAR = [
    Scenario(op, api, db, "redis")
    for db in DBS
    for api, op in (
        ("sync", "get_hit"),
        ("async", "get_hit"),
        ("sync", "select1_hit"),
        ("sync", "select100_hit"),
    )
]
BASELINES = [Scenario(op, api) for op in BASELINE_OPS for api in APIS]
SCENARIOS = {scenario.name: scenario for scenario in (*BASELINES, *UNCACHED, *CACHED)}


@dataclass(frozen=True)
class Variant:
    """A column of the report: one worker process, in one virtual environment.

    ``env``: ``main`` (SQLAlchemy 2.1 and this repository), ``sa20`` (SQLAlchemy 2.0 and this
    repository) or ``peer`` (SQLAlchemy 2.0 and sqlmodel-cache 0.1.1; same package versions
    as ``sa20``). ``mode``: which library the worker configures (``uncached``: none;
    ``near``: this repository with ``NearCache()`` in front of its Redis transports)."""

    name: str
    env: str
    mode: str
    scenarios: tuple[Scenario, ...]


_PEER_COMPARABLE = tuple(s for s in CACHED if s.op not in PEER_NA)
VARIANTS = (
    Variant("uncached", "main", "uncached", (*BASELINES, *UNCACHED)),
    Variant("ours", "main", "ours", tuple(CACHED)),
    # Peer comparisons run on SQLAlchemy 2.0 on both sides: 0.1.1's async path breaks on 2.1.
    Variant("ours@2.0", "sa20", "ours", _PEER_COMPARABLE),
    Variant("peer", "peer", "peer", _PEER_COMPARABLE),
    # The near cache over Redis; its peer comparison runs on SQLAlchemy 2.0 too.
    Variant("near", "main", "near", tuple(NEAR)),
    Variant(
        "near@2.0",
        "sa20",
        "near",
        tuple(s for s in NEAR if (s.api, s.op) == ("sync", "get_hit")),
    ),
)
VARIANT_NAMES = tuple(variant.name for variant in VARIANTS)


@dataclass(frozen=True)
class Target:
    """A target of issue 6 or 7 (``issue``), checked by reading the report (never asserted).

    ``kind``: ``ratio`` = median over rounds of ``num / den``; ``overhead`` = median over
    rounds of ``(num - den) / unit`` (a raw GET: the cost of a round trip); ``trips`` = most
    cache round trips of one ``num`` operation; ``memory`` = a figure of the memory report,
    ``num`` = (variant, figure). Operands are ``(variant, scenario name)``. A target is met
    when its value is at most ``limit``.
    """

    text: str
    kind: str
    num: tuple[str, str]
    limit: float
    den: tuple[str, str] | None = None
    unit: tuple[str, str] | None = None
    issue: int = 6


_GET_SYNC = ("uncached", "sync.redis_get")
TARGETS = (
    Target(
        "sync get hit, Redis: >= 2.5x faster than 0.1.1 (ours@2.0 / peer)",
        "ratio",
        ("ours@2.0", "sqlite.sync.get_hit.redis"),
        1 / 2.5,
        ("peer", "sqlite.sync.get_hit.redis"),
    ),
    Target(
        "sync get hit, Redis: <= 3x a raw redis-py GET",
        "ratio",
        ("ours", "sqlite.sync.get_hit.redis"),
        3.0,
        _GET_SYNC,
    ),
    Target(
        "memory get hit: >= 3x faster than 0.1.1 with a dict transport",
        "ratio",
        ("ours@2.0", "sqlite.sync.get_hit.memory"),
        1 / 3,
        ("peer", "sqlite.sync.get_hit.memory"),
    ),
    Target(
        "memory get hit: >= 4x faster than uncached get on in-memory SQLite",
        "ratio",
        ("ours", "sqlite.sync.get_hit.memory"),
        1 / 4,
        ("uncached", "sqlite.sync.get"),
    ),
    Target(
        "PostgreSQL: Redis get hit >= 6x faster than uncached get",
        "ratio",
        ("ours", "pg.sync.get_hit.redis"),
        1 / 6,
        ("uncached", "pg.sync.get"),
    ),
    Target(
        "PostgreSQL: 100-row select hit (Redis) >= 5x faster than uncached",
        "ratio",
        ("ours", "pg.sync.select100_hit.redis"),
        1 / 5,
        ("uncached", "pg.sync.select100"),
    ),
    Target(
        "async get hit, Redis: <= 2x the sync hit",
        "ratio",
        ("ours", "sqlite.async.get_hit.redis"),
        2.0,
        ("ours", "sqlite.sync.get_hit.redis"),
    ),
    Target(
        "async get hit, Redis: >= 3x faster than 0.1.1's async hit (SQLAlchemy 2.0)",
        "ratio",
        ("ours@2.0", "sqlite.async.get_hit.redis"),
        1 / 3,
        ("peer", "sqlite.async.get_hit.redis"),
    ),
    Target(
        "commit invalidating 100 rows: one cache round trip",
        "trips",
        ("ours", "pg.sync.commit100.redis"),
        1,
    ),
    Target(
        "commit invalidating 100 rows: <= 1.3x an uncached commit on PostgreSQL",
        "ratio",
        ("ours", "pg.sync.commit100.redis"),
        1.3,
        ("uncached", "pg.sync.commit100"),
    ),
    Target(
        "get miss, Redis, SQLite: <= uncached + 2 round trips ((miss - uncached) / GET)",
        "overhead",
        ("ours", "sqlite.sync.get_miss.redis"),
        2.0,
        ("uncached", "sqlite.sync.get"),
        _GET_SYNC,
    ),
    Target(
        "get miss, Redis, PostgreSQL: <= uncached + 2 round trips ((miss - uncached) / GET)",
        "overhead",
        ("ours", "pg.sync.get_miss.redis"),
        2.0,
        ("uncached", "pg.sync.get"),
        _GET_SYNC,
    ),
    Target(
        "memory: value bytes stored per cached row <= 1.2x the JSON of its column values",
        "memory",
        ("ours", "value_ratio"),
        1.2,
    ),
    # -- issue 7: the near cache ----------------------------------------------------------
    Target(
        "near cache: sync get hit (SQLite) <= 1.2x the memory-transport hit",
        "ratio",
        ("near", "sqlite.sync.get_hit.redis"),
        1.2,
        ("ours", "sqlite.sync.get_hit.memory"),
        issue=7,
    ),
    Target(
        "near cache: sync get hit (PostgreSQL) <= 1.2x the memory-transport hit",
        "ratio",
        ("near", "pg.sync.get_hit.redis"),
        1.2,
        ("ours", "pg.sync.get_hit.memory"),
        issue=7,
    ),
    Target(
        "near cache: async get hit (SQLite) <= 1.2x the memory-transport hit",
        "ratio",
        ("near", "sqlite.async.get_hit.redis"),
        1.2,
        ("ours", "sqlite.async.get_hit.memory"),
        issue=7,
    ),
    Target(
        "near cache: sync get hit >= 5x faster than 0.1.1's Redis hit (near@2.0 / peer)",
        "ratio",
        ("near@2.0", "sqlite.sync.get_hit.redis"),
        1 / 5,
        ("peer", "sqlite.sync.get_hit.redis"),
        issue=7,
    ),
    Target(
        "near cache: hot 100-row select hit >= 20x faster than uncached on PostgreSQL",
        "ratio",
        ("near", "pg.sync.select100_hit.redis"),
        1 / 20,
        ("uncached", "pg.sync.select100"),
        issue=7,
    ),
)
