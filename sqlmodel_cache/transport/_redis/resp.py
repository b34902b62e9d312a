"""The bit of RESP (the Redis protocol, versions 2 and 3) that our own connections speak."""

from __future__ import annotations

from typing import Any


class Incomplete(Exception):
    """The buffer ends inside a message: wait for more bytes."""


class ProtocolError(Exception):
    """The connection sent something that is not RESP3."""


def parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP3 value from ``buffer[pos:]`` and the position after it.

    Integers come back as ``int``, pushes as ``("push", [items])``, errors as
    :class:`ProtocolError` instances, maps as lists of alternating keys and values, other
    simple values as their bytes; that is all the tracker and the lanes need."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind = buffer[pos : pos + 1]
    line = bytes(buffer[pos + 1 : end])
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind in (b"+", b"("):
        return line, pos
    if kind == b"-":
        return ProtocolError(line.decode("utf-8", "replace")), pos
    if kind in (b",", b"#"):
        return line, pos
    if kind == b"_":
        return None, pos
    if kind in (b"$", b"=", b"!"):
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise Incomplete
        data = bytes(buffer[pos : pos + size])
        if kind == b"!":
            return ProtocolError(data.decode("utf-8", "replace")), pos + size + 2
        return data, pos + size + 2
    if kind in (b"*", b">", b"~", b"%", b"|"):
        count = int(line)
        if count < 0:
            return None, pos
        if kind in (b"%", b"|"):
            count *= 2
        items = []
        for _ in range(count):
            item, pos = parse(buffer, pos)
            items.append(item)
        if kind == b"|":  # an attribute annotates the value that follows: skip it
            return parse(buffer, pos)
        return (("push", items) if kind == b">" else items), pos
    raise ProtocolError(f"unexpected RESP3 type byte {kind!r}")


#: ``$<size>``, the head of a bulk string, for the sizes most parts have: formatting bytes
#: is slow, and a cache hit packs ten parts (this took packing its EVALSHA from 31,000
#: CPU instructions to 22,000).
_SIZES = [b"$%d" % size for size in range(512)]


def command(*parts: str | bytes | int) -> bytes:
    """``parts`` encoded as one RESP command."""
    out = [b"*%d" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        size = len(data)
        out.append(_SIZES[size] if size < 512 else b"$%d" % size)
        out.append(data)
    out.append(b"")
    return b"\r\n".join(out)
