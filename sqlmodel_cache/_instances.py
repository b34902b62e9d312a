"""Turning cached values into ORM objects, and ORM results into rows to store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Result
from sqlalchemy.engine.result import IteratorResult
from sqlalchemy.orm import Session

from sqlmodel_cache._compat import attach_loaded, row_metadata
from sqlmodel_cache._models import ModelPlan


def instance_for(session: Session, plan: ModelPlan, values: dict[str, Any]) -> object:
    """The session's object for this row: the one already in its identity map (unchanged, as
    a query without ``populate_existing`` would leave it), or a persistent instance built
    directly from the cached values, exactly as a load builds it (no validation, no copy)."""
    mapper = plan.mapper
    identity = mapper.identity_key_from_primary_key(
        tuple(values[k] for k in plan.pk_attribute_keys)
    )
    existing = session.identity_map.get(identity)
    if existing is not None:
        return existing
    instance = attach_loaded(session, mapper, identity, values)
    for key in plan.eager_relationships:
        # NOTE: eager relationships load now, as they would have with the row, so code that
        # relies on lazy="selectin" (e.g. under AsyncSession) finds them loaded.
        getattr(instance, key)
    return instance


def hash_or_id(value: Any) -> int:
    """Uniquing key of a value that may be unhashable (a JSON document)."""
    try:
        return hash(value)
    except TypeError:
        return id(value)


def rows_result(
    keys: Sequence[str],
    extras: Sequence[Sequence[Any]],
    unique_filters: Sequence[Any],
    rows: Sequence[tuple[Any, ...]],
) -> Result[Any]:
    """A result over ``rows`` that behaves like the ORM's: addressable by name and by column
    expression, and ``unique()`` compares entities by identity."""
    return IteratorResult(row_metadata(keys, extras, unique_filters), iter(rows))


def result_rows(result: Any) -> list[list[Any]]:
    """The rows of a frozen ORM result, each as a list (scalar results included)."""
    return [list(row) for row in result().all()]
