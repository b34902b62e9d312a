"""A fill after another ``do_orm_execute`` listener flushed a write while the read ran.

On a miss the cache runs the SELECT through the listeners registered after its own (tenant
criteria, auditing); one of them may flush. If that flush wrote a table the read reads, the
rows just read may be uncommitted: they must not be stored, or other sessions would be
served a row that is rolled back a moment later. In every (session x transport x database).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState
from sqlmodel import Session, col, select

from sqlmodel_cache import SQLModelCache
from tests.helpers import Env
from tests.models import Hero


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        session.add_all([Hero(id=1, name="Spider", power=10), Hero(id=2, name="Iron", power=20)])
        session.commit()

    env.run(body)
    env.reset_sql()


def _flush_during_next_select(session: Session, change: Callable[[Session], object]) -> None:
    """Have a listener registered after the cache's make ``change`` in ``session`` and flush
    it while the session's next ORM SELECT runs (after the cache missed, before the rows
    are read)."""
    fired: list[bool] = []
    # Listeners go on a sync Session: an AsyncSession's is the one it drives.
    sync_session: Session = getattr(session, "sync_session", session)

    def write_and_flush(state: ORMExecuteState) -> None:
        if state.is_select and not fired:
            fired.append(True)
            change(sync_session)
            sync_session.flush()  # runs inside the SELECT, so inside the greenlet if async

    event.listen(sync_session, "do_orm_execute", write_and_flush)


def test_a_get_whose_load_flushed_the_row_stores_nothing(env: Env) -> None:
    """A get that misses while another listener flushes an insert of that very row reads
    the uncommitted row: it is returned to its session but not stored
    (``fill_skipped:own_writes``), and after the rollback no session sees it."""
    _seed(env)

    def insert_during_get(session: Session) -> str:
        _flush_during_next_select(session, lambda s: s.add(Hero(id=9, name="Uncommitted")))
        hero = session.get(Hero, 9)
        assert hero is not None
        name = hero.name
        session.rollback()
        return name

    assert env.run(insert_during_get) == "Uncommitted"
    env.reset_sql()
    assert env.run(lambda s: s.get(Hero, 9)) is None
    assert len(env.selects()) == 1  # the database said so, not the cache
    assert env.row_keys() == []
    stats = SQLModelCache.stats()["Hero"]
    assert stats["fill_skipped:own_writes"] == 1
    assert "fills" not in stats


@pytest.mark.parametrize("write", ["update", "insert"])
def test_a_query_whose_load_flushed_a_write_stores_nothing(env: Env, write: str) -> None:
    """A query that misses while another listener flushes a write to its table reads an
    uncommitted result: returned to its session, not stored (``fill_skipped:own_writes``);
    after the rollback other sessions get the committed result from the database. An
    update is read through a column query (an entity query returns the session's own
    object, which is never stored anyway); an insert through an entity query."""
    _seed(env)
    if write == "update":
        statement = select(Hero.name).where(Hero.power >= 15).order_by(col(Hero.id))
    else:
        statement = select(Hero).where(Hero.power >= 15).order_by(col(Hero.id))

    def names(session: Session) -> list[str]:
        rows = session.exec(statement).all()
        return [row if isinstance(row, str) else row.name for row in rows]

    def write_during_query(session: Session) -> list[str]:
        if write == "update":
            hero = session.get(Hero, 1)
            assert hero is not None
            _flush_during_next_select(session, lambda s: setattr(hero, "power", 100))
        else:
            _flush_during_next_select(session, lambda s: s.add(Hero(id=9, name="New", power=90)))
        seen = names(session)
        session.rollback()
        return seen

    uncommitted = ["Spider", "Iron"] if write == "update" else ["Iron", "New"]
    assert env.run(write_during_query) == uncommitted
    env.reset_sql()
    assert env.run(names) == ["Iron"]
    assert len(env.selects()) == 1  # from the database: nothing was stored
    assert env.run(names) == ["Iron"]
    assert len(env.selects()) == 1  # and that committed result is cached as usual
    stats = SQLModelCache.stats()["Hero"]
    assert stats["fill_skipped:own_writes"] == 1
    assert stats["query_fills"] == 1
