"""SPEC F3: a failed invalidation is never silent: kept, retried, and until delivered this
process does not serve the tables it covers from the cache."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from sqlmodel_cache import InvalidationError, SQLModelCache
from sqlmodel_cache._pending import PendingInvalidations
from tests.helpers import Clock, Env, Flaky
from tests.models import Hero, Team


def _name(session: Session) -> str:
    return session.get(Hero, 1).name  # type: ignore[union-attr]


def _names(session: Session) -> list[str]:
    return list(session.exec(select(Hero.name)))


def _setup(env: Env, **options: object) -> Flaky:
    env.run(lambda s: (s.add_all([Hero(id=1, name="Spider"), Team(id=1, name="A")]), s.commit()))
    flaky = Flaky(env.transport)
    SQLModelCache.configure(flaky, key_prefix=env.prefix, **options)  # type: ignore[arg-type]
    env.run(_name)
    env.run(_names)
    env.run(lambda s: s.get(Team, 1))
    return flaky


def test_failed_invalidation_is_pending_and_retried_by_reads(mem_env: Env) -> None:
    """While the invalidation is undelivered, reads of the table go to the database (fresh
    values, never the stale entry); once the cache answers again a read delivers it, and
    the cache serves the new values."""
    flaky = _setup(mem_env)
    [row_key] = [k for k in mem_env.row_keys() if "{hero}" in k]

    def rename(session: Session) -> None:
        session.get(Hero, 1).name = "Venom"  # type: ignore[union-attr]
        flaky.failing = True
        session.commit()  # does not raise

    mem_env.run(rename)
    assert mem_env.raw_get(row_key) is not None  # the stale entry is still in the store...
    mem_env.reset_sql()
    assert mem_env.run(_name) == "Venom"  # ...but this process does not use it
    assert mem_env.run(_names) == ["Venom"]
    assert len(mem_env.selects()) == 2
    stats = SQLModelCache.stats()
    assert stats["Hero"]["bypass:pending_invalidation"] == 1
    assert stats["Hero"]["query_bypass:pending_invalidation"] == 1

    flaky.failing = False
    time.sleep(PendingInvalidations.FIRST_BACKOFF * 2)  # retries are paced
    mem_env.run(_name)  # the retry delivers, then this read misses and fills
    assert mem_env.raw_get(row_key) is None or mem_env.raw_get(row_key)[:1] != b"["  # type: ignore[index]
    mem_env.run(_names)
    mem_env.reset_sql()
    assert (mem_env.run(_name), mem_env.run(_names)) == ("Venom", ["Venom"])
    assert mem_env.statements == []


def test_the_next_commit_delivers_pending_keys_in_its_own_call(mem_env: Env) -> None:
    """A later commit carries the pending keys along: still one transport call."""
    flaky = _setup(mem_env)

    def rename(session: Session) -> None:
        session.get(Hero, 1).name = "Venom"  # type: ignore[union-attr]
        flaky.failing = True
        session.commit()

    mem_env.run(rename)
    flaky.failing = False

    def other(session: Session) -> None:
        session.get(Team, 1).name = "B"  # type: ignore[union-attr]
        flaky.calls = 0
        session.commit()
        assert flaky.calls == 1

    mem_env.run(other)
    assert [k for k in mem_env.row_keys() if "{hero}" in k] == []
    mem_env.run(_name)
    mem_env.reset_sql()
    assert mem_env.run(_name) == "Venom"
    assert mem_env.statements == []


def test_raise_on_invalidation_error(mem_env: Env) -> None:
    """With raise_on_invalidation_error=True, commit() raises after the database commit
    (the data is committed; the invalidation is still pending and retried)."""
    flaky = _setup(mem_env, raise_on_invalidation_error=True)

    def rename(session: Session) -> None:
        session.get(Hero, 1).name = "Venom"  # type: ignore[union-attr]
        flaky.failing = True
        with pytest.raises(InvalidationError, match="commit succeeded"):
            session.commit()

    mem_env.run(rename)
    flaky.failing = False
    assert mem_env.run(_name) == "Venom"


def test_pending_invalidations_expire_after_the_longest_ttl() -> None:
    """Once every entry it would have removed has expired, a pending invalidation is dropped
    and stops blocking reads."""
    clock = Clock()
    pending = PendingInvalidations(clock=clock)
    pending.add({"r"}, {"t"}, {"hero"}, ttl=300)
    assert pending.blocks(["hero", "team"])
    assert not pending.blocks(["team"])
    clock.now += 299
    items, rows, tags = pending.take()
    assert (len(items), rows, tags) == (1, {"r"}, {"t"})
    clock.now += 2
    items, rows, tags = pending.take()
    assert (items, rows, tags) == ([], set(), set())
    assert not pending.blocks(["hero"])


def test_retries_are_paced() -> None:
    """After a failed delivery, reads retry with a growing backoff, not on every read."""
    clock = Clock()
    pending = PendingInvalidations(clock=clock)
    pending.add({"r"}, set(), {"hero"}, ttl=300)
    assert pending.retry_due()
    pending.failed()
    assert not pending.retry_due()
    clock.now += PendingInvalidations.FIRST_BACKOFF
    assert pending.retry_due()
    pending.failed()
    clock.now += PendingInvalidations.FIRST_BACKOFF
    assert not pending.retry_due()  # the backoff doubled
    items, _, _ = pending.take()
    pending.add({"s"}, set(), {"team"}, ttl=300)  # added while the delivery was under way
    pending.delivered(items)
    assert pending.blocks(["team"])  # not lost
    pending.delivered(pending.take()[0])
    assert not pending
    assert not pending.blocks(["hero"])


def test_every_pending_invalidation_is_delivered_not_only_the_newest(mem_env: Env) -> None:
    """Two commits whose invalidations failed, to two tables: when the cache answers again,
    one delivery carries the keys of both (rows and tags), so no row and no query is
    served stale afterwards."""
    flaky = _setup(mem_env)  # hero 1, the hero names query and team 1 are cached

    def rename(model: type[Hero] | type[Team], name: str) -> None:
        def body(session: Session) -> None:
            session.get(model, 1).name = name  # type: ignore[union-attr]
            flaky.failing = True
            session.commit()  # does not raise: kept pending
            flaky.failing = False

        mem_env.run(body)

    rename(Hero, "Venom")
    rename(Team, "B")
    time.sleep(PendingInvalidations.FIRST_BACKOFF * 2 * 2)  # the backoff doubled once
    mem_env.run(lambda s: s.get(Team, 1))  # the retry delivers both
    assert (mem_env.run(_name), mem_env.run(_names)) == ("Venom", ["Venom"])
    assert mem_env.run(lambda s: s.get(Team, 1).name) == "B"  # type: ignore[union-attr]
    assert "bypass:pending_invalidation" not in SQLModelCache.stats()["Hero"]  # delivered


def test_the_backoff_doubles_up_to_its_cap_and_starts_over_after_a_delivery() -> None:
    """Retries after failed deliveries wait 0.05, 0.1, 0.2 ... seconds, at most
    ``MAX_BACKOFF``; once a delivery succeeds, the next outage starts at 0.05 again."""
    clock = Clock()
    pending = PendingInvalidations(clock=clock)

    def next_retry_after(seconds: float) -> None:
        start = clock.now
        clock.now = start + seconds - 1e-6
        assert not pending.retry_due()
        clock.now = start + seconds + 1e-6
        assert pending.retry_due()

    pending.add({"r"}, set(), {"hero"}, ttl=300)
    for seconds in (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        pending.failed()
        next_retry_after(seconds)
    pending.delivered(pending.take()[0])
    pending.add({"s"}, set(), {"hero"}, ttl=300)
    pending.failed()
    next_retry_after(PendingInvalidations.FIRST_BACKOFF)


def test_a_failed_invalidation_of_tags_only_is_kept_pending(mem_env: Env) -> None:
    """A bulk UPDATE invalidates tags only (no row key): when that fails it is kept pending
    like any other, so the rows it changed are never served stale."""
    flaky = _setup(mem_env)

    def bulk_rename(session: Session) -> None:
        session.execute(update(Hero).values(name="Bulk"))
        flaky.failing = True
        session.commit()  # does not raise: kept pending
        flaky.failing = False

    mem_env.run(bulk_rename)
    assert (mem_env.run(_name), mem_env.run(_names)) == ("Bulk", ["Bulk"])


def test_while_the_breaker_is_open_commits_defer_their_invalidation(mem_env: Env) -> None:
    """Once the cache failed enough to open the breaker, a commit before the next paced
    retry does not call the cache (each call would cost a timeout): its keys join the
    pending ones, and with ``raise_on_invalidation_error`` it says so."""
    flaky = _setup(mem_env, breaker_threshold=1, raise_on_invalidation_error=True)

    def rename(model: type[Hero] | type[Team], name: str) -> None:
        def body(session: Session) -> None:
            session.get(model, 1).name = name  # type: ignore[union-attr]
            session.commit()

        mem_env.run(body)

    flaky.failing = True
    with pytest.raises(InvalidationError, match="injected: cache unreachable"):
        rename(Hero, "Venom")  # fails and opens the breaker
    flaky.calls = 0
    message = (
        "the commit succeeded but its cache invalidation failed (InvalidationError('the cache "
        "is failing: delivery deferred to the next retry')); it will be retried, and this "
        "process reads the affected tables from the database meanwhile"
    )
    with pytest.raises(InvalidationError, match=re.escape(message)):
        rename(Team, "B")
    assert flaky.calls == 0
    assert SQLModelCache.stats()["*"]["invalidation_errors"] == 2
