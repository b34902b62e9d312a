"""The write path: what a transaction changed, and invalidating it when it commits.

A :class:`Tracker` lives in ``session.info`` from the first write of a transaction to its
end. Flushes and DML statements add to it; savepoints fold into it (a rolled-back savepoint's
writes stay recorded: over-invalidating is allowed, under-invalidating never); a commit
invalidates everything in it in one transport call, after the database commit and before
``commit()`` returns; a rollback drops it without touching the cache.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, TableClause, TextClause
from sqlalchemy.orm import Session, UOWTransaction
from sqlalchemy.sql.dml import UpdateBase

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._compat import flushed_states
from sqlmodel_cache._errors import InvalidationError
from sqlmodel_cache._state import Runtime

TRACKER_KEY = "sqlmodel_cache.tracker"

#: Text statements starting with these words are reads (anything else is an unknown write).
_READ_ONLY_TEXT = ("SELECT", "SHOW", "EXPLAIN")


@dataclass
class Tracker:
    """What the current transaction of one session has written."""

    row_keys: set[str] = field(default_factory=set)
    tag_keys: set[str] = field(default_factory=set)
    written_tables: set[str] = field(default_factory=set)
    unknown_writes: bool = False
    flushing: bool = False
    flush_tables: set[str] = field(default_factory=set)  # written by the running flush

    def blocks(self, table_name: str) -> bool:
        """True when a read of ``table_name`` could see this transaction's own writes, so
        it must neither be served from nor stored in the cache (read-your-own-writes)."""
        return self.flushing or self.unknown_writes or table_name in self.written_tables

    def note_table(self, prefix: str, table_name: str, *, all_rows: bool) -> None:
        """Record a write to ``table_name``; ``all_rows`` when any row may have changed."""
        self.written_tables.add(table_name)
        table_prefix = _keys.table_part(prefix, table_name)
        self.tag_keys.add(_keys.data_tag_key(table_prefix))
        if all_rows:
            self.tag_keys.add(_keys.row_tag_key(table_prefix))


def tracker_of(session: Session) -> Tracker | None:
    tracker: Tracker | None = session.info.get(TRACKER_KEY)
    return tracker


def own_writes_block(session: Session, tables: Iterable[str]) -> bool:
    """True when this session's transaction wrote one of ``tables`` (or is flushing): a
    read of them may see its own uncommitted writes."""
    tracker = tracker_of(session)
    return tracker is not None and any(tracker.blocks(table) for table in tables)


def _tracker(session: Session) -> Tracker:
    tracker: Tracker | None = session.info.get(TRACKER_KEY)
    if tracker is None:
        tracker = session.info[TRACKER_KEY] = Tracker()
    return tracker


def _table_name(table: Any) -> str | None:
    name = getattr(table, "fullname", None)
    return name if isinstance(name, str) else None


def before_flush(session: Session) -> None:
    # Reads issued by the flush itself (cascades, post-fetches) may see its own writes.
    _tracker(session).flushing = True


def after_flush(runtime: Runtime, session: Session, flush_context: UOWTransaction) -> None:
    """Record the cached rows the flush wrote, one key each.

    The flush's statements were recorded by :func:`before_execute` as they ran; a table
    written without an ORM object of its own in the flush (a many-to-many association
    table, a link model changed through a relationship) gets its row tag moved instead,
    since we cannot name the rows."""
    tracker = _tracker(session)
    prefix = runtime.settings.key_prefix
    object_tables: set[str] = set()
    mappers: set[Any] = set()
    for state in flushed_states(flush_context):
        mapper = state.mapper
        if mapper not in mappers:
            mappers.add(mapper)
            object_tables.update(name for name in map(_table_name, mapper.tables) if name)
        plan = runtime.registry.plan_for(mapper)
        if plan is None:
            continue
        # The identity as of now, and the one loaded if it differs: a changed primary key,
        # or a new row (whose key could hold an entry of an earlier row deleted behind the
        # ORM's back).
        current = tuple(state.dict.get(k) for k in plan.pk_attribute_keys)
        loaded = state.key[1] if state.key is not None else current
        identities = [current] if loaded == current else [loaded, current]
        for identity in identities:
            try:
                tracker.row_keys.add(plan.row_key_for(identity))
            except Unsupported:
                tracker.note_table(prefix, plan.table_name, all_rows=True)
    for name in tracker.flush_tables - object_tables:
        tracker.note_table(prefix, name, all_rows=True)
    tracker.flush_tables.clear()


def after_flush_postexec(session: Session) -> None:
    _tracker(session).flushing = False


# The connection each session transaction runs on -> that session. Weak on both sides:
# a connection ends with its transaction, and a session may be dropped without closing.
_sessions_by_connection: WeakKeyDictionary[Connection, weakref.ref[Session]] = WeakKeyDictionary()


def after_begin(session: Session, connection: Connection) -> None:
    _sessions_by_connection[connection] = weakref.ref(session)


def before_execute(runtime: Runtime, connection: Connection, statement: object) -> None:
    """Record what a statement on a session's connection may write, before it runs.

    Every write passes here: ORM flushes, ORM bulk DML, Core DML and text through
    ``session.execute()``, and statements run on ``session.connection()`` directly.
    """
    ref = _sessions_by_connection.get(connection)
    session = None if ref is None else ref()
    if session is None or getattr(statement, "is_select", False):
        return
    if isinstance(statement, (TextClause, str)):
        sql = statement.text if isinstance(statement, TextClause) else statement
        words = sql.lstrip().split(None, 1)
        if words and words[0].upper() in _READ_ONLY_TEXT:
            return
    tracker = _tracker(session)
    table = getattr(statement, "table", None) if isinstance(statement, UpdateBase) else None
    name = _table_name(table) if isinstance(table, TableClause) else None
    if name is None:
        # Raw SQL, DDL, or DML on something that is not a table: we cannot say what it wrote.
        tracker.unknown_writes = True
        return
    # A flush's rows are invalidated one by one (after_flush); any other statement may have
    # changed any row, so the table's row tag moves too (O(1) for the whole table).
    if tracker.flushing:
        tracker.flush_tables.add(name)
    tracker.note_table(runtime.settings.key_prefix, name, all_rows=not tracker.flushing)


def after_commit(runtime: Runtime, session: Session) -> None:
    """Invalidate what the committed transaction wrote: one transport call, before
    ``commit()`` returns."""
    tracker: Tracker | None = session.info.pop(TRACKER_KEY, None)
    if tracker is None:
        return
    tag_keys = set(tracker.tag_keys)
    if tracker.unknown_writes:
        # Raw SQL wrote tables we cannot name: every cached table is invalidated.
        prefix = runtime.settings.key_prefix
        for name in runtime.registry.cached_tables():
            table_prefix = _keys.table_part(prefix, name)
            tag_keys.update((_keys.row_tag_key(table_prefix), _keys.data_tag_key(table_prefix)))
    tables = set(tracker.written_tables)
    if tracker.unknown_writes:
        tables |= runtime.registry.cached_tables()
    if not tracker.row_keys and not tag_keys:
        return
    error = deliver(runtime, tracker.row_keys, tag_keys, tables)
    if error is not None and runtime.settings.raise_on_invalidation_error:
        raise InvalidationError(
            f"the commit succeeded but its cache invalidation failed ({error!r}); it will be "
            "retried, and this process reads the affected tables from the database meanwhile"
        ) from error


def deliver(
    runtime: Runtime, row_keys: set[str], tag_keys: set[str], tables: set[str]
) -> Exception | None:
    """Invalidate these keys, and every pending one, in one transport call.

    On failure they are kept pending (SPEC F3): logged at ERROR, counted, retried with the
    next invalidation or read, and meanwhile this process does not read ``tables`` from the
    cache. Returns the failure, if any."""
    pending = runtime.pending
    taken, pending_rows, pending_tags = pending.take()
    rows, tags = sorted(row_keys | pending_rows), sorted(tag_keys | pending_tags)
    if not rows and not tags:
        return None
    error: Exception
    if not runtime.driver.usable_here():
        error = InvalidationError("a sync Session cannot drive the configured async transport")
    elif runtime.breaker.is_open and pending and not pending.retry_due():
        # NOTE: deliveries do not wait for the breaker (other processes may serve stale
        # entries until one succeeds) but are paced, so a dead cache does not cost every
        # commit a timeout; a success closes the breaker for reads too.
        error = InvalidationError("the cache is failing: delivery deferred to the next retry")
    else:
        try:
            runtime.driver.invalidate(rows, tags, _keys.new_tag())
        except Exception as exc:  # noqa: BLE001 - writes shout, but the commit already happened
            runtime.breaker.record_failure()
            pending.failed()
            error = exc
        else:
            runtime.breaker.record_success()
            pending.delivered(taken)
            runtime.stats.add("*", "invalidations", len(rows) + len(tags))
            for table in tables:
                runtime.stats.add(runtime.registry.label_of(table), "invalidations")
            return None
    if row_keys or tag_keys:
        pending.add(row_keys, tag_keys, tables, runtime.registry.longest_ttl(runtime.max_ttl))
    runtime.stats.add("*", "invalidation_errors")
    runtime.stats.warn(
        "invalidate_error",
        "cache invalidation after commit FAILED (%r): %d invalidation(s) pending; this "
        "process reads the affected tables from the database until they are delivered, "
        "other processes may serve them stale until then or until their TTL",
        error,
        pending.size(),
        level=logging.ERROR,
    )
    return error


def after_transaction_end(session: Session, transaction: Any) -> None:
    """The outermost transaction ended without a commit (rollback or close): forget it.

    Any ending transaction also ends a flush: a flush that failed never reached
    ``after_flush_postexec``, and the statements after it are not part of it."""
    tracker = tracker_of(session)
    if tracker is None:
        return
    if transaction.parent is None:
        session.info.pop(TRACKER_KEY, None)
    else:
        tracker.flushing = False
