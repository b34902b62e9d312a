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
does too, carrying its fetch along (``PREFETCHED``), so it costs no extra round trip and
the event path, which reads the database and fills the entry under the lease the fetch
took, stays the one place where fills happen.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, Session

from sqlmodel_cache import _state
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import autobegin, is_clean
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._reads import PREFETCHED, answer_hit, fetch, session_bypass
from sqlmodel_cache._state import Runtime

_sqlalchemy_get = Session.get


def install() -> None:
    """Wrap ``Session.get`` (idempotent)."""
    Session.get = get  # type: ignore[assignment]


def uninstall() -> None:
    """Restore SQLAlchemy's ``Session.get`` (idempotent)."""
    Session.get = _sqlalchemy_get  # type: ignore[method-assign]


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
    if found is not None and found[0].entry is not None:
        instance = answer_hit(runtime, session, plan, key, found[0].entry)
        if instance is not None:
            return instance
        # A bad entry was removed: read the usual way, which fetches again and refills.
        return _sqlalchemy_get(session, entity, ident)
    return _sqlalchemy_get(session, entity, ident, execution_options={PREFETCHED: (key, found)})


def _eligible(
    runtime: Runtime, session: Session, entity: Any, ident: Any
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
    if len(session.dispatch.do_orm_execute) != 1:
        return None  # another listener must see the statement (tenant criteria, ...)
    if not is_clean(session) or getattr(session, "execution_options", None):
        return None  # an autoflush would run first; session-wide options apply
    bind = session.get_bind(plan.mapper)
    if session_bypass(runtime, session, (plan.table_name,), bind) is not None:
        return None
    return plan, key


def _plan_of(runtime: Runtime, entity: Any) -> ModelPlan | None:
    mapper = inspect(entity, raiseerr=False)
    if not isinstance(mapper, Mapper) or mapper.always_refresh:
        return None
    return runtime.registry.plan_for(mapper)
