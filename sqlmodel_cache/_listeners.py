"""Thin shells: the SQLAlchemy session events, wired to the read and write paths.

Installed on the ``Session`` and ``Engine`` classes by ``configure()`` (so every ``Session``,
SQLModel's and the one inside every ``AsyncSession``, and every engine are covered) and
removed by ``reset()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from sqlmodel_cache import _fastget, _queries, _reads, _state, _writes


def _on_do_orm_execute(state: ORMExecuteState) -> Result[Any] | None:
    runtime = _state.runtime
    if runtime is None or not state.is_select or _reads.HANDLED in state.execution_options:
        return None
    matched = _reads.match_get(runtime, state)
    if matched is not None:
        return _reads.serve_get(runtime, state, *matched)
    return _queries.serve_select(runtime, state)


def _on_after_begin(session: Session, transaction: Any, connection: Connection) -> None:
    if _state.runtime is not None:
        _writes.after_begin(session, connection)


def _on_before_cursor_execute(
    connection: Connection, cursor: Any, sql: str, parameters: Any, context: Any, many: bool
) -> None:
    runtime = _state.runtime
    if runtime is not None:
        compiled = getattr(context, "compiled", None)
        statement = sql if compiled is None else compiled.statement
        _writes.before_execute(runtime, connection, statement)


def _on_before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    if _state.runtime is not None:
        _writes.before_flush(session)


def _on_after_flush(session: Session, flush_context: UOWTransaction) -> None:
    runtime = _state.runtime
    if runtime is not None:
        _writes.after_flush(runtime, session, flush_context)


def _on_after_flush_postexec(session: Session, flush_context: UOWTransaction) -> None:
    if _state.runtime is not None:
        _writes.after_flush_postexec(session)


def _on_after_commit(session: Session) -> None:
    runtime = _state.runtime
    if runtime is not None:
        _writes.after_commit(runtime, session)


def _on_after_transaction_end(session: Session, transaction: Any) -> None:
    _writes.after_transaction_end(session, transaction)


_SESSION_LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("do_orm_execute", _on_do_orm_execute),
    ("after_begin", _on_after_begin),
    ("before_flush", _on_before_flush),
    ("after_flush", _on_after_flush),
    ("after_flush_postexec", _on_after_flush_postexec),
    ("after_commit", _on_after_commit),
    ("after_transaction_end", _on_after_transaction_end),
)


# Statements on a session's connection are seen here, whether or not they went through
# session.execute(): that is how session.connection().execute(update(...)) is noticed.
# before_cursor_execute, because exec_driver_sql() skips before_execute.
_ENGINE_LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("before_cursor_execute", _on_before_cursor_execute),
)

_TARGETS: tuple[tuple[type, tuple[tuple[str, Callable[..., Any]], ...]], ...] = (
    (Session, _SESSION_LISTENERS),
    (Engine, _ENGINE_LISTENERS),
)


def install() -> None:
    """Add the listeners and ``Session.get``'s fast path (idempotent)."""
    for target, listeners in _TARGETS:
        for name, listener in listeners:
            if not event.contains(target, name, listener):
                event.listen(target, name, listener)
    _fastget.install()


def uninstall() -> None:
    """Remove the listeners and the fast path (idempotent)."""
    _fastget.uninstall()
    for target, listeners in _TARGETS:
        for name, listener in listeners:
            if event.contains(target, name, listener):
                event.remove(target, name, listener)
