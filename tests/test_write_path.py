"""What a commit invalidates, at the edges of the write path: a changed primary key, a key
the cache cannot spell, writes after a flush or a savepoint, raw SQL through the session,
and how a commit is counted. Each test here kills mutants of ``_writes.py`` that the rest
of the suite let live (``python -m nox -s mutation``)."""

from __future__ import annotations

import pytest
from sqlalchemy import text, update
from sqlmodel import Session, col, select

from sqlmodel_cache import SQLModelCache
from tests.helpers import Env
from tests.models import Hero, Team

_STRONG = select(Hero.name).where(Hero.power >= 15).order_by(col(Hero.id))


def _seed(env: Env) -> None:
    """Team 1, heroes 1 and 2 (both strong), all three cached, and the strong-names query."""

    def body(session: Session) -> None:
        session.add(Team(id=1, name="Avengers"))
        session.add_all([Hero(id=1, name="Spider", power=20), Hero(id=2, name="Iron", power=20)])
        session.commit()

    env.run(body)
    for pk in (1, 2):
        env.run(lambda s, pk=pk: s.get(Hero, pk))
    env.run(lambda s: s.get(Team, 1))
    env.run(lambda s: s.exec(_STRONG).all())
    env.reset_sql()


def _hero(pk: object) -> object:
    def body(session: Session) -> object:
        hero = session.get(Hero, pk)
        return None if hero is None else (hero.name, hero.power)

    return body


def test_changing_a_primary_key_retires_the_entry_under_the_old_key(env: Env) -> None:
    """A hero whose ``id`` changes from 1 to 10: ``get(Hero, 1)`` finds nothing any more
    (the database says so, not the old entry), and ``get(Hero, 10)`` finds the hero."""
    _seed(env)

    def renumber(session: Session) -> None:
        session.get(Hero, 1).id = 10  # type: ignore[union-attr]
        session.commit()

    env.run(renumber)
    assert env.run(_hero(1)) is None
    assert env.run(_hero(10)) == ("Spider", 20)


def test_a_written_key_the_cache_cannot_spell_retires_every_row_of_its_table(
    mem_env: Env,
) -> None:
    """A flush writing a row whose key the cache cannot spell as its own (an integer key
    given as the string ``"1"``) retires every cached row of the table: here the entry of
    hero 1, deleted behind the ORM's back, then inserted again by the ORM."""
    _seed(mem_env)
    with mem_env.engine.begin() as connection:  # another program
        connection.execute(text("DELETE FROM hero WHERE id = 1"))
    mem_env.run(lambda s: (s.add(Hero(id="1", name="Reborn", power=1)), s.commit()))  # type: ignore[arg-type]
    assert mem_env.run(_hero(1)) == ("Reborn", 1)
    assert mem_env.run(_hero(2)) == ("Iron", 20)


@pytest.mark.parametrize("before", ["flush", "savepoint"])
def test_a_bulk_update_after_a_flush_or_a_savepoint_retires_every_row(
    env: Env, before: str
) -> None:
    """The write path tells a flush's own statements (whose rows it names one by one) from
    the statements after it: a bulk UPDATE that follows a flush, or a released savepoint,
    in the same transaction still retires every cached row of its table."""
    _seed(env)

    def write(session: Session) -> None:
        if before == "flush":
            session.get(Team, 1).name = "Defenders"  # type: ignore[union-attr]
            session.flush()
        else:
            with session.begin_nested():
                session.get(Team, 1).name = "Defenders"  # type: ignore[union-attr]
        session.execute(update(Hero).values(power=99))
        session.commit()

    env.run(write)
    assert (env.run(_hero(1)), env.run(_hero(2))) == (("Spider", 99), ("Iron", 99))


def test_a_text_select_of_several_words_leaves_the_cache_in_use(env: Env) -> None:
    """``SELECT name FROM hero ...`` through the session is a read, however long: the gets
    after it in the same transaction are still served by the cache."""
    _seed(env)

    def read(session: Session) -> object:
        session.execute(text("SELECT name FROM hero WHERE id = 1"))
        env.reset_sql()
        return _hero(1)(session)

    assert env.run(read) == ("Spider", 20)
    assert env.statements == []


def test_text_dml_through_the_session_retires_cached_queries_too(env: Env) -> None:
    """Raw SQL DML cannot be attributed to a table: its commit retires every cached row
    and every cached query of every cached table."""
    _seed(env)
    env.run(lambda s: (s.execute(text("UPDATE hero SET name = 'Raw' WHERE id = 2")), s.commit()))
    assert env.run(lambda s: s.exec(_STRONG).all()) == ["Spider", "Raw"]
    assert env.run(_hero(2)) == ("Raw", 20)


def test_a_commit_counts_the_keys_it_invalidates(mem_env: Env) -> None:
    """``stats()["*"]["invalidations"]`` counts keys: renaming one hero moves its row key
    and the table's data tag (2); ``stats()["Hero"]["invalidations"]`` counts commits."""
    _seed(mem_env)
    before = SQLModelCache.stats()
    mem_env.run(lambda s: (setattr(s.get(Hero, 1), "name", "Venom"), s.commit()))
    after = SQLModelCache.stats()
    assert after["*"]["invalidations"] == before["*"]["invalidations"] + 2
    assert after["Hero"]["invalidations"] == before["Hero"]["invalidations"] + 1
