"""Payloads: how a row becomes bytes and back. Data only — never pickle, never eval.

An entry is ``tags + schema + body`` (see ``transport._protocols``):

* ``schema`` is 16 ASCII characters: the payload format version (one hex digit) followed by
  a hash of the model's table, column names and column types. Two application versions with
  different models sharing one cache each see the other's entries as a miss, never as data.
* ``body`` is a JSON array of the row's column values in a fixed order, optionally preceded
  by a 16-byte HMAC-SHA256 over ``key + tags + schema + json`` when a signing key is set.

Values are converted by column type, strictly: a value whose exact Python type is not the
one the column promises is not cached (the read still works, from the database).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.types import JSON, TypeDecorator, TypeEngine

#: Bump when the body layout changes: older entries then fail the schema check.
FORMAT_VERSION = 1

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class Unsupported(Exception):
    """A value or a column type this codec will not store."""


def _python_type(sql_type: TypeEngine[Any]) -> type | None:
    """The Python type a column's values have, looking through TypeDecorators to their impl."""
    candidate: TypeEngine[Any] | None = sql_type
    while candidate is not None:
        try:
            found = candidate.python_type
        except NotImplementedError:
            found = object
        if found is not object:
            return found
        candidate = candidate.impl_instance if isinstance(candidate, TypeDecorator) else None
    return None


class _Exact:
    """Passes values of exactly ``kind`` through, rejects anything else. Row decoding
    checks these inline (``RowCodec.decode_values``) instead of calling them per value."""

    __slots__ = ("kind",)

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def __call__(self, value: Any) -> Any:
        if type(value) is not self.kind:
            raise Unsupported(self.kind.__name__)
        return value


def _exact_then(kind: type, convert: Encoder) -> Encoder:
    def encode(value: Any) -> Any:
        if type(value) is not kind:
            raise Unsupported(kind.__name__)
        return convert(value)

    return encode


def _uuid_str(value: Any) -> Any:
    # isinstance, not an exact type: asyncpg returns its own uuid.UUID subclass.
    if not isinstance(value, uuid.UUID):
        raise Unsupported("uuid")
    return str(value)


def _finite_float(value: Any) -> Any:
    if type(value) is not float or not math.isfinite(value):
        raise Unsupported("float")  # JSON has no NaN/inf: orjson would store null
    return value


def _timedelta_parts(value: dt.timedelta) -> list[int]:
    return [value.days, value.seconds, value.microseconds]  # timedelta(days, seconds, us)


def _enum_codec(kind: type[enum.Enum]) -> tuple[Encoder, Decoder]:
    def encode(value: Any) -> Any:
        if type(value) is not kind:
            raise Unsupported(kind.__name__)
        return value.name

    return encode, _from_str(kind.__getitem__)


def _from_str(convert: Decoder) -> Decoder:
    """A decoder that accepts only a JSON string (a forged number or list is corrupt)."""

    def decode(value: Any) -> Any:
        if type(value) is not str:
            raise Unsupported("expected a string")
        return convert(value)

    return decode


# Python type -> (encoder, decoder). Decoders also check the JSON type they get, so an
# entry with a value of the wrong type is rejected as corrupt, never returned as data.
_CODECS: dict[type, tuple[Encoder, Decoder]] = {
    int: (_Exact(int), _Exact(int)),
    str: (_Exact(str), _Exact(str)),
    bool: (_Exact(bool), _Exact(bool)),
    float: (_finite_float, _finite_float),
    dt.datetime: (
        _exact_then(dt.datetime, dt.datetime.isoformat),
        _from_str(dt.datetime.fromisoformat),
    ),
    dt.date: (_exact_then(dt.date, dt.date.isoformat), _from_str(dt.date.fromisoformat)),
    dt.time: (_exact_then(dt.time, dt.time.isoformat), _from_str(dt.time.fromisoformat)),
    dt.timedelta: (
        _exact_then(dt.timedelta, _timedelta_parts),
        lambda parts: dt.timedelta(*map(_Exact(int), parts)),
    ),
    uuid.UUID: (_uuid_str, _from_str(uuid.UUID)),
    decimal.Decimal: (_exact_then(decimal.Decimal, str), _from_str(decimal.Decimal)),
    bytes: (
        _exact_then(bytes, lambda value: base64.b64encode(value).decode("ascii")),
        _from_str(lambda text: base64.b64decode(text, validate=True)),
    ),
}

# JSON columns hold any JSON document; orjson refusing a value means "do not cache".
_JSON_CODEC: tuple[Encoder, Decoder | None] = (lambda value: value, None)


def column_codec(sql_type: TypeEngine[Any]) -> tuple[Encoder, Decoder | None]:
    """The (encoder, decoder) pair for a column type; raises :class:`Unsupported`."""
    if isinstance(sql_type, JSON):
        return _JSON_CODEC
    kind = _python_type(sql_type)
    if kind is not None and issubclass(kind, enum.Enum):
        return _enum_codec(kind)
    if kind is None or kind not in _CODECS:
        raise Unsupported(f"column type {sql_type!r}")
    return _CODECS[kind]


# -- primary keys ------------------------------------------------------------------------


# NOTE: only the exact Python type of a column is keyed. Another spelling ("1" for an
# integer key, a str for a UUID key) bypasses the cache: some drivers accept it and some
# reject it, and a cache hit must never answer a call the database would have refused.
_KEY_CANONICALIZERS: dict[type, Callable[[Any], Any]] = {
    int: _Exact(int),
    str: _Exact(str),
    uuid.UUID: _uuid_str,
    dt.datetime: _exact_then(dt.datetime, dt.datetime.isoformat),
    dt.date: _exact_then(dt.date, dt.date.isoformat),
}


def key_canonicalizer(sql_type: TypeEngine[Any]) -> Callable[[Any], Any]:
    """Maps a key value to its JSON key form; raises :class:`Unsupported` for values that
    are not exactly of the column's Python type (those reads bypass the cache)."""
    kind = _python_type(sql_type)
    if kind is None or kind not in _KEY_CANONICALIZERS:
        raise Unsupported(f"primary key type {sql_type!r}")
    return _KEY_CANONICALIZERS[kind]


def encode_key_part(values: Sequence[Any]) -> str:
    """A JSON array: quoting and escaping make splicing ambiguities impossible. Raises
    :class:`Unsupported` for what JSON cannot hold (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(list(values)).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise Unsupported(str(exc)) from None


def is_int_key(canonicalizer: Callable[[Any], Any]) -> bool:
    """True for the canonicalizer of an integer key column, whose JSON form is ``str()``."""
    return isinstance(canonicalizer, _Exact) and canonicalizer.kind is int


#: The integers JSON keys hold (orjson's range); others bypass the cache.
INT_KEY_RANGE = range(-(2**63), 2**64)


# -- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowCodec:
    """Encodes and decodes the loaded column values of one mapped class."""

    attribute_keys: tuple[str, ...]
    encoders: tuple[Encoder, ...]
    exact_types: tuple[tuple[int, type], ...]  # columns decoded by a type check alone
    converters: tuple[tuple[int, Decoder], ...]  # columns whose JSON value is converted back
    schema: bytes

    @classmethod
    def build(cls, table_name: str, columns: Sequence[tuple[str, TypeEngine[Any]]]) -> RowCodec:
        """Raises :class:`Unsupported` when a column type cannot be stored faithfully."""
        encoders: list[Encoder] = []
        exact_types: list[tuple[int, type]] = []
        converters: list[tuple[int, Decoder]] = []
        for index, (_, sql_type) in enumerate(columns):
            encoder, decoder = column_codec(sql_type)
            encoders.append(encoder)
            if isinstance(decoder, _Exact):
                exact_types.append((index, decoder.kind))
            elif decoder is not None:
                converters.append((index, decoder))
        description = repr((FORMAT_VERSION, table_name, [(k, repr(t)) for k, t in columns]))
        digest = hashlib.sha256(description.encode("utf-8")).hexdigest()
        schema = f"{FORMAT_VERSION:x}{digest[:15]}".encode("ascii")
        keys = tuple(key for key, _ in columns)
        return cls(keys, tuple(encoders), tuple(exact_types), tuple(converters), schema)

    def encode_values(self, state_dict: dict[str, Any]) -> list[Any]:
        """The JSON-ready values in ``state_dict``; raises :class:`Unsupported`."""
        values = []
        for key, encoder in zip(self.attribute_keys, self.encoders, strict=True):
            if key not in state_dict:
                raise Unsupported(f"{key} not loaded")
            value = state_dict[key]
            values.append(None if value is None else encoder(value))
        return values

    def decode_values(self, values: Any) -> dict[str, Any]:
        """The attribute dict of JSON values; raises on anything that is not a valid row.

        This runs once per cached row served (100 times for a 100-row result), so the type
        checks are inline rather than a decoder call per column."""
        if type(values) is not list or len(values) != len(self.attribute_keys):
            raise Unsupported("not a row")
        for index, kind in self.exact_types:
            value = values[index]
            if type(value) is not kind and value is not None:
                raise Unsupported(kind.__name__)
        for index, decoder in self.converters:
            if values[index] is not None:
                values[index] = decoder(values[index])
        return dict(zip(self.attribute_keys, values))  # noqa: B905 - length checked above

    def encode(self, state_dict: dict[str, Any]) -> bytes:
        """JSON body of the values in ``state_dict``; raises :class:`Unsupported`."""
        return dumps(self.encode_values(state_dict))

    def decode(self, body: bytes) -> dict[str, Any] | None:
        """The attribute dict of a body, or ``None`` when it is not a valid body."""
        try:
            return self.decode_values(orjson.loads(body))
        except Exception:  # noqa: BLE001 - whatever a forged entry makes a decoder raise
            return None


def dumps(value: Any) -> bytes:
    """JSON bytes; raises :class:`Unsupported` for what JSON cannot hold."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise Unsupported(str(exc)) from None


# -- framing: tags + schema + (signature) + body ----------------------------------------


@dataclass(frozen=True)
class Framing:
    """Puts the header (and optional signature) around a body, and checks it on the way back."""

    signing_key: bytes | None = None

    def frame(self, key: str, header: bytes, body: bytes) -> bytes:
        if self.signing_key is None:
            return header + body
        return header + self._mac(key, header, body) + body

    def unframe(self, key: str, header: bytes, entry: bytes) -> bytes | None:
        """The body of ``entry`` if its header is ``header`` (and its signature holds)."""
        if not entry.startswith(header):
            return None
        rest = entry[len(header) :]
        if self.signing_key is None:
            return rest
        mac, body = rest[:16], rest[16:]
        if not hmac.compare_digest(mac, self._mac(key, header, body)):
            return None
        return body

    def _mac(self, key: str, header: bytes, body: bytes) -> bytes:
        assert self.signing_key is not None
        message = key.encode("utf-8") + b"\0" + header + body
        return hmac.digest(self.signing_key, message, "sha256")[:16]
