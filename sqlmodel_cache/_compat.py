"""Every touch of SQLAlchemy internals lives here, checked against SQLAlchemy 2.0 and 2.1.

Whatever of SQLAlchemy's (or SQLModel's) is not documented public API, a private
attribute or method, is reached through a function of this module and nowhere else; so
are SQLAlchemy's greenlet bridges (``await_only``, ``greenlet_spawn``). A SQLAlchemy
upgrade is thus reviewed in one place; the test suite runs on both versions (see
``noxfile.py``). redis-py's internals have their own corner: ``transport/_redis/``
(``connections.py`` and ``tracking.py``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.base import DEFAULT_STATE_ATTR
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.util import await_only as _await_only
from sqlalchemy.util import greenlet_spawn as greenlet_spawn
from sqlmodel import SQLModel

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def async_session_class() -> type[AsyncSession] | None:
    """SQLAlchemy's ``AsyncSession``, or ``None`` when it cannot be imported: SQLAlchemy 2.1
    does not install greenlet (the ``async`` extra does), and without it no
    ``AsyncSession`` can exist, so there is nothing of it to wrap."""
    try:
        from sqlalchemy.ext.asyncio import AsyncSession
    except ImportError:
        return None
    return AsyncSession


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
    ``Session`` used from ordinary threads. (Asked on every read: greenlet is imported once.)
    """
    if _getcurrent is None:
        return False
    return bool(getattr(_getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def _greenlet_getcurrent() -> Callable[[], object] | None:
    try:
        from greenlet import getcurrent
    except ImportError:  # without greenlet no AsyncSession can run, so there is no greenlet
        return None
    return getcurrent  # type: ignore[no-any-return]


_getcurrent = _greenlet_getcurrent()


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


def instance_maker(mapper: Mapper[Any]) -> Callable[[dict[str, Any]], object]:
    """A function returning a new instance of ``mapper``'s class whose attribute dict is the
    dict it is given (taken, not copied): what ``ClassManager.new_instance()`` followed by
    filling ``state.dict`` makes, as SQLAlchemy's loader does for every row it loads.

    For plain mapped classes and SQLModel models it assembles the instance directly (the
    object, the three pydantic slots ``SQLModel.__new__`` sets, an ``InstanceState``),
    about twice as fast, which counts when a cached 100-row result is served. A class with
    its own ``__new__`` or ``__setattr__`` or custom instrumentation gets ``new_instance()``;
    so does a SQLModel whose ``__new__`` does anything else (checked on a sample instance).
    """
    manager = mapper.class_manager
    cls = mapper.class_

    def generic(values: dict[str, Any]) -> object:
        instance = manager.new_instance()
        instance_state(instance).dict.update(values)
        return instance

    # NOTE: reading _state_constructor runs SQLAlchemy 2.0's first_init event once, as the
    # first new_instance() would; it must be the plain InstanceState for the direct path.
    if type(manager) is not ClassManager or manager._state_constructor is not InstanceState:
        return generic
    constructor: Any = cls.__new__
    setter: Any = cls.__setattr__
    if constructor is object.__new__ and setter is object.__setattr__:
        pydantic_slots = False
    elif constructor is SQLModel.__new__ and setter is SQLModel.__setattr__:
        pydantic_slots = True
    else:
        return generic
    new_object = object.__new__
    set_slot = object.__setattr__

    def direct(values: dict[str, Any]) -> object:
        instance = new_object(cls)
        if pydantic_slots:
            set_slot(instance, "__pydantic_fields_set__", set())
            set_slot(instance, "__pydantic_extra__", None)
            set_slot(instance, "__pydantic_private__", None)
        values[DEFAULT_STATE_ATTR] = InstanceState(instance, manager)
        set_slot(instance, "__dict__", values)
        return instance

    return direct if _same_instances(generic, direct, cls) else generic


def _same_instances(
    generic: Callable[[dict[str, Any]], object],
    direct: Callable[[dict[str, Any]], object],
    cls: type,
) -> bool:
    """True when both makers leave the same attributes (slots included) on an instance."""
    slots = {name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())}
    slots.discard("__dict__")
    missing = object()

    def described(instance: object) -> tuple[Any, ...]:
        state = instance_state(instance)
        return (
            sorted(vars(instance)),
            {name: getattr(instance, name, missing) for name in slots},
            type(state),
            state.obj() is instance,
            state.dict is vars(instance),
        )

    return described(generic({})) == described(direct({}))


def attach_loaded(session: Session, identities: Sequence[Any], instances: Sequence[Any]) -> None:
    """Make new ``instances`` persistent in ``session`` under ``identities``, as SQLAlchemy's
    loader puts freshly loaded rows into the identity map (``loading._instance``, with
    ``_add_unpresent`` inlined as there): no validation, no copy, no attach events. A new
    state starts unmodified with nothing expired or pending, which is what the loader's
    ``_commit_all`` would leave."""
    identity_map = session.identity_map
    states = identity_map._dict
    weak_map = identity_map._wr
    hash_key = session.hash_key
    for identity, instance in zip(identities, instances, strict=True):
        state: InstanceState[Any] = instance.__dict__[DEFAULT_STATE_ATTR]
        state.key = identity
        state.identity_token = identity[2]
        state.session_id = hash_key
        states[identity] = state
        state._instance_dict = weak_map


def identity_class_of(mapper: Mapper[Any]) -> type:
    """The class identity keys of ``mapper`` name (the base class of a hierarchy)."""
    return mapper._identity_class


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


def populates_existing(state: ORMExecuteState) -> bool:
    """True when the load refreshes objects the session holds (``populate_existing``, also
    set by ``session.refresh()`` and expired-attribute loads)."""
    return bool(state.load_options._populate_existing)


def autoflushes(state: ORMExecuteState) -> bool:
    """True when SQLAlchemy flushes the session before running this load."""
    return bool(state.load_options._autoflush)


def statement_cache_key(statement: Select[Any]) -> CacheKey | None:
    """SQLAlchemy's own cache key of a statement (its structure, and its bound parameters
    in order), or ``None`` when the statement cannot be cached by SQLAlchemy either."""
    return statement._generate_cache_key()


def sqlmodel_registry() -> Any:
    """The registry SQLModel's table models are mapped in by default."""
    return SQLModel._sa_registry


def orm_execute_listeners(session: Session) -> int:
    """How many ``do_orm_execute`` listeners apply to ``session`` (ours included)."""
    return len(session.dispatch.do_orm_execute)


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
