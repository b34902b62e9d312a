"""Thin shells: the SQLAlchemy session events, wired to the read and write paths.

Installed on the ``Session`` class by ``configure()`` (so every ``Session``, SQLModel's and
the one inside every ``AsyncSession``, is covered) and removed by ``reset()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from sqlmodel_cache import _reads, _state, _writes


def _on_do_orm_execute(state: ORMExecuteState) -> Result[Any] | None:
    runtime = _state.runtime
    if runtime is None:
        return None
    if state.is_select:
        return _reads.serve_get(runtime, state)
    _writes.note_statement(runtime, state)
    return None


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


_LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("do_orm_execute", _on_do_orm_execute),
    ("before_flush", _on_before_flush),
    ("after_flush", _on_after_flush),
    ("after_flush_postexec", _on_after_flush_postexec),
    ("after_commit", _on_after_commit),
    ("after_transaction_end", _on_after_transaction_end),
)


def install() -> None:
    """Add the listeners (idempotent)."""
    for name, listener in _LISTENERS:
        if not event.contains(Session, name, listener):
            event.listen(Session, name, listener)


def uninstall() -> None:
    """Remove the listeners (idempotent)."""
    for name, listener in _LISTENERS:
        if event.contains(Session, name, listener):
            event.remove(Session, name, listener)
