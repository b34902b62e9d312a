"""``Session.get()``'s fast path: a hit answered before SQLAlchemy builds a SELECT.

Between ``session.get()`` and the ``do_orm_execute`` event, SQLAlchemy builds a statement,
looks up its compiled form and sets up an ORM execution: tens of microseconds, more than a
cache hit itself costs. ``configure()`` therefore wraps ``Session.get`` (``reset()``
restores it). The wrapper answers only the plain call: a cache-enabled model by primary
key, no options, a clean session whose identity map does not hold the object, and no
``do_orm_execute`` listener but ours (another one, e.g. adding tenant criteria, must see
the statement). It runs the same checks, the same fetch and builds the same instance as
the event path.

Every other call goes to SQLAlchemy's ``get`` and through the event path unchanged. A miss
that took the lease reads the database through SQLAlchemy's ``get`` with the event path
told to stand aside (``HANDLED``), then fills the entry here, with the same checks as the
event path (``fill_after_miss``); any other miss hands its fetch down (``PREFETCHED``). Either
way a miss costs no extra round trip.

``AsyncSession.get`` is wrapped the same way (``aget``) when the transport is async: a
hit is then answered in the coroutine itself, awaiting the transport directly, without
entering SQLAlchemy's greenlet; a miss reads through ``AsyncSession.get`` and fills in a
greenlet. Anything else that might need the greenlet (a bad entry to delete, eager
relationships to load, a lease to wait for, pending invalidations to deliver) goes the
usual way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, Session

from sqlmodel_cache import _keys, _state
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import (
    async_session_class,
    autobegin,
    greenlet_spawn,
    is_clean,
    orm_execute_listeners,
)
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._reads import (
    HANDLED,
    PREFETCHED,
    READ_FAILED,
    answer_hit,
    drop_bad_entry,
    fetch,
    fill_after_miss,
    forget,
    session_bypass,
    transport_failed,
)
from sqlmodel_cache._state import Runtime
from sqlmodel_cache.transport._protocols import Fetched

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

_sqlalchemy_get = Session.get
#: ``None`` without greenlet, when no ``AsyncSession`` can run (see ``async_session_class``).
_AsyncSession = async_session_class()
_sqlalchemy_aget: Any = None if _AsyncSession is None else _AsyncSession.get


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
    eligible = _eligible(runtime, session, entity, ident)
    if eligible is None:
        return _sqlalchemy_get(session, entity, ident, **options)
    plan, key = eligible
    autobegin(session)  # as executing the SELECT would
    found = fetch(runtime, plan.label, "", key, (plan.row_tag_key,), plan.codec.schema)
    if found is None or not (found[0].entry is not None or found[0].leased):
        # No cache, or another reader's lease outlived the wait: the usual way, told what
        # the fetch saw, reads the database (and counts the miss) without a second call.
        return _sqlalchemy_get(session, entity, ident, execution_options={PREFETCHED: (key, found)})
    fetched, lease = found
    if fetched.entry is not None:
        instance = answer_hit(runtime, session, plan, key, fetched.entry)
        if instance is not None:
            return instance
        drop_bad_entry(runtime, plan.label, key)
        return _sqlalchemy_get(session, entity, ident)  # fetches again, and refills
    runtime.stats.add(plan.label, "misses")
    try:
        instance = _sqlalchemy_get(session, entity, ident, execution_options={HANDLED: True})
    except BaseException:
        forget(runtime, key)  # give the lease back: others may be waiting for it
        raise
    _fill_with(runtime, session, plan, key, fetched, lease, instance)
    return instance


async def aget(session: AsyncSession, entity: Any, ident: Any, **options: Any) -> Any:
    """``AsyncSession.get`` with a hit on an async transport answered without the greenlet."""
    runtime = _state.runtime
    if (
        runtime is None
        or any(options.values())
        or not (runtime.driver.is_async and runtime.driver.is_atomic)
        or runtime.pending
    ):
        return await _sqlalchemy_aget(session, entity, ident, **options)
    sync_session = session.sync_session
    eligible = _eligible(runtime, sync_session, entity, ident, awaiting=True)
    if eligible is None or eligible[0].eager_relationships or not runtime.breaker.allow():
        return await _sqlalchemy_aget(session, entity, ident)
    plan, key = eligible
    autobegin(sync_session)
    tag_keys = (plan.row_tag_key,)
    near = runtime.driver.near
    if near is not None:
        entry = near.lookup(plan.label, "", key, tag_keys, plan.codec.schema)
        if entry is not None:
            instance = answer_hit(runtime, sync_session, plan, key, entry)
            if instance is not None:
                return instance
            return await _sqlalchemy_aget(session, entity, ident)  # drops the bad entry
    lease = _keys.new_lease()
    ticket = None if near is None else near.begin(key, tag_keys)
    try:
        fetched = await runtime.driver.transport.fetch(
            key, tag_keys, plan.codec.schema, _keys.new_tag(), lease, runtime.lease_ttl_ms
        )
    except Exception as exc:  # noqa: BLE001 - reads degrade: any failure is a miss
        transport_failed(runtime, plan.label, READ_FAILED, exc)
        return await _sqlalchemy_aget(
            session, entity, ident, execution_options={PREFETCHED: (key, None)}
        )
    if near is not None:
        near.remember(ticket, key, tag_keys, fetched)
    runtime.breaker.record_success()
    if fetched.entry is not None:
        instance = answer_hit(runtime, sync_session, plan, key, fetched.entry)
        if instance is not None:
            return instance
    elif fetched.leased:
        runtime.stats.add(plan.label, "misses")
        try:
            instance = await _sqlalchemy_aget(
                session, entity, ident, execution_options={HANDLED: True}
            )
        except Exception:
            await greenlet_spawn(forget, runtime, key)  # give the lease back
            raise
        # The fill awaits the transport from sync code: it runs in SQLAlchemy's greenlet.
        await greenlet_spawn(_fill_with, runtime, sync_session, plan, key, fetched, lease, instance)
        return instance
    # A bad entry (deleted by the event path), or another reader's lease (waited for there).
    return await _sqlalchemy_aget(session, entity, ident)


def _fill_with(
    runtime: Runtime,
    session: Session,
    plan: ModelPlan,
    key: str,
    fetched: Fetched,
    lease: bytes,
    instance: object | None,
) -> None:
    """After a miss that took the lease: store the instance SQLAlchemy loaded (``None``: no
    such row, nothing stored) under the model's TTL, or give the lease back."""
    rows = [] if instance is None else [[instance]]
    ttl = plan.config.ttl or runtime.settings.default_ttl
    fill_after_miss(runtime, session, plan, key, fetched, lease, rows, ttl)


def _eligible(
    runtime: Runtime, session: Session, entity: Any, ident: Any, awaiting: bool = False
) -> tuple[ModelPlan, str] | None:
    """The plan and row key when the fast path may answer; ``None`` sends the call the
    usual way (which then counts why it bypassed the cache, if it does)."""
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
    if session_bypass(runtime, session, (plan.table_name,), bind, awaiting) is not None:
        return None
    return plan, key


def _plan_of(runtime: Runtime, entity: Any) -> ModelPlan | None:
    mapper = inspect(entity, raiseerr=False)
    if not isinstance(mapper, Mapper) or mapper.always_refresh:
        return None
    return runtime.registry.plan_for(mapper)
