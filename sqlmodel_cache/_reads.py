"""The read path's drivers, and ``Session.get()`` through the ``do_orm_execute`` event.

:func:`run` and :func:`arun` perform what a read flow (``_flow.read``) asks for: the sync
driver calls the transport (inside ``AsyncSession``'s greenlet, an async transport through
``await_only``), the async one awaits it. Each entry point hands them its own way of
reading the database (``load``): the event path's ``invoke_statement()``, or the fast
path's call of SQLAlchemy's ``get`` (``_fastget``).

The event path also checks what only it can see, the call's execution options
(:func:`call_bypass`), and SQLAlchemy's autoflush before a ``SELECT``. Returning ``None``
from it lets SQLAlchemy run the statement as usual; returning a ``Result`` answers it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.engine import FrozenResult, Result
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql import Select

from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import (
    autoflush,
    autoflushes,
    greenlet_spawn,
    has_options_or_lock,
    identity_token_of,
    is_get_statement,
    populates_existing,
    sleep,
)
from sqlmodel_cache._flow import (
    DELIVER,
    LOAD,
    Delete,
    Fetch,
    Fill,
    Flow,
    Hit,
    Loaded,
    Op,
    Outcome,
    Pause,
    read,
)
from sqlmodel_cache._instances import instance_for, rows_result
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._state import Runtime
from sqlmodel_cache._writes import deliver

#: Execution option by which a caller that runs the read flow itself (``Session.get()``'s
#: fast path) tells the event path to leave its ``SELECT`` alone.
HANDLED = "_sqlmodel_cache_handled"


# -- drivers ------------------------------------------------------------------------------


def run(runtime: Runtime, flow: Flow, load: Callable[[], Any]) -> Outcome:
    """Drive ``flow`` to its outcome with sync IO: in a plain thread, or inside
    SQLAlchemy's greenlet (``AsyncSession``), where an async transport is awaited through
    ``await_only``. ``load`` reads the database."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as done:
            outcome: Outcome = done.value
            return outcome
        value = error = None
        try:
            value = load() if op is LOAD else _perform(runtime, op)
        except BaseException as exc:  # noqa: BLE001 - thrown into the flow, which re-raises it
            error = exc


async def arun(runtime: Runtime, flow: Flow, load: Callable[[], Awaitable[Any]]) -> Outcome:
    """:func:`run` for a coroutine: the transport is awaited directly, outside SQLAlchemy's
    greenlet, and so is ``load``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as done:
            outcome: Outcome = done.value
            return outcome
        value = error = None
        try:
            value = await (load() if op is LOAD else _aperform(runtime, op))
        except BaseException as exc:  # noqa: BLE001 - thrown into the flow, which re-raises it
            error = exc


def _perform(runtime: Runtime, op: Op) -> Any:
    driver = runtime.driver
    if isinstance(op, Fetch):
        return driver.fetch(op.key, op.tag_keys, op.schema, op.new_tag, op.lease, op.lease_ttl_ms)
    if isinstance(op, Fill):
        return driver.fill(op.key, op.value, op.ttl, op.lease)
    if isinstance(op, Delete):
        return driver.delete(op.key)
    if isinstance(op, Pause):
        return sleep(op.seconds)
    if op is DELIVER:
        return deliver(runtime, set(), set(), set())
    raise AssertionError(f"not a read operation: {op!r}")


async def _aperform(runtime: Runtime, op: Op) -> Any:
    driver = runtime.driver
    if isinstance(op, Pause):
        return await asyncio.sleep(op.seconds)
    if driver.awaitable:
        transport = driver.transport
        if isinstance(op, Fetch):
            return await transport.fetch(
                op.key, op.tag_keys, op.schema, op.new_tag, op.lease, op.lease_ttl_ms
            )
        if isinstance(op, Fill):
            return await transport.fill(op.key, op.value, op.ttl, op.lease)
        if isinstance(op, Delete):
            return await driver.adelete(op.key)
    if driver.is_async:
        # The emulated operations of a basic async transport, and invalidations, are
        # written as sync code that awaits through await_only: they need the greenlet.
        return await greenlet_spawn(_perform, runtime, op)
    return _perform(runtime, op)


# -- the event path -----------------------------------------------------------------------


def call_bypass(runtime: Runtime, state: ORMExecuteState) -> str | None:
    """Why this call must go to the database whatever the session (SPEC R3, R4), from its
    execution options and statement; ``None`` when it may use the cache."""
    options: Mapping[str, Any] = state.execution_options
    if "schema_translate_map" in options:
        # One statement, several schemas: keys do not name the schema (see the docs).
        return "schema_translate_map"
    cache = options.get("cache", True)
    if cache is not True:
        if cache is False:
            return "option"
        runtime.stats.warn("cache_option", "execution option cache must be True or False")
        return "invalid_option"
    if options.get("populate_existing") or populates_existing(state):
        return "populate_existing"
    if has_options_or_lock(state.statement):
        return "statement_options"
    if identity_token_of(state.load_options) is not None:
        return "identity_token"
    ttl = options.get("cache_ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        runtime.stats.warn("cache_ttl", "execution option cache_ttl must be a positive int")
        return "invalid_option"
    return None


def match_get(runtime: Runtime, state: ORMExecuteState) -> tuple[ModelPlan, tuple[Any, ...]] | None:
    """The plan and primary key when ``state`` is a ``Session.get()`` (or a lazy many-to-one
    load, which SQLAlchemy runs the same way) of a cache-enabled model; else ``None``."""
    statement = state.statement
    if not isinstance(statement, Select) or state.is_column_load:
        return None
    mapper = state.bind_mapper
    if mapper is None:
        return None
    plan = runtime.registry.plan_for(mapper)
    if plan is None:
        return None
    params = state.parameters
    if not isinstance(params, dict) or len(params) != len(plan.get_param_keys):
        return None
    try:
        pk = tuple(params[key] for key in plan.get_param_keys)
    except KeyError:
        return None
    if not is_get_statement(statement, mapper, plan.get_clause):
        return None
    return plan, pk


def serve_get(
    runtime: Runtime, state: ORMExecuteState, plan: ModelPlan, pk: tuple[Any, ...]
) -> Result[Any] | None:
    """Answer a ``Session.get()`` from the cache, or run it and fill the cache."""
    session = state.session
    bind = session.get_bind(**state.bind_arguments)
    key = ""
    reason = call_bypass(runtime, state)
    if reason is None:
        try:
            key = plan.row_key_for(pk)
        except Unsupported:
            reason = "key_type"
        else:
            if autoflushes(state):
                autoflush(session)  # as the SELECT would, before the cache is consulted

    def load() -> FrozenResult[Any]:
        return state.invoke_statement().freeze()

    ttl = state.execution_options.get("cache_ttl", plan.ttl)
    outcome = run(
        runtime, read(runtime, plan, key, ttl, session, bind, plan.encode_result, reason), load
    )
    if type(outcome) is Hit:
        instance = instance_for(session, plan, outcome.answer)
        return rows_result([plan.label], [()], [id], [(instance,)])
    if type(outcome) is Loaded:
        frozen: FrozenResult[Any] = outcome.result
        return frozen()
    return None
