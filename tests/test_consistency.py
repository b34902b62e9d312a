"""SPEC C4: the proof is a test. Writers and readers (threads and processes) race through
the cache on PostgreSQL + Redis; no read may be stale or uncommitted."""

from __future__ import annotations

from typing import Any

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
