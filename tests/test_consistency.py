"""SPEC C4: the proof is a test. Writers and readers (threads and processes) race through
the cache on PostgreSQL + Redis; no read may be stale or uncommitted."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlmodel_cache._pending import PendingInvalidations
from tests import checker
from tests.conftest import _truncate_postgres


def test_no_stale_and_no_uncommitted_reads_under_concurrency(
    postgres_server: Any, redis_server: Any
) -> None:
    """Zero stale reads, zero never-committed reads, and the cache served most reads."""
    _truncate_postgres(postgres_server.sync_url)
    report = checker.run(postgres_server.sync_url, redis_server.url, seconds=3.0)
    summary = (
        f"commits={len(report.commits)} reads={len(report.reads)} "
        f"served_by_cache={report.cached_share():.1%}"
    )
    assert len(report.commits) > 20, summary
    assert len(report.reads) > 200, summary
    assert report.stale() == [], summary
    assert report.uncommitted() == [], summary
    assert report.cached_share() > 0.5, summary


def test_no_stale_reads_once_redis_is_back_after_a_restart(
    postgres_server: Any, redis_server: Any
) -> None:
    """Redis is stopped and restarted (empty) mid-run: no application error, never an
    uncommitted read, and no stale read once it is back."""
    _truncate_postgres(postgres_server.sync_url)
    window: dict[str, float] = {}

    def restart() -> None:
        window["start"] = time.monotonic()
        redis_server.restart()
        window["end"] = time.monotonic()

    report = checker.run(postgres_server.sync_url, redis_server.url, seconds=4.0, during=restart)
    summary = f"commits={len(report.commits)} reads={len(report.reads)} {report.errors[:3]}"
    assert report.errors == [], summary
    assert report.uncommitted() == [], summary
    # recovered: the server is back and the next paced delivery attempt came due
    recovered = window["end"] + PendingInvalidations.MAX_BACKOFF + 0.5
    assert report.stale(since=recovered) == [], summary
    late = [read for read in report.reads if read[0] > window["end"] + checker.BREAKER_RESET + 0.5]
    assert sum(1 for read in late if not read[3]) > len(late) / 2, summary  # cached again


def test_no_stale_reads_once_a_flaky_cache_recovers(
    postgres_server: Any, redis_server: Any
) -> None:
    """For a second, this process's cache calls are dropped, lose their replies or are
    delayed (writers' invalidations included): no application error, never an uncommitted
    read, and no stale read once the faults stop (failed invalidations were kept pending
    and delivered)."""
    _truncate_postgres(postgres_server.sync_url)
    faulty = threading.Event()
    window: dict[str, float] = {}

    def flake_for_a_second() -> None:
        faulty.set()
        time.sleep(1.0)
        faulty.clear()
        window["end"] = time.monotonic()

    report = checker.run(
        postgres_server.sync_url,
        redis_server.url,
        seconds=4.0,
        during=flake_for_a_second,
        wrap=lambda transport: checker.Unreliable(transport, faulty),
    )
    summary = f"commits={len(report.commits)} reads={len(report.reads)} {report.errors[:3]}"
    assert report.errors == [], summary
    assert report.uncommitted() == [], summary
    # recovered: the faults stopped and the next paced delivery attempt came due
    recovered = window["end"] + PendingInvalidations.MAX_BACKOFF + 0.5
    assert report.stale(since=recovered) == [], summary
