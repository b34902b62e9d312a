"""What the cache knows about one mapped class, worked out once per mapper and memoised."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column
from sqlalchemy.orm import Mapper
from sqlalchemy.sql import ClauseElement

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import RowCodec, Unsupported, encode_key_part, key_canonicalizer
from sqlmodel_cache._compat import get_clause
from sqlmodel_cache._config import CacheConfig

logger = logging.getLogger("sqlmodel_cache")

#: Relationship loader strategies that load together with the parent row.
_EAGER_LOADERS = frozenset({"joined", "selectin", "subquery", "immediate"})


@dataclass(frozen=True)
class ModelPlan:
    """Everything the read and write paths need for one cache-enabled mapped class."""

    mapper: Mapper[Any]
    config: CacheConfig
    table_name: str
    codec: RowCodec
    key_canonicalizers: tuple[Callable[[Any], Any], ...]
    pk_attribute_keys: tuple[str, ...]
    get_clause: ClauseElement
    get_param_keys: tuple[str, ...]
    eager_relationships: tuple[str, ...]
    row_tag_key: str
    data_tag_key: str
    table_prefix: str

    def row_key_for(self, pk_values: tuple[Any, ...]) -> str:
        """The row key for ``pk_values``; raises :class:`Unsupported` for keys it cannot
        canonicalise (those reads bypass the cache rather than risk a second entry)."""
        if len(pk_values) != len(self.key_canonicalizers):
            raise Unsupported("primary key arity")
        canonical = [canon(v) for canon, v in zip(self.key_canonicalizers, pk_values, strict=False)]
        return _keys.row_key(self.table_prefix, encode_key_part(canonical))


def _build_plan(mapper: Mapper[Any], config: CacheConfig, prefix: str) -> ModelPlan:
    """Raises :class:`Unsupported` with the reason a model cannot be cached."""
    if mapper.inherits is not None or mapper.polymorphic_on is not None or mapper.with_polymorphic:
        raise Unsupported("inheritance hierarchies are not cached by session.get() yet")
    if mapper.version_id_col is not None:
        raise Unsupported("version_id_col models are not cached yet")
    table = mapper.local_table
    table_name = getattr(table, "fullname", None)
    if not isinstance(table_name, str):
        raise Unsupported("mapped to something other than a table")
    loaded = [prop for prop in mapper.column_attrs if not prop.deferred]
    for prop in loaded:
        column = prop.columns[0]
        if len(prop.columns) != 1 or not isinstance(column, Column) or column.table is not table:
            # A SQL-expression column_property (a count, a join) changes when other rows
            # change, which no invalidation of this row sees: defer it or leave it uncached.
            raise Unsupported(f"column_property {prop.key!r} is not a column of {table_name}")
    columns = [(prop.key, prop.columns[0].type) for prop in loaded]
    codec = RowCodec.build(table_name, columns)
    canonicalizers = tuple(key_canonicalizer(column.type) for column in mapper.primary_key)
    clause, param_keys = get_clause(mapper)
    eager = tuple(
        rel.key
        for rel in mapper.relationships
        if rel.lazy in _EAGER_LOADERS or rel.lazy is False  # lazy=False means joined
    )
    table_prefix = _keys.table_part(prefix, table_name)
    return ModelPlan(
        mapper=mapper,
        config=config,
        table_name=table_name,
        codec=codec,
        key_canonicalizers=canonicalizers,
        pk_attribute_keys=tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key),
        get_clause=clause,
        get_param_keys=param_keys,
        eager_relationships=eager,
        row_tag_key=_keys.row_tag_key(table_prefix),
        data_tag_key=_keys.data_tag_key(table_prefix),
        table_prefix=table_prefix,
    )


class ModelRegistry:
    """Memoises a :class:`ModelPlan` (or ``None``: not cached) per mapper."""

    def __init__(self, key_prefix: str) -> None:
        self._prefix = key_prefix
        self._plans: dict[Mapper[Any], ModelPlan | None] = {}

    def plan_for(self, mapper: Mapper[Any]) -> ModelPlan | None:
        try:
            return self._plans[mapper]
        except KeyError:
            pass
        plan = self._plans[mapper] = self._make(mapper)
        return plan

    def known_plans(self) -> list[ModelPlan]:
        """Plans of every cache-enabled class in the mapper registries this process knows."""
        from sqlmodel import SQLModel

        registries = {SQLModel._sa_registry}
        registries.update(plan.mapper.registry for plan in self._plans.values() if plan)
        mappers = {mapper for registry in registries for mapper in registry.mappers}
        return [plan for mapper in mappers if (plan := self.plan_for(mapper)) is not None]

    def _make(self, mapper: Mapper[Any]) -> ModelPlan | None:
        config = getattr(mapper.class_, "__cache_config__", None)
        if config is None:
            return None
        if not isinstance(config, CacheConfig):
            logger.warning(
                "%s.__cache_config__ is %r, not a CacheConfig: the model is not cached",
                mapper.class_.__name__,
                type(config).__name__,
            )
            return None
        if not config.enabled:
            return None
        try:
            return _build_plan(mapper, config, self._prefix)
        except Unsupported as exc:
            logger.warning("%s is not cached: %s", mapper.class_.__name__, exc)
            return None
