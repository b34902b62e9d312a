"""SPEC C3: N concurrent misses on one key cost one database query; the others wait for
the lease holder's entry (threads and asyncio tasks, memory and Redis)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from sqlalchemy import create_engine, event
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import await_only
from sqlmodel import Session, select
from sqlmodel.ext.asyncio.session import AsyncSession

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.transport import MemoryTransport, RedisAsyncTransport, RedisSyncTransport
from tests import servers
from tests.models import METADATAS, Hero

READERS = 8
SLOW = 0.2  # seconds the hero SELECT takes


def _seed(url: str) -> None:
    engine = create_engine(url)
    for metadata in METADATAS:
        metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Hero(id=1, name="Spider", power=10))
        session.commit()
    engine.dispose()


def _hero_selects(statements: list[str]) -> int:
    return sum(1 for s in statements if s.startswith("SELECT hero"))


def _slow_engine(url: str, **options: Any) -> tuple[Any, list[str]]:
    """An engine whose hero SELECTs take SLOW seconds, and the list of statements it ran."""
    engine = create_engine(url, **options)
    statements: list[str] = []

    def slow(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)
        if statement.startswith("SELECT hero"):
            time.sleep(SLOW)

    event.listen(engine, "before_cursor_execute", slow)
    return engine, statements


@pytest.fixture(params=["memory", "redis"])
def sync_transport(request: pytest.FixtureRequest) -> Any:
    """A sync transport: in-process, or Redis."""
    if request.param == "memory":
        return MemoryTransport()
    server: servers.RedisServer = request.getfixturevalue("redis_server")
    return RedisSyncTransport(redis.Redis.from_url(server.url, socket_timeout=5))


@pytest.mark.parametrize("kind", ["get", "select"])
def test_concurrent_misses_in_threads_cost_one_query(
    tmp_path: Path, sync_transport: Any, kind: str
) -> None:
    """Eight threads miss the same key at once: one SELECT, everyone gets the row."""
    url = f"sqlite:///{tmp_path / 'stampede.db'}"
    _seed(url)
    engine, statements = _slow_engine(url, pool_size=READERS)
    SQLModelCache.configure(sync_transport, key_prefix=f"stampede-{kind}", lease_wait=2.0)
    barrier = threading.Barrier(READERS)
    names: list[str] = []

    def read() -> None:
        barrier.wait()
        with Session(engine) as session:
            if kind == "get":
                names.append(session.get(Hero, 1).name)  # type: ignore[union-attr]
            else:
                names.append(session.exec(select(Hero.name).where(Hero.id == 1)).one())

    threads = [threading.Thread(target=read) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert names == ["Spider"] * READERS
    assert _hero_selects(statements) == 1
    assert SQLModelCache.stats()["Hero"]["lease_waits"] == READERS - 1
    engine.dispose()


def test_waiting_is_bounded(tmp_path: Path) -> None:
    """If the lease holder takes longer than lease_wait, the others read the database
    themselves (and do not fill): slower, never stuck."""
    url = f"sqlite:///{tmp_path / 'bounded.db'}"
    _seed(url)
    engine, statements = _slow_engine(url, pool_size=READERS)
    SQLModelCache.configure(MemoryTransport(), lease_wait=0.02)
    barrier = threading.Barrier(3)

    def read() -> None:
        barrier.wait()
        with Session(engine) as session:
            assert session.get(Hero, 1) is not None

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _hero_selects(statements) == 3
    assert SQLModelCache.stats()["Hero"]["lease_wait_timeouts"] == 2
    engine.dispose()


@pytest.mark.parametrize("cache", ["memory", "redis"])
def test_concurrent_misses_in_asyncio_tasks_cost_one_query(
    tmp_path: Path, request: pytest.FixtureRequest, cache: str
) -> None:
    """Eight asyncio tasks miss the same key at once: one SELECT; the waiting tasks sleep
    without blocking the event loop."""
    _seed(f"sqlite:///{tmp_path / 'tasks.db'}")

    async def scenario() -> tuple[list[str], int]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}")
        statements: list[str] = []

        def slow(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)
            if statement.startswith("SELECT hero"):
                await_only(asyncio.sleep(SLOW))  # yields to the other tasks

        event.listen(engine.sync_engine, "before_cursor_execute", slow)
        client = None
        if cache == "memory":
            transport: Any = MemoryTransport()
        else:
            server: servers.RedisServer = request.getfixturevalue("redis_server")
            client = redis.asyncio.Redis.from_url(server.url, socket_timeout=5)
            transport = RedisAsyncTransport(client)
        SQLModelCache.configure(transport, key_prefix="stampede-async", lease_wait=2.0)

        async def read() -> str:
            async with AsyncSession(engine) as session:
                hero = await session.get(Hero, 1)
                assert hero is not None
                return hero.name

        names = await asyncio.gather(*(read() for _ in range(READERS)))
        if client is not None:
            await client.aclose()
        await engine.dispose()
        return list(names), _hero_selects(statements)

    names, selects = asyncio.run(scenario())
    assert names == ["Spider"] * READERS
    assert selects == 1


def _process_reader(url: str, redis_url: str, barrier: Any) -> int:
    """One reader process: waits for the others, reads, returns how many SELECTs it issued."""
    engine, statements = _slow_engine(url)
    transport = RedisSyncTransport(redis.Redis.from_url(redis_url, socket_timeout=5))
    SQLModelCache.configure(transport, key_prefix="stampede-processes", lease_wait=2.0)
    barrier.wait()
    with Session(engine) as session:
        assert session.get(Hero, 1) is not None
    engine.dispose()
    return _hero_selects(statements)


def test_concurrent_misses_in_processes_cost_one_query(
    tmp_path: Path, redis_server: servers.RedisServer
) -> None:
    """Three processes miss the same key at once: only the lease holder queries."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    url = f"sqlite:///{tmp_path / 'processes.db'}"
    _seed(url)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(3)
        with ProcessPoolExecutor(3, mp_context=context) as pool:
            futures = [
                pool.submit(_process_reader, url, redis_server.url, barrier) for _ in range(3)
            ]
            selects = [future.result() for future in futures]
    assert sorted(selects) == [0, 0, 1]
