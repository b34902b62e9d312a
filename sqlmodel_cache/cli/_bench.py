"""``sqlmodel-cache bench``: what the cache costs and saves on *your* database and cache.

It creates a scratch table with a unique name in the given database, seeds it, and times
each operation in a new session, first with the cache not configured at all (plain
SQLAlchemy: the honest baseline), then configured with a unique key prefix. The table is
dropped and the prefix's keys removed at the end, also when something fails.

Like the demo, it checks its own claims: a "hit" that sends SQL, or a "miss" that does not
read the database exactly once, stops the bench with an error instead of a wrong number.

With ``near_cache`` (Redis only), the hits are timed once more with a ``NearCache`` in
front of Redis, after the other scenarios: every key is read twice and given time for the
server's invalidations of its own fills, so that each timed read is answered in-process;
one that is not (it went to Redis) stops the bench too.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select

from sqlmodel_cache import _state
from sqlmodel_cache._api import SQLModelCache
from sqlmodel_cache._config import CacheConfig
from sqlmodel_cache.cli._admin import CommandError, connect, prefix_pattern, redact, unlink_matching
from sqlmodel_cache.transport import MemoryTransport, RedisSyncTransport
from sqlmodel_cache.transport._redis.near import NearCache

#: (key, label, baseline key): the scenarios in the order they are shown. Keys are stable:
#: they are the ``--json`` output's.
SCENARIOS: tuple[tuple[str, str, str | None], ...] = (
    ("get_uncached", "session.get, uncached", None),
    ("get_miss", "session.get, cache miss", "get_uncached"),
    ("get_hit", "session.get, cache hit", "get_uncached"),
    ("select_1_uncached", "select() 1 row, uncached", None),
    ("select_1_hit", "select() 1 row, cache hit", "select_1_uncached"),
    ("select_100_uncached", "select() 100 rows, uncached", None),
    ("select_100_hit", "select() 100 rows, cache hit", "select_100_uncached"),
    ("commit_uncached", "UPDATE + commit, uncached", None),
    ("commit_invalidating", "UPDATE + commit, invalidating", "commit_uncached"),
)

#: With ``near_cache``: the hits again, served by the near cache; each is shown after the
#: Redis hit of the same read (``NEAR_AFTER``) and compared with the same baseline.
NEAR_SCENARIOS: tuple[tuple[str, str, str | None], ...] = (
    ("get_near_hit", "session.get, near cache hit", "get_uncached"),
    ("select_1_near_hit", "select() 1 row, near cache hit", "select_1_uncached"),
    ("select_100_near_hit", "select() 100 rows, near cache hit", "select_100_uncached"),
)
NEAR_AFTER = {
    "get_hit": "get_near_hit",
    "select_1_hit": "select_1_near_hit",
    "select_100_hit": "select_100_near_hit",
}

#: The 100-row select needs that many rows.
MIN_ROWS = 100
_TTL = 300
#: Seconds for the server's invalidations of the warm-up's own fills to arrive, and for the
#: near cache's tracking connection to start.
_NEAR_SETTLE = 0.05
_TRACKING_TIMEOUT = 5.0


def scenarios(near_cache: bool = False) -> tuple[tuple[str, str, str | None], ...]:
    """The scenarios a run measures, in the order they are shown."""
    if not near_cache:
        return SCENARIOS
    shown: list[tuple[str, str, str | None]] = []
    near = {scenario[0]: scenario for scenario in NEAR_SCENARIOS}
    for scenario in SCENARIOS:
        shown.append(scenario)
        if scenario[0] in NEAR_AFTER:
            shown.append(near[NEAR_AFTER[scenario[0]]])
    return tuple(shown)


@dataclass(frozen=True)
class Timing:
    """One scenario's timings in microseconds (p95 by nearest rank)."""

    median_us: float
    p95_us: float
    samples: int

    @classmethod
    def of(cls, samples_ns: list[int]) -> Timing:
        ordered = sorted(samples_ns)
        p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
        return cls(statistics.median(ordered) / 1000, p95 / 1000, len(ordered))


@dataclass(frozen=True)
class BenchReport:
    """What ``bench`` measured."""

    database: str
    cache: str
    table: str
    rows: int
    reads: int
    timings: dict[str, Timing]
    near_cache: bool = False

    @property
    def scenarios(self) -> tuple[tuple[str, str, str | None], ...]:
        """What was measured, in the order it is shown: :data:`SCENARIOS`, and with the
        near cache :data:`NEAR_SCENARIOS` after the Redis hits."""
        return scenarios(self.near_cache)

    def speedup(self, key: str, versus: str | None = None) -> float | None:
        """Baseline median / this scenario's median: above 1 is faster than without the
        cache, below 1 slower. ``None`` for the baselines themselves. ``versus``: compare
        with that scenario instead of the baseline (a near cache hit with the Redis hit)."""
        baseline = versus or next(base for name, _, base in self.scenarios if name == key)
        if baseline is None:
            return None
        return self.timings[baseline].median_us / max(self.timings[key].median_us, 0.001)

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "cache": self.cache,
            "table": self.table,
            "rows": self.rows,
            "reads": self.reads,
            "near_cache": self.near_cache,
            "scenarios": {
                key: {
                    "label": label,
                    "median_us": round(self.timings[key].median_us, 2),
                    "p95_us": round(self.timings[key].p95_us, 2),
                    "samples": self.timings[key].samples,
                    "baseline": baseline,
                    "speedup": None if baseline is None else round(self.speedup(key) or 0, 3),
                }
                for key, label, baseline in self.scenarios
            },
        }


def _define_model(table_name: str) -> Any:
    """A cached table model for ``table_name``, defined at run time because the table name
    is unique per run. A private registry keeps it out of ``SQLModel.metadata``."""

    class _BenchBase(SQLModel, registry=registry()):
        pass

    class BenchRow(_BenchBase, table=True):
        __tablename__ = table_name
        __cache_config__ = CacheConfig(ttl=_TTL)

        id: int | None = Field(default=None, primary_key=True)
        name: str
        score: float
        counter: int = 0

    return BenchRow


@contextmanager
def _scratch_table(engine: Engine, table: Table) -> Iterator[None]:
    table.create(engine)
    try:
        yield
    finally:
        try:
            table.drop(engine, checkfirst=True)
        except SQLAlchemyError as exc:
            # NOTE: this replaces any error in flight: a table left behind needs action.
            raise CommandError(
                f"could not drop the scratch table {table.name}, drop it by hand: "
                f"{_first_line(exc)}"
            ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


class _Runner:
    """Times operations in new sessions and checks what SQL they sent."""

    def __init__(
        self, engine: Engine, model: Any, rows: int, reads: int, tick: Callable[[str], None]
    ) -> None:
        self.engine = engine
        self.model = model
        self.rows = rows
        self.reads = reads
        self.tick = tick
        self.statements = 0
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *args: Any) -> None:
        self.statements += 1

    def timed(self, action: Callable[[Session], object], expect_sql: int | None = None) -> int:
        """Nanoseconds ``action`` took in a new session; with ``expect_sql``, fail unless
        it sent exactly that many statements."""
        with Session(self.engine) as session:
            before = self.statements
            start = time.perf_counter_ns()
            action(session)
            elapsed = time.perf_counter_ns() - start
            sent = self.statements - before
        if expect_sql is not None and sent != expect_sql:
            raise CommandError(
                f"the cache misbehaved: expected {expect_sql} SQL statement(s), saw {sent}"
            )
        return elapsed

    def series(self, key: str, one: Callable[[int], int]) -> Timing:
        """``one(pk)`` for ``reads`` primary keys in turn."""
        samples = []
        for i in range(self.reads):
            samples.append(one(i % self.rows + 1))
            self.tick(key)
        return Timing.of(samples)

    # -- operations --------------------------------------------------------------------

    def get(self, pk: int) -> Callable[[Session], object]:
        return lambda session: session.get(self.model, pk)

    def select_one(self, pk: int) -> Callable[[Session], object]:
        statement = select(self.model).where(col(self.model.id) == pk)
        return lambda session: session.exec(statement).all()

    def select_many(self) -> Callable[[Session], object]:
        statement = select(self.model).where(col(self.model.id) <= MIN_ROWS)
        return lambda session: session.exec(statement).all()

    def commit(self, pk: int) -> int:
        """Nanoseconds a commit of one changed row took (the read before it is not timed)."""
        with Session(self.engine) as session:
            row = session.get(self.model, pk)
            if row is None:
                raise CommandError(f"the scratch table has no row {pk}")
            row.counter += 1
            session.add(row)
            start = time.perf_counter_ns()
            session.commit()
            return time.perf_counter_ns() - start

    def uncached(self) -> dict[str, Timing]:
        """The baselines: the cache is not configured, so this is plain SQLAlchemy."""
        self.timed(self.get(1))  # warm the connection pool
        return {
            "get_uncached": self.series("get_uncached", lambda pk: self.timed(self.get(pk))),
            "select_1_uncached": self.series(
                "select_1_uncached", lambda pk: self.timed(self.select_one(pk))
            ),
            "select_100_uncached": self.series(
                "select_100_uncached", lambda _: self.timed(self.select_many())
            ),
            "commit_uncached": self.series("commit_uncached", self.commit),
        }

    def cached(self) -> dict[str, Timing]:
        """With the cache configured. A miss is forced by invalidating the row first, a hit
        by reading it once first; neither preparation is timed."""

        def miss(pk: int) -> int:
            SQLModelCache.invalidate(self.model, pk)
            return self.timed(self.get(pk), expect_sql=1)

        def hit(action: Callable[[Session], object]) -> int:
            self.timed(action)
            return self.timed(action, expect_sql=0)

        timings = {
            "get_miss": self.series("get_miss", miss),
            "get_hit": self.series("get_hit", lambda pk: hit(self.get(pk))),
            "select_1_hit": self.series("select_1_hit", lambda pk: hit(self.select_one(pk))),
            "select_100_hit": self.series("select_100_hit", lambda _: hit(self.select_many())),
        }
        before = SQLModelCache.stats().get("*", {}).get("invalidations", 0)
        timings["commit_invalidating"] = self.series("commit_invalidating", self.commit)
        after = SQLModelCache.stats().get("*", {}).get("invalidations", 0)
        if after - before < self.reads:
            raise CommandError(
                f"the cache misbehaved: {self.reads} commits invalidated {after - before} key(s)"
            )
        return timings

    def near_cached(self) -> dict[str, Timing]:
        """The hits again, with the near cache configured (by the caller). An entry is kept
        in this process from its second read from Redis on (the server's invalidation of a
        fill drops what was kept before it arrived), so every key of a scenario is read
        twice, with a pause for those invalidations, before its timed reads; each of those
        must then be answered by the near cache."""
        pks = sorted({i % self.rows + 1 for i in range(self.reads)})

        def warm(make: Callable[[int], Callable[[Session], object]], keys: list[int]) -> None:
            for _ in range(2):
                for pk in keys:
                    self.timed(make(pk))
                time.sleep(_NEAR_SETTLE)

        def near_hit(action: Callable[[Session], object]) -> int:
            """One timed read that the near cache answers. If it went to Redis because
            the near cache was just emptied (its tracking connection was lost, or went
            silent on a loaded machine), it is timed again once tracking is back."""
            for attempt in (1, 2):
                hits, flushes = _near_counts()
                elapsed = self.timed(action, expect_sql=0)
                hits_after, flushes_after = _near_counts()
                if hits_after == hits + 1:
                    return elapsed
                if attempt == 2 or flushes_after == flushes:
                    break
                _wait_for_tracking()
                self.timed(action)  # a Redis hit, kept again
                time.sleep(_NEAR_SETTLE)
            raise CommandError(
                "the near cache misbehaved: a hot read went to Redis"
                + (" (its tracking connection keeps being lost)" if attempt == 2 else "")
            )

        warm(self.get, pks)
        get = self.series("get_near_hit", lambda pk: near_hit(self.get(pk)))
        warm(self.select_one, pks)
        one = self.series("select_1_near_hit", lambda pk: near_hit(self.select_one(pk)))
        warm(lambda _: self.select_many(), [0])
        many = self.series("select_100_near_hit", lambda _: near_hit(self.select_many()))
        return {"get_near_hit": get, "select_1_near_hit": one, "select_100_near_hit": many}


def _near_counts() -> tuple[int, int]:
    """Reads the near cache answered so far (gets and queries, every model), and the times
    it was emptied."""
    stats = SQLModelCache.stats()
    hits = sum(
        count
        for events in stats.values()
        for event, count in events.items()
        if event.endswith("l1_hits")
    )
    return hits, stats.get("*", {}).get("l1_flushes", 0)


def _configure_near_cache(transport: object, prefix: str, keys: int) -> None:
    """Configure the cache again, with a near cache big enough for ``keys`` rows and as
    many queries, and wait until it tracks the server (before that it keeps nothing)."""
    settings = NearCache(max_entries=max(NearCache.max_entries, 2 * keys + 16))
    SQLModelCache.configure(transport, key_prefix=prefix, near_cache=settings)
    _wait_for_tracking()


def _wait_for_tracking() -> None:
    runtime = _state.runtime
    near = runtime.driver.near if runtime is not None else None
    deadline = time.monotonic() + _TRACKING_TIMEOUT
    while near is None or not near.tracker.live:
        if time.monotonic() > deadline:
            raise CommandError(
                "the near cache could not track this Redis server (it needs Redis or "
                "Valkey 6 or later, with CLIENT TRACKING allowed)"
            )
        time.sleep(0.005)


def run_bench(
    database_url: str,
    *,
    redis_url: str | None = None,
    cluster: bool = False,
    rows: int = 1000,
    reads: int = 500,
    tick: Callable[[str], None] | None = None,
    near_cache: bool = False,
) -> BenchReport:
    """Run every scenario of :data:`SCENARIOS` ``reads`` times against a scratch table of
    ``rows`` rows in ``database_url``.

    Args:
        database_url: a SQLAlchemy URL of the user's database.
        redis_url: cache in this Redis; ``None`` uses the in-process ``MemoryTransport``.
        cluster: ``redis_url`` is a Redis Cluster node.
        rows: rows to seed (at least :data:`MIN_ROWS`).
        reads: timed operations per scenario.
        tick: called with the scenario's key after each timed operation (progress).
        near_cache: time the hits once more with a ``NearCache`` in front of Redis
            (:data:`NEAR_SCENARIOS`); needs ``redis_url``, not a cluster.

    Raises:
        CommandError: the database or Redis cannot be used, or the cache misbehaved.
    """
    if rows < MIN_ROWS or reads < 1:
        raise CommandError(f"rows must be at least {MIN_ROWS} and reads at least 1")
    if near_cache and (redis_url is None or cluster):
        raise CommandError(
            "the near cache needs --redis-url, a single Redis or Valkey server (not a cluster)"
        )
    if SQLModelCache.is_configured():
        raise CommandError("bench needs a process in which the cache is not configured")
    suffix = os.urandom(4).hex()
    model = _define_model(f"sqlmodel_cache_bench_{suffix}")
    prefix = f"sqlmodelcache-bench-{suffix}"
    with ExitStack() as stack:
        try:
            engine = create_engine(database_url)
        except (SQLAlchemyError, ImportError) as exc:
            raise CommandError(f"cannot use the database: {_first_line(exc)}") from None
        stack.callback(engine.dispose)
        database = engine.url.render_as_string(hide_password=True)
        if engine.dialect.is_async:
            raise CommandError(
                f"bench needs a synchronous driver, not {engine.url.drivername!r} "
                "(e.g. postgresql+psycopg:// rather than postgresql+asyncpg://)"
            )
        transport: object = MemoryTransport()
        cache = "MemoryTransport (in-process)"
        if redis_url is not None:
            client = stack.enter_context(connect(redis_url, cluster=cluster))
            stack.callback(unlink_matching, client, prefix_pattern(prefix))
            transport = RedisSyncTransport(client)
            cache = f"Redis at {redact(redis_url)}, key prefix {prefix!r}"
            if near_cache:
                cache += ", then with a near cache"
        try:
            stack.enter_context(_scratch_table(engine, model.__table__))
            with engine.begin() as connection:
                connection.execute(
                    insert(model.__table__),
                    [{"name": f"row {i}", "score": i / 2, "counter": 0} for i in range(rows)],
                )
            runner = _Runner(engine, model, rows, reads, tick or (lambda _: None))
            timings = runner.uncached()
            SQLModelCache.configure(transport, key_prefix=prefix)
            stack.callback(SQLModelCache.reset)
            timings.update(runner.cached())
            if near_cache:
                _configure_near_cache(transport, prefix, min(reads, rows))
                timings.update(runner.near_cached())
        except (SQLAlchemyError, ImportError) as exc:
            raise CommandError(f"database error: {_first_line(exc)}") from None
        return BenchReport(
            database=database,
            cache=cache,
            table=model.__tablename__,
            rows=rows,
            reads=reads,
            timings={key: timings[key] for key, _, _ in scenarios(near_cache)},
            near_cache=near_cache,
        )
    raise AssertionError("unreachable")  # mypy: ExitStack may swallow exceptions
