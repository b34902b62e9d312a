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
    identity = (plan.identity_class, plan.primary_key_of(values), None)
    identity_map = session.identity_map
    instance = identity_map.get(identity) if len(identity_map) else None
    if instance is None:
        instance = plan.make_instance(values)
        attach_loaded(session, (identity,), (instance,))
    for key in plan.eager_relationships:
        # NOTE: eager relationships load now, as they would have with the row, so code that
        # relies on lazy="selectin" (e.g. under AsyncSession) finds them loaded.
        getattr(instance, key)
    return instance


def instances_for(
    session: Session, plan: ModelPlan, rows: Sequence[dict[str, Any] | None]
) -> list[Any]:
    """:func:`instance_for` for each row of a result (``None`` stays ``None``), without
    loading eager relationships (results of models that have them are not cached).

    This is the per-row cost of a cached result: everything per model is looked up once,
    and new objects join the session together."""
    identity_map = session.identity_map
    # NOTE: in a session that holds nothing yet (the common case), only this result's
    # own repeats (a join can repeat an entity) need looking up: a plain dict is enough.
    seen: dict[Any, Any] | None = {} if not len(identity_map) else None
    find = identity_map.get if seen is None else seen.get
    identity_class = plan.identity_class
    primary_key = plan.primary_key_of
    make_instance = plan.make_instance
    instances: list[Any] = []
    new_identities: list[Any] = []
    new_instances: list[Any] = []
    for values in rows:
        if values is None:
            instances.append(None)
            continue
        identity = (identity_class, primary_key(values), None)
        instance = find(identity)
        if instance is None:
            instance = make_instance(values)
            new_identities.append(identity)
            new_instances.append(instance)
            if seen is not None:
                seen[identity] = instance
        instances.append(instance)
    attach_loaded(session, new_identities, new_instances)
    return instances


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
