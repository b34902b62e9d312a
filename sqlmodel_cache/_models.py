"""What the cache knows about one mapped class, worked out once per mapper and memoised."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Any

from sqlalchemy import Column
from sqlalchemy.engine import FrozenResult
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import ClauseElement

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import (
    INT_KEY_RANGE,
    RowCodec,
    Unsupported,
    encode_key_part,
    is_int_key,
    key_canonicalizer,
)
from sqlmodel_cache._compat import get_clause, identity_class_of, instance_maker, sqlmodel_registry
from sqlmodel_cache._config import CacheConfig

logger = logging.getLogger("sqlmodel_cache")

#: Relationship loader strategies that load together with the parent row.
_EAGER_LOADERS = frozenset({"joined", "selectin", "subquery", "immediate"})


@dataclass(frozen=True)
class ModelPlan:
    """Everything the read and write paths need for one cache-enabled mapped class."""

    mapper: Mapper[Any]
    label: str  # the model's class name, for stats
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
    #: Seconds an entry lives: the model's ``ttl``, else the configured ``default_ttl``.
    ttl: int
    # What the read protocol reads a row as (see ``_flow.Target``).
    tables: tuple[str, ...]
    tag_keys: tuple[str, ...]
    schema: bytes
    events: str = ""

    @cached_property
    def make_instance(self) -> Callable[[dict[str, Any]], object]:
        """Builds a new instance around an attribute dict (see :func:`instance_maker`);
        worked out at the first hit, when the mappers are surely configured."""
        return instance_maker(self.mapper)

    @cached_property
    def identity_class(self) -> type:
        return identity_class_of(self.mapper)

    @cached_property
    def primary_key_of(self) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        """The primary key tuple of an attribute dict (an identity key's middle part)."""
        if len(self.pk_attribute_keys) == 1:
            (key,) = self.pk_attribute_keys
            return lambda values: (values[key],)
        return itemgetter(*self.pk_attribute_keys)

    @cached_property
    def _int_key_prefix(self) -> str | None:
        """For a single integer primary key (most tables), what its row keys start with."""
        if len(self.key_canonicalizers) == 1 and is_int_key(self.key_canonicalizers[0]):
            return _keys.row_key(self.table_prefix, "")
        return None

    def row_key_for(self, pk_values: tuple[Any, ...]) -> str:
        """The row key for ``pk_values``; raises :class:`Unsupported` for keys it cannot
        canonicalise (those reads bypass the cache rather than risk a second entry)."""
        prefix = self._int_key_prefix
        if prefix is not None and len(pk_values) == 1:
            # Every hit computes a key: the JSON of [int] is spelled here, as orjson would.
            value = pk_values[0]
            if type(value) is int and value in INT_KEY_RANGE:
                return f"{prefix}[{value}]"
        if len(pk_values) != len(self.key_canonicalizers):
            raise Unsupported("primary key arity")
        canonical = [canon(v) for canon, v in zip(self.key_canonicalizers, pk_values, strict=False)]
        return _keys.row_key(self.table_prefix, encode_key_part(canonical))

    # -- the row as the read protocol stores it -----------------------------------------

    def decode(self, key: str, body: bytes) -> dict[str, Any] | None:
        """The attribute values stored in ``body``, or ``None`` unless they decode and are
        the row ``key`` names (an entry copied under another key is foreign)."""
        values = self.codec.decode(body)
        if values is None:
            return None
        try:
            own_key = self.row_key_for(tuple(values[k] for k in self.pk_attribute_keys))
        except (Unsupported, KeyError):
            return None
        return values if own_key == key else None

    def encode_instance(self, key: str, instance: object | None) -> bytes | str | None:
        """What to store under ``key`` for the object a miss loaded: ``None`` when there is
        nothing to store (no such row, or not exactly the row ``key`` names), the reason
        when its values cannot be stored faithfully."""
        if type(instance) is not self.mapper.class_:
            return None
        loaded = instance_state(instance)
        if loaded.modified or loaded.key is None:
            return None
        try:
            if self.row_key_for(loaded.key[1]) != key:
                return None  # the database matched another spelling of the key (a collation)
            return self.codec.encode(loaded.dict)
        except Unsupported:
            return "unsupported_value"

    def encode_result(self, key: str, frozen: FrozenResult[Any]) -> bytes | str | None:
        """:meth:`encode_instance` for the result of the ``SELECT`` a get ran."""
        rows = frozen().all()
        return self.encode_instance(key, rows[0][0]) if len(rows) == 1 else None


def _build_plan(
    mapper: Mapper[Any], config: CacheConfig, prefix: str, default_ttl: int
) -> ModelPlan:
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
    row_tag_key = _keys.row_tag_key(table_prefix)
    return ModelPlan(
        mapper=mapper,
        label=mapper.class_.__name__,
        config=config,
        table_name=table_name,
        codec=codec,
        key_canonicalizers=canonicalizers,
        pk_attribute_keys=tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key),
        get_clause=clause,
        get_param_keys=param_keys,
        eager_relationships=eager,
        row_tag_key=row_tag_key,
        data_tag_key=_keys.data_tag_key(table_prefix),
        table_prefix=table_prefix,
        ttl=config.ttl or default_ttl,
        tables=(table_name,),
        tag_keys=(row_tag_key,),
        schema=codec.schema,
    )


class ModelRegistry:
    """What is cached: a :class:`ModelPlan` (or ``None``) per mapper, and per table whether
    and how long queries over it may be cached. Memoised; rebuilt when new mappers appear."""

    def __init__(self, key_prefix: str, default_ttl: int) -> None:
        self._prefix = key_prefix
        self._default_ttl = default_ttl
        self._plans: dict[Mapper[Any], ModelPlan | None] = {}
        self._configs: dict[Mapper[Any], CacheConfig | None] = {}
        self._registries: set[Any] = set()
        self._mapper_count = -1
        self._table_ttls: dict[str, int | None] = {}
        self._cached_tables: set[str] = set()
        self._labels: dict[str, str] = {}

    def plan_for(self, mapper: Mapper[Any]) -> ModelPlan | None:
        try:
            return self._plans[mapper]
        except KeyError:
            pass
        config = self.config_for(mapper)
        plan = None
        if config is not None:
            try:
                plan = _build_plan(mapper, config, self._prefix, self._default_ttl)
            except Unsupported as exc:
                logger.warning("%s is not cached by get(): %s", mapper.class_.__name__, exc)
        self._plans[mapper] = plan
        self._registries.add(mapper.registry)
        return plan

    def config_for(self, mapper: Mapper[Any]) -> CacheConfig | None:
        """The model's enabled ``CacheConfig``, or ``None`` when it is not cached."""
        try:
            return self._configs[mapper]
        except KeyError:
            pass
        config = getattr(mapper.class_, "__cache_config__", None)
        if config is not None and not isinstance(config, CacheConfig):
            logger.warning(
                "%s.__cache_config__ is %r, not a CacheConfig: the model is not cached",
                mapper.class_.__name__,
                type(config).__name__,
            )
            config = None
        if config is not None and not config.enabled:
            config = None
        self._configs[mapper] = config
        return config

    def cached_tables(self) -> set[str]:
        """Every table whose rows or queries may be in the cache."""
        self._refresh_tables()
        return set(self._cached_tables)

    def query_ttl_of(self, table_name: str) -> int | None:
        """Seconds a query reading ``table_name`` may be cached, or ``None`` if it may not:
        every model mapped to the table must be cached with ``queries=True``; a table with
        no model (a many-to-many association table) must link such models."""
        if table_name not in self._table_ttls:
            self._refresh_tables()
        return self._table_ttls.get(table_name)

    def label_of(self, table_name: str) -> str:
        """The stats label of a table: its model's class name, else the table name."""
        if table_name not in self._labels:
            self._refresh_tables()
        return self._labels.get(table_name, table_name)

    def longest_ttl(self, at_least: int) -> int:
        """The longest TTL any cache-enabled model is configured with (or ``at_least``)."""
        self._refresh_tables()
        ttls = [at_least, self._default_ttl]
        for config in self._configs.values():
            if config is not None:
                ttls.extend(ttl for ttl in (config.ttl, config.query_ttl) if ttl is not None)
        return max(ttls)

    def _all_mappers(self) -> set[Mapper[Any]]:
        registries = {sqlmodel_registry(), *self._registries}
        return {mapper for registry in registries for mapper in registry.mappers}

    def _refresh_tables(self) -> None:
        mappers = self._all_mappers()
        if len(mappers) == self._mapper_count:
            return
        self._mapper_count = len(mappers)
        owners: dict[str, list[Mapper[Any]]] = {}
        links: dict[str, list[Mapper[Any]]] = {}
        labels: dict[str, str] = {}
        for mapper in mappers:
            local_name = getattr(mapper.local_table, "fullname", None)
            if local_name is not None:
                labels.setdefault(local_name, mapper.class_.__name__)
            for table in mapper.tables:
                owners.setdefault(table.fullname, []).append(mapper)
            for relationship in mapper.relationships:
                secondary = relationship.secondary
                if secondary is not None and hasattr(secondary, "fullname"):
                    linked = links.setdefault(secondary.fullname, [])
                    linked.extend([mapper, relationship.mapper])
        ttls: dict[str, int | None] = {}
        cached: set[str] = set()
        for name in owners.keys() | links.keys():
            related = owners.get(name) or links[name]
            ttls[name] = self._shortest_query_ttl(related)
            if any(self.config_for(mapper) is not None for mapper in related):
                cached.add(name)
        self._table_ttls = ttls
        self._cached_tables = cached
        self._labels = labels

    def _shortest_query_ttl(self, mappers: list[Mapper[Any]]) -> int | None:
        ttls = []
        for mapper in mappers:
            config = self.config_for(mapper)
            if config is None or not config.queries:
                return None
            ttls.append(config.query_ttl or config.ttl or self._default_ttl)
        return min(ttls)
