"""``Session.get()``'s fast path: what it answers itself, what it hands to SQLAlchemy, and
that both behave alike (the whole get suite also runs through it, in every env)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState
from sqlmodel import Session

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache._fastget import aget as fast_aget
from sqlmodel_cache._fastget import get as fast_get
from sqlmodel_cache.transport import MemoryTransport
from tests.helpers import Env, Flaky, make_env
from tests.models import Hero


def _seed(env: Env) -> None:
    env.run(lambda s: (s.add(Hero(id=1, name="Spider")), s.commit()))
    env.reset_sql()


@pytest.fixture
def flaky_env(mem_env: Env) -> Env:
    """mem_env whose transport counts calls and can be made to fail."""
    mem_env.transport = Flaky(mem_env.transport)
    SQLModelCache.configure(mem_env.transport, key_prefix=mem_env.prefix)
    return mem_env


def test_configure_installs_and_reset_restores_session_get() -> None:
    SQLModelCache.configure(MemoryTransport())
    assert Session.get is fast_get
    SQLModelCache.reset()
    assert Session.get is not fast_get
    assert Session.get.__qualname__ == "Session.get"


def test_hit_is_one_transport_call_and_a_persistent_instance(flaky_env: Env) -> None:
    _seed(flaky_env)
    flaky_env.run(lambda s: s.get(Hero, 1))  # miss + fill
    flaky_env.transport.calls = 0
    flaky_env.reset_sql()

    def read(session: Session) -> tuple[bool, bool, bool, str]:
        hero = session.get(Hero, 1)
        assert hero is not None
        state = inspect(hero)
        return state.persistent, hero in session, session.in_transaction(), hero.name

    assert flaky_env.run(read) == (True, True, True, "Spider")
    assert flaky_env.transport.calls == 1
    assert flaky_env.statements == []


def test_miss_costs_one_fetch_and_one_fill(flaky_env: Env) -> None:
    _seed(flaky_env)
    flaky_env.transport.calls = 0
    assert flaky_env.run(lambda s: s.get(Hero, 1).name) == "Spider"
    assert flaky_env.transport.calls == 2  # the fast path's fetch is handed down
    assert len(flaky_env.selects()) == 1
    hero = SQLModelCache.stats()["Hero"]
    assert (hero["misses"], hero["fills"]) == (1, 1)


def test_a_failing_cache_costs_one_call_then_the_database(flaky_env: Env) -> None:
    _seed(flaky_env)
    flaky_env.transport.failing = True
    flaky_env.transport.calls = 0
    assert flaky_env.run(lambda s: s.get(Hero, 1).name) == "Spider"
    assert flaky_env.transport.calls == 1  # not retried by the event path
    assert len(flaky_env.selects()) == 1
    assert SQLModelCache.stats()["Hero"]["errors"] == 1


def test_identity_map_object_is_returned_without_a_cache_call(flaky_env: Env) -> None:
    _seed(flaky_env)

    def twice(session: Session) -> bool:
        first = session.get(Hero, 1)
        calls = flaky_env.transport.calls
        second = session.get(Hero, 1)
        assert flaky_env.transport.calls == calls
        return first is second

    assert flaky_env.run(twice)


def test_pending_changes_are_autoflushed_before_a_get(flaky_env: Env) -> None:
    """SQLAlchemy's get flushes first; so must a get served from the cache, and the flush
    then makes the read bypass the cache (own writes)."""
    _seed(flaky_env)
    flaky_env.run(lambda s: s.get(Hero, 1))

    def body(session: Session) -> str:
        session.add(Hero(id=2, name="Iron"))
        hero = session.get(Hero, 1)
        assert hero is not None
        return hero.name

    flaky_env.reset_sql()
    assert flaky_env.run(body) == "Spider"
    assert any(s.startswith("INSERT") for s in flaky_env.statements)
    assert SQLModelCache.stats()["Hero"]["bypass:own_writes"] == 1


def test_other_do_orm_execute_listeners_still_see_every_get(mem_env: Env) -> None:
    """A listener that must see reads (tenant criteria, auditing) disables the fast path:
    the get goes through the event path, where a listener registered before ``configure()``
    runs before the cache answers, and the get is still a hit."""
    _seed(mem_env)
    seen: list[Any] = []

    def audit(state: ORMExecuteState) -> None:
        seen.append(state.statement)

    event.listen(Session, "do_orm_execute", audit)
    SQLModelCache.configure(mem_env.transport, key_prefix=mem_env.prefix)
    mem_env.run(lambda s: s.get(Hero, 1))
    seen.clear()
    try:
        mem_env.reset_sql()
        assert mem_env.run(lambda s: s.get(Hero, 1).name) == "Spider"
    finally:
        event.remove(Session, "do_orm_execute", audit)
    assert len(seen) == 1
    assert mem_env.statements == []
    assert SQLModelCache.stats()["Hero"]["hits"] == 1


@pytest.mark.parametrize(
    "options",
    [
        {"populate_existing": True},
        {"with_for_update": True},
        {"execution_options": {"cache": False}},
        {"options": []},  # empty: still the fast path
    ],
)
def test_calls_with_options_take_the_usual_way(mem_env: Env, options: dict[str, Any]) -> None:
    _seed(mem_env)
    mem_env.run(lambda s: s.get(Hero, 1))
    mem_env.reset_sql()
    assert mem_env.run(lambda s: s.get(Hero, 1, **options).name) == "Spider"
    cached = options == {"options": []}
    assert (mem_env.selects() == []) is cached


def test_unusual_identities_are_handed_to_sqlalchemy(mem_env: Env) -> None:
    _seed(mem_env)
    assert mem_env.run(lambda s: s.get(Hero, {"id": 1}).name) == "Spider"
    assert mem_env.run(lambda s: s.get(Hero, [1]).name) == "Spider"
    with pytest.raises(Exception, match="Incorrect number of values"):
        mem_env.run(lambda s: s.get(Hero, (1, 2)))
    assert mem_env.run(lambda s: s.get(inspect(Hero), 1).name) == "Spider"


class AsyncCounting:
    """An async transport over a MemoryTransport that counts calls and can fail."""

    def __init__(self) -> None:
        self.inner = MemoryTransport()
        self.calls = 0
        self.failing = False

    def _check(self) -> None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("injected: cache unreachable")

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.inner.get(key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self._check()
        self.inner.set(key, value, ttl)

    async def delete(self, *keys: str) -> None:
        self._check()
        self.inner.delete(*keys)

    async def fetch(self, *args: Any) -> Any:
        self._check()
        return self.inner.fetch(*args)

    async def fill(self, *args: Any) -> bool:
        self._check()
        return self.inner.fill(*args)

    async def invalidate(self, *args: Any) -> None:
        self._check()
        self.inner.invalidate(*args)


@pytest.fixture
def async_env(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Env]:
    """Async sessions on SQLite over a counting async transport."""
    for env in make_env(request, tmp_path, "async", "memory", "sqlite"):
        env.transport = AsyncCounting()
        SQLModelCache.configure(env.transport, key_prefix=env.prefix)
        yield env


def _async_get(env: Env, pk: int = 1) -> str | None:
    async def body() -> str | None:
        assert env.async_engine is not None
        async with AsyncSession(env.async_engine) as session:
            hero = await session.get(Hero, pk)
            return None if hero is None else hero.name

    assert env.loop is not None
    return env.loop.run_until_complete(body())


def test_async_get_is_wrapped_while_configured() -> None:
    SQLModelCache.configure(MemoryTransport())
    assert AsyncSession.get is fast_aget
    SQLModelCache.reset()
    assert AsyncSession.get is not fast_aget


def test_async_hit_miss_and_failure_cost_one_call_each_way(async_env: Env) -> None:
    _seed(async_env)
    transport = async_env.transport
    transport.calls = 0
    assert _async_get(async_env) == "Spider"  # miss: fetch + fill, one SELECT
    assert (transport.calls, len(async_env.selects())) == (2, 1)
    transport.calls = 0
    async_env.reset_sql()
    assert _async_get(async_env) == "Spider"  # hit: one fetch, no SQL
    assert (transport.calls, async_env.statements) == (1, [])
    transport.failing = True
    transport.calls = 0
    assert _async_get(async_env) == "Spider"  # failure: one call, then the database
    assert (transport.calls, len(async_env.selects())) == (1, 1)
    hero = SQLModelCache.stats()["Hero"]
    assert (hero["misses"], hero["fills"], hero["hits"], hero["errors"]) == (1, 1, 1, 1)


def test_async_bad_entry_is_replaced_through_the_event_path(async_env: Env) -> None:
    _seed(async_env)
    _async_get(async_env)
    [row_key] = [k for k in async_env.transport.inner.keys() if ":r:" in k]  # noqa: SIM118
    entry = async_env.transport.inner.get(row_key)
    async_env.transport.inner.set(row_key, entry[:-2] + b"!!", 300)
    async_env.reset_sql()
    assert _async_get(async_env) == "Spider"
    assert len(async_env.selects()) == 1
    async_env.reset_sql()
    assert _async_get(async_env) == "Spider"  # refilled: a hit again
    assert async_env.statements == []
    assert SQLModelCache.stats()["Hero"]["errors"] == 1


def test_a_session_without_a_bind_gets_sqlalchemys_error() -> None:
    SQLModelCache.configure(MemoryTransport())
    with Session() as session, pytest.raises(Exception, match="bind"):
        session.get(Hero, 1)


@contextmanager
def _failing_hero_selects(env: Env) -> Iterator[None]:
    """While inside, every SELECT of the hero table fails as a dead database would."""

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT hero"):
            raise RuntimeError("database down")

    event.listen(env.engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(env.engine, "before_cursor_execute", fail)


def test_a_failing_database_read_gives_the_lease_back(flaky_env: Env) -> None:
    """A miss took the lease; the SELECT fails: the error reaches the caller, and the lease
    is released at once so other readers need not wait for it to expire."""
    _seed(flaky_env)
    with _failing_hero_selects(flaky_env), pytest.raises(Exception, match="database down"):
        flaky_env.run(lambda s: s.get(Hero, 1))
    assert [k for k in flaky_env.transport.inner.keys() if ":r:" in k] == []  # no lease left  # noqa: SIM118
    assert flaky_env.run(lambda s: s.get(Hero, 1).name) == "Spider"  # then a normal miss
    assert flaky_env.run(lambda s: s.get(Hero, 1).name) == "Spider"
    assert SQLModelCache.stats()["Hero"]["hits"] == 1


def test_async_failing_database_read_gives_the_lease_back(async_env: Env) -> None:
    _seed(async_env)
    with _failing_hero_selects(async_env), pytest.raises(Exception, match="database down"):
        _async_get(async_env)
    assert [k for k in async_env.transport.inner.keys() if ":r:" in k] == []  # noqa: SIM118
    assert _async_get(async_env) == "Spider"
    assert _async_get(async_env) == "Spider"
    assert SQLModelCache.stats()["Hero"]["hits"] == 1
