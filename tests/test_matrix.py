"""The test matrix itself: the async half awaits the real async API.

A body given to ``env.run`` is shared by both session kinds. In async mode its session calls
must be the installed ``AsyncSession`` coroutines, awaited from outside SQLAlchemy's greenlet
(as an application awaits them), or the async half would only re-run the sync code paths.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession as SQLAlchemyAsyncSession
from sqlalchemy.orm import Session as SQLAlchemySession
from sqlmodel import Session, select
from sqlmodel.ext.asyncio.session import AsyncSession

from sqlmodel_cache._fastget import aget as fast_aget
from sqlmodel_cache._fastget import get as fast_get
from tests.helpers import Env, EnvSession, assert_missing_greenlet
from tests.models import Hero, Team


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        session.add(Team(id=1, name="Avengers"))
        session.add(Hero(id=1, name="Spider", team_id=1))
        session.commit()

    env.run(body)


@contextmanager
def _counted(cls: type, name: str) -> Iterator[list[object]]:
    """Count the calls of ``cls.name`` (whatever is installed there now) while inside."""
    installed = cls.__dict__[name]
    calls: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return installed(*args, **kwargs)

    setattr(cls, name, counting)
    try:
        yield calls
    finally:
        setattr(cls, name, installed)


CALLS = [
    pytest.param(
        SQLAlchemySession, SQLAlchemyAsyncSession, "get", lambda s: s.get(Hero, 1), id="get"
    ),
    pytest.param(Session, AsyncSession, "exec", lambda s: s.exec(select(Hero)).all(), id="exec"),
    pytest.param(
        SQLAlchemySession,
        SQLAlchemyAsyncSession,
        "commit",
        lambda s: (s.add(Team(id=2, name="Defenders")), s.commit()),
        id="commit",
    ),
]


@pytest.mark.parametrize(("sync_cls", "async_cls", "name", "body"), CALLS)
def test_a_body_calls_the_installed_method_of_its_session_kind(
    env: Env,
    sync_cls: type,
    async_cls: type,
    name: str,
    body: Callable[[Session], object],
) -> None:
    """``session.get`` / ``exec`` / ``commit`` in a body is one call of the sync ``Session``
    method in sync mode, and one call of the ``AsyncSession`` coroutine, awaited, in async
    mode (for ``get``: the library's ``aget``, its async fast path)."""
    _seed(env)
    env.run(lambda s: s.get(Hero, 1))  # cached: the counted get below is a hit
    if name == "get":
        assert (SQLAlchemySession.get, SQLAlchemyAsyncSession.get) == (fast_get, fast_aget)
    with _counted(async_cls, name) as awaited:
        if env.mode == "sync":
            with _counted(sync_cls, name) as called:
                result = env.run(body)
            assert (len(called), awaited) == (1, [])
        else:
            result = env.run(body)
            assert len(awaited) == 1
    assert not inspect.isawaitable(result)  # what the body got back was awaited


def test_an_async_body_runs_outside_the_greenlet(env: Env) -> None:
    """Implicit IO in an async body raises ``MissingGreenlet``, as in an async application;
    the same lazy load works in sync mode, and in both through ``session.run_sync``."""
    _seed(env)

    def lazy_team(session: Session) -> str:
        hero = session.get(Hero, 1)
        assert hero is not None
        assert hero.team is not None  # a lazy load: implicit IO
        return hero.team.name

    def awaited_team(session: EnvSession) -> str:
        hero = session.get(Hero, 1)
        assert hero is not None
        team = session.run_sync(lambda _: hero.team)
        assert team is not None
        return team.name

    if env.mode == "sync":
        assert env.run(lazy_team) == "Avengers"
    else:
        assert_missing_greenlet(lambda: env.run(lazy_team))
    assert env.run(awaited_team) == "Avengers"
