"""The ``sqlmodel-cache demo`` walk-through: a miss, a hit, an invalidation, timings, stats.

It runs against SQLite in memory, with the in-process ``MemoryTransport`` or a Redis server,
shows every SQL statement each read sends to the database, and checks its own claims: if a
read it calls a hit issues SQL (or a miss does not), it reports the error and fails.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import Engine, event
from sqlalchemy.orm import registry
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine

from sqlmodel_cache._api import SQLModelCache
from sqlmodel_cache._config import CacheConfig
from sqlmodel_cache._errors import ConfigurationError, MissingDependencyError
from sqlmodel_cache.cli._admin import prefix_pattern, redact, unlink_matching
from sqlmodel_cache.transport import MemoryTransport, RedisSyncTransport

_MODEL = "DemoHero"
_TTL = 60
_HEROES = (
    ("Deadpond", "regeneration"),
    ("Spider-Boy", "wall-crawling"),
    ("Rusty-Man", "powered armour"),
    ("Tarantula", "venom"),
    ("Black Lion", "night vision"),
)
_NEW_POWER = "teleportation"


class _DemoBase(SQLModel, registry=registry()):
    """A private registry, so importing the demo adds no table to ``SQLModel.metadata``."""


class DemoHero(_DemoBase, table=True):
    """The model the demo caches."""

    __tablename__ = "demo_hero"
    __cache_config__ = CacheConfig(ttl=_TTL)

    id: int | None = Field(default=None, primary_key=True)
    name: str
    power: str


class DemoFailure(Exception):
    """The cache did not behave as the demo says it does."""


class _Unreachable(Exception):
    """The Redis server given with ``--redis-url`` cannot be used."""


class _Style:
    """ANSI colours, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def title(self, text: str) -> str:
        return self._wrap("1;36", text)

    def hit(self, text: str) -> str:
        return self._wrap("1;32", text)

    def miss(self, text: str) -> str:
        return self._wrap("1;33", text)

    def note(self, text: str) -> str:
        return self._wrap("1;35", text)

    def sql(self, text: str) -> str:
        return self._wrap("2", text)

    def error(self, text: str) -> str:
        return self._wrap("1;31", text)


class _SqlLog:
    """Every statement the engine sends to the database, as ``(sql, parameters)``."""

    def __init__(self, engine: Engine) -> None:
        self._statements: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        self._statements.append((" ".join(statement.split()), parameters))

    def take(self) -> list[tuple[str, Any]]:
        """The statements recorded since the previous call."""
        taken, self._statements = self._statements, []
        return taken


@dataclass(frozen=True)
class _Read:
    hero: tuple[int | None, str, str]
    statements: list[tuple[str, Any]]


def _connect_redis(url: str) -> Any:
    """A connected ``redis.Redis`` client for ``url``.

    Raises:
        MissingDependencyError: redis-py is not installed.
        _Unreachable: the URL is invalid or the server does not answer ``PING``.
    """
    try:
        import redis
    except ImportError:
        raise MissingDependencyError("redis", "redis") from None
    client = None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        if client is not None:
            client.close()
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise _Unreachable(f"cannot use Redis at {redact(url)}: {detail}") from None
    return client


def _counters(model: str) -> dict[str, int]:
    return dict(SQLModelCache.stats().get(model, {}))


def _delta(before: dict[str, int], after: dict[str, int], event_name: str) -> int:
    return after.get(event_name, 0) - before.get(event_name, 0)


def _show(hero: tuple[int | None, str, str]) -> str:
    return f"DemoHero(id={hero[0]}, name={hero[1]!r}, power={hero[2]!r})"


class _Demo:
    def __init__(self, out: TextIO, style: _Style, engine: Engine, reads: int) -> None:
        self.out = out
        self.style = style
        self.engine = engine
        self.reads = reads
        self.sql = _SqlLog(engine)

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def step(self, number: int, text: str) -> None:
        self.say()
        self.say(self.style.title(f"[{number}] {text}"))

    def show_sql(self, statements: list[tuple[str, Any]]) -> None:
        if not statements:
            self.say(f"    SQL: {self.style.sql('(none)')}")
        for sql, params in statements:
            self.say(f"    SQL: {self.style.sql(f'{sql}  -- {params!r}')}")

    def read(self, expect: str, hero_id: int = 1) -> _Read:
        """``session.get(DemoHero, hero_id)`` in a new session, checked to be a hit or a miss."""
        self.sql.take()
        before = _counters(_MODEL)
        with Session(self.engine) as session:
            hero = session.get(DemoHero, hero_id)
            if hero is None:
                raise DemoFailure(f"session.get(DemoHero, {hero_id}) returned None")
            values = (hero.id, hero.name, hero.power)
        statements = self.sql.take()
        after = _counters(_MODEL)
        self.show_sql(statements)
        count = len(statements)
        plural = "statement" if count == 1 else "statements"
        if expect == "hit":
            if count != 0 or _delta(before, after, "hits") != 1:
                raise DemoFailure(
                    f"expected a cache hit with no SQL, but the read issued {count} SQL "
                    f"{plural} and counted {_delta(before, after, 'hits')} hit(s)"
                )
            self.say(f"    {self.style.hit('HIT')}: 0 SQL statements -- served from the cache")
        else:
            is_select = count == 1 and statements[0][0].upper().startswith("SELECT")
            misses, fills = _delta(before, after, "misses"), _delta(before, after, "fills")
            if not is_select or misses != 1 or fills != 1:
                raise DemoFailure(
                    f"expected a miss with 1 SELECT that fills the cache, but the read issued "
                    f"{count} SQL {plural} and counted {misses} miss(es), {fills} fill(s)"
                )
            self.say(
                f"    {self.style.miss('MISS')}: 1 SQL statement -- read from the database, "
                "filled the cache"
            )
        self.say(f"    got: {_show(values)}")
        return _Read(values, statements)

    def run(self, rows: int) -> None:
        heroes = [_HEROES[i % len(_HEROES)] for i in range(rows)]
        with Session(self.engine) as session:
            session.add_all(DemoHero(name=name, power=power) for name, power in heroes)
            session.commit()
        self.sql.take()
        self.say(f"  seeded {rows} row(s) into demo_hero; the demo reads DemoHero id=1")

        self.step(1, "First read: session.get(DemoHero, 1) in a new session")
        first = self.read("miss")

        self.step(2, "Same read in another new session")
        self.read("hit")

        self.step(3, f"Update the row: hero.power = {_NEW_POWER!r}; session.commit()")
        before = _counters("*")
        with Session(self.engine) as session:
            hero = session.get(DemoHero, 1)
            if hero is None:
                raise DemoFailure("session.get(DemoHero, 1) returned None")
            hero.power = _NEW_POWER
            session.add(hero)
            session.commit()
        statements = self.sql.take()
        after = _counters("*")
        self.show_sql(statements)
        if not any(sql.upper().startswith("UPDATE") for sql, _ in statements):
            raise DemoFailure("the commit issued no UPDATE statement")
        keys = _delta(before, after, "invalidations")
        if keys < 1 or _delta(before, after, "invalidation_errors") != 0:
            raise DemoFailure(
                f"the commit should have invalidated the row, but counted {keys} invalidated "
                f"key(s) and {_delta(before, after, 'invalidation_errors')} error(s)"
            )
        self.say(
            f"    {self.style.note('INVALIDATED')}: commit invalidated 1 row "
            f"({keys} cache keys), before commit() returned"
        )

        self.step(4, "Read it again: the cache has no stale copy")
        fresh = self.read("miss")
        if fresh.hero[2] != _NEW_POWER:
            raise DemoFailure(f"expected the new value {_NEW_POWER!r}, got {fresh.hero[2]!r}")
        self.say(f"    new value: power={fresh.hero[2]!r} (was {first.hero[2]!r})")
        self.say("  ...and once more:")
        again = self.read("hit")
        if again.hero[2] != _NEW_POWER:
            raise DemoFailure(f"the hit served {again.hero[2]!r}, not {_NEW_POWER!r}")

        self.step(5, f"Timing: {self.reads} x session.get(DemoHero, 1), each in a new session")
        self.timings()

        self.step(6, "SQLModelCache.stats()")
        for model, counts in SQLModelCache.stats().items():
            line = ", ".join(f"{name}={value}" for name, value in counts.items())
            self.say(f"    {model:<9} {line}")

    def timings(self) -> None:
        uncached: list[int] = []
        cached: list[int] = []
        before = _counters(_MODEL)
        self.sql.take()
        statements = 0
        for i in range(self.reads):
            # Alternating the order spreads warm-up and cache effects over both series.
            for uncached_turn in (True, False) if i % 2 == 0 else (False, True):
                if uncached_turn:
                    uncached.append(self.timed_get({"cache": False}))
                    statements += len(self.sql.take())
                else:
                    cached.append(self.timed_get({}))
                    if self.sql.take():
                        raise DemoFailure("a cache hit issued SQL during the timing run")
        after = _counters(_MODEL)
        if _delta(before, after, "hits") != self.reads:
            raise DemoFailure(
                f"expected {self.reads} cache hits in the timing run, "
                f"counted {_delta(before, after, 'hits')}"
            )
        if statements != self.reads:
            raise DemoFailure(
                f"expected {self.reads} SELECTs for the uncached reads, saw {statements}"
            )
        slow = statistics.median(uncached) / 1000
        fast = statistics.median(cached) / 1000
        self.say(f"    uncached (execution_options={{'cache': False}}): {slow:8.1f} us median")
        self.say(f"    cache hit:                                     {fast:8.1f} us median")
        if fast <= slow:
            verdict = self.style.hit(f"{slow / max(fast, 0.001):.1f}x faster")
        else:
            verdict = self.style.miss(f"{fast / max(slow, 0.001):.1f}x slower")
        self.say(f"    speed-up: a cache hit is {verdict} than the uncached read")
        self.say("    (the database here is SQLite in memory, the cheapest there is: a database")
        self.say("    across a network costs far more per read than this one)")

    def timed_get(self, options: dict[str, Any]) -> int:
        with Session(self.engine) as session:
            start = time.perf_counter_ns()
            hero = session.get(DemoHero, 1, execution_options=options)
            elapsed = time.perf_counter_ns() - start
        if hero is None:
            raise DemoFailure("session.get(DemoHero, 1) returned None")
        return elapsed


@contextmanager
def _sqlite_engine() -> Iterator[Engine]:
    # StaticPool and a shared connection: each new connection would be a new, empty database.
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    try:
        DemoHero.metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()


def run_demo(
    out: TextIO,
    err: TextIO,
    *,
    redis_url: str | None = None,
    rows: int = 3,
    reads: int = 2000,
    color: bool = False,
) -> int:
    """Run the demo, writing the walk-through to ``out`` and errors to ``err``.

    Args:
        out: where the walk-through goes.
        err: where a one-line error goes when the demo cannot run or a check fails.
        redis_url: a Redis / Valkey URL; ``None`` uses the in-process ``MemoryTransport``.
        rows: how many rows to seed the demo table with (at least 1).
        reads: reads per series in the timing section (at least 1).
        color: colour the output with ANSI escape codes.

    Returns:
        The exit status: 0 when every check passed, 1 otherwise.
    """
    style = _Style(color)
    if rows < 1 or reads < 1:
        print(style.error("error: rows and reads must be at least 1"), file=err)
        return 1
    prefix = f"sqlmodelcache-demo-{os.urandom(4).hex()}"
    client: Any = None
    try:
        if redis_url is None:
            transport: object = MemoryTransport()
            where = "MemoryTransport (in-process)"
        else:
            client = _connect_redis(redis_url)
            transport = RedisSyncTransport(client)
            where = f"Redis at {redact(redis_url)}, key prefix {prefix!r}"
        SQLModelCache.configure(transport, default_ttl=300, key_prefix=prefix)
        out.write(style.title("sqlmodel-cache demo") + "\n")
        print("  database: SQLite in memory", file=out)
        print(f"  cache:    {where}", file=out)
        print(f"  model:    DemoHero (table demo_hero), CacheConfig(ttl={_TTL})", file=out)
        with _sqlite_engine() as engine:
            _Demo(out, style, engine, reads).run(rows)
    except (ConfigurationError, _Unreachable) as exc:
        print(style.error(f"error: {exc}"), file=err)
        return 1
    except DemoFailure as exc:
        print(style.error(f"error: the cache misbehaved: {exc}"), file=err)
        return 1
    finally:
        SQLModelCache.reset()
        if client is not None:
            _cleanup(client, prefix, out, err, style)
    print(file=out)
    print(style.hit("All checks passed."), file=out)
    return 0


def _cleanup(client: Any, prefix: str, out: TextIO, err: TextIO, style: _Style) -> None:
    import redis

    try:
        deleted = unlink_matching(client, prefix_pattern(prefix))
    except redis.RedisError as exc:
        print(style.error(f"warning: could not delete the demo's keys {prefix}:*: {exc}"), file=err)
    else:
        print(f"\n  removed the demo's {deleted} key(s) {prefix}:* from Redis", file=out)
    finally:
        client.close()
