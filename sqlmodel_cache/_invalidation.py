"""Manual invalidation: for writes the cache cannot see (other programs, raw SQL elsewhere).

One transport call per request, like a commit; failures raise :class:`InvalidationError`
(the caller asked for it explicitly, so a silent failure would be a lie).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import Unsupported
from sqlmodel_cache._errors import ConfigurationError, InvalidationError
from sqlmodel_cache._state import Runtime

#: What one manual invalidation does: (row keys to delete, tag keys to move, tables named).
Request = tuple[list[str], list[str], list[str]]


def _tags(prefix: str, table_names: Iterable[str], *, all_rows: bool) -> set[str]:
    tags = set()
    for name in table_names:
        table_prefix = _keys.table_part(prefix, name)
        tags.add(_keys.data_tag_key(table_prefix))
        if all_rows:
            tags.add(_keys.row_tag_key(table_prefix))
    return tags


def _tables_of(model: type) -> list[str]:
    mapper: Any = inspect(model, raiseerr=False)
    if mapper is None or not hasattr(mapper, "tables"):
        raise ConfigurationError(f"{model!r} is not a mapped class")
    return [table.fullname for table in mapper.tables]


def rows(runtime: Runtime, model: type, pks: Iterable[Any]) -> Request:
    """Keys for some rows of ``model``: their entries, and the tags of queries over them."""
    tables = _tables_of(model)
    plan = runtime.registry.plan_for(inspect(model))
    prefix = runtime.settings.key_prefix
    row_keys: list[str] = []
    all_rows = plan is None
    for pk in pks:
        identity = pk if isinstance(pk, tuple) else (pk,)
        try:
            if plan is not None:
                row_keys.append(plan.row_key_for(identity))
        except Unsupported:
            all_rows = True  # an unusual spelling of a key: retire every row, to be sure
    return row_keys, sorted(_tags(prefix, tables, all_rows=all_rows)), tables


def model(runtime: Runtime, model: type) -> Request:
    """Keys retiring every cached row of ``model`` and every query over its tables."""
    tables = _tables_of(model)
    return [], sorted(_tags(runtime.settings.key_prefix, tables, all_rows=True)), tables


def tables(runtime: Runtime, names: Iterable[str]) -> Request:
    """Keys retiring every cached row and query of the named tables (schema-qualified
    names as SQLAlchemy spells them, e.g. ``"hero"`` or ``"reporting.daily"``)."""
    names = list(names)
    if not all(isinstance(name, str) and name for name in names):
        raise ConfigurationError(f"table names must be non-empty strings, got {names!r}")
    return [], sorted(_tags(runtime.settings.key_prefix, names, all_rows=True)), names


def apply(runtime: Runtime, row_keys: list[str], tag_keys: list[str], tables: list[str]) -> None:
    """Delete ``row_keys`` and move ``tag_keys`` in one transport call, or raise; counted
    per model of ``tables``, like a commit."""
    if not runtime.driver.usable_here():
        raise InvalidationError(
            "the configured transport is async: use the a-prefixed method "
            "(await SQLModelCache.ainvalidate...) from async code"
        )
    try:
        runtime.driver.invalidate(row_keys, tag_keys, _keys.new_tag())
    except Exception as exc:
        runtime.stats.add("*", "invalidation_errors")
        raise InvalidationError(f"cache invalidation failed: {exc!r}") from exc
    runtime.stats.add("*", "invalidations", len(row_keys) + len(tag_keys))
    for table in tables:
        runtime.stats.add(runtime.registry.label_of(table), "invalidations")
