"""The query path: ``select()`` statements answered from the cache, never stale.

An entry is keyed by the statement's *shape* (its SQL for the dialect plus what the result
holds) and its parameter values, and it carries the data tag of every table the statement
reads. Any commit that writes one of those tables moves that tag, so the entry stops
matching: no entry needs to be found and deleted, and no list of keys is kept.

Working out a shape (walking the statement, compiling it once) is memoised by SQLAlchemy's
own statement cache key, so a hit costs a cache-key computation, one dictionary lookup and
one round trip, never a SQL compilation.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson
from sqlalchemy import FunctionElement, Table, TextClause, inspect
from sqlalchemy.engine import FrozenResult, Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.sql.visitors import iterate

from sqlmodel_cache import _keys
from sqlmodel_cache._codec import FORMAT_VERSION, Decoder, Encoder, Unsupported, column_codec, dumps
from sqlmodel_cache._compat import autoflush, autoflushes, statement_cache_key
from sqlmodel_cache._flow import Hit, Loaded, read
from sqlmodel_cache._instances import hash_or_id, instances_for, rows_result
from sqlmodel_cache._models import ModelPlan
from sqlmodel_cache._reads import call_bypass, run
from sqlmodel_cache._state import Runtime

#: SQL functions whose result depends only on their arguments. Any other function (now(),
#: random(), a user function that reads other tables) makes a statement uncacheable.
DETERMINISTIC_FUNCTIONS = frozenset(
    {
        "abs", "avg", "ceil", "ceiling", "char_length", "coalesce", "concat", "count",
        "floor", "greatest", "least", "length", "lower", "ltrim", "max", "min", "mod",
        "nullif", "round", "rtrim", "sign", "substr", "substring", "sum", "trim", "upper",
    }
)  # fmt: skip


@dataclass(frozen=True)
class EntityCell:
    """A result column that is an ORM entity (``select(Hero)``)."""

    plan: ModelPlan


@dataclass(frozen=True)
class ValueCell:
    """A result column that is a value (``select(Hero.name)``, ``func.count()``)."""

    encoder: Encoder
    decoder: Decoder | None


@dataclass(frozen=True)
class QueryShape:
    """Everything about a statement shape that does not depend on parameter values."""

    label: str  # for stats: the first entity's name, or the first table's
    digest: str
    tables: tuple[str, ...]
    tag_keys: tuple[str, ...]
    home: str  # key part of the first table: entries live in its Redis Cluster slot
    cells: tuple[EntityCell | ValueCell, ...]
    keys: tuple[str, ...]
    extras: tuple[tuple[Any, ...], ...]
    unique_filters: tuple[Any, ...]
    schema: bytes
    ttl: int
    events: str = "query_"

    def key_for(self, params: bytes) -> str:
        """The key of this shape's result for these parameter values."""
        digest = hashlib.sha256(self.digest.encode("ascii") + b"\0" + params).hexdigest()
        return _keys.query_key(self.home, digest[:48])

    def decode(self, key: str, body: bytes) -> list[list[Any]] | None:
        """The result rows stored in ``body``, entities as their attribute values (see
        :meth:`rows_in`), or ``None`` if it does not decode."""
        try:
            data = orjson.loads(body)
            if type(data) is not list:
                return None
            width = len(self.cells)
            for row in data:  # each row is decoded in place: orjson made it, nothing shares it
                if type(row) is not list or len(row) != width:
                    return None
                for index, cell in enumerate(self.cells):
                    value = row[index]
                    if value is None:
                        continue
                    if isinstance(cell, EntityCell):
                        row[index] = cell.plan.codec.decode_values(value)
                    elif cell.decoder is not None:
                        row[index] = cell.decoder(value)
        except Exception:  # noqa: BLE001 - whatever a forged entry makes a decoder raise
            return None
        return data

    def rows_in(self, session: Session, data: list[list[Any]]) -> Result[Any]:
        """The result of decoded rows, their entities joined to ``session``."""
        for index, cell in enumerate(self.cells):
            if isinstance(cell, EntityCell):
                column = instances_for(session, cell.plan, [row[index] for row in data])
                for row, instance in zip(data, column, strict=True):
                    row[index] = instance
        return rows_result(self.keys, self.extras, self.unique_filters, [tuple(r) for r in data])

    def encode_result(self, key: str, loaded: tuple[set[Any], FrozenResult[Any]]) -> bytes | str:
        """The body to store for a result (``loaded``: the identities the session held
        before the query, and the frozen result), or why it is not stored:
        ``session_state`` when an entity may not be exactly the database's row,
        ``unsupported_value`` for a value that cannot be stored faithfully.

        NOTE: an entity the session held before this query is returned as the session's
        object, whose attributes may predate the row just read (or hold unflushed
        changes); such a result is not stored."""
        known, frozen = loaded
        encoded = []
        try:
            for row in frozen().all():
                cells: list[Any] = []
                for cell, value in zip(self.cells, row, strict=True):
                    if value is None:
                        cells.append(None)
                    elif isinstance(cell, EntityCell):
                        state = instance_state(value)
                        if type(value) is not cell.plan.mapper.class_ or state.modified:
                            return "session_state"
                        if state.key in known:
                            return "session_state"
                        cells.append(cell.plan.codec.encode_values(state.dict))
                    else:
                        cells.append(cell.encoder(value))
                encoded.append(cells)
            return dumps(encoded)
        except (Unsupported, ValueError):
            return "unsupported_value"


@dataclass(frozen=True)
class Uncacheable:
    """A shape that is never cached, and why."""

    label: str
    reason: str


def _is_literal_sql(element: Any) -> bool:
    """Literal SQL text in a column position; ``*`` and numbers (``count(*)``, the
    ``EXISTS (SELECT 1 ...)`` of ``relationship.any()``) are harmless."""
    if not isinstance(element, ColumnClause) or not element.is_literal:
        return False
    return not (element.name == "*" or element.name.isdigit())


def _tables_read(*statements: Any) -> list[str] | str:
    """Every table the statements read (subqueries and joins included), or the reason they
    cannot be cached when they contain something whose reads or result we cannot know."""
    tables: set[str] = set()
    for element in chain.from_iterable(map(iterate, statements)):
        if isinstance(element, Table):
            tables.add(element.fullname)
        elif isinstance(element, (TextClause, TextualSelect)) or _is_literal_sql(element):
            return "text"
        elif isinstance(element, FunctionElement):
            name = getattr(element, "name", "")
            if str(name).lower() not in DETERMINISTIC_FUNCTIONS:
                return "function"
    return sorted(tables) if tables else "no_table"


def _analyse(runtime: Runtime, statement: Select[Any], dialect: Any) -> QueryShape | Uncacheable:
    """Work out a statement's shape; runs once per shape and process."""
    descriptions = statement.column_descriptions
    first = descriptions[0].get("entity") if descriptions else None
    label = getattr(first, "__name__", None) or "select"
    compiled = statement.compile(dialect=dialect)
    # NOTE: the compiled form resolves ORM joins along relationships, so the association
    # table of a many-to-many join is found there, not in the statement as written.
    resolved = getattr(compiled.compile_state, "statement", None)
    tables = _tables_read(statement, *([resolved] if resolved is not None else []))
    if isinstance(tables, str):
        return Uncacheable(label, tables)
    if label == "select":
        label = tables[0]
    ttls = [runtime.registry.query_ttl_of(name) for name in tables]
    if any(ttl is None for ttl in ttls):
        return Uncacheable(label, "uncached_table")
    cells: list[EntityCell | ValueCell] = []
    described: list[str] = []
    for description in descriptions:
        kind = description["type"]
        if isinstance(kind, type):  # an ORM entity, possibly aliased
            mapper = inspect(description["expr"]).mapper
            plan = runtime.registry.plan_for(mapper)
            if plan is None:
                return Uncacheable(label, "entity_not_cacheable")
            if plan.eager_relationships:
                return Uncacheable(label, "eager_relationships")
            cells.append(EntityCell(plan))
            described.append(f"entity:{plan.table_name}:{plan.codec.schema.decode()}")
        else:
            try:
                encoder, decoder = column_codec(kind)
            except Unsupported:
                return Uncacheable(label, "value_type")
            cells.append(ValueCell(encoder, decoder))
            described.append(f"value:{kind!r}")
    sql = str(compiled)
    identity = "\n".join([str(FORMAT_VERSION), dialect.name, sql, *described])
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()
    prefix = runtime.settings.key_prefix
    return QueryShape(
        label=label,
        digest=digest,
        tables=tuple(tables),
        tag_keys=tuple(_keys.data_tag_key(_keys.table_part(prefix, name)) for name in tables),
        home=_keys.table_part(prefix, tables[0]),
        cells=tuple(cells),
        keys=tuple(str(d["name"]) for d in descriptions),
        extras=tuple((d["expr"],) for d in descriptions),
        unique_filters=tuple(id if isinstance(c, EntityCell) else hash_or_id for c in cells),
        schema=f"{FORMAT_VERSION:x}{digest[:15]}".encode("ascii"),
        ttl=min(ttl for ttl in ttls if ttl is not None),
    )


def _tagged(value: Any) -> Any:
    """A parameter value as JSON that no value of another type or another value can share.

    Only ``None``, ``str``, ``int``, ``bool`` and finite ``float`` are plain JSON (JSON tells
    them apart); everything else is tagged with its type and ``repr`` (an enum member and its
    value, a UUID and its string, ``inf`` and ``-inf`` and ``None`` all differ)."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float and math.isfinite(value):
        return value
    if kind is list or kind is tuple:
        return [_tagged(item) for item in value]
    if kind is dict:
        return {"$dict": [[_tagged(k), _tagged(v)] for k, v in value.items()]}
    return {"$type": f"{kind.__module__}.{kind.__qualname__}", "$repr": repr(value)}


def _parameter_values(state: ORMExecuteState, cache_key: Any) -> bytes | None:
    params = state.parameters
    if params is not None and not isinstance(params, dict):
        return None  # executemany
    supplied = params or {}
    values = []
    for bind in cache_key.bindparams:
        if bind.key in supplied:
            values.append(supplied[bind.key])
        elif bind.callable is not None or bind.value is not None:
            values.append(bind.effective_value)
        else:
            return None  # a required parameter is missing: let the database say so
    try:
        return orjson.dumps(_tagged(values))
    except (TypeError, orjson.JSONEncodeError):
        return None


def serve_select(runtime: Runtime, state: ORMExecuteState) -> Result[Any] | None:
    """Answer a SELECT from the cache, or run it and fill the cache (``None``: SQLAlchemy
    runs it as usual)."""
    statement = state.statement
    if not isinstance(statement, Select) or state.is_relationship_load or state.is_column_load:
        return None
    options = state.execution_options
    if options.get("yield_per") or options.get("stream_results"):
        return None
    cache_key = statement_cache_key(statement)
    if cache_key is None:
        return None
    session = state.session
    bind = session.get_bind(**state.bind_arguments)
    dialect = bind.dialect
    memo_key = (dialect.name, cache_key.key)
    shape = runtime.shapes.get(memo_key)
    if shape is None:
        shape = _analyse(runtime, statement, dialect)
        runtime.shapes.put(memo_key, shape)
    if isinstance(shape, Uncacheable):
        runtime.stats.add(shape.label, f"query_bypass:{shape.reason}")
        return None

    key = ""
    reason = call_bypass(runtime, state)
    if reason is None:
        params = _parameter_values(state, cache_key)
        if params is None:
            reason = "params"
        else:
            key = shape.key_for(params)
            if autoflushes(state):
                autoflush(session)  # as the SELECT would, before the cache is consulted

    def load() -> tuple[set[Any], FrozenResult[Any]]:
        known = set(session.identity_map.keys()) if len(session.identity_map) else set()
        return known, state.invoke_statement().freeze()

    ttl = options.get("cache_ttl", shape.ttl)
    flow = read(runtime, shape, key, ttl, session, bind, shape.encode_result, reason)
    outcome = run(runtime, flow, load)
    if type(outcome) is Hit:
        return shape.rows_in(session, outcome.answer)
    if type(outcome) is Loaded:
        frozen: FrozenResult[Any] = outcome.result[1]
        return frozen()
    return None
