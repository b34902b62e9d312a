"""Looking into and clearing a live Redis cache: what ``stats``, ``inspect`` and ``flush`` do.

Plain functions over a redis-py client (``redis.Redis`` or ``redis.RedisCluster``) that
return data; the command line renders it. They read the key layout of ``_keys``::

    {prefix}:{<table>}:r:<pk-json>   row entry        {prefix}:{<table>}:rt   row tag
    {prefix}:{<table>}:q:<digest>    query entry      {prefix}:{<table>}:dt   data tag

and the entry layout of ``_codec``: ``tags + schema + [16-byte HMAC] + JSON body``, or a
lease (a value starting with ``L``).

NOTE: every function here walks the key space with SCAN (never KEYS, which blocks the
server), which costs O(keys in the database) per call even with a MATCH pattern. These are
operator tools; nothing on the read or write path calls them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from sqlmodel_cache import _keys
from sqlmodel_cache._errors import MissingDependencyError
from sqlmodel_cache.transport._protocols import LEASE_PREFIX, TAG_SIZE

#: Keys per SCAN call and per pipelined batch: big enough for few round trips, small
#: enough that no single command holds the server for long.
BATCH = 500

#: TTL buckets (JSON keys, in order) with their upper bound in seconds.
TTL_BUCKETS: tuple[tuple[str, float], ...] = (
    ("under_1m", 60),
    ("1m_to_10m", 600),
    ("10m_to_1h", 3600),
    ("over_1h", float("inf")),
)
NO_TTL = "no_ttl"

_HEX = frozenset(b"0123456789abcdef")


class CommandError(Exception):
    """A command cannot do what it was asked; the message is one line for the user."""


# -- connecting ---------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return url


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _redis_errors(redis: Any) -> tuple[type[BaseException], ...]:
    # RedisClusterException (no cluster at that address, ...) is not a RedisError.
    return (redis.RedisError, redis.exceptions.RedisClusterException, OSError, ValueError)


@contextmanager
def connect(url: str, *, cluster: bool = False) -> Iterator[Any]:
    """A connected client for ``url`` (``redis.RedisCluster`` when ``cluster``), closed on exit.

    Any Redis failure, while connecting or inside the ``with`` block, becomes a
    :class:`CommandError` naming the (redacted) URL.

    Raises:
        MissingDependencyError: redis-py is not installed.
    """
    try:
        import redis
    except ImportError:
        raise MissingDependencyError("redis", "redis") from None
    errors = _redis_errors(redis)
    client_class = redis.RedisCluster if cluster else redis.Redis
    try:
        client = client_class.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    except errors as exc:
        raise CommandError(f"cannot use Redis at {redact(url)}: {_one_line(exc)}") from None
    try:
        client.ping()
        yield client
    except errors as exc:
        raise CommandError(f"cannot use Redis at {redact(url)}: {_one_line(exc)}") from None
    finally:
        client.close()


# -- keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyName:
    """What a key is, read from its name alone.

    ``kind`` is ``row``, ``query``, ``row_tag``, ``data_tag`` or ``other`` (under the prefix
    but not in the layout); ``ident`` is the primary-key JSON of a row or a query's digest.
    """

    kind: str
    table: str | None = None
    ident: str | None = None


def parse_key(prefix: str, key: str) -> KeyName:
    """Classify ``key`` (a key under ``prefix``) by the key layout."""
    head = f"{prefix}:{{"
    end = key.find("}:", len(head))
    if not key.startswith(head) or end < 0:
        return KeyName("other")
    table, rest = key[len(head) : end], key[end + 2 :]
    if rest == "rt":
        return KeyName("row_tag", table)
    if rest == "dt":
        return KeyName("data_tag", table)
    if rest.startswith("r:"):
        return KeyName("row", table, rest[2:])
    if rest.startswith("q:"):
        return KeyName("query", table, rest[2:])
    return KeyName("other", table)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def prefix_pattern(prefix: str) -> str:
    """SCAN MATCH pattern of every key under ``prefix``."""
    return f"{_glob_escape(prefix)}:*"


def table_pattern(prefix: str, table: str) -> str:
    """SCAN MATCH pattern of every key of ``table`` under ``prefix``."""
    return f"{_glob_escape(_keys.table_part(prefix, table))}:*"


def scan_batches(client: Any, pattern: str) -> Iterator[list[bytes]]:
    """The keys matching ``pattern`` in lists of up to :data:`BATCH` (every primary of a
    cluster: ``RedisCluster.scan_iter`` visits them all)."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=BATCH):
        batch.append(bytes(key))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


# -- measuring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One key as seen by :class:`Meter`: TTL in seconds (``None``: no TTL), size, value
    (only its first byte unless the whole value was asked for)."""

    key: bytes
    ttl: float | None
    size: int
    value: bytes | None


class Meter:
    """Measures keys in one pipelined round trip per batch.

    Sizes come from ``MEMORY USAGE`` (what the key really costs the server); some managed
    services disable that command, and then the value length (``STRLEN``) is used instead,
    which :attr:`source` reports.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.source = "memory_usage"

    def measure(self, keys: Sequence[bytes], *, whole_values: bool = False) -> list[Measured]:
        """Keys that vanished in the meantime are left out."""
        replies = self._run(keys, whole_values)
        if self.source == "memory_usage" and any(
            isinstance(size, Exception) for _, size, _ in replies
        ):
            self.source = "value_length"
            replies = self._run(keys, whole_values)
        measured = []
        for key, (pttl, size, value) in zip(keys, replies, strict=True):
            if isinstance(pttl, Exception) or pttl == -2:
                continue  # gone since SCAN returned it
            measured.append(
                Measured(
                    key=key,
                    ttl=None if pttl < 0 else pttl / 1000,
                    size=size if isinstance(size, int) else 0,
                    # not a string (someone else's key under the prefix): no value to show
                    value=None if isinstance(value, Exception) else value,
                )
            )
        return measured

    def _run(self, keys: Sequence[bytes], whole_values: bool) -> list[tuple[Any, Any, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            if self.source == "memory_usage":
                pipe.memory_usage(key)
            else:
                pipe.strlen(key)
            if whole_values:
                pipe.get(key)
            else:
                pipe.getrange(key, 0, 0)
        replies = pipe.execute(raise_on_error=False)
        return [(replies[i], replies[i + 1], replies[i + 2]) for i in range(0, len(replies), 3)]


def _bucket(ttl: float | None) -> str:
    if ttl is None:
        return NO_TTL
    return next(name for name, limit in TTL_BUCKETS if ttl < limit)


def _empty_ttls() -> dict[str, int]:
    return {**{name: 0 for name, _ in TTL_BUCKETS}, NO_TTL: 0}


# -- stats --------------------------------------------------------------------------------


@dataclass
class TableStats:
    """Counts for one table. ``ttl`` counts entries and leases (tags never expire)."""

    rows: int = 0
    queries: int = 0
    leases: int = 0
    tags: int = 0
    keys: int = 0
    bytes: int = 0
    ttl: dict[str, int] = field(default_factory=_empty_ttls)

    def add(self, other: TableStats) -> None:
        self.rows += other.rows
        self.queries += other.queries
        self.leases += other.leases
        self.tags += other.tags
        self.keys += other.keys
        self.bytes += other.bytes
        for name, count in other.ttl.items():
            self.ttl[name] += count

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "queries": self.queries,
            "leases": self.leases,
            "tags": self.tags,
            "keys": self.keys,
            "bytes": self.bytes,
            "ttl": dict(self.ttl),
        }


@dataclass
class Stats:
    """What ``stats`` found under one prefix."""

    prefix: str
    tables: dict[str, TableStats] = field(default_factory=dict)
    other: TableStats = field(default_factory=TableStats)  # keys outside the layout
    bytes_source: str = "memory_usage"

    def total(self) -> TableStats:
        total = TableStats()
        for table in (*self.tables.values(), self.other):
            total.add(table)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "bytes_source": self.bytes_source,
            "tables": {name: self.tables[name].as_dict() for name in sorted(self.tables)},
            "other_keys": self.other.keys,
            "total": self.total().as_dict(),
        }


def collect_stats(client: Any, prefix: str) -> Stats:
    """Count the keys under ``prefix`` per table, with their sizes and TTLs."""
    stats = Stats(prefix)
    meter = Meter(client)
    for batch in scan_batches(client, prefix_pattern(prefix)):
        for item in meter.measure(batch):
            name = parse_key(prefix, _text(item.key))
            counts = stats.other
            if name.kind != "other" and name.table is not None:
                counts = stats.tables.setdefault(name.table, TableStats())
            counts.keys += 1
            counts.bytes += item.size
            if name.kind in ("row_tag", "data_tag"):
                counts.tags += 1
                continue
            if name.kind == "other":
                continue
            if item.value is not None and item.value.startswith(LEASE_PREFIX):
                counts.leases += 1
            elif name.kind == "row":
                counts.rows += 1
            else:
                counts.queries += 1
            counts.ttl[_bucket(item.ttl)] += 1
    stats.bytes_source = meter.source
    return stats


# -- inspect ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """An entry taken apart. ``tags`` is ``None`` when their number cannot be determined
    (an entry that is not in the layout)."""

    tags: tuple[str, ...] | None
    format_version: int | None = None
    schema: str | None = None
    signed: bool | None = None
    body: Any = None


def _hex_run(value: bytes) -> int:
    """Length of the leading run of lowercase hex characters (tags and schema are hex)."""
    for index, byte in enumerate(value):
        if byte not in _HEX:
            return index
    return len(value)


def _json_list(data: bytes) -> list[Any] | None:
    if not data.startswith(b"["):
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def decode_entry(value: bytes, tag_count: int | None) -> Decoded:
    """Split an entry into tags, schema, signature flag and body.

    ``tag_count`` is 1 for a row entry (its table's row tag). For a query entry it is
    ``None``: tags and schema are all hex, so their boundary is found where the JSON body
    starts, right after them or after a 16-byte signature. (Only a signature made of hex
    characters alone, 1 in 2**64, could be read as one more tag.)
    """
    size = TAG_SIZE
    run = _hex_run(value)
    counts = [tag_count] if tag_count is not None else range(run // size - 1, 0, -1)
    for count in counts:
        end = (count + 1) * size  # tags, then the 16-character schema
        if run < end:
            continue
        for signed in (False, True):
            body = _json_list(value[end + (size if signed else 0) :])
            if body is not None:
                schema = value[end - size : end].decode("ascii")
                return Decoded(
                    tags=tuple(
                        value[i * size : (i + 1) * size].decode("ascii") for i in range(count)
                    ),
                    format_version=int(schema[0], 16),
                    schema=schema,
                    signed=signed,
                    body=body,
                )
    return Decoded(tags=None)


def json_type(value: Any) -> str:
    """The JSON type of a value, with the length of an array: never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"array[{len(value)}]"
    if isinstance(value, dict):
        return "object"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "?")


def current_tags(client: Any, prefix: str) -> dict[str, str]:
    """Every tag key under ``prefix`` with its current value."""
    tags: dict[str, str] = {}
    # Row keys end in "]" and query keys in a hex digest, so only tag keys match.
    pattern = f"{_glob_escape(prefix)}:{{*}}:[rd]t"
    for batch in scan_batches(client, pattern):
        pipe = client.pipeline(transaction=False)  # not MGET: a cluster spreads tags over slots
        for key in batch:
            pipe.get(key)
        for key, value in zip(batch, pipe.execute(), strict=True):
            if value is not None:
                tags[_text(key)] = bytes(value).decode("ascii", "replace")
    return tags


@dataclass(frozen=True)
class Entry:
    """One sampled entry. Without ``show_values`` only the shape of the data is kept.

    ``tags_current``: a row entry is current when it starts with its table's row tag; a
    query entry when all its tags are current data tags. Which tables a query's tags belong
    to is not in its key, so ``tags_matched`` counts its tags found among the current data
    tags of all tables under the prefix. ``None`` when it cannot be told (a lease, an
    undecodable entry).
    """

    key: str
    kind: str  # row, query, row_lease, query_lease, other
    table: str | None
    ttl: float | None
    bytes: int
    ident: str | None = None
    tags: int | None = None
    tags_matched: int | None = None
    tags_current: bool | None = None
    format_version: int | None = None
    schema: str | None = None
    signed: bool | None = None
    count: int | None = None  # values of a row, rows of a query
    types: tuple[str, ...] = ()  # JSON types of the values (a query: of its first row)
    value: Any = None

    def as_dict(self, show_values: bool) -> dict[str, Any]:
        data = {
            "key": self.key,
            "kind": self.kind,
            "table": self.table,
            "ttl": self.ttl,
            "bytes": self.bytes,
            "ident": self.ident,
            "tags": self.tags,
            "tags_matched": self.tags_matched,
            "tags_current": self.tags_current,
            "format_version": self.format_version,
            "schema": self.schema,
            "signed": self.signed,
            "count": self.count,
            "types": list(self.types),
        }
        if show_values:
            data["value"] = self.value
        return data


def describe(
    prefix: str, item: Measured, tags: dict[str, str], *, show_values: bool = False
) -> Entry:
    """Decode one measured entry (``item.value`` holding the whole value) against the
    current ``tags`` (from :func:`current_tags`)."""
    key = _text(item.key)
    name = parse_key(prefix, key)
    base = Entry(key, name.kind, name.table, item.ttl, item.size, name.ident)
    value = item.value
    if name.kind not in ("row", "query") or name.table is None or value is None:
        return base
    if value.startswith(LEASE_PREFIX):
        return Entry(key, f"{name.kind}_lease", name.table, item.ttl, item.size, name.ident)
    decoded = decode_entry(value, 1 if name.kind == "row" else None)
    if decoded.tags is None:
        return base
    table_part = _keys.table_part(prefix, name.table)
    if name.kind == "row":
        valid = {tags.get(_keys.row_tag_key(table_part))}
    else:
        valid = {tag for tag_key, tag in tags.items() if tag_key.endswith(":dt")}
    matched = sum(tag in valid for tag in decoded.tags)
    body = decoded.body
    sample = body if name.kind == "row" else (body[0] if body else [])
    return Entry(
        key=key,
        kind=name.kind,
        table=name.table,
        ttl=item.ttl,
        bytes=item.size,
        ident=name.ident,
        tags=len(decoded.tags),
        tags_matched=matched,
        tags_current=matched == len(decoded.tags),
        format_version=decoded.format_version,
        schema=decoded.schema,
        signed=decoded.signed,
        count=len(body),
        types=tuple(map(json_type, sample)) if isinstance(sample, list) else (),
        value=body if show_values else None,
    )


def sample_entries(
    client: Any,
    prefix: str,
    *,
    table: str | None = None,
    sample: int = 20,
    show_values: bool = False,
) -> list[Entry]:
    """Up to ``sample`` row and query entries (leases included) under ``prefix`` (of one
    ``table``), in SCAN order, decoded."""
    pattern = prefix_pattern(prefix) if table is None else table_pattern(prefix, table)
    chosen: list[bytes] = []
    for batch in scan_batches(client, pattern):
        chosen.extend(
            key for key in batch if parse_key(prefix, _text(key)).kind in ("row", "query")
        )
        if len(chosen) >= sample:
            break
    chosen = chosen[:sample]
    if not chosen:
        return []
    tags = current_tags(client, prefix)
    measured = Meter(client).measure(chosen, whole_values=True)
    return [describe(prefix, item, tags, show_values=show_values) for item in measured]


# -- flush --------------------------------------------------------------------------------


def unlink_matching(client: Any, pattern: str, keep: Iterable[bytes] = ()) -> int:
    """UNLINK every key matching ``pattern`` except ``keep``; returns how many were removed.

    UNLINK frees memory in the background, so a big batch never stalls the server; a cluster
    client splits each batch by slot.
    """
    kept = set(keep)
    removed = 0
    for batch in scan_batches(client, pattern):
        doomed = [key for key in batch if key not in kept]
        if doomed:
            removed += int(client.unlink(*doomed))
    return removed


def flush_table(client: Any, prefix: str, table: str) -> int:
    """Retire every cached row and query of ``table`` at once, then remove its keys.

    Setting the row and data tags to a fresh value is exactly what a commit does (the same
    atomic transport call): every process stops serving the table's entries at that moment,
    before the (slow) SCAN starts. The fresh tag keys are kept, as a commit would leave them;
    everything else of the table is removed. Returns the number of keys removed.
    """
    from sqlmodel_cache.transport import RedisSyncTransport

    table_part = _keys.table_part(prefix, table)
    tag_keys = (_keys.row_tag_key(table_part), _keys.data_tag_key(table_part))
    RedisSyncTransport(client).invalidate((), tag_keys, _keys.new_tag())
    keep = [key.encode("utf-8") for key in tag_keys]
    return unlink_matching(client, table_pattern(prefix, table), keep)


def flush_all(client: Any, prefix: str) -> int:
    """Remove every key under ``prefix``, tags included: a tag that comes back is a new
    random value, so no entry written under an old one can become valid again."""
    return unlink_matching(client, prefix_pattern(prefix))
