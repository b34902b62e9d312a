"""The stale-read checker (SPEC C4): writers and readers race on one row through the cache.

Writers bump ``Counter.seq`` and set a fresh ``token`` in a transaction; some transactions
roll back, so their tokens are never committed. Every commit is recorded with the
monotonic time at which ``commit()`` returned. Readers record, for every read through the
cache (``session.get`` and a ``select``), the time the read started and what it returned.

A read is **stale** if it returned a ``seq`` lower than one whose commit had returned
before the read started, and **uncommitted** if it returned a token no committed
transaction wrote. ``time.monotonic()`` is one clock for every process on a machine, so
readers may run in other processes.

Used by ``tests/test_consistency.py`` (a short run) and runnable on its own for a long
one: ``python -m tests.checker --seconds 60 --postgres URL --redis URL``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine
from sqlmodel import Session, select

#: The checker's circuit breaker probes a failed cache after this many seconds (default 5),
#: so that a short run sees the cache come back.
BREAKER_RESET = 1.0

#: (start time, seq, token) of one read, and whether it issued SQL.
Read = tuple[float, int, str, bool]


@dataclass
class Report:
    """What a run saw."""

    commits: dict[str, tuple[int, float]] = field(default_factory=dict)  # token -> seq, time
    reads: list[Read] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def stale(self, since: float = 0.0) -> list[Read]:
        """Reads (started after ``since``) older than a commit that had returned before they
        started."""
        timeline = sorted((at, seq) for seq, at in self.commits.values())
        result = []
        for read in self.reads:
            started, seq = read[0], read[1]
            if started < since:
                continue
            newest = max((s for at, s in timeline if at < started), default=0)
            if seq < newest:
                result.append(read)
        return result

    def uncommitted(self) -> list[Read]:
        """Reads of a token no transaction committed (or of a seq not matching it)."""
        committed = {**{"initial": (0, 0.0)}, **self.commits}
        return [r for r in self.reads if r[2] not in committed or committed[r[2]][0] != r[1]]

    def cached_share(self) -> float:
        """The share of reads answered without SQL."""
        return sum(1 for r in self.reads if not r[3]) / max(1, len(self.reads))


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


def _configure(redis_url: str, prefix: str, wrap: Callable[[Any], Any] | None = None) -> None:
    from sqlmodel_cache import SQLModelCache
    from sqlmodel_cache.transport import RedisSyncTransport

    transport: Any = RedisSyncTransport.from_url(redis_url)
    SQLModelCache.configure(
        transport if wrap is None else wrap(transport),
        key_prefix=prefix,
        breaker_reset=BREAKER_RESET,
    )


def _read_loop(database_url: str, deadline: float, reads: list[Read], errors: list[str]) -> None:
    from sqlalchemy import event

    from tests.models import Counter

    engine = create_engine(database_url, pool_size=2)
    issued: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: issued.append(args[2]))
    use_query = False
    while time.monotonic() < deadline:
        issued.clear()
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
        reads.append((started, seq, token, bool(issued)))
        use_query = not use_query
    engine.dispose()


def _reader_process(
    database_url: str, redis_url: str, prefix: str, seconds: float
) -> tuple[list[Read], list[str]]:
    """A reader in its own process, with its own engine and cache client."""
    _configure(redis_url, prefix)
    reads: list[Read] = []
    errors: list[str] = []
    _read_loop(database_url, time.monotonic() + seconds, reads, errors)
    return reads, errors


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
    redis_url: str,
    *,
    seconds: float = 3.0,
    writers: int = 2,
    reader_threads: int = 3,
    reader_processes: int = 2,
    during: Callable[[], None] | None = None,
    wrap: Callable[[Any], Any] | None = None,
) -> Report:
    """Race writers and readers for ``seconds``. Fault injection: ``during`` runs a third of
    the way in; ``wrap`` wraps this process's transport (its writers and reader threads)."""
    from tests.models import Counter

    prefix = f"checker{uuid.uuid4().hex[:8]}"
    _configure(redis_url, prefix, wrap)
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
    start = time.monotonic()
    deadline = start + seconds
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(reader_processes, mp_context=context) as pool:
        remote = [
            pool.submit(_reader_process, database_url, redis_url, prefix, seconds)
            for _ in range(reader_processes)
        ]
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
        for future in remote:
            reads, errors = future.result()
            report.reads.extend(reads)
            report.errors.extend(errors)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, help="postgresql+psycopg://... URL")
    parser.add_argument("--redis", required=True, help="redis://... URL")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    report = run(args.postgres, args.redis, seconds=args.seconds)
    print(
        f"commits={len(report.commits)} reads={len(report.reads)} "
        f"stale={len(report.stale())} uncommitted={len(report.uncommitted())} "
        f"served_by_cache={report.cached_share():.1%}"
    )
    return 0 if not report.stale() and not report.uncommitted() else 1


if __name__ == "__main__":
    raise SystemExit(main())
