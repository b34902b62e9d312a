"""``Session.get()``'s fast path: a hit answered before SQLAlchemy builds a SELECT.

Between ``session.get()`` and the ``do_orm_execute`` event, SQLAlchemy builds a statement,
looks up its compiled form and sets up an ORM execution: tens of microseconds, more than a
cache hit itself costs. ``configure()`` therefore wraps ``Session.get`` (``reset()``
restores it). The wrapper takes only the plain call: a cache-enabled model by primary
key, no options, a clean session whose identity map does not hold the object, and no
``do_orm_execute`` listener but ours (another one, e.g. adding tenant criteria, must see
the statement). Every other call goes to SQLAlchemy's ``get`` and through the event path.

A call it takes runs the same read flow as the event path (``_flow.read``): a hit builds
the instance here; a read that needs the database calls SQLAlchemy's ``get`` with the event
path told to stand aside (``HANDLED``), and the flow fills the entry from what it loaded.
So a miss costs no extra round trip.

``AsyncSession.get`` is wrapped the same way (``aget``): the flow is driven by awaiting,
in the coroutine itself, so a hit on an async transport never enters SQLAlchemy's greenlet;
only the database read (``AsyncSession.get``) and what must run as sync code (eager
relationships of a hit, a basic async transport's emulated operations) do.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.orm import Mapper, Session

from sqlmodel_cache import _state
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import (
    async_session_class,
    autobegin,
    greenlet_spawn,
    is_clean,
    orm_execute_listeners,
)
from sqlmodel_cache._flow import Hit, Loaded, read
from sqlmodel_cache._instances import instance_for
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._reads import HANDLED, arun, run
from sqlmodel_cache._state import Runtime

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

_sqlalchemy_get = Session.get
#: ``None`` without greenlet, when no ``AsyncSession`` can run (see ``async_session_class``).
_AsyncSession = async_session_class()
_sqlalchemy_aget: Any = None if _AsyncSession is None else _AsyncSession.get

#: What the fast path's own database read passes to SQLAlchemy's ``get``.
_HANDLED = {HANDLED: True}


def install() -> None:
    """Wrap ``Session.get`` and ``AsyncSession.get`` (idempotent)."""
    Session.get = get  # type: ignore[assignment]
    if _AsyncSession is not None:
        _AsyncSession.get = aget  # type: ignore[assignment,method-assign]


def uninstall() -> None:
    """Restore SQLAlchemy's methods (idempotent)."""
    Session.get = _sqlalchemy_get  # type: ignore[method-assign]
    if _AsyncSession is not None:
        _AsyncSession.get = _sqlalchemy_aget  # type: ignore[method-assign]


def get(session: Session, entity: Any, ident: Any, **options: Any) -> Any:
    """``Session.get`` with a cache hit answered first. Every argument that is not the
    default (all defaults are falsy) sends the call the usual way."""
    runtime = _state.runtime
    if runtime is None or any(options.values()):
        return _sqlalchemy_get(session, entity, ident, **options)
    taken = _take(runtime, session, entity, ident)
    if taken is None:
        return _sqlalchemy_get(session, entity, ident, **options)
    plan, key, bind = taken
    autobegin(session)  # as executing the SELECT would

    def load() -> Any:
        return _sqlalchemy_get(session, entity, ident, execution_options=_HANDLED)

    flow = read(runtime, plan, key, plan.ttl, session, bind, plan.encode_instance)
    outcome = run(runtime, flow, load)
    if type(outcome) is Hit:
        return instance_for(session, plan, outcome.answer)
    if type(outcome) is Loaded:
        return outcome.result
    return load()


async def aget(session: AsyncSession, entity: Any, ident: Any, **options: Any) -> Any:
    """``AsyncSession.get`` with a cache hit answered first, awaiting the transport."""
    runtime = _state.runtime
    if runtime is None or any(options.values()):
        return await _sqlalchemy_aget(session, entity, ident, **options)
    sync_session = session.sync_session
    taken = _take(runtime, sync_session, entity, ident)
    if taken is None:
        return await _sqlalchemy_aget(session, entity, ident, **options)
    plan, key, bind = taken
    autobegin(sync_session)

    def load() -> Awaitable[Any]:
        loading: Awaitable[Any] = _sqlalchemy_aget(
            session, entity, ident, execution_options=_HANDLED
        )
        return loading

    flow = read(runtime, plan, key, plan.ttl, sync_session, bind, plan.encode_instance, None, True)
    outcome = await arun(runtime, flow, load)
    if type(outcome) is Hit:
        if plan.eager_relationships:  # loading them may run SQL: sync code, in the greenlet
            return await greenlet_spawn(instance_for, sync_session, plan, outcome.answer)
        return instance_for(sync_session, plan, outcome.answer)
    if type(outcome) is Loaded:
        return outcome.result
    return await load()


def _take(
    runtime: Runtime, session: Session, entity: Any, ident: Any
) -> tuple[ModelPlan, str, Engine | Connection] | None:
    """The plan, row key and bind when the fast path may take the call; ``None`` sends it
    the usual way (which then counts why it bypassed the cache, if it does)."""
    plans = runtime.get_plans
    try:
        plan = plans[entity]
    except KeyError:
        plan = plans[entity] = _plan_of(runtime, entity)
    except TypeError:  # an unhashable entity: let SQLAlchemy say what is wrong with it
        return None
    if plan is None:
        return None
    pk = ident if type(ident) is tuple else (ident,)
    try:
        key = plan.row_key_for(pk)
    except Unsupported:
        return None
    if session.identity_map and plan.mapper.identity_key_from_primary_key(pk) in (
        session.identity_map
    ):
        return None  # SQLAlchemy returns (and may refresh) the object it holds
    if orm_execute_listeners(session) != 1:
        return None  # another listener must see the statement (tenant criteria, ...)
    if not is_clean(session) or getattr(session, "execution_options", None):
        return None  # an autoflush would run first; session-wide options apply
    try:
        bind = session.get_bind(plan.mapper)
    except Exception:  # noqa: BLE001 - no bind (yet): SQLAlchemy's get raises its own error
        return None
    return plan, key, bind


def _plan_of(runtime: Runtime, entity: Any) -> ModelPlan | None:
    mapper = inspect(entity, raiseerr=False)
    if not isinstance(mapper, Mapper) or mapper.always_refresh:
        return None
    return runtime.registry.plan_for(mapper)
