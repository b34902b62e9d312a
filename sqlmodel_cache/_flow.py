"""The read protocol: how every cached read is decided, written once and free of IO.

Every read the cache may answer (``Session.get()`` on its fast path or through the
``do_orm_execute`` event, ``AsyncSession.get()``, a ``select()``) runs :func:`read`: a
generator that takes every decision and *yields* each piece of IO it needs, in the
manner of httpx's ``Auth.auth_flow``. A driver (``_reads.run`` for sync code, plain or
inside SQLAlchemy's greenlet, and ``_reads.arun`` for a coroutine) performs the operation
and sends its result back in, or throws its exception in. Nothing here waits, touches a
socket or runs SQL, so every branch is unit-tested by sending results in
(``tests/test_flow.py``).

The operations a flow yields:

=========== ========================================================================
``Fetch``   one atomic cache fetch: the valid entry, or a lease to fill the key
``Pause``   wait a little for another reader's fill (stampede control)
``LOAD``    read the database, as SQLAlchemy would have without the cache
``Fill``    store the entry, if the lease still holds
``Delete``  remove an undecodable entry, or give a lease back
``DELIVER`` retry this process's failed invalidations (they are due)
=========== ========================================================================

and its outcome, one of:

* :class:`Bypassed` -- the cache stood aside before fetching: run the read as usual;
* :class:`Hit` -- a valid entry, decoded by the target into ``answer``;
* :class:`Loaded` -- the flow read the database (``result`` is what ``LOAD`` returned),
  then filled the entry or gave the lease back.

A read, step by step (each step counted in ``Stats`` as ``SQLModelCache.stats()`` says):

1. *Eligible?* A reason the caller found in the call itself (its execution options, the
   key), then the session's (:func:`session_bypass`: its own writes, undelivered
   invalidations, ...), then the circuit breaker. Any reason: ``Bypassed``.
2. *The near cache*, when there is one, may hold a valid copy: a hit with no IO.
3. *Fetch.* A valid entry decodes into a ``Hit``; one that does not decode (corrupt,
   forged, foreign) is counted as an error, deleted and fetched once more, which takes the
   lease (a second bad one: read the database, no lease). Another reader's lease: pause,
   with growing pauses, up to ``lease_wait``, then read the database without filling.
   A failing cache: counted, fed to the breaker, read the database.
4. *Miss with the lease.* ``LOAD``; if it raises (any exception, a cancellation
   included), the lease is given back before the exception goes on, so other readers do
   not wait it out. Then fill, unless the session wrote a table the read reads while
   the database was read (a flush by another listener: the row may be uncommitted) or the
   target will not store the value; whenever no fill was sent, give the lease back.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine

from sqlmodel_cache import _keys
from sqlmodel_cache._compat import in_async_session_context
from sqlmodel_cache._writes import own_writes_block
from sqlmodel_cache.transport._protocols import TAG_SIZE, Fetched

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from sqlmodel_cache._state import Runtime

#: What a failed cache read logs (the read then uses the database).
READ_FAILED = "cache read failed, using the database: %r"

#: Pauses while another reader fills a key: the first this long, doubling up to MAX_POLL.
FIRST_POLL = 0.002
MAX_POLL = 0.02


# -- operations ---------------------------------------------------------------------------


@dataclass(slots=True)
class Fetch:
    """Call the transport's ``fetch`` with these arguments; sends back the :class:`Fetched`."""

    key: str
    tag_keys: Sequence[str]
    schema: bytes
    new_tag: bytes
    lease: bytes
    lease_ttl_ms: int


@dataclass(slots=True)
class Fill:
    """Call the transport's ``fill`` with these arguments; sends back whether it stored."""

    key: str
    value: bytes
    ttl: int
    lease: bytes


@dataclass(slots=True)
class Delete:
    """Delete ``key`` (best effort: a failure is ignored by the flow)."""

    key: str


@dataclass(slots=True)
class Pause:
    """Sleep ``seconds`` without blocking an event loop."""

    seconds: float


class Step(enum.Enum):
    """The operations that need nothing more than their name."""

    #: Read the database the way the caller would have; sends back what it returned.
    LOAD = "load"
    #: Retry this process's undelivered invalidations now (``_writes.deliver``).
    DELIVER = "deliver"


LOAD = Step.LOAD
DELIVER = Step.DELIVER

Op = Fetch | Fill | Delete | Pause | Step


# -- outcomes -----------------------------------------------------------------------------


@dataclass(slots=True)
class Bypassed:
    """The cache stood aside (counted as ``bypass:<reason>``): read the database as usual."""

    reason: str


@dataclass(slots=True)
class Hit:
    """A valid entry: ``answer`` is what the target decoded from it."""

    answer: Any


@dataclass(slots=True)
class Loaded:
    """The flow read the database: ``result`` is what ``LOAD`` returned."""

    result: Any


Outcome = Bypassed | Hit | Loaded

#: A read in progress: yields operations, is sent their results, returns the outcome.
Flow = Generator[Op, Any, Outcome]


class Target(Protocol):
    """What a read reads: a model's rows (``ModelPlan``) or a query shape (``QueryShape``)."""

    @property
    def label(self) -> str:
        """The name counters are kept under (the model's class name)."""

    @property
    def events(self) -> str:
        """What prefixes the target's own counters: ``""`` for rows, ``"query_"``."""

    @property
    def tables(self) -> Sequence[str]:
        """The tables the read reads."""

    @property
    def tag_keys(self) -> Sequence[str]:
        """The keys of the tags an entry must carry to be valid, in order."""

    @property
    def schema(self) -> bytes:
        """What follows the tags in every entry: the payload format and the target's shape."""

    def decode(self, key: str, body: bytes) -> Any | None:
        """The answer stored in ``body`` (checked and unsigned), or ``None`` when it does
        not decode into exactly what ``key`` names."""


#: ``encode(key, loaded)``: the body to store for what ``LOAD`` returned; a ``str`` is why
#: it is not stored (counted as ``fill_skipped:<reason>``), ``None`` means nothing to store
#: (no such row: absence is not cached).
Encode = Callable[[str, Any], "bytes | str | None"]


# -- the protocol -------------------------------------------------------------------------


def read(
    runtime: Runtime,
    target: Target,
    key: str,
    ttl: int,
    session: Session,
    bind: Engine | Connection,
    encode: Encode,
    bypass: str | None = None,
    awaiting: bool = False,
) -> Flow:
    """The read of ``key`` of ``target`` in ``session`` (on ``bind``), its entry to live
    ``ttl`` seconds. ``bypass``: a reason the caller already has to skip the cache.
    ``awaiting``: the driver is a coroutine that awaits an async transport itself."""
    stats = runtime.stats
    label, events = target.label, target.events
    tag_keys, schema = target.tag_keys, target.schema
    lease_ttl_ms = runtime.lease_ttl_ms

    # 1. eligible?
    if bypass is None:
        pending = runtime.pending
        if pending and pending.retry_due() and (awaiting or runtime.driver.usable_here()):
            # A read never fails because of the cache: a failed delivery logged and kept it.
            with contextlib.suppress(Exception):
                yield DELIVER
        bypass = session_bypass(runtime, session, target.tables, bind, awaiting)
    if bypass is None and not runtime.breaker.allow():
        bypass = "circuit_open"
    if bypass is not None:
        stats.add(label, f"{events}bypass:{bypass}")
        return Bypassed(bypass)

    # 2. the near cache, 3. fetch: an entry that does not decode is deleted, then fetched
    # once more (taking the lease, so this read stores a good one)
    near = runtime.driver.near
    entry = None if near is None else near.lookup(label, events, key, tag_keys, schema)
    fetched: Fetched | None = None
    lease = b""
    for _attempt in range(2):
        if entry is None:
            # Fetch, pausing (pauses growing) while another reader holds the lease, up to
            # lease_wait: then the read goes to the database without filling.
            lease = _keys.new_lease()
            deadline: float | None = None
            pause = FIRST_POLL
            while True:
                ticket = None if near is None else near.begin(key, tag_keys)
                try:
                    fetched = yield Fetch(
                        key, tag_keys, schema, _keys.fresh_tag_of(lease), lease, lease_ttl_ms
                    )
                except Exception as exc:  # noqa: BLE001 - reads degrade: any failure is a miss
                    transport_failed(runtime, label, READ_FAILED, exc)
                    return Loaded((yield LOAD))
                if near is not None:
                    near.remember(ticket, key, tag_keys, fetched)
                runtime.breaker.record_success()
                if fetched.entry is not None or fetched.leased:
                    break
                now = runtime.clock()
                if deadline is None:
                    deadline = now + runtime.settings.lease_wait
                    stats.add(label, "lease_waits")
                if now >= deadline:
                    stats.add(label, "lease_wait_timeouts")
                    break
                yield Pause(min(pause, deadline - now))
                pause = min(pause * 2, MAX_POLL)
            entry = fetched.entry
            if entry is None:
                break
        answer = _decode(runtime, target, key, entry)
        if answer is not None:
            stats.add(label, f"{events}hits")
            stats.add(label, "bytes_read", len(entry))
            return Hit(answer)
        stats.add(label, "errors")
        stats.warn("bad_entry", "undecodable cache entry for %s removed", label)
        yield from _delete(key)
        entry = fetched = None

    # 4. a miss: the database, then fill or give the lease back
    stats.add(label, f"{events}misses")
    if fetched is None or not fetched.leased:
        return Loaded((yield LOAD))
    try:
        loaded = yield LOAD
    except GeneratorExit:  # the flow itself is being discarded: nothing may be yielded
        raise
    except BaseException:
        yield from _delete(key)  # give the lease back: others may be waiting for it
        raise
    if not (yield from _fill(runtime, target, key, ttl, session, encode, fetched, lease, loaded)):
        yield from _delete(key)  # give the lease back: others may be waiting for it
    return Loaded(loaded)


def session_bypass(
    runtime: Runtime,
    session: Session,
    tables: Sequence[str],
    bind: Engine | Connection,
    awaiting: bool = False,
) -> str | None:
    """Why a read of ``tables`` in ``session`` on ``bind`` must go to the database, whatever
    the call's options (SPEC R3); ``None`` when it may use the cache."""
    if bind.get_execution_options().get("schema_translate_map"):
        # One statement, several schemas: keys do not name the schema (see the docs).
        return "schema_translate_map"
    if own_writes_block(session, tables):
        return "own_writes"
    if runtime.pending.blocks(tables):
        return "pending_invalidation"
    if not awaiting and bind.dialect.is_async and not in_async_session_context():
        # An AsyncSession's session used outside SQLAlchemy's greenlet (a lazy load in async
        # code): without the cache the read raises MissingGreenlet, so it must with it too.
        return "outside_greenlet"
    if not awaiting and not runtime.driver.usable_here():
        runtime.stats.warn(
            "async_in_sync",
            "a sync Session cannot use the async transport %s: reads bypass the cache",
            type(runtime.driver.transport).__name__,
        )
        return "async_transport_in_sync_session"
    return None


def transport_failed(runtime: Runtime, label: str, message: str, exc: Exception) -> None:
    """Count and log a failed read or fill, and feed the circuit breaker."""
    runtime.stats.add(label, "errors")
    runtime.stats.warn("read_error", message, exc)
    if runtime.breaker.record_failure():
        runtime.stats.add("*", "circuit_opened")
        runtime.stats.warn(
            "circuit_open",
            "the cache keeps failing: reads skip it for %.1f s, then one read probes it",
            runtime.breaker.reset_after,
        )


def _decode(runtime: Runtime, target: Target, key: str, entry: bytes) -> Any | None:
    """The answer in ``entry``, or ``None`` when it is corrupt, forged or foreign. The
    transport (or near cache) matched its tags already; the schema, signature and body are
    checked here and by the target."""
    header = entry[: TAG_SIZE * len(target.tag_keys)] + target.schema
    body = runtime.framing.unframe(key, header, entry)
    return None if body is None else target.decode(key, body)


def _fill(
    runtime: Runtime,
    target: Target,
    key: str,
    ttl: int,
    session: Session,
    encode: Encode,
    fetched: Fetched,
    lease: bytes,
    loaded: Any,
) -> Generator[Op, Any, bool]:
    """Store what the database returned under the lease; ``True`` when a fill was sent
    (whatever became of it), ``False`` when the lease must be given back."""
    stats = runtime.stats
    label, events = target.label, target.events
    if own_writes_block(session, target.tables):
        # NOTE: a flush during the statement (another listener's, or a nested autoflush)
        # wrote a table it reads: what it read may be uncommitted.
        stats.add(label, "fill_skipped:own_writes")
        return False
    body = encode(key, loaded)
    if body is None:
        return False
    if isinstance(body, str):
        stats.add(label, f"fill_skipped:{body}")
        return False
    entry = runtime.framing.frame(key, b"".join(fetched.tags) + target.schema, body)
    if len(entry) > runtime.settings.max_entry_bytes:
        stats.add(label, f"{events}bypass:too_large")
        return False
    runtime.max_ttl = max(runtime.max_ttl, ttl)
    try:
        stored = yield Fill(key, entry, ttl, lease)
    except Exception as exc:  # noqa: BLE001 - a failed fill only costs a later miss
        transport_failed(runtime, label, "cache fill failed: %r", exc)
        return True
    if stored:
        stats.add(label, f"{events}fills")
        stats.add(label, "bytes_written", len(entry))
    else:
        stats.add(label, "fill_rejected")  # an invalidation took the lease: by design
    return True


def _delete(key: str) -> Generator[Op, Any, None]:
    """Delete ``key``, best effort: if that fails too, the entry is still a miss and a
    lease still expires."""
    with contextlib.suppress(Exception):
        yield Delete(key)
