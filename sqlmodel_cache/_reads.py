"""The read path: where a ``session.get()`` is answered from the cache or fills it.

Called from the ``do_orm_execute`` listener. Returning ``None`` lets SQLAlchemy run the
statement as usual; returning a ``Result`` answers it. Any doubt means ``None``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import Select

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import (
    autoflush,
    autoflushes,
    has_options_or_lock,
    identity_token_of,
    is_get_statement,
    populates_existing,
    sleep,
)
from sqlmodel_cache._instances import instance_for, result_rows, rows_result
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._state import Runtime
from sqlmodel_cache._writes import deliver, tracker_of
from sqlmodel_cache.transport._protocols import TAG_SIZE, Fetched

#: Execution option by which ``Session.get()``'s fast path hands its fetch (a miss and its
#: lease, or ``None`` when the cache is unavailable) to the event path: ``(key, found)``.
PREFETCHED = "_sqlmodel_cache_prefetched"

#: Execution option by which ``Session.get()``'s fast path, which fills the entry itself
#: after a miss, tells the event path to leave its ``SELECT`` alone.
HANDLED = "_sqlmodel_cache_handled"

#: What a failed cache read logs (the read then uses the database).
READ_FAILED = "cache read failed, using the database: %r"

#: Polling interval while another reader fills a key: starts here, doubles up to MAX_POLL.
FIRST_POLL = 0.002
MAX_POLL = 0.02


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


def read_bypass(
    runtime: Runtime,
    state: ORMExecuteState,
    tables: Sequence[str],
    default_ttl: int,
    bind: Engine | Connection,
) -> str | int:
    """Why this read must go to the database (SPEC R3), or else the TTL its entry gets.

    Shared by gets and queries; ``tables`` are the tables the read reads, ``bind`` the
    engine or connection it would run on."""
    options = state.execution_options
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
    ttl = options.get("cache_ttl", default_ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        runtime.stats.warn("cache_ttl", "execution option cache_ttl must be a positive int")
        return "invalid_option"
    if autoflushes(state):
        # SQLAlchemy autoflushes before its SELECT; a hit must not skip that, and what the
        # flush writes must make the reads below bypass the cache.
        autoflush(state.session)
    reason = session_bypass(runtime, state.session, tables, bind)
    return ttl if reason is None else reason


def session_bypass(
    runtime: Runtime,
    session: Session,
    tables: Sequence[str],
    bind: Engine | Connection,
    awaiting: bool = False,
) -> str | None:
    """Why a read of ``tables`` in ``session`` on ``bind`` must go to the database, whatever
    the call's options; ``None`` when it may use the cache. ``awaiting``: the caller is a
    coroutine that awaits the (async) transport itself, outside SQLAlchemy's greenlet."""
    if bind.get_execution_options().get("schema_translate_map"):
        return "schema_translate_map"
    if own_writes_block(session, tables):
        return "own_writes"
    pending = runtime.pending
    if pending and pending.retry_due() and runtime.driver.usable_here():
        deliver(runtime, set(), set(), set())
    if pending.blocks(tables):
        return "pending_invalidation"
    if not awaiting and not runtime.driver.usable_here():
        runtime.stats.warn(
            "async_in_sync",
            "a sync Session cannot use the async transport %s: reads bypass the cache",
            type(runtime.driver.transport).__name__,
        )
        return "async_transport_in_sync_session"
    return None


def own_writes_block(session: Session, tables: Sequence[str]) -> bool:
    """True when this session's transaction wrote one of ``tables`` (or is flushing)."""
    tracker = tracker_of(session)
    return tracker is not None and any(tracker.blocks(table) for table in tables)


def serve_get(
    runtime: Runtime, state: ORMExecuteState, plan: ModelPlan, pk: tuple[Any, ...]
) -> Result[Any] | None:
    """Answer a ``Session.get()`` from the cache, or run it and fill the cache."""
    model = plan.label
    stats = runtime.stats
    tables = (plan.table_name,)
    default_ttl = plan.config.ttl or runtime.settings.default_ttl
    bind = state.session.get_bind(**state.bind_arguments)
    checked = read_bypass(runtime, state, tables, default_ttl, bind)
    if isinstance(checked, int):
        try:
            key = plan.row_key_for(pk)
        except Unsupported:
            checked = "key_type"
    if isinstance(checked, str):
        stats.add(model, f"bypass:{checked}")
        return None
    ttl = checked

    prefetched = state.execution_options.get(PREFETCHED)
    if prefetched is not None and prefetched[0] == key:
        found = prefetched[1]  # the fast path fetched already: a miss, or None (no cache)
    else:
        found = fetch(runtime, model, "", key, (plan.row_tag_key,), plan.codec.schema)
    if found is None:
        return None
    fetched, lease = found

    if fetched.entry is not None:
        instance = answer_hit(runtime, state.session, plan, key, fetched.entry)
        if instance is not None:
            return rows_result([model], [()], [id], [(instance,)])
        drop_bad_entry(runtime, model, key)

    stats.add(model, "misses")
    frozen = state.invoke_statement().freeze()
    if fetched.leased:
        fill_after_miss(runtime, state.session, plan, key, fetched, lease, result_rows(frozen), ttl)
    return frozen()


def fill_after_miss(
    runtime: Runtime,
    session: Session,
    plan: ModelPlan,
    key: str,
    fetched: Fetched,
    lease: bytes,
    rows: list[list[Any]],
    ttl: int,
) -> None:
    """Store the row just read under the lease ``fetched`` took, or give the lease back."""
    filled = False
    if own_writes_block(session, (plan.table_name,)):
        # NOTE: a flush inside the statement (e.g. a nested autoflush) wrote the table:
        # the row just read may be uncommitted.
        runtime.stats.add(plan.label, "fill_skipped:own_writes")
    else:
        filled = _fill(runtime, plan, key, fetched.tags, lease, rows, ttl)
    if not filled:
        forget(runtime, key)  # give the lease back: others may be waiting for it


def answer_hit(
    runtime: Runtime, session: Session, plan: ModelPlan, key: str, entry: bytes
) -> object | None:
    """The session's instance for a valid ``entry`` (counted as a hit); ``None`` when the
    entry is corrupt, foreign or for another key (see :func:`drop_bad_entry`)."""
    values = _decode_hit(runtime, plan, key, entry)
    if values is None:
        return None
    instance = instance_for(session, plan, values)
    runtime.stats.add(plan.label, "hits")
    runtime.stats.add(plan.label, "bytes_read", len(entry))
    return instance


def drop_bad_entry(runtime: Runtime, label: str, key: str) -> None:
    """Count, log and delete an entry that failed to decode."""
    runtime.stats.add(label, "errors")
    runtime.stats.warn("bad_entry", "undecodable cache entry for %s removed", label)
    forget(runtime, key)


def _decode_hit(runtime: Runtime, plan: ModelPlan, key: str, entry: bytes) -> dict[str, Any] | None:
    """The row values in ``entry``, or ``None`` if it is corrupt, foreign or for another key.

    The transport already matched the entry's tag against the current one; the schema,
    signature, JSON and the row's own primary key are checked here."""
    header = entry[:TAG_SIZE] + plan.codec.schema
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


def _fill(
    runtime: Runtime,
    plan: ModelPlan,
    key: str,
    tags: tuple[bytes, ...],
    lease: bytes,
    rows: list[list[Any]],
    ttl: int,
) -> bool:
    """Store the row just loaded, if it is exactly what the key names and fits the limits;
    ``True`` if a fill was attempted."""
    model = plan.label
    if len(rows) != 1 or type(rows[0][0]) is not plan.mapper.class_:
        return False  # no such row: absence is not cached
    instance = rows[0][0]
    loaded = instance_state(instance)
    if loaded.modified or loaded.key is None:
        return False
    try:
        if plan.row_key_for(loaded.key[1]) != key:
            return False  # the database matched another spelling of the key (a collation)
        body = plan.codec.encode(loaded.dict)
    except Unsupported:
        runtime.stats.add(model, "bypass:unsupported_value")
        return False
    return store(runtime, model, "", key, b"".join(tags) + plan.codec.schema, body, ttl, lease)


def fetch(
    runtime: Runtime, label: str, events: str, key: str, tag_keys: Sequence[str], schema: bytes
) -> tuple[Fetched, bytes] | None:
    """The valid entry under ``key``, or the lease to fill it (returned with the fetch).

    Stampede control (SPEC C3): while another reader, in this process or another, holds
    the lease, wait up to ``lease_wait`` seconds for its entry, polling with a growing
    interval; then give up and read the database without filling. ``None`` when the circuit
    breaker is open, or (counted and logged) when the transport fails."""
    if not runtime.breaker.allow():
        runtime.stats.add(label, f"{events}bypass:circuit_open")
        return None
    near = runtime.driver.near
    if near is not None:
        entry = near.lookup(label, events, key, tag_keys, schema)
        if entry is not None:
            return Fetched(entry, False, ()), b""
    lease = _keys.new_lease()
    deadline = None
    delay = FIRST_POLL
    while True:
        ticket = None if near is None else near.begin(key, tag_keys)
        try:
            fetched = runtime.driver.fetch(
                key, tag_keys, schema, _keys.new_tag(), lease, runtime.lease_ttl_ms
            )
        except Exception as exc:  # noqa: BLE001 - reads degrade: any failure is a miss
            transport_failed(runtime, label, READ_FAILED, exc)
            return None
        if near is not None:
            near.remember(ticket, key, tag_keys, fetched)
        runtime.breaker.record_success()
        if fetched.entry is not None or fetched.leased:
            return fetched, lease
        now = time.monotonic()
        if deadline is None:
            deadline = now + runtime.settings.lease_wait
            runtime.stats.add(label, "lease_waits")
        if now >= deadline:
            runtime.stats.add(label, "lease_wait_timeouts")
            return fetched, lease
        sleep(min(delay, deadline - now))
        delay = min(delay * 2, MAX_POLL)


def transport_failed(runtime: Runtime, label: str, message: str, exc: Exception) -> None:
    """Count and log a failed read or fill, and feed the circuit breaker."""
    runtime.stats.add(label, "errors")
    runtime.stats.warn("read_error", message, exc)
    if runtime.breaker.record_failure():
        runtime.stats.add("*", "circuit_opened")
        runtime.stats.warn(
            "circuit_open",
            "the cache keeps failing: reads skip it for %.1f s, then one read probes it",
            runtime.breaker.reset_after,
        )


def store(
    runtime: Runtime,
    label: str,
    events: str,
    key: str,
    header: bytes,
    body: bytes,
    ttl: int,
    lease: bytes,
) -> bool:
    """Frame ``body`` and fill ``key`` with it if it fits and the lease still holds;
    ``True`` if a fill was attempted. ``events`` prefixes the counters (``""`` for gets,
    ``"query_"`` for queries)."""
    entry = runtime.framing.frame(key, header, body)
    if len(entry) > runtime.settings.max_entry_bytes:
        runtime.stats.add(label, f"{events}bypass:too_large")
        return False
    runtime.max_ttl = max(runtime.max_ttl, ttl)
    try:
        stored = runtime.driver.fill(key, entry, ttl, lease)
    except Exception as exc:  # noqa: BLE001 - a failed fill only costs a later miss
        transport_failed(runtime, label, "cache fill failed: %r", exc)
    else:
        runtime.stats.add(label, f"{events}fills" if stored else "fill_rejected")
        if stored:
            runtime.stats.add(label, "bytes_written", len(entry))
    return True


def forget(runtime: Runtime, key: str) -> None:
    """Delete a bad entry, or give back a lease that will not be filled."""
    # Best effort: if the delete fails too, the entry simply stays a miss.
    with contextlib.suppress(Exception):
        runtime.driver.delete(key)
