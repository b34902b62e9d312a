"""The read protocol (``_flow.read``) on its own: no database, no cache server.

Each test drives one read by hand, as a driver would: it checks the operation the flow
yields, sends the result a transport or database would have returned (or throws the
error it would have raised), and checks the outcome and the counters. Every branch of the
protocol is here; the integration suites run the same flow through real drivers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from sqlmodel_cache import CacheSettings
from sqlmodel_cache._flow import (
    DELIVER,
    LOAD,
    Bypassed,
    Delete,
    Fetch,
    Fill,
    Flow,
    Hit,
    Loaded,
    Pause,
    read,
)
from sqlmodel_cache._state import Runtime
from sqlmodel_cache._writes import TRACKER_KEY, Tracker
from sqlmodel_cache.transport import Fetched, MemoryTransport

KEY = "p:{thing}:r:[1]"
TAG = b"0123456789abcdef"
SCHEMA = b"1" + b"s" * 15
BODY = b'["one"]'
ENTRY = TAG + SCHEMA + BODY


@dataclass(frozen=True)
class Thing:
    """A target whose entries decode to their body as text; ``b"bad"`` does not decode."""

    label: str = "Thing"
    events: str = ""
    tables: tuple[str, ...] = ("thing",)
    tag_keys: tuple[str, ...] = ("p:{thing}:rt",)
    schema: bytes = SCHEMA

    def decode(self, key: str, body: bytes) -> str | None:
        return None if body == b"bad" else body.decode()


class Clock:
    """A clock the test moves: lease waits take no real time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bind:
    """An engine as the flow sees it: its execution options and its dialect."""

    options: dict[str, Any] = field(default_factory=dict)
    dialect: Any = field(default_factory=lambda: SimpleNamespace(is_async=False))

    def get_execution_options(self) -> dict[str, Any]:
        return self.options


class AsyncOnly:
    """An async transport with the basic protocol only."""

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        return None

    async def delete(self, *keys: str) -> None:
        return None


class Near:
    """A near cache that holds one entry and records what it is told."""

    def __init__(self, entry: bytes | None) -> None:
        self.entry = entry
        self.remembered: list[Fetched] = []

    def lookup(self, label: str, events: str, key: str, tags: Any, schema: bytes) -> bytes | None:
        return self.entry

    def begin(self, key: str, tag_keys: Any) -> object:
        return object()

    def remember(self, ticket: object, key: str, tag_keys: Any, fetched: Fetched) -> None:
        self.remembered.append(fetched)


def _runtime(transport: Any = None, **settings: Any) -> Runtime:
    runtime = Runtime.start(
        CacheSettings(transport=transport or MemoryTransport(), key_prefix="p", **settings)
    )
    runtime.clock = Clock()
    return runtime


def _session() -> Any:
    return SimpleNamespace(info={})


def _encode(key: str, loaded: Any) -> bytes | str | None:
    """What LOAD sent, as the body to store (tests send bytes, a reason or None)."""
    return loaded  # type: ignore[no-any-return]


def _flow(runtime: Runtime, session: Any = None, **options: Any) -> Flow:
    bind: Any = options.pop("bind", Bind())
    target: Any = options.pop("target", Thing())
    return read(
        runtime,
        target,
        KEY,
        options.pop("ttl", 60),
        session if session is not None else _session(),
        bind,
        options.pop("encode", _encode),
        **options,
    )


def step(flow: Flow, value: Any = None) -> Any:
    """Send ``value`` in; the next operation, or the outcome when the flow ended."""
    try:
        return flow.send(value)
    except StopIteration as done:
        return done.value


def throw(flow: Flow, error: BaseException) -> Any:
    """Throw ``error`` in; the next operation, or the outcome when the flow ended."""
    try:
        return flow.throw(error)
    except StopIteration as done:
        return done.value


def _counts(runtime: Runtime, label: str = "Thing") -> dict[str, int]:
    return runtime.stats.snapshot().get(label, {})


def _miss(lease_taken: bool = True) -> Fetched:
    return Fetched(None, lease_taken, (TAG,))


def _to_load(runtime: Runtime, flow: Flow) -> Fetch:
    """Start ``flow`` and answer its fetch with a miss that takes the lease."""
    fetch = step(flow)
    assert isinstance(fetch, Fetch)
    assert step(flow, _miss()) is LOAD
    return fetch


# -- eligibility --------------------------------------------------------------------------


def test_a_reason_from_the_caller_bypasses_without_any_io() -> None:
    """A call-level reason (an execution option, an odd key) is counted and nothing is done."""
    runtime = _runtime()
    assert step(_flow(runtime, bypass="option")) == Bypassed("option")
    assert _counts(runtime) == {"bypass:option": 1}


def test_own_writes_bypass() -> None:
    """A table the session's transaction wrote is read from the database."""
    runtime = _runtime()
    session = _session()
    session.info[TRACKER_KEY] = Tracker(written_tables={"thing"})
    assert step(_flow(runtime, session)) == Bypassed("own_writes")


def test_schema_translate_map_on_the_bind_bypasses() -> None:
    """A bind that translates schemas is read from the database (keys do not name schemas)."""
    runtime = _runtime()
    bind = Bind({"schema_translate_map": {None: "tenant"}})
    assert step(_flow(runtime, bind=bind)) == Bypassed("schema_translate_map")


def test_an_undelivered_invalidation_is_retried_then_blocks_its_tables() -> None:
    """When a retry is due the flow asks for it first; tables it covers stay uncached."""
    runtime = _runtime()
    runtime.pending.add({KEY}, set(), {"thing"}, ttl=60)
    flow = _flow(runtime)
    assert step(flow) is DELIVER
    assert step(flow, None) == Bypassed("pending_invalidation")


def test_a_failing_delivery_does_not_fail_the_read() -> None:
    """An error from the retried delivery is swallowed: the read goes on."""
    runtime = _runtime()
    runtime.pending.add({"other"}, set(), {"other_table"}, ttl=60)
    flow = _flow(runtime)
    assert step(flow) is DELIVER
    assert isinstance(throw(flow, ConnectionError("down")), Fetch)


def test_an_async_transport_in_a_sync_session_bypasses() -> None:
    """Outside SQLAlchemy's greenlet a sync driver cannot await the transport."""
    runtime = _runtime(AsyncOnly())
    assert step(_flow(runtime)) == Bypassed("async_transport_in_sync_session")
    assert isinstance(step(_flow(runtime, awaiting=True)), Fetch)  # a coroutine driver can


def test_an_async_engine_outside_the_greenlet_bypasses() -> None:
    """An ``AsyncSession``'s session used from plain code (a lazy load in async code) must
    raise ``MissingGreenlet`` as it does uncached: the cache stands aside."""
    runtime = _runtime()
    bind = Bind(dialect=SimpleNamespace(is_async=True))
    assert step(_flow(runtime, bind=bind)) == Bypassed("outside_greenlet")
    assert isinstance(step(_flow(runtime, bind=bind, awaiting=True)), Fetch)


def test_an_open_circuit_breaker_bypasses() -> None:
    """After repeated failures reads skip the cache (counted per target kind)."""
    runtime = _runtime(breaker_threshold=1)
    runtime.breaker.record_failure()
    query = Thing(events="query_")
    assert step(_flow(runtime, target=query)) == Bypassed("circuit_open")
    assert _counts(runtime) == {"query_bypass:circuit_open": 1}


# -- hits ---------------------------------------------------------------------------------


def test_a_hit_is_one_fetch_and_counts_hits_and_bytes() -> None:
    """A valid entry decodes into the answer; one fetch, nothing else."""
    runtime = _runtime()
    flow = _flow(runtime, target=Thing(events="query_"))
    fetch = step(flow)
    assert fetch == Fetch(KEY, ("p:{thing}:rt",), SCHEMA, fetch.new_tag, fetch.lease, 5000)
    assert fetch.lease.startswith(b"L")
    assert step(flow, Fetched(ENTRY, False, ())) == Hit('["one"]')
    assert _counts(runtime) == {"query_hits": 1, "bytes_read": len(ENTRY)}


def test_the_near_cache_answers_without_a_fetch() -> None:
    """A valid near-cache copy is a hit with no operation at all."""
    runtime = _runtime()
    runtime.driver.near = Near(ENTRY)  # type: ignore[assignment]
    assert step(_flow(runtime)) == Hit('["one"]')


def test_a_fetched_entry_is_offered_to_the_near_cache() -> None:
    """What Redis returned is handed to the near cache with the ticket taken before."""
    runtime = _runtime()
    near = Near(None)
    runtime.driver.near = near  # type: ignore[assignment]
    flow = _flow(runtime)
    step(flow)
    fetched = Fetched(ENTRY, False, (), 1000)
    assert step(flow, fetched) == Hit('["one"]')
    assert near.remembered == [fetched]


def test_a_signed_entry_must_carry_its_signature() -> None:
    """With a signing key, an entry without the right MAC is not decoded."""
    runtime = _runtime(signing_key=b"k" * 16)
    flow = _flow(runtime)
    step(flow)
    assert isinstance(step(flow, Fetched(ENTRY, False, ())), Delete)
    signed = runtime.framing.frame(KEY, TAG + SCHEMA, BODY)
    flow = _flow(runtime)
    step(flow)
    assert step(flow, Fetched(signed, False, ())) == Hit('["one"]')


# -- bad entries --------------------------------------------------------------------------


def test_an_undecodable_entry_is_deleted_then_refetched_and_refilled() -> None:
    """A bad entry is an error and a miss, never an exception: it is deleted, and the
    second fetch takes the lease, so this read stores a good entry."""
    runtime = _runtime()
    flow = _flow(runtime)
    first = step(flow)
    assert step(flow, Fetched(TAG + SCHEMA + b"bad", False, ())) == Delete(KEY)
    second = step(flow, None)
    assert isinstance(second, Fetch)
    assert second.lease != first.lease
    assert step(flow, _miss()) is LOAD
    assert isinstance(step(flow, BODY), Fill)
    assert step(flow, True) == Loaded(BODY)
    counts = _counts(runtime)
    assert (counts["errors"], counts["misses"], counts["fills"]) == (1, 1, 1)


def test_a_second_bad_entry_reads_the_database_without_filling() -> None:
    """If the entry is bad again, it is deleted again and the read takes no lease."""
    runtime = _runtime()
    flow = _flow(runtime)
    bad = Fetched(TAG + SCHEMA + b"bad", False, ())
    step(flow)
    assert step(flow, bad) == Delete(KEY)
    assert isinstance(step(flow), Fetch)
    assert step(flow, bad) == Delete(KEY)
    assert step(flow) is LOAD
    assert step(flow, BODY) == Loaded(BODY)
    assert _counts(runtime)["errors"] == 2


def test_a_bad_near_cache_copy_is_deleted_and_fetched_from_the_cache() -> None:
    """A near-cache copy that does not decode goes the same way as a fetched one."""
    runtime = _runtime()
    runtime.driver.near = Near(TAG + SCHEMA + b"bad")  # type: ignore[assignment]
    flow = _flow(runtime)
    assert step(flow) == Delete(KEY)
    assert isinstance(step(flow), Fetch)


def test_a_failing_delete_is_ignored() -> None:
    """Deleting a bad entry is best effort: its failure does not reach the application."""
    runtime = _runtime()
    flow = _flow(runtime)
    step(flow)
    assert step(flow, Fetched(TAG + SCHEMA + b"bad", False, ())) == Delete(KEY)
    assert isinstance(throw(flow, ConnectionError("down")), Fetch)


# -- misses -------------------------------------------------------------------------------


def test_a_miss_with_the_lease_loads_and_fills() -> None:
    """The database is read once and the entry stored under the lease, with the tags the
    fetch saw and the target's schema in front of the body."""
    runtime = _runtime()
    flow = _flow(runtime, ttl=42)
    fetch = _to_load(runtime, flow)
    fill = step(flow, BODY)
    assert fill == Fill(KEY, TAG + SCHEMA + BODY, 42, fetch.lease)
    assert step(flow, True) == Loaded(BODY)
    assert _counts(runtime) == {"misses": 1, "fills": 1, "bytes_written": len(fill.value)}
    assert runtime.max_ttl == 42


def test_a_fill_lost_to_an_invalidation_is_counted_not_retried() -> None:
    """The lease was taken by a commit's invalidation: the fill is rejected, by design."""
    runtime = _runtime()
    flow = _flow(runtime)
    _to_load(runtime, flow)
    step(flow, BODY)
    assert step(flow, False) == Loaded(BODY)
    assert _counts(runtime)["fill_rejected"] == 1


def test_a_failing_fill_is_counted_and_the_read_still_answers() -> None:
    """A transport error on the fill costs a later miss, never the read."""
    runtime = _runtime()
    flow = _flow(runtime)
    _to_load(runtime, flow)
    step(flow, BODY)
    assert throw(flow, ConnectionError("down")) == Loaded(BODY)
    assert _counts(runtime)["errors"] == 1


@pytest.mark.parametrize(
    "error",
    [RuntimeError("the SELECT failed"), KeyboardInterrupt(), asyncio.CancelledError()],
    ids=["exception", "interrupt", "cancelled"],
)
def test_a_failed_select_under_the_lease_gives_the_lease_back(error: BaseException) -> None:
    """Whatever stops the database read, the lease is deleted before the error goes on,
    so other readers do not wait it out."""
    runtime = _runtime()
    flow = _flow(runtime)
    _to_load(runtime, flow)
    assert throw(flow, error) == Delete(KEY)
    with pytest.raises(type(error)) as raised:
        step(flow, None)
    assert raised.value is error


def test_a_failed_select_gives_the_lease_back_even_if_that_fails() -> None:
    """A failing delete of the lease does not hide the database's error."""
    runtime = _runtime()
    flow = _flow(runtime)
    _to_load(runtime, flow)
    error = RuntimeError("the SELECT failed")
    assert throw(flow, error) == Delete(KEY)
    with pytest.raises(RuntimeError) as raised:
        throw(flow, ConnectionError("down"))
    assert raised.value is error


def test_a_flow_discarded_while_loading_closes_quietly() -> None:
    """Closing the flow (its driver is gone) yields nothing more."""
    runtime = _runtime()
    flow = _flow(runtime)
    _to_load(runtime, flow)
    flow.close()


@pytest.mark.parametrize(
    ("body", "counted"),
    [(None, None), ("unsupported_value", "fill_skipped:unsupported_value")],
    ids=["nothing", "refused"],
)
def test_nothing_to_store_gives_the_lease_back(body: str | None, counted: str | None) -> None:
    """No row (absence is not cached) or a value the target refuses: no fill, the lease is
    given back."""
    runtime = _runtime()
    flow = _flow(runtime)
    _to_load(runtime, flow)
    assert step(flow, body) == Delete(KEY)
    assert step(flow) == Loaded(body)
    if counted is not None:
        assert _counts(runtime)[counted] == 1


def test_a_write_during_the_load_prevents_the_fill() -> None:
    """If the session wrote the table while the database was read (another listener's
    flush), what was read may be uncommitted: not stored, lease given back."""
    runtime = _runtime()
    session = _session()
    flow = _flow(runtime, session)
    _to_load(runtime, flow)
    session.info[TRACKER_KEY] = Tracker(written_tables={"thing"})
    assert step(flow, BODY) == Delete(KEY)
    assert step(flow) == Loaded(BODY)
    assert _counts(runtime)["fill_skipped:own_writes"] == 1


def test_an_entry_above_the_size_limit_is_not_stored() -> None:
    """Too large for ``max_entry_bytes``: counted, lease given back."""
    runtime = _runtime(max_entry_bytes=64)
    flow = _flow(runtime)
    _to_load(runtime, flow)
    assert step(flow, b"x" * 64) == Delete(KEY)
    assert _counts(runtime)["bypass:too_large"] == 1


def test_a_failing_fetch_reads_the_database_and_feeds_the_breaker() -> None:
    """Reads degrade: the error is counted, the database answers, nothing is filled."""
    runtime = _runtime(breaker_threshold=1)
    flow = _flow(runtime)
    step(flow)
    assert throw(flow, ConnectionError("down")) is LOAD
    assert step(flow, BODY) == Loaded(BODY)
    assert _counts(runtime) == {"errors": 1}
    assert runtime.breaker.is_open


def test_a_select_that_fails_without_a_lease_just_raises() -> None:
    """With no lease to give back (the cache failed), the database's error goes on."""
    runtime = _runtime()
    flow = _flow(runtime)
    step(flow)
    assert throw(flow, ConnectionError("down")) is LOAD
    with pytest.raises(RuntimeError):
        throw(flow, RuntimeError("the SELECT failed"))


# -- stampede control ---------------------------------------------------------------------


def test_another_readers_lease_is_waited_for_until_its_fill_lands() -> None:
    """While another reader holds the lease: pause (growing), fetch again; its entry is a hit."""
    runtime = _runtime(lease_wait=0.1)
    clock: Any = runtime.clock
    flow = _flow(runtime)
    step(flow)
    assert step(flow, _miss(lease_taken=False)) == Pause(0.002)
    clock.now += 0.002
    assert isinstance(step(flow), Fetch)
    assert step(flow, _miss(lease_taken=False)) == Pause(0.004)
    clock.now += 0.004
    step(flow)
    assert step(flow, Fetched(ENTRY, False, ())) == Hit('["one"]')
    assert _counts(runtime)["lease_waits"] == 1


def test_a_lease_that_outlives_the_wait_sends_the_read_to_the_database_unfilled() -> None:
    """After ``lease_wait`` the reader reads the database itself and stores nothing."""
    runtime = _runtime(lease_wait=0.01)
    clock: Any = runtime.clock
    flow = _flow(runtime)
    op = step(flow)
    pauses = []
    while isinstance(op, Fetch):
        op = step(flow, _miss(lease_taken=False))
        if isinstance(op, Pause):
            pauses.append(op.seconds)
            clock.now += op.seconds
            op = step(flow)
    assert op is LOAD
    assert sum(pauses) == pytest.approx(0.01)
    assert step(flow, BODY) == Loaded(BODY)
    counts = _counts(runtime)
    assert (counts["lease_wait_timeouts"], counts["misses"]) == (1, 1)
    assert "fills" not in counts


def test_lease_wait_zero_never_pauses() -> None:
    """``lease_wait=0`` reads the database at once when another reader holds the lease."""
    runtime = _runtime(lease_wait=0)
    flow = _flow(runtime)
    step(flow)
    assert step(flow, _miss(lease_taken=False)) is LOAD
