"""Cached rows become ORM objects exactly as SQLAlchemy's loader makes them.

A hit builds its instances directly (``_compat.instance_maker``) because that is most of
what a cached 100-row result costs; these tests hold it to what a load makes."""

from __future__ import annotations

from typing import Any

import pytest
import sqlmodel.main
from sqlalchemy import inspect
from sqlmodel import Session, col, select

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache._compat import instance_maker
from tests.helpers import Env
from tests.models import NEWBORN_BIRTHS, Document, Hero, Newborn


def _described(instance: Any) -> tuple[Any, ...]:
    """What a load leaves on an object, apart from values."""
    state = inspect(instance)
    return (
        type(instance),
        sorted(vars(instance)),
        getattr(instance, "__pydantic_fields_set__", None),
        getattr(instance, "__pydantic_extra__", None),
        getattr(instance, "__pydantic_private__", None),
        state.persistent,
        state.modified,
        dict(state.committed_state),
        set(state.expired_attributes),
        state.dict is vars(instance),
    )


def _seed_heroes(env: Env, count: int) -> None:
    env.run(lambda s: (s.add_all([Hero(name=f"H{i}", power=i) for i in range(count)]), s.commit()))


def _strong(session: Session) -> list[Hero]:
    return list(session.exec(select(Hero).where(Hero.power >= 0).order_by(col(Hero.id))).all())


def test_get_and_select_hits_build_the_object_a_load_builds(mem_env: Env) -> None:
    """Same attributes, same pydantic slots, same SQLAlchemy state as an uncached load;
    pydantic still records assignments on it, and the session tracks them."""
    _seed_heroes(mem_env, 3)
    mem_env.run(lambda s: s.get(Hero, 1))  # fill both entries
    mem_env.run(_strong)

    def compare(session: Session) -> None:
        loaded = session.exec(select(Hero).execution_options(cache=False)).all()
        expected = [_described(hero) for hero in loaded]
        session.expunge_all()
        mem_env.reset_sql()
        got = session.get(Hero, 1)
        assert [_described(got)] == expected[:1]
        session.expunge_all()
        heroes = _strong(session)
        assert mem_env.statements == []  # both were hits
        assert [_described(hero) for hero in heroes] == expected
        assert heroes[0].model_dump() == loaded[0].model_dump()
        heroes[1].power = 50
        assert heroes[1].__pydantic_fields_set__ == {"power"}
        assert inspect(heroes[1]).modified
        assert list(session.dirty) == [heroes[1]]

    mem_env.run(compare)


def test_plain_sqlalchemy_models_are_built_like_a_load(mem_env: Env) -> None:
    mem_env.run(lambda s: (s.add(Document(id=1, title="Doc", body="text")), s.commit()))
    mem_env.run(lambda s: s.get(Document, 1))

    def compare(session: Session) -> None:
        loaded = session.get(Document, 1, execution_options={"cache": False})
        expected = _described(loaded)
        session.expunge_all()
        mem_env.reset_sql()
        got = session.get(Document, 1)
        assert mem_env.statements == []
        assert _described(got) == expected
        assert got is not None
        assert got.title == "Doc"

    mem_env.run(compare)


def test_a_model_with_its_own_new_is_built_through_it(mem_env: Env) -> None:
    """A hit must not skip code a model runs when SQLAlchemy creates its instances."""
    mem_env.run(lambda s: (s.add_all([Newborn(name="a"), Newborn(name="b")]), s.commit()))
    query = select(Newborn).order_by(col(Newborn.id))
    mem_env.run(lambda s: s.exec(query).all())  # fill both entries
    mem_env.run(lambda s: s.get(Newborn, 1))
    NEWBORN_BIRTHS.clear()
    mem_env.reset_sql()

    def body(session: Session) -> list[str]:
        newborns = session.exec(query).all()
        again = session.get(Newborn, 2)  # in the identity map: nothing new is made
        return [newborn.name for newborn in [*newborns, again]]  # type: ignore[list-item]

    assert mem_env.run(body) == ["a", "b", "b"]
    assert len(NEWBORN_BIRTHS) == 2
    assert mem_env.run(lambda s: s.get(Newborn, 1).name) == "a"  # type: ignore[union-attr]
    assert len(NEWBORN_BIRTHS) == 3
    assert mem_env.statements == []
    stats = SQLModelCache.stats()["Newborn"]
    assert (stats["query_hits"], stats["hits"]) == (1, 1)


def test_a_sqlmodel_new_that_does_more_is_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct build replicates SQLModel.__new__; if a SQLModel version's __new__ leaves
    anything else on the object, the maker notices and goes through it."""

    def init_more(instance: Any) -> None:
        object.__setattr__(instance, "__pydantic_fields_set__", {"marker"})
        object.__setattr__(instance, "__pydantic_extra__", None)
        object.__setattr__(instance, "__pydantic_private__", None)

    assert instance_maker(Hero.__mapper__)({"id": 1}).__pydantic_fields_set__ == set()  # type: ignore[attr-defined]
    monkeypatch.setattr(sqlmodel.main, "init_pydantic_private_attrs", init_more)
    made = instance_maker(Hero.__mapper__)({"id": 1})
    assert made.__pydantic_fields_set__ == {"marker"}  # type: ignore[attr-defined]
    assert made.id == 1  # type: ignore[attr-defined]
    assert inspect(made).transient


def test_repeated_entities_in_one_result_are_one_object(mem_env: Env) -> None:
    """A join can return the same entity on several rows: a hit gives one object, as a load."""
    _seed_heroes(mem_env, 2)
    pairs = select(Hero).join(Newborn, col(Newborn.id) >= 0).order_by(col(Hero.id))
    mem_env.run(lambda s: (s.add_all([Newborn(name="x"), Newborn(name="y")]), s.commit()))

    def body(session: Session) -> list[int]:
        heroes = session.exec(pairs).all()
        return [id(hero) for hero in heroes]

    first = mem_env.run(body)
    mem_env.reset_sql()
    second = mem_env.run(body)
    assert mem_env.statements == []
    assert len(first) == len(second) == 4
    assert len(set(second)) == 2  # each hero twice, as the same object
    assert SQLModelCache.stats()["Hero"]["query_hits"] == 1
