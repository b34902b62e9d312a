"""The stale-read checker (SPEC C4): writers and readers race on one row through the cache.

Writers bump ``Counter.seq`` and set a fresh ``token`` in a transaction; some transactions
roll back, so their tokens are never committed. Every commit is recorded with the
monotonic time at which ``commit()`` returned. Readers record, for every read through the
cache (``session.get`` and a ``select``), the time the read started and what it returned.

A read is **stale** if it returned a ``seq`` lower than one whose commit had returned
before the read started, and **uncommitted** if it returned a token no committed
transaction wrote. ``time.monotonic()`` is one clock for every process on a machine, so
readers may run in other processes.

With ``near_cache=True`` (``--near-cache``) every process reads through a near cache (an
in-process L1 in front of Redis): each read also records whether the L1 answered it, and
every process reports its L1 counters, so a run shows the L1 actually served reads.
:func:`kill_tracking` cuts the L1s' tracking connections (a ``during`` hook): they must
stop serving until tracking is back.

With no Redis (``redis_url=None``, ``--memory``) the cache is this process's
``MemoryTransport``: it is not shared with other processes, so readers are threads only,
and the run proves the memory transport's lease and invalidation as it does Redis's.

Used by ``tests/test_consistency.py`` (a short run) and runnable on its own for a long
one: ``python -m tests.checker --seconds 60 --postgres URL (--redis URL | --memory)
[--near-cache]``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import create_engine
from sqlmodel import Session, select

#: The checker's circuit breaker probes a failed cache after this many seconds (default 5),
#: so that a short run sees the cache come back.
BREAKER_RESET = 1.0

#: Seconds the reader processes may take to start (spawned interpreters, under load).
READERS_START_TIMEOUT = 60.0

#: The near cache's tracking connection pings every this many seconds (default 0.5) and
#: counts as lost after three silent ones, so that a short run sees it lost and back.
NEAR_HEARTBEAT = 0.1

#: The near-cache counters a process reports (``query_l1_hits`` counts as ``l1_hits``).
L1_EVENTS = ("l1_hits", "l1_misses", "l1_invalidations", "l1_flushes", "l1_evictions")


class Read(NamedTuple):
    """One read: when it started, what it returned, whether it issued SQL, whether the near
    cache answered it, and the process that made it (``main`` or ``reader<N>``)."""

    started: float
    seq: int
    token: str
    sql: bool
    l1: bool = False
    where: str = "main"


@dataclass
class Report:
    """What a run saw."""

    commits: dict[str, tuple[int, float]] = field(default_factory=dict)  # token -> seq, time
    reads: list[Read] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Per process (``main``, ``reader0``, ...): its near cache's counters (``L1_EVENTS``),
    #: from ``SQLModelCache.stats()``; empty without a near cache.
    near: dict[str, dict[str, int]] = field(default_factory=dict)

    def stale(self, since: float = 0.0) -> list[Read]:
        """Reads (started after ``since``) older than a commit that had returned before they
        started."""
        timeline = sorted((at, seq) for seq, at in self.commits.values())
        times = [at for at, _ in timeline]
        # newest[i]: the highest seq among the first i commits to return
        newest = list(itertools.accumulate((seq for _, seq in timeline), max, initial=0))
        result = []
        for read in self.reads:
            started, seq = read[0], read[1]
            if started < since:
                continue
            if seq < newest[bisect.bisect_left(times, started)]:
                result.append(read)
        return result

    def stale_by(self) -> list[float]:
        """For each stale read: how long before it started the first commit it missed had
        returned (seconds), i.e. how late the read was."""
        returned = dict(self.commits.values())  # seq -> when the commit writing it returned
        lags = []
        for read in self.stale():
            missed = [at for seq, at in returned.items() if seq > read.seq and at < read.started]
            lags.append(read.started - min(missed))
        return lags

    def uncommitted(self) -> list[Read]:
        """Reads of a token no transaction committed (or of a seq not matching it)."""
        committed = {**{"initial": (0, 0.0)}, **self.commits}
        return [r for r in self.reads if r[2] not in committed or committed[r[2]][0] != r[1]]

    def cached_share(self) -> float:
        """The share of reads answered without SQL."""
        return sum(1 for r in self.reads if not r[3]) / max(1, len(self.reads))

    def l1_reads(self, where: str | None = None, since: float = 0.0) -> list[Read]:
        """Reads the near cache answered (without SQL), of process ``where`` (any if
        ``None``), started after ``since``."""
        return [
            r
            for r in self.reads
            if r.l1 and not r.sql and r.started >= since and where in (None, r.where)
        ]

    def l1_hits(self, where: str | None = None) -> int:
        """The near cache's ``l1_hits`` (gets and queries) in process ``where`` (all if
        ``None``), as its stats counted them."""
        return self.l1_count("l1_hits", where)

    def l1_count(self, event: str, where: str | None = None) -> int:
        """The near-cache counter ``event`` (one of ``L1_EVENTS``) in ``where`` (all if
        ``None``)."""
        return sum(n.get(event, 0) for w, n in self.near.items() if where in (None, w))

    def summary(self) -> str:
        """One line of figures, for a test's assertion messages and the CLI."""
        line = (
            f"commits={len(self.commits)} reads={len(self.reads)} "
            f"stale={len(self.stale())} uncommitted={len(self.uncommitted())} "
            f"served_by_cache={self.cached_share():.1%} errors={len(self.errors)}"
        )
        if self.near:
            line += f" served_by_l1={len(self.l1_reads()) / max(1, len(self.reads)):.1%}"
            for where, counts in sorted(self.near.items()):
                reads = sum(1 for r in self.reads if r.where == where)
                line += f" | {where}: reads={reads} " + " ".join(
                    f"{event}={counts.get(event, 0)}" for event in L1_EVENTS
                )
        stale = self.stale()
        if stale:
            line += f" first stale reads: {stale[:3]}"
        if self.errors:
            line += f" first errors: {self.errors[:3]}"
        return line


class Unreliable:
    """Fault injection: while ``faulty`` is set, calls fail before reaching the cache, fail
    after it acted (a lost reply), or are delayed; otherwise they pass through."""

    def __init__(self, inner: Any, faulty: threading.Event, seed: int = 7) -> None:
        self.inner = inner
        self.faulty = faulty
        self._random = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ("get", "set", "delete", "fetch", "fill", "invalidate"):
            return method

        def call(*args: Any) -> Any:
            if not self.faulty.is_set():
                return method(*args)
            roll = self._random.random()
            if roll < 0.3:
                raise ConnectionError("injected: dropped before the server")
            time.sleep(self._random.uniform(0, 0.003))
            result = method(*args)
            if roll < 0.5:
                raise ConnectionError("injected: reply lost after the server acted")
            return result

        return call


class SlowFills:
    """Widens the race a lease guards: every fill waits up to ``max_delay`` seconds before
    it reaches the cache, so a commit's invalidation often lands between a reader's
    database read and its fill (which must then be refused)."""

    def __init__(self, inner: Any, max_delay: float = 0.003, seed: int = 7) -> None:
        self.inner = inner
        self.max_delay = max_delay
        self._random = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fill(self, *args: Any) -> Any:
        time.sleep(self._random.uniform(0, self.max_delay))
        return self.inner.fill(*args)


def _mode(near_cache: bool | str) -> str:
    """The near cache's ``invalidation`` for ``run(near_cache=...)``: ``True`` is tracking."""
    return "tracking" if near_cache is True else str(near_cache)


def _configure(
    redis_url: str | None,
    prefix: str,
    wrap: Callable[[Any], Any] | None = None,
    near_cache: bool | str = False,
    cluster: bool = False,
    large_entries: bool = False,
) -> Callable[[], None]:
    """Configure this process's cache (a ``MemoryTransport`` when ``redis_url`` is
    ``None``); with ``near_cache``, also note which reads the L1 answers (see
    :func:`_read_loop`). Returns what undoes the latter. ``large_entries``: the transport
    takes every entry for a large one (read by a check, then a GET)."""
    from sqlmodel_cache import NearCache, SQLModelCache
    from sqlmodel_cache.transport import MemoryTransport, RedisSyncTransport

    transport: Any
    if redis_url is None:
        transport = MemoryTransport()
    else:
        from sqlmodel_cache.transport._redis import transport as redis_transport

        if large_entries:
            redis_transport.LARGE_ENTRY = 1
        transport = RedisSyncTransport.from_url(redis_url, cluster=cluster)
    SQLModelCache.configure(
        transport if wrap is None else wrap(transport),
        key_prefix=prefix,
        breaker_reset=BREAKER_RESET,
        near_cache=NearCache(heartbeat=NEAR_HEARTBEAT, invalidation=_mode(near_cache))
        if near_cache
        else None,
    )
    if not near_cache:
        return lambda: None
    return SQLModelCache.subscribe(_note_l1_hit)


#: Per reader thread: whether the near cache answered (part of) the current read. Stats
#: subscribers run synchronously on the read path, so in the reading thread.
_current = threading.local()


def _note_l1_hit(label: str, event: str, amount: int) -> None:
    if event.endswith("l1_hits"):
        _current.l1 = True


def _near_counts() -> dict[str, int]:
    """This process's near-cache counters, summed over labels (gets and queries)."""
    from sqlmodel_cache import SQLModelCache

    counts = dict.fromkeys(L1_EVENTS, 0)
    for events in SQLModelCache.stats().values():
        for event, count in events.items():
            base = event.removeprefix("query_")
            if base in counts:
                counts[base] += count
    return counts


def tracking_clients(redis_url: str, pinging: bool = False) -> list[int]:
    """The ids of the clients of the Redis server at ``redis_url`` that run client tracking
    (flag ``t`` in ``CLIENT LIST``): the near caches' tracking connections. ``pinging``:
    only those whose last command was a ``PING`` (a tracker heartbeating on it, not a
    connection left over from a failed handshake)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return [
            int(c["id"])
            for c in client.client_list()
            if "t" in c.get("flags", "") and (not pinging or c.get("cmd") == "ping")
        ]
    finally:
        client.close()


def kill_tracking(redis_url: str) -> list[int]:
    """Kill every tracking connection (``CLIENT KILL ID``) and return the ids killed."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return [
            client_id
            for client_id in tracking_clients(redis_url)
            if client.execute_command("CLIENT", "KILL", "ID", client_id)
        ]
    finally:
        client.close()


def _read_loop(
    database_url: str,
    deadline: float,
    reads: list[Read],
    errors: list[str],
    where: str = "main",
) -> None:
    from sqlalchemy import event

    from tests.models import Counter

    engine = create_engine(database_url, pool_size=2)
    issued: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: issued.append(args[2]))
    use_query = False
    while time.monotonic() < deadline:
        issued.clear()
        _current.l1 = False
        started = time.monotonic()
        try:
            with Session(engine) as session:
                if use_query:
                    seq, token = session.exec(
                        select(Counter.seq, Counter.token).where(Counter.id == 1)
                    ).one()
                else:
                    row = session.get(Counter, 1)
                    assert row is not None
                    seq, token = row.seq, row.token
        except Exception as exc:  # the application must never see one: recorded, asserted
            errors.append(repr(exc))
            continue
        reads.append(Read(started, seq, token, bool(issued), _current.l1, where))
        use_query = not use_query
    engine.dispose()


def _reader_started(ready: Any) -> None:
    """A reader process's initializer: import what it needs, then wait for the others, so
    that every process starts racing when the run's clock starts (a spawned interpreter
    takes a second or two to start)."""
    import sqlmodel_cache.transport  # noqa: F401
    import tests.models  # noqa: F401

    ready.wait(timeout=READERS_START_TIMEOUT)


def _reader_process(
    database_url: str,
    redis_url: str,
    prefix: str,
    seconds: float,
    where: str = "reader",
    near_cache: bool | str = False,
    cluster: bool = False,
    large_entries: bool = False,
) -> tuple[list[Read], list[str], dict[str, int]]:
    """A reader in its own process, with its own engine and cache client (and near cache):
    its reads, its errors and its near-cache counters."""
    from sqlmodel_cache import SQLModelCache

    _configure(redis_url, prefix, None, near_cache, cluster, large_entries)
    reads: list[Read] = []
    errors: list[str] = []
    try:
        _read_loop(database_url, time.monotonic() + seconds, reads, errors, where)
        return reads, errors, _near_counts() if near_cache else {}
    finally:
        SQLModelCache.reset()


def _write_loop(database_url: str, deadline: float, report: Report, lock: threading.Lock) -> None:
    from tests.models import Counter

    engine = create_engine(database_url, pool_size=2)
    rng = random.Random()
    while time.monotonic() < deadline:
        token = uuid.uuid4().hex
        try:
            with Session(engine) as session:
                row = session.get(Counter, 1, with_for_update=True)
                assert row is not None
                row.seq += 1
                row.token = token
                seq = row.seq
                session.flush()
                if rng.random() < 0.2:
                    session.rollback()  # this token is never committed
                    continue
                session.commit()
                returned = time.monotonic()
        except Exception as exc:  # the application must never see one: recorded, asserted
            with lock:
                report.errors.append(repr(exc))
            continue
        with lock:
            report.commits[token] = (seq, returned)
        time.sleep(rng.uniform(0, 0.004))
    engine.dispose()


def run(
    database_url: str,
    redis_url: str | None,
    *,
    seconds: float = 3.0,
    writers: int = 2,
    reader_threads: int = 3,
    reader_processes: int = 2,
    during: Callable[[], None] | None = None,
    wrap: Callable[[Any], Any] | None = None,
    near_cache: bool | str = False,
    cluster: bool = False,
    large_entries: bool = False,
) -> Report:
    """Race writers and readers for ``seconds``. Fault injection: ``during`` runs a third of
    the way in; ``wrap`` wraps this process's transport (its writers and reader threads).
    ``redis_url`` ``None``: the cache is this process's ``MemoryTransport``, so
    ``reader_processes`` must be 0 (and the Redis-only options off). ``near_cache``: every
    process (this one and each reader process) has a near cache. ``cluster``:
    ``redis_url`` names a node of a Redis Cluster. ``large_entries``: every process reads
    entries as large ones (the script checks, a GET after it reads)."""
    if redis_url is None and (reader_processes or near_cache or cluster or large_entries):
        raise ValueError(
            "the memory transport is per process: reader threads only, and no Redis options"
        )
    large_entry = None
    if redis_url is not None:
        from sqlmodel_cache.transport._redis import transport as redis_transport

        large_entry = redis_transport.LARGE_ENTRY
    prefix = f"checker{uuid.uuid4().hex[:8]}"
    unsubscribe = _configure(redis_url, prefix, wrap, near_cache, cluster, large_entries)
    try:
        return _run(
            database_url,
            redis_url,
            prefix,
            seconds=seconds,
            writers=writers,
            reader_threads=reader_threads,
            reader_processes=reader_processes,
            during=during,
            near_cache=near_cache,
            cluster=cluster,
            large_entries=large_entries,
        )
    finally:
        unsubscribe()
        if large_entry is not None:
            redis_transport.LARGE_ENTRY = large_entry


def _run(
    database_url: str,
    redis_url: str | None,
    prefix: str,
    *,
    seconds: float,
    writers: int,
    reader_threads: int,
    reader_processes: int,
    during: Callable[[], None] | None,
    near_cache: bool | str,
    cluster: bool,
    large_entries: bool,
) -> Report:
    from tests.models import Counter

    engine = create_engine(database_url)
    Counter.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    with Session(engine) as session:
        existing = session.get(Counter, 1, execution_options={"cache": False})
        if existing is None:
            session.add(Counter(id=1))
        else:
            existing.seq, existing.token = 0, "initial"
        session.commit()
    engine.dispose()

    report = Report()
    lock = threading.Lock()
    with contextlib.ExitStack() as stack:
        remote = []
        if reader_processes:
            context = multiprocessing.get_context("spawn")
            ready = context.Barrier(reader_processes + 1)
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    reader_processes,
                    mp_context=context,
                    initializer=_reader_started,
                    initargs=(ready,),
                )
            )
            remote = [
                pool.submit(
                    _reader_process,
                    database_url,
                    redis_url,
                    prefix,
                    seconds,
                    f"reader{index}",
                    near_cache,
                    cluster,
                    large_entries,
                )
                for index in range(reader_processes)
            ]
            ready.wait(timeout=READERS_START_TIMEOUT)  # the clock starts when all processes race
        deadline = time.monotonic() + seconds
        local_reads: list[list[Read]] = [[] for _ in range(reader_threads)]
        threads = [
            threading.Thread(target=_write_loop, args=(database_url, deadline, report, lock))
            for _ in range(writers)
        ] + [
            threading.Thread(target=_read_loop, args=(database_url, deadline, reads, report.errors))
            for reads in local_reads
        ]
        for thread in threads:
            thread.start()
        if during is not None:
            time.sleep(seconds / 3)
            during()
        for thread in threads:
            thread.join()
        for reads in local_reads:
            report.reads.extend(reads)
        if near_cache:
            report.near["main"] = _near_counts()
        for index, future in enumerate(remote):
            reads, errors, counts = future.result()
            report.reads.extend(reads)
            report.errors.extend(errors)
            if near_cache:
                report.near[f"reader{index}"] = counts
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, help="postgresql+psycopg://... URL")
    cache = parser.add_mutually_exclusive_group(required=True)
    cache.add_argument("--redis", help="redis://... URL")
    cache.add_argument(
        "--memory",
        action="store_true",
        help="cache in this process's MemoryTransport (reader threads only, no processes)",
    )
    parser.add_argument("--cluster", action="store_true", help="--redis names a cluster node")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--near-cache",
        nargs="?",
        const="tracking",
        default=False,
        choices=["tracking", "keyspace"],
        help="every process reads through a near cache (an in-process L1 in front of Redis), "
        "invalidated by client tracking (the default) or keyspace notifications",
    )
    parser.add_argument(
        "--large-entries",
        action="store_true",
        help="read every entry as a large one: the script checks it, a GET after it reads it",
    )
    parser.add_argument(
        "--slow-fills",
        action="store_true",
        help="this process's fills wait up to 3 ms: commits often land before them, and the "
        "lease must refuse them",
    )
    args = parser.parse_args()
    report = run(
        args.postgres,
        args.redis,
        seconds=args.seconds,
        # The memory transport is per process: five reader threads, as many readers as the
        # three threads and two processes of a Redis run.
        reader_threads=5 if args.memory else 3,
        reader_processes=0 if args.memory else 2,
        near_cache=args.near_cache,
        cluster=args.cluster,
        large_entries=args.large_entries,
        wrap=SlowFills if args.slow_fills else None,
    )
    print(report.summary())
    return 0 if not report.stale() and not report.uncommitted() else 1


if __name__ == "__main__":
    raise SystemExit(main())
