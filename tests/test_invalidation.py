"""Manual invalidation (SPEC W5), for writes the cache cannot see: it retires everything
it names, and only that, checks its arguments and is counted like a commit.

The writes here go through a connection no session uses (another program, as far as the
cache can tell), so only the manual invalidation tells the cache about them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis.asyncio
from sqlalchemy import text
from sqlmodel import Session, col, select

from sqlmodel_cache import ConfigurationError, InvalidationError, SQLModelCache
from sqlmodel_cache.transport import MemoryTransport, RedisAsyncTransport
from tests.helpers import Env
from tests.models import Hero, Membership

_STRONG = select(Hero.name).where(Hero.power >= 15).order_by(col(Hero.id))


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        session.add_all([Hero(id=1, name="Spider", power=20), Hero(id=2, name="Iron", power=20)])
        session.add_all([Membership(org="acme", user_id=1), Membership(org="acme", user_id=2)])
        session.commit()

    env.run(body)


def _cache_everything(env: Env) -> None:
    """Fill the cache with both heroes, both memberships and a query over the heroes."""
    for pk in (1, 2):
        env.run(lambda s, pk=pk: s.get(Hero, pk))
        env.run(lambda s, pk=pk: s.get(Membership, ("acme", pk)))
    env.run(lambda s: s.exec(_STRONG).all())
    env.reset_sql()


def _write_behind_the_cache(env: Env, sql: str) -> None:
    if env.async_engine is None:
        with env.engine.begin() as connection:
            connection.execute(text(sql))
        return

    async def run() -> None:
        assert env.async_engine is not None
        async with env.async_engine.begin() as connection:
            await connection.execute(text(sql))

    assert env.loop is not None
    env.loop.run_until_complete(run())


def _invalidate(env: Env, method: str, *args: Any) -> None:
    """Call ``SQLModelCache.<method>`` (its ``a``-twin, awaited, in async mode)."""
    if env.mode == "async":
        assert env.loop is not None
        env.loop.run_until_complete(getattr(SQLModelCache, f"a{method}")(*args))
    else:
        getattr(SQLModelCache, method)(*args)


def _hero(pk: object) -> Any:
    return lambda session: session.get(Hero, pk).name


@pytest.mark.parametrize(
    ("method", "argument"), [("invalidate_model", Hero), ("invalidate_tables", "hero")]
)
def test_a_model_or_table_invalidation_retires_every_cached_row_and_query(
    env: Env, method: str, argument: object
) -> None:
    """``invalidate_model(Hero)`` and ``invalidate_tables("hero")`` retire every cached Hero
    row (read by get) and every cached query over the table."""
    _seed(env)
    _cache_everything(env)
    _write_behind_the_cache(env, "UPDATE hero SET name = name || '!'")
    _invalidate(env, method, argument)
    assert env.run(_hero(1)) == "Spider!"
    assert env.run(_hero(2)) == "Iron!"
    assert env.run(lambda s: s.exec(_STRONG).all()) == ["Spider!", "Iron!"]
    assert len(env.selects()) == 3


def test_a_row_invalidation_retires_those_rows_and_the_queries_only(env: Env) -> None:
    """``invalidate(Hero, 1)`` retires hero 1 and every cached query over the table; hero 2
    stays cached. A composite key is a tuple: ``invalidate(Membership, ("acme", 1))``
    retires that membership only."""
    _seed(env)
    _cache_everything(env)
    _write_behind_the_cache(env, "UPDATE hero SET name = 'Venom' WHERE id = 1")
    _write_behind_the_cache(env, "UPDATE membership SET role = 'owner' WHERE user_id = 1")
    _invalidate(env, "invalidate", Hero, 1)
    _invalidate(env, "invalidate", Membership, ("acme", 1))
    assert env.run(_hero(1)) == "Venom"
    assert env.run(lambda s: s.exec(_STRONG).all()) == ["Venom", "Iron"]
    assert env.run(lambda s: s.get(Membership, ("acme", 1)).role) == "owner"
    assert len(env.selects()) == 3
    env.reset_sql()
    assert env.run(_hero(2)) == "Iron"
    assert env.run(lambda s: s.get(Membership, ("acme", 2)).role) == ""
    assert env.statements == []  # the rows not named are still served by the cache


def test_a_row_invalidation_by_a_key_spelling_the_cache_does_not_use_retires_every_row(
    env: Env,
) -> None:
    """``invalidate(Hero, "1")`` names a key the cache cannot spell as its own (an integer
    key given as a string): to be sure, every cached Hero row is retired, hero 1 included."""
    _seed(env)
    _cache_everything(env)
    _write_behind_the_cache(env, "UPDATE hero SET name = 'Venom' WHERE id = 1")
    _invalidate(env, "invalidate", Hero, "1")
    assert env.run(_hero(1)) == "Venom"
    assert env.run(_hero(2)) == "Iron"
    assert len(env.selects()) == 2


@pytest.mark.parametrize(
    ("method", "arguments", "message"),
    [
        ("invalidate_tables", ("",), "table names must be non-empty strings"),
        ("invalidate_tables", ("hero", 5), "table names must be non-empty strings"),
        ("invalidate_model", (int,), "is not a mapped class"),
        ("invalidate_model", (Hero.__table__,), "is not a mapped class"),  # type: ignore[attr-defined]
        ("invalidate", (object, 1), "is not a mapped class"),
    ],
)
def test_manual_invalidation_checks_its_arguments(
    mem_env: Env, method: str, arguments: tuple[object, ...], message: str
) -> None:
    """A table name that is not a non-empty string, or a model that is not a mapped class,
    raises ``ConfigurationError`` saying so, and invalidates nothing."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        getattr(SQLModelCache, method)(*arguments)
    assert "invalidations" not in SQLModelCache.stats().get("*", {})


def test_manual_invalidation_is_counted_like_a_commit(mem_env: Env) -> None:
    """Counted per key under ``"*"`` and per model; a failure raises ``InvalidationError``
    (the caller asked for it: never silent) and counts an ``invalidation_error``."""
    _seed(mem_env)
    before = SQLModelCache.stats()
    SQLModelCache.invalidate(Hero, 1)  # a row key and the table's data tag
    after = SQLModelCache.stats()
    assert after["*"]["invalidations"] == before["*"]["invalidations"] + 2
    assert after["Hero"]["invalidations"] == before["Hero"]["invalidations"] + 1
    assert "invalidation_errors" not in after["*"]

    class Unreachable(MemoryTransport):
        def invalidate(self, *args: object) -> None:
            raise ConnectionError("injected: cache unreachable")

    SQLModelCache.configure(Unreachable(), key_prefix=mem_env.prefix)
    with pytest.raises(InvalidationError, match="cache invalidation failed: ConnectionError"):
        SQLModelCache.invalidate_model(Hero)
    assert SQLModelCache.stats()["*"] == {"invalidation_errors": 1}


def test_sync_manual_invalidation_on_an_async_transport_names_the_async_method() -> None:
    """With an async transport, the sync methods raise ``InvalidationError`` telling the
    caller to await the ``a``-prefixed twin (nothing is sent)."""
    SQLModelCache.configure(RedisAsyncTransport(redis.asyncio.Redis(port=1)))
    with pytest.raises(InvalidationError) as raised:
        SQLModelCache.invalidate(Hero, 1)
    assert str(raised.value) == (
        "the configured transport is async: use the a-prefixed method "
        "(await SQLModelCache.ainvalidate...) from async code"
    )
