"""Every touch of SQLAlchemy internals lives here, checked against SQLAlchemy 2.0 and 2.1.

Keeping them in one module means a SQLAlchemy upgrade is reviewed in one place; the test
suite runs on both versions (see ``noxfile.py``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import InstanceState, Mapper, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.util import await_only as _await_only
from sqlalchemy.util import greenlet_spawn as greenlet_spawn

T = TypeVar("T")


def await_only(awaitable: Awaitable[T]) -> T:
    """Run a coroutine from sync code running inside SQLAlchemy's greenlet (AsyncSession)."""
    return _await_only(awaitable)


def sleep(seconds: float) -> None:
    """Sleep without blocking the event loop when running inside ``AsyncSession``."""
    if in_async_session_context():
        import asyncio

        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def in_async_session_context() -> bool:
    """True when sync code runs inside ``greenlet_spawn``, so :func:`await_only` works.

    That is the case for everything an ``AsyncSession`` does; it is not for a plain
    ``Session`` used from ordinary threads.
    """
    try:
        from greenlet import getcurrent
    except ImportError:  # pragma: no cover - greenlet is required for AsyncSession anyway
        return False
    return bool(getattr(getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def get_clause(mapper: Mapper[Any]) -> tuple[ClauseElement, tuple[str, ...]]:
    """The WHERE clause ``Session.get()`` uses for ``mapper`` and its bind keys in PK order."""
    clause, params = mapper._get_clause
    return clause, tuple(params[column].key for column in mapper.primary_key)


def is_get_statement(statement: Select[Any], mapper: Mapper[Any], clause: ClauseElement) -> bool:
    """True when ``statement`` selects exactly the ``mapper`` entity (not columns, not an
    alias), filters on exactly ``Session.get()``'s clause, and has no joins or modifiers
    (loader options and locks are allowed here: they are reasons to bypass, checked later).

    SQLAlchemy 2.1 puts the mapper's own clause object in the statement; 2.0 puts an
    annotated copy of it, which compares equal.
    """
    columns = statement._raw_columns
    if len(columns) != 1 or not columns[0].is_selectable:
        return False
    if (
        statement._setup_joins
        or statement._limit_clause is not None
        or statement._offset_clause is not None
        or statement._group_by_clauses
        or statement._having_criteria
        or statement._distinct
    ):
        return False
    if columns[0]._annotations.get("parententity") is not mapper:
        return False
    criteria: Sequence[ClauseElement] = statement._where_criteria
    if len(criteria) != 1:
        return False
    criterion = criteria[0]
    return criterion is clause or bool(criterion.compare(clause))


def has_options_or_lock(statement: Any) -> bool:
    """True when a SELECT carries loader options or a row lock (``with_for_update``)."""
    return bool(
        getattr(statement, "_with_options", None)
        or getattr(statement, "_for_update_arg", None) is not None
    )


def flushed_states(flush_context: UOWTransaction) -> Iterator[InstanceState[Any]]:
    """Every object whose own row the flush inserted, updated or deleted, cascades and
    delete-orphans included (``session.new/dirty/deleted`` miss the orphans)."""
    for state, (_isdelete, listonly) in flush_context.states.items():
        if not listonly:
            yield state


def attach_loaded(
    session: Session, mapper: Mapper[Any], identity_key: Any, values: dict[str, Any]
) -> object:
    """A persistent instance of ``mapper`` holding ``values``, put into the session's identity
    map as SQLAlchemy's loader puts a freshly loaded row (``loading._instance``): no
    validation, no copy, no attach events. A new state starts unmodified with nothing
    expired or pending, which is what the loader's ``_commit_all`` would leave."""
    instance = mapper.class_manager.new_instance()
    state: InstanceState[Any] = instance_state(instance)
    state.dict.update(values)
    state.key = identity_key
    state.identity_token = identity_key[2]
    state.session_id = session.hash_key
    session.identity_map._add_unpresent(state, identity_key)
    return instance


def autobegin(session: Session) -> None:
    """Begin the session's transaction if it has none, as executing a statement does."""
    session._autobegin_t()


def is_clean(session: Session) -> bool:
    """True when the session holds no pending, modified or deleted objects (nothing for an
    autoflush to write)."""
    return session._is_clean()


def autoflush(session: Session) -> None:
    """Flush pending changes if the session autoflushes, as a SELECT would (no-op if clean)."""
    session._autoflush()


def identity_token_of(load_options: Any) -> Any:
    """The horizontal-sharding identity token a load asks for (``None`` normally)."""
    return getattr(load_options, "_identity_token", None)


_UNIQUE_FILTERS_ARG = (
    "_create_unique_filters"  # SQLAlchemy 2.1: a function of the result
    if "_create_unique_filters" in inspect.signature(SimpleResultMetaData.__init__).parameters
    else "_unique_filters"  # SQLAlchemy 2.0: the list itself
)


def row_metadata(
    keys: Sequence[str], extras: Sequence[Sequence[Any]], unique_filters: Sequence[Any]
) -> SimpleResultMetaData:
    """Result metadata like the ORM's: names, column expressions as alternate keys, and the
    per-column hash functions ``Result.unique()`` uses (``id`` for entities)."""
    filters = list(unique_filters)
    value: Any = filters if _UNIQUE_FILTERS_ARG == "_unique_filters" else (lambda _: filters)
    return SimpleResultMetaData(keys, extras, **{_UNIQUE_FILTERS_ARG: value})
