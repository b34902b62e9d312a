"""A benchmark worker: runs scenarios in one virtual environment, driven by ``run.py``.

``python worker.py MODE`` with MODE ``uncached`` (SQLModel alone), ``ours`` (this repository's
sqlmodel-cache), ``near`` (the same with ``NearCache()`` in front of its Redis transports) or
``peer`` (sqlmodel-cache 0.1.1). It speaks one JSON object per line:

* ``{"cmd": "setup", "redis_url": ..., "redis_db": 3, "pg": "127.0.0.1:5432", "pg_db": ...}``
  -> ``{"versions": {...}}``: connects, creates and fills the tables (servers may be null).
* ``{"cmd": "run", "scenario": NAME, "n": 100}`` -> ``{"times_ns": [...], "trips": [...],
  "statements": [...], "retried": [...]}``: per operation, its duration, the requests its
  Redis clients sent (round trips) and the SQL statements its engines ran; why the batch
  was run a second time, if it was (near cache).
* ``{"cmd": "memory"}`` -> bytes stored in Redis per cached row, against their JSON.
* ``{"cmd": "near_memory"}`` (``near``) -> bytes the near cache holds per cached row: its own
  accounting, and what tracemalloc sees freed when it is emptied.
* ``{"cmd": "profile", "scenario": NAME, "n": 100, "out": PATH}`` -> a pyinstrument report.

Any failure answers ``{"error": traceback}``. Protocol lines go to the original stdout;
everything else that writes to stdout is redirected to stderr (a log file of the runner).

Each operation is timed alone with ``perf_counter_ns``; untimed work around it (forgetting
a cache entry before a miss, loading and changing rows before a commit) is done by the
same function, outside the two clock readings.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import json
import os
import sys
import time
import traceback
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
import sqlalchemy
from scenarios import SCENARIOS, Scenario
from sqlalchemy import Engine, create_engine, event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

#: Distinct keys (rows, query parameters) each scenario cycles through.
KEYS = 10
ROWS = 1000
#: A cached row is then about 200 bytes, like the value of the raw GET baseline.
BIO = (
    "Fights crime by night, writes benchmark suites by day, and never reads stale data. "
    "Fights crime by night, writes benchmark"
)
RAW_VALUE = b"x" * 200
RAW_KEY = "bench:raw"
#: The near variants' key prefix: the server's tracking is not per database, so with the
#: default prefix they would be sent the other workers' invalidations too.
NEAR_PREFIX = "bench-near"
#: How long the near cache may take to start tracking after ``configure()``.
TRACKING_TIMEOUT = 5.0
#: Seconds the near-cache warm-up waits for the server's invalidations of its own fills.
NEAR_SETTLE = 0.05


class Counters:
    """Requests sent to Redis (one per round trip: a pipeline is one) and SQL statements run."""

    trips = 0
    statements = 0


class CountingConnection(redis.Connection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        Counters.trips += 1
        super().send_packed_command(command, check_health)


class AsyncCountingConnection(redis.asyncio.Connection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        Counters.trips += 1
        await super().send_packed_command(command, check_health)


class Recorder:
    """Per-operation duration, round trips and SQL statements of one batch."""

    def __init__(self) -> None:
        self.times_ns: list[int] = []
        self.trips: list[int] = []
        self.statements: list[int] = []
        #: Why the batch was run again (near cache: the tracking connection was lost).
        self.retried: list[str] = []

    def start(self) -> None:
        self._trips, self._statements = Counters.trips, Counters.statements
        self._t0 = time.perf_counter_ns()

    def stop(self) -> None:
        elapsed = time.perf_counter_ns() - self._t0
        self.times_ns.append(elapsed)
        self.trips.append(Counters.trips - self._trips)
        self.statements.append(Counters.statements - self._statements)


class DictTransport:
    """The in-memory transport 0.1.1 lacks: its get/set/delete protocol over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.data[key] = value

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.data.pop(key, None)


class AsyncDictTransport:
    """Coroutine twin of :class:`DictTransport` (0.1.1 picks its async path by ``get``)."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self.data[key] = value

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self.data.pop(key, None)


def define_hero(cache_config: object) -> Any:
    class Hero(SQLModel, table=True):
        __cache_config__ = cache_config
        id: int | None = Field(default=None, primary_key=True)
        name: str = Field(index=True)
        secret_name: str
        age: int | None = None
        power: int = 0
        bio: str = ""

    return Hero


def hero_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "name": f"Hero {i:04d}",
            "secret_name": f"Secret identity {i:04d}",
            "age": 20 + i % 50,
            "power": i,
            "bio": BIO,
        }
        for i in range(1, ROWS + 1)
    ]


class BenchError(Exception):
    """A scenario did not measure what it claims to (wrong rows, SQL on a hit)."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise BenchError(what)


class Bench:
    def __init__(self, mode: str, msg: dict[str, Any]) -> None:
        self.mode = mode
        # One event loop for the worker's life (asyncio.Runner is 3.11+; we support 3.10).
        self.loop = asyncio.new_event_loop()
        if mode == "uncached":
            self.lib: Any = None
            self.Hero = define_hero(None)
        else:
            import sqlmodel_cache
            import sqlmodel_cache.transport

            self.lib = sqlmodel_cache
            self.Hero = define_hero(sqlmodel_cache.CacheConfig(ttl=600))
        self.sync_engines: dict[str, Engine] = {}
        self.async_engines: dict[str, AsyncEngine] = {}
        self.configured: tuple[str, str] | None = None
        self.transports: dict[tuple[str, str], Any] = {}
        self._set_up(msg)

    # -- setup ---------------------------------------------------------------------------

    def _set_up(self, msg: dict[str, Any]) -> None:
        self.sync_engines["sqlite"] = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        self.async_engines["sqlite"] = create_async_engine(
            "sqlite+aiosqlite://", poolclass=StaticPool
        )
        if msg.get("pg"):
            self._create_database(msg["pg"], msg["pg_db"])
            url = f"postgres@{msg['pg']}/{msg['pg_db']}"
            self.sync_engines["pg"] = create_engine(f"postgresql+psycopg://{url}")
            self.async_engines["pg"] = create_async_engine(f"postgresql+asyncpg://{url}")
        for engine in (
            *self.sync_engines.values(),
            *(e.sync_engine for e in self.async_engines.values()),
        ):
            event.listen(engine, "before_cursor_execute", self._count_statement)
        self._fill(self.sync_engines.values())
        # PostgreSQL: one database for both engines. In-memory SQLite: one per engine.
        self.loop.run_until_complete(self._afill(self.async_engines["sqlite"]))
        if self.mode == "ours":
            memory = self.lib.transport.MemoryTransport()
            self.transports[("memory", "sync")] = self.transports[("memory", "async")] = memory
        elif self.mode == "peer":
            memory = DictTransport()
            self.transports[("memory", "sync")] = memory
            self.transports[("memory", "async")] = AsyncDictTransport(memory.data)
        if msg.get("redis_url"):
            options = {"db": msg["redis_db"], "socket_timeout": 5.0, "socket_connect_timeout": 5.0}
            self.redis = redis.Redis.from_url(
                msg["redis_url"], connection_class=CountingConnection, **options
            )
            self.aredis = redis.asyncio.Redis.from_url(
                msg["redis_url"], connection_class=self._async_connection_class(), **options
            )
            self.redis.flushdb()
            self.redis.set(RAW_KEY, RAW_VALUE)
            if self.lib is not None:
                transport = self.lib.transport
                self.transports[("redis", "sync")] = transport.RedisSyncTransport(self.redis)
                self.transports[("redis", "async")] = transport.RedisAsyncTransport(self.aredis)

    def _async_connection_class(self) -> type:
        """Peer and uncached: a connection class counting what it sends. Ours: redis-py's
        own, counted at our asyncio lane instead, because the lane exchanges on the stream
        of redis-py's own class only (a subclass overriding ``send_packed_command`` is used
        through it, 30 µs slower)."""
        if self.lib is None or self.mode == "peer":
            return AsyncCountingConnection
        from sqlmodel_cache.transport._redis import connections as _connections

        execute = _connections.AsyncLane.execute

        async def counted(lane: Any, packed: bytes, *args: Any) -> Any:
            Counters.trips += 1  # one request, whatever number of commands it packs
            return await execute(lane, packed, *args)

        # Before any transport exists: its scripts take their lane's call when they are made.
        _connections.AsyncLane.execute = counted  # type: ignore[method-assign]
        return redis.asyncio.Connection

    @staticmethod
    def _create_database(server: str, name: str) -> None:
        admin = create_engine(
            f"postgresql+psycopg://postgres@{server}/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()

    def _fill(self, engines: Any) -> None:
        for engine in engines:
            SQLModel.metadata.create_all(engine)
            with engine.begin() as connection:
                connection.execute(insert(self.Hero), hero_rows())

    async def _afill(self, engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.create_all)
            await connection.execute(insert(self.Hero), hero_rows())

    def _count_statement(self, *args: Any) -> None:
        Counters.statements += 1

    def versions(self) -> dict[str, str]:
        names = ("sqlalchemy", "sqlmodel", "pydantic", "redis", "psycopg", "asyncpg", "aiosqlite")
        found = {name: importlib.metadata.version(name) for name in names}
        found["python"] = sys.version.split()[0]
        if self.lib is not None:
            # 0.1.1 says __version__ = "0.1.0"; the distribution knows better, but in the
            # editable install of this repository the module's own version is the truth.
            version = getattr(self.lib, "__version__", "?")
            if self.mode == "peer":
                version = importlib.metadata.version("sqlmodel-cache")
            found["sqlmodel-cache"] = f"{version} ({os.path.dirname(self.lib.__file__)})"
        check(found["sqlalchemy"] == sqlalchemy.__version__, "two SQLAlchemy installs")
        return found

    # -- the cache as a scenario needs it ------------------------------------------------

    def use(self, scenario: Scenario) -> None:
        """Configure the library with the scenario's transport (Redis: sync or asyncio);
        the ``near`` mode puts a near cache in front of it, and waits until it tracks."""
        if self.lib is None or not scenario.transport:
            return
        wanted = (scenario.transport, scenario.api)
        if self.configured == wanted:
            return
        transport = self.transports[wanted]
        if self.mode != "near":
            self.lib.SQLModelCache.configure(transport=transport, default_ttl=600)
            self.configured = wanted
            return
        self.lib.SQLModelCache.configure(
            transport=transport,
            default_ttl=600,
            key_prefix=NEAR_PREFIX,
            near_cache=self.lib.NearCache(),
        )
        self.configured = wanted
        self.wait_for_tracking()

    def wait_for_tracking(self) -> None:
        """Until the near cache tracks the server: before that, it keeps nothing."""
        deadline = time.monotonic() + TRACKING_TIMEOUT
        while not self.near_store().tracker.live:
            check(time.monotonic() < deadline, "the near cache did not start tracking")
            time.sleep(0.001)

    def near_store(self) -> Any:
        from sqlmodel_cache import _state

        near = _state.runtime.driver.near if _state.runtime is not None else None
        check(near is not None, "the near cache is not configured")
        return near

    def forget(self, scenario: Scenario, pk: int) -> None:
        """Untimed, before a miss: drop the entry (ours: the public invalidation API)."""
        if self.mode == "peer":
            from sqlmodel_cache.keys import build_key

            self.transports[(scenario.transport, "sync")].delete(build_key(self.Hero, {"id": pk}))
        elif scenario.base == "get":
            self.lib.SQLModelCache.invalidate(self.Hero, pk)
        else:
            self.lib.SQLModelCache.invalidate_model(self.Hero)

    async def aforget(self, scenario: Scenario, pk: int) -> None:
        if self.mode == "peer":
            from sqlmodel_cache.keys import build_key

            transport = self.transports[(scenario.transport, "async")]
            await transport.delete(build_key(self.Hero, {"id": pk}))
        elif scenario.base == "get":
            await self.lib.SQLModelCache.ainvalidate(self.Hero, pk)
        else:
            await self.lib.SQLModelCache.ainvalidate_model(self.Hero)

    # -- operations: op_<base>(scenario, i, recorder) and async twins aop_<base> -----------

    def op_get(self, sc: Scenario, i: int, rec: Recorder) -> None:
        pk = 1 + i % KEYS
        if sc.state == "miss":
            self.forget(sc, pk)
        rec.start()
        with Session(self.sync_engines[sc.db]) as session:
            hero = session.get(self.Hero, pk)
        rec.stop()
        check(hero is not None and hero.id == pk, "get: wrong row")

    async def aop_get(self, sc: Scenario, i: int, rec: Recorder) -> None:
        pk = 1 + i % KEYS
        if sc.state == "miss":
            await self.aforget(sc, pk)
        rec.start()
        async with AsyncSession(self.async_engines[sc.db]) as session:
            hero = await session.get(self.Hero, pk)
        rec.stop()
        check(hero is not None and hero.id == pk, "get: wrong row")

    def op_select1(self, sc: Scenario, i: int, rec: Recorder) -> None:
        pk = 1 + i % KEYS
        if sc.state == "miss":
            self.forget(sc, pk)
        rec.start()
        with Session(self.sync_engines[sc.db]) as session:
            hero = session.exec(select(self.Hero).where(self.Hero.name == f"Hero {pk:04d}")).one()
        rec.stop()
        check(hero.id == pk, "select 1 row: wrong row")

    async def aop_select1(self, sc: Scenario, i: int, rec: Recorder) -> None:
        pk = 1 + i % KEYS
        if sc.state == "miss":
            await self.aforget(sc, pk)
        rec.start()
        async with AsyncSession(self.async_engines[sc.db]) as session:
            result = await session.exec(select(self.Hero).where(self.Hero.name == f"Hero {pk:04d}"))
            hero = result.one()
        rec.stop()
        check(hero.id == pk, "select 1 row: wrong row")

    def _page(self, i: int) -> Any:
        offset = (i % KEYS) * 100
        return offset, select(self.Hero).where(self.Hero.id > offset).order_by(self.Hero.id)

    def op_select100(self, sc: Scenario, i: int, rec: Recorder) -> None:
        if sc.state == "miss":
            self.forget(sc, 0)
        rec.start()
        offset, statement = self._page(i)
        with Session(self.sync_engines[sc.db]) as session:
            heroes = session.exec(statement.limit(100)).all()
        rec.stop()
        check(len(heroes) == 100 and heroes[0].id == offset + 1, "select 100 rows: wrong rows")

    async def aop_select100(self, sc: Scenario, i: int, rec: Recorder) -> None:
        if sc.state == "miss":
            await self.aforget(sc, 0)
        rec.start()
        offset, statement = self._page(i)
        async with AsyncSession(self.async_engines[sc.db]) as session:
            heroes = (await session.exec(statement.limit(100))).all()
        rec.stop()
        check(len(heroes) == 100 and heroes[0].id == offset + 1, "select 100 rows: wrong rows")

    def _rows_to_change(self, sc: Scenario, i: int) -> tuple[int, Any]:
        ids = [1 + i % KEYS] if sc.base == "commit1" else list(range(1, 101))
        # cache=False: loading is untimed, and 0.1.1 raises on a cached model's select().
        statement = select(self.Hero).where(col(self.Hero.id).in_(ids))
        return len(ids), statement.execution_options(cache=False)

    def op_commit1(self, sc: Scenario, i: int, rec: Recorder) -> None:
        count, statement = self._rows_to_change(sc, i)
        with Session(self.sync_engines[sc.db]) as session:
            heroes = session.exec(statement).all()
            for hero in heroes:
                hero.power += 1
            rec.start()
            session.commit()
            rec.stop()
        check(len(heroes) == count, "commit: rows missing")

    async def aop_commit1(self, sc: Scenario, i: int, rec: Recorder) -> None:
        count, statement = self._rows_to_change(sc, i)
        async with AsyncSession(self.async_engines[sc.db]) as session:
            heroes = (await session.exec(statement)).all()
            for hero in heroes:
                hero.power += 1
            rec.start()
            await session.commit()
            rec.stop()
        check(len(heroes) == count, "commit: rows missing")

    op_commit100 = op_commit1
    aop_commit100 = aop_commit1

    def op_redis_get(self, sc: Scenario, i: int, rec: Recorder) -> None:
        rec.start()
        value = self.redis.get(RAW_KEY)
        rec.stop()
        check(value == RAW_VALUE, "raw GET: wrong value")

    async def aop_redis_get(self, sc: Scenario, i: int, rec: Recorder) -> None:
        rec.start()
        value = await self.aredis.get(RAW_KEY)
        rec.stop()
        check(value == RAW_VALUE, "raw GET: wrong value")

    def op_session(self, sc: Scenario, i: int, rec: Recorder) -> None:
        rec.start()
        with Session(self.sync_engines["sqlite"]):
            pass
        rec.stop()

    async def aop_session(self, sc: Scenario, i: int, rec: Recorder) -> None:
        rec.start()
        async with AsyncSession(self.async_engines["sqlite"]):
            pass
        rec.stop()

    # -- batches -------------------------------------------------------------------------

    def run(self, scenario: Scenario, n: int) -> Recorder:
        """``n`` timed operations, after untimed warm-up: every key once for a hit (so each
        timed operation is a hit), one operation otherwise (lazy set-up of any kind).

        A near-cache hit needs more: an entry is kept in this process from the second read
        from Redis on (the server's invalidation of the first read's fill would drop it), so
        the near mode reads every key twice, waits for those invalidations to arrive, and
        reads every key once more; each timed hit must then send nothing to Redis. A batch
        in which the near cache was emptied because its tracking connection was lost (or
        went silent: a heavily loaded machine) is run once more, and says so
        (``Recorder.retried``); near hits that went to Redis without that fail it."""
        self.use(scenario)
        if self.mode != "near" or scenario.state != "hit":
            return self._batch(scenario, n)
        flushes = self._l1_flushes()
        rec = self._batch(scenario, n)
        if any(rec.trips) and self._l1_flushes() > flushes:
            missed = sum(1 for trips in rec.trips if trips)
            reason = f"{missed} of {n} hits went to Redis: the near cache was flushed"
            print(f"{scenario.name}: batch run again, {reason}", file=sys.stderr, flush=True)
            self.wait_for_tracking()
            rec = self._batch(scenario, n)
            rec.retried.append(reason)
        missed = sum(1 for trips in rec.trips if trips)
        check(not missed, f"{scenario.name}: {missed} of {n} near-cache hits went to Redis")
        return rec

    def _l1_flushes(self) -> int:
        flushes: int = self.lib.SQLModelCache.stats().get("*", {}).get("l1_flushes", 0)
        return flushes

    def _batch(self, scenario: Scenario, n: int) -> Recorder:
        warm_up = KEYS if scenario.state == "hit" else 1
        near = self.mode == "near" and scenario.state == "hit"
        passes = 3 if near else 1
        rec = Recorder()
        if scenario.api == "sync":
            op: Callable[[Scenario, int, Recorder], None] = getattr(self, f"op_{scenario.base}")
            for p in range(passes):
                if near and p == passes - 1:
                    time.sleep(NEAR_SETTLE)
                for i in range(warm_up):
                    op(scenario, i, Recorder())
            gc.collect()
            for i in range(n):
                op(scenario, i, rec)
        else:
            aop: Callable[[Scenario, int, Recorder], Awaitable[None]] = getattr(
                self, f"aop_{scenario.base}"
            )

            async def batch() -> None:
                for p in range(passes):
                    if near and p == passes - 1:
                        await asyncio.sleep(NEAR_SETTLE)
                    for i in range(warm_up):
                        await aop(scenario, i, Recorder())
                gc.collect()
                for i in range(n):
                    await aop(scenario, i, rec)

            self.loop.run_until_complete(batch())
        if scenario.state == "hit":
            check(not any(rec.statements), f"{scenario.name}: a hit ran SQL")
        elif scenario.state == "miss":
            check(all(rec.statements), f"{scenario.name}: a miss ran no SQL")
        return rec

    def memory_usage(self) -> dict[str, Any]:
        """Cache 100 rows with get() (sync, SQLite, Redis) in an empty database; divide what
        Redis holds by 100. Tag keys are shared by all rows, so they are amortised."""
        scenario = SCENARIOS["sqlite.sync.get_miss.redis"]
        self.use(scenario)
        self.redis.flushdb()
        json_bytes = 0
        columns = [column.name for column in self.Hero.__table__.columns]
        for pk in range(1, 101):
            with Session(self.sync_engines["sqlite"]) as session:
                hero = session.get(self.Hero, pk)
            values = [getattr(hero, name) for name in columns]
            json_bytes += len(json.dumps(values, separators=(",", ":")).encode())
        keys = list(self.redis.scan_iter(count=1000))
        value_bytes = sum(int(self.redis.strlen(key)) for key in keys)
        usage = sum(int(self.redis.memory_usage(key, samples=0) or 0) for key in keys)
        self.redis.set(RAW_KEY, RAW_VALUE)
        return {
            "keys": len(keys),
            "value_bytes_per_row": value_bytes / 100,
            "memory_usage_per_row": usage / 100,
            "json_bytes_per_row": json_bytes / 100,
            "value_ratio": value_bytes / json_bytes,
            "memory_usage_ratio": usage / json_bytes,
        }

    def near_memory(self) -> dict[str, Any]:
        """Cache every row with get() (sync, SQLite) in the near cache; divide what it holds
        by the rows. Its own accounting (``NearStore.size()``, what ``max_bytes`` is checked
        against) is compared with what tracemalloc sees freed when the store is emptied:
        the entries, their keys, and the ordered dict's table and links."""
        scenario = SCENARIOS["sqlite.sync.get_hit.redis"]
        self.configured = None  # a new store, empty, and a new tracking connection
        self.use(scenario)
        near = self.near_store()
        pks = range(1, ROWS + 1)

        def read_all() -> list[Any]:
            found = []
            for pk in pks:
                with Session(self.sync_engines["sqlite"]) as session:
                    found.append(session.get(self.Hero, pk))
            return found

        read_all()  # fills Redis (where the previous runs had not)
        time.sleep(NEAR_SETTLE)  # the server's invalidations of those fills
        near.flush("benchmark: measuring from empty")
        gc.collect()
        tracemalloc.start()
        try:
            trips = Counters.trips
            read_all()  # every row from Redis, each kept in the near cache
            check(Counters.trips - trips == ROWS, "near memory: rows were not read from Redis")
            gc.collect()
            entries, accounted = near.size()
            full = tracemalloc.get_traced_memory()[0]
            # Values are the entry bytes, or (entry bytes, expiry) tuples.
            values = [
                len(v[0] if isinstance(v, tuple) else v)
                for k, v in near._data.items()
                if ":r:" in k
            ]
            keys = [len(k) for k in near._data if ":r:" in k]
            near.flush("benchmark: measured")
            gc.collect()
            empty = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        check(len(values) == ROWS, f"near memory: {len(values)} rows kept of {ROWS}")
        from sqlmodel_cache.transport._redis.near import ENTRY_OVERHEAD

        return {
            "rows": ROWS,
            "entries": entries,
            "accounted_bytes": accounted,
            "accounted_per_entry": accounted / entries,
            "measured_per_entry": (full - empty) / entries,
            "accounted_over_measured": accounted / (full - empty),
            "value_bytes_per_row": sum(values) / len(values),
            "key_chars_per_row": sum(keys) / len(keys),
            "entry_overhead": ENTRY_OVERHEAD,
        }

    def profile(self, scenario: Scenario, n: int, out: str) -> dict[str, Any]:
        try:
            from pyinstrument import Profiler
        except ImportError:
            raise BenchError("pyinstrument is not installed in this environment") from None
        self.run(scenario, 1)  # warm-up outside the profile
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        self.run(scenario, n)
        profiler.stop()
        report = profiler.output_text(unicode=True, color=False)
        with open(f"{out}.txt", "w") as file:
            file.write(report)
        with open(f"{out}.html", "w") as file:
            file.write(profiler.output_html())
        return {"report": report, "files": [f"{out}.txt", f"{out}.html"]}


def handle(bench: Bench | None, mode: str, msg: dict[str, Any]) -> tuple[Bench | None, Any]:
    cmd = msg["cmd"]
    if cmd == "setup":
        bench = Bench(mode, msg)
        return bench, {"versions": bench.versions()}
    if bench is None:
        raise BenchError("setup first")
    if cmd == "run":
        rec = bench.run(SCENARIOS[msg["scenario"]], msg["n"])
        reply = {"times_ns": rec.times_ns, "trips": rec.trips, "statements": rec.statements}
        return bench, {**reply, "retried": rec.retried}
    if cmd == "memory":
        return bench, bench.memory_usage()
    if cmd == "near_memory":
        return bench, bench.near_memory()
    if cmd == "profile":
        return bench, bench.profile(SCENARIOS[msg["scenario"]], msg["n"], msg["out"])
    raise BenchError(f"unknown command {cmd!r}")


def main() -> None:
    mode = sys.argv[1]
    # Keep the real stdout for the protocol; anything else printing goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    bench: Bench | None = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            bench, reply = handle(bench, mode, msg)
        except Exception:  # noqa: BLE001 - every failure is reported; the runner decides
            reply = {"error": traceback.format_exc()}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
