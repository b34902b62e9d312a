"""The read path: where a ``session.get()`` is answered from the cache or fills it.

Called from the ``do_orm_execute`` listener. Returning ``None`` lets SQLAlchemy run the
statement as usual; returning a ``Result`` answers it. Any doubt means ``None``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.engine import Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import ORMExecuteState, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import Select

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import autoflush, has_plain_shape, identity_token_of, is_get_statement
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._state import Runtime
from sqlmodel_cache._writes import tracker_of


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


def _bypass_reason(runtime: Runtime, state: ORMExecuteState, plan: ModelPlan) -> str | None:
    """Why this get must go to the database (SPEC R3), or ``None`` when the cache may serve it."""
    options = state.execution_options
    statement: Select[Any] = state.statement  # type: ignore[assignment]
    cache = options.get("cache", True)
    if cache is not True:
        if cache is False:
            return "option"
        runtime.stats.warn("cache_option", "execution option cache must be True or False")
        return "invalid_option"
    if options.get("populate_existing") or state.load_options._populate_existing:
        return "populate_existing"
    if not has_plain_shape(statement):
        return "statement_options"
    if identity_token_of(state.load_options) is not None:
        return "identity_token"
    if state.load_options._autoflush:
        # SQLAlchemy autoflushes before its SELECT; a hit must not skip that, and what the
        # flush writes must make the reads below bypass the cache.
        autoflush(state.session)
    if _own_writes_block(state.session, plan):
        return "own_writes"
    if _entry_ttl(runtime, state, plan) is None:
        runtime.stats.warn("cache_ttl", "execution option cache_ttl must be a positive int")
        return "invalid_option"
    if not runtime.driver.usable_here():
        runtime.stats.warn(
            "async_in_sync",
            "a sync Session cannot use the async transport %s: reads bypass the cache",
            type(runtime.driver.transport).__name__,
        )
        return "async_transport_in_sync_session"
    return None


def _entry_ttl(runtime: Runtime, state: ORMExecuteState, plan: ModelPlan) -> int | None:
    """The TTL for this call's entry: the ``cache_ttl`` option, the model's, the default;
    ``None`` for an invalid option."""
    ttl = state.execution_options.get("cache_ttl")
    if ttl is None:
        return plan.config.ttl or runtime.settings.default_ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        return None
    return ttl


def _own_writes_block(session: Session, plan: ModelPlan) -> bool:
    tracker = tracker_of(session)
    return tracker is not None and tracker.blocks(plan.table_name)


def serve_get(runtime: Runtime, state: ORMExecuteState) -> Result[Any] | None:
    """Answer a ``Session.get()`` from the cache, or run it and fill the cache."""
    matched = match_get(runtime, state)
    if matched is None:
        return None
    plan, pk = matched
    model = plan.mapper.class_.__name__
    stats = runtime.stats
    reason = _bypass_reason(runtime, state, plan)
    if reason is None:
        try:
            key = plan.row_key_for(pk)
        except Unsupported:
            reason = "key_type"
    if reason is not None:
        stats.add(model, f"bypass:{reason}")
        return None

    schema = plan.codec.schema
    lease = _keys.new_lease()
    try:
        fetched = runtime.driver.fetch(
            key, (plan.row_tag_key,), schema, _keys.new_tag(), lease, runtime.lease_ttl_ms
        )
    except Exception as exc:  # noqa: BLE001 - reads degrade: any transport failure is a miss
        stats.add(model, "errors")
        stats.warn("read_error", "cache read failed, using the database: %r", exc)
        return None

    if fetched.entry is not None:
        values = _decode_hit(runtime, plan, key, fetched.entry)
        if values is None:
            stats.add(model, "errors")
            stats.warn("bad_entry", "undecodable cache entry for %s removed", model)
            _forget(runtime, key)
        else:
            instance = _materialize(state.session, plan, values)
            if instance is None:
                stats.add(model, "bypass:identity_present")
                return None
            stats.add(model, "hits")
            return _single_result(plan, instance)

    stats.add(model, "misses")
    frozen = state.invoke_statement().freeze()
    if fetched.leased:
        if _own_writes_block(state.session, plan):
            # NOTE: a flush inside the statement (e.g. a nested autoflush) wrote the table:
            # the row just read may be uncommitted.
            stats.add(model, "fill_skipped:own_writes")
        else:
            ttl = _entry_ttl(runtime, state, plan)
            assert ttl is not None  # checked by _bypass_reason
            _fill(runtime, plan, key, fetched.tags, lease, frozen.data, ttl)
    return frozen()


def _decode_hit(runtime: Runtime, plan: ModelPlan, key: str, entry: bytes) -> dict[str, Any] | None:
    """The row values in ``entry``, or ``None`` if it is corrupt, foreign or for another key.

    The transport already matched the entry's tag against the current one; the schema,
    signature, JSON and the row's own primary key are checked here."""
    header = entry[: _keys.TAG_SIZE] + plan.codec.schema
    body = runtime.framing.unframe(key, header, entry)
    if body is None:
        return None
    values = plan.codec.decode(body)
    if values is None:
        return None
    try:
        own_key = plan.row_key_for(tuple(values[k] for k in plan.pk_attribute_keys))
    except (Unsupported, KeyError):
        return None
    return values if own_key == key else None


def _materialize(session: Session, plan: ModelPlan, values: dict[str, Any]) -> object | None:
    """A persistent instance built from cached values, exactly as if loaded (no validation,
    no merge copy); ``None`` if the session already holds that identity."""
    mapper = plan.mapper
    identity = mapper.identity_key_from_primary_key(
        tuple(values[k] for k in plan.pk_attribute_keys)
    )
    if identity in session.identity_map:
        return None
    instance: object = mapper.class_manager.new_instance()
    instance_state(instance).dict.update(values)
    make_transient_to_detached(instance)
    session.add(instance)
    for key in plan.eager_relationships:
        # NOTE: eager relationships load now, as they would have with the row, so code that
        # relies on lazy="selectin" (e.g. under AsyncSession) finds them loaded.
        getattr(instance, key)
    return instance


def _single_result(plan: ModelPlan, instance: object) -> Result[Any]:
    metadata = SimpleResultMetaData([plan.mapper.class_.__name__])
    return IteratorResult(metadata, iter([(instance,)]))


def _fill(
    runtime: Runtime,
    plan: ModelPlan,
    key: str,
    tags: tuple[bytes, ...],
    lease: bytes,
    rows: Any,
    ttl: int,
) -> None:
    """Store the row just loaded, if it is exactly what the key names and fits the limits."""
    model = plan.mapper.class_.__name__
    if len(rows) != 1:
        return
    # A frozen ORM result holds bare instances when it can serve scalars, else rows.
    instance = rows[0] if type(rows[0]) is plan.mapper.class_ else rows[0][0]
    if type(instance) is not plan.mapper.class_:
        return
    loaded = instance_state(instance)
    if loaded.modified or loaded.key is None:
        return
    try:
        if plan.row_key_for(loaded.key[1]) != key:
            return  # the database matched another spelling of the key (e.g. a collation)
        body = plan.codec.encode(loaded.dict)
    except Unsupported:
        runtime.stats.add(model, "bypass:unsupported_value")
        return
    entry = runtime.framing.frame(key, b"".join(tags) + plan.codec.schema, body)
    if len(entry) > runtime.settings.max_entry_bytes:
        runtime.stats.add(model, "bypass:too_large")
        return
    try:
        stored = runtime.driver.fill(key, entry, ttl, lease)
    except Exception as exc:  # noqa: BLE001 - a failed fill only costs a later miss
        runtime.stats.add(model, "errors")
        runtime.stats.warn("fill_error", "cache fill failed: %r", exc)
        return
    runtime.stats.add(model, "fills" if stored else "fill_rejected")


def _forget(runtime: Runtime, key: str) -> None:
    # Best effort: if the delete fails too, the entry simply stays a miss.
    with contextlib.suppress(Exception):
        runtime.driver.delete(key)
