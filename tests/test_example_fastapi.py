"""The FastAPI example (``examples/fastapi_app``), end to end through HTTP.

The app runs with its lifespan, behind ``httpx.ASGITransport``, against a real Redis and a
real PostgreSQL (and with its server-less defaults: SQLite and the in-process cache). Each
test drives either the sync (``def``) or the async (``async def``) endpoints and asserts on
what a client and the database see: responses, and the SQL statements the app's engines
send (a cache hit sends none).
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import create_engine, event, make_url, text

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.transport import MemoryTransport, RedisAsyncTransport, RedisSyncTransport
from tests import servers

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app" / "app.py"
MODULE_NAME = "sqlmodel_cache_example_fastapi_app"
#: The example's tables are called ``hero`` and ``team``, like the suite's own models, so
#: they live in a database of their own on the suite's PostgreSQL server.
DATABASE = "fastapi_example"


def _load_example() -> ModuleType:
    """Import ``app.py`` from the examples directory (it is not a package), once."""
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(MODULE_NAME, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # SQLModel resolves "Hero" and "Team" through it
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture(scope="module")
def example_database(postgres_server: servers.PostgresServer) -> tuple[str, str]:
    """Sync and async URLs of a database of the example's own on the suite's server."""
    admin = create_engine(postgres_server.sync_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        found = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE}
        ).first()
        if found is None:
            connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    sync_url, async_url = (
        make_url(url).set(database=DATABASE).render_as_string(hide_password=False)
        for url in (postgres_server.sync_url, postgres_server.async_url)
    )
    return sync_url, async_url


@dataclass(frozen=True)
class Setup:
    """One way to run the example, and which of its endpoints a test drives."""

    routes: str  # "/sync" or "/async"
    settings: Any  # example.Settings
    redis_url: str | None

    @property
    def other_routes(self) -> str:
        return "/async" if self.routes == "/sync" else "/sync"


REDIS_PG = [pytest.mark.redis, pytest.mark.postgres]
#: (endpoints driven, how the app runs). "redis": Redis + PostgreSQL with sync and async
#: endpoints in one app (RedisSyncTransport); "redis-async-only": the same without sync
#: endpoints (RedisAsyncTransport); "memory": the defaults, SQLite + MemoryTransport.
BOTH_KINDS = [
    pytest.param(("/sync", "redis"), id="sync-endpoints-redis-pg", marks=REDIS_PG),
    pytest.param(("/async", "redis"), id="async-endpoints-redis-pg", marks=REDIS_PG),
    pytest.param(("/sync", "memory"), id="sync-endpoints-memory-sqlite"),
    pytest.param(("/async", "memory"), id="async-endpoints-memory-sqlite"),
]
ASYNC_ONLY = [
    pytest.param(("/async", "redis-async-only"), id="async-only-app-redis-pg", marks=REDIS_PG)
]


def _drop_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    example.AppModel.metadata.drop_all(engine)
    engine.dispose()


def _setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    routes, kind = request.param
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if kind == "memory":
        database_url = f"sqlite:///{tmp_path / 'heroes.db'}"
        settings = example.Settings(database_url=database_url, cache_prefix=prefix)
        yield Setup(routes, settings, None)
        return
    sync_url, async_url = request.getfixturevalue("example_database")
    redis_server: servers.RedisServer = request.getfixturevalue("redis_server")
    settings = example.Settings(
        database_url=sync_url,
        async_database_url=async_url,
        redis_url=redis_server.url,
        cache_prefix=prefix,
        sync_endpoints=kind != "redis-async-only",
    )
    try:
        yield Setup(routes, settings, redis_server.url)
    finally:
        _drop_tables(sync_url)


@pytest.fixture(params=BOTH_KINDS + ASYNC_ONLY)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """Every way to run the example, with a key prefix of this test's own."""
    yield from _setup(request, tmp_path)


@pytest.fixture(params=BOTH_KINDS)
def mixed_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """The apps that serve sync and async endpoints side by side."""
    yield from _setup(request, tmp_path)


@pytest.fixture(params=ASYNC_ONLY)
def async_only_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """The async-only app (``SYNC_ENDPOINTS=0``) with Redis: RedisAsyncTransport."""
    yield from _setup(request, tmp_path)


@dataclass
class Api:
    """A running app, a client for it, and the SQL its engines have sent."""

    app: FastAPI
    client: httpx.AsyncClient
    routes: str
    statements: list[str] = field(default_factory=list)

    async def create_team(self, name: str = "Preventers") -> int:
        response = await self.client.post(
            f"{self.routes}/teams", json={"name": name, "headquarters": "Sharp Tower"}
        )
        assert response.status_code == 201, response.text
        team_id: int = response.json()["id"]
        return team_id

    async def create_hero(self, name: str, team_id: int | None = None, **fields: Any) -> int:
        body = {"name": name, "secret_name": f"{name}'s secret", "team_id": team_id, **fields}
        response = await self.client.post(f"{self.routes}/heroes", json=body)
        assert response.status_code == 201, response.text
        hero_id: int = response.json()["id"]
        return hero_id

    async def hero(self, hero_id: int, routes: str | None = None) -> dict[str, Any]:
        response = await self.client.get(f"{routes or self.routes}/heroes/{hero_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def hero_names(self, **params: Any) -> list[str]:
        response = await self.client.get(f"{self.routes}/heroes", params=params)
        assert response.status_code == 200, response.text
        return [hero["name"] for hero in response.json()]

    async def stats(self) -> dict[str, dict[str, int]]:
        response = await self.client.get("/cache/stats")
        assert response.status_code == 200, response.text
        body: dict[str, dict[str, int]] = response.json()
        return body


@asynccontextmanager
async def running(settings: Any, routes: str = "/async") -> AsyncIterator[Api]:
    """The example app for ``settings``, started by its lifespan and stopped after."""
    app: FastAPI = example.create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://example") as client,
    ):
        api = Api(app, client, routes)
        database = app.state.database

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            api.statements.append(statement)

        for engine in (database.engine, database.async_engine.sync_engine):
            if engine is not None:
                event.listen(engine, "before_cursor_execute", record)
        yield api


# -- reads by primary key ----------------------------------------------------------------


async def test_second_get_of_a_hero_sends_no_sql(setup: Setup) -> None:
    """The first GET of a hero reads the database; the second is answered from the cache."""
    async with running(setup.settings, setup.routes) as api:
        hero_id = await api.create_hero("Deadpond", age=30)
        first = await api.hero(hero_id)

        api.statements.clear()
        second = await api.hero(hero_id)

        assert api.statements == []
        assert (
            second
            == first
            == {
                "id": hero_id,
                "name": "Deadpond",
                "secret_name": "Deadpond's secret",
                "age": 30,
                "team_id": None,
            }
        )


async def test_update_is_seen_by_the_next_get(setup: Setup) -> None:
    """A PATCH retires the cached hero before it responds: the next GET reads the new row
    from the database, and the GET after that is a hit on the new row."""
    async with running(setup.settings, setup.routes) as api:
        hero_id = await api.create_hero("Deadpond")
        await api.hero(hero_id)
        await api.hero(hero_id)  # cached now

        response = await api.client.patch(
            f"{setup.routes}/heroes/{hero_id}", json={"name": "Rusty-Man", "age": 48}
        )
        assert response.status_code == 200, response.text

        api.statements.clear()
        assert (await api.hero(hero_id))["name"] == "Rusty-Man"
        assert len(api.statements) == 1  # a miss: the cached row was invalidated

        api.statements.clear()
        fresh = await api.hero(hero_id)
        assert (fresh["name"], fresh["age"]) == ("Rusty-Man", 48)
        assert api.statements == []


async def test_team_is_cached_and_checked_on_create(setup: Setup) -> None:
    """GET of a team is cached too; a hero for a team that does not exist is a 404."""
    async with running(setup.settings, setup.routes) as api:
        team_id = await api.create_team("Preventers")
        await api.client.get(f"{setup.routes}/teams/{team_id}")

        api.statements.clear()
        response = await api.client.get(f"{setup.routes}/teams/{team_id}")
        assert response.json() == {
            "id": team_id,
            "name": "Preventers",
            "headquarters": "Sharp Tower",
        }
        assert api.statements == []

        response = await api.client.post(
            f"{setup.routes}/heroes",
            json={"name": "Nobody", "secret_name": "-", "team_id": team_id + 1000},
        )
        assert response.status_code == 404
        assert response.json() == {"detail": "Team not found"}


# -- lists ---------------------------------------------------------------------------------


async def test_list_is_cached_and_a_create_retires_it(setup: Setup) -> None:
    """A filtered list is a cached select(): repeated, it sends no SQL; after a hero is
    created, the next list includes it."""
    async with running(setup.settings, setup.routes) as api:
        preventers, z_force = await api.create_team("Preventers"), await api.create_team("Z-Force")
        await api.create_hero("Deadpond", preventers)
        await api.create_hero("Rusty-Man", preventers)
        await api.create_hero("Spider-Boy", z_force)

        assert await api.hero_names(team_id=preventers) == ["Deadpond", "Rusty-Man"]
        api.statements.clear()
        assert await api.hero_names(team_id=preventers) == ["Deadpond", "Rusty-Man"]
        assert api.statements == []

        await api.create_hero("Tarantula", preventers)

        api.statements.clear()
        names = await api.hero_names(team_id=preventers)
        assert names == ["Deadpond", "Rusty-Man", "Tarantula"]
        assert len(api.statements) == 1
        assert await api.hero_names(team_id=z_force, limit=10) == ["Spider-Boy"]


async def test_delete_makes_the_hero_404_and_leaves_the_list(setup: Setup) -> None:
    """After DELETE, a GET of the (cached) hero is a 404 and lists no longer include it."""
    async with running(setup.settings, setup.routes) as api:
        keep, gone = await api.create_hero("Deadpond"), await api.create_hero("Rusty-Man")
        await api.hero(gone)
        await api.hero(gone)  # cached
        assert await api.hero_names() == ["Deadpond", "Rusty-Man"]  # cached list

        response = await api.client.delete(f"{setup.routes}/heroes/{gone}")
        assert response.status_code == 204

        response = await api.client.get(f"{setup.routes}/heroes/{gone}")
        assert response.status_code == 404
        assert await api.hero_names() == ["Deadpond"]
        assert (await api.hero(keep))["name"] == "Deadpond"
        response = await api.client.delete(f"{setup.routes}/heroes/{gone}")
        assert response.status_code == 404


# -- the stats endpoint --------------------------------------------------------------------


async def test_stats_endpoint_counts_hits(setup: Setup) -> None:
    """GET /cache/stats returns SQLModelCache.stats(): hits for gets and for lists."""
    async with running(setup.settings, setup.routes) as api:
        hero_id = await api.create_hero("Deadpond")
        for _ in range(3):
            await api.hero(hero_id)
        for _ in range(2):
            await api.hero_names()

        stats = await api.stats()

        assert stats == SQLModelCache.stats()
        assert stats["Hero"]["hits"] >= 2
        assert stats["Hero"]["query_hits"] == 1
        assert stats["Hero"]["query_misses"] == 1
        assert stats["*"]["invalidations"] >= 1


# -- entries in Redis, transports, sync and async endpoints together ------------------------


async def test_entries_are_stored_in_the_configured_cache(setup: Setup) -> None:
    """A hero read through the API is stored under the app's key prefix, in Redis when
    ``REDIS_URL`` is set and in the process otherwise."""
    async with running(setup.settings, setup.routes) as api:
        hero_id = await api.create_hero("Deadpond")
        await api.hero(hero_id)

        transport = SQLModelCache.get_config().transport
        row_key = f"{setup.settings.cache_prefix}:{{hero}}:r:[{hero_id}]"
        if setup.redis_url is None:
            assert isinstance(transport, MemoryTransport)
            assert transport.get(row_key) is not None
        else:
            expected = RedisSyncTransport if setup.settings.sync_endpoints else RedisAsyncTransport
            assert isinstance(transport, expected)
            inspector = redis.Redis.from_url(setup.redis_url)
            try:
                assert inspector.exists(row_key) == 1
            finally:
                inspector.close()


async def test_writes_through_one_kind_of_endpoint_are_seen_by_the_other(
    mixed_setup: Setup,
) -> None:
    """One cache serves the sync and the async endpoints: a hero cached by a GET on one
    side and changed through the other is never served stale."""
    setup = mixed_setup
    async with running(setup.settings, setup.routes) as api:
        hero_id = await api.create_hero("Deadpond")
        await api.hero(hero_id)
        await api.hero(hero_id, routes=setup.other_routes)

        api.statements.clear()
        assert (await api.hero(hero_id, routes=setup.other_routes))["name"] == "Deadpond"
        assert api.statements == []  # filled by one kind of endpoint, hit by the other

        response = await api.client.patch(
            f"{setup.other_routes}/heroes/{hero_id}", json={"name": "Rusty-Man"}
        )
        assert response.status_code == 200, response.text
        assert (await api.hero(hero_id))["name"] == "Rusty-Man"


async def test_async_only_app_mounts_no_sync_endpoints(async_only_setup: Setup) -> None:
    """With ``SYNC_ENDPOINTS=0`` the app uses RedisAsyncTransport and has no sync routes and
    no sync engine, so no sync session can meet the async transport."""
    async with running(async_only_setup.settings) as api:
        assert isinstance(SQLModelCache.get_config().transport, RedisAsyncTransport)
        assert api.app.state.database.engine is None
        response = await api.client.get("/sync/heroes")
        assert response.status_code == 404


# -- lifecycle and settings --------------------------------------------------------------


async def test_shutdown_resets_the_cache(setup: Setup) -> None:
    """The lifespan configures the cache on startup and resets it on shutdown."""
    assert not SQLModelCache.is_configured()
    async with running(setup.settings, setup.routes):
        assert SQLModelCache.is_configured()
        assert SQLModelCache.get_config().key_prefix == setup.settings.cache_prefix
    assert not SQLModelCache.is_configured()


async def test_defaults_need_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no environment variables the app uses ./heroes.db and the in-process cache."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "ASYNC_DATABASE_URL", "REDIS_URL", "CACHE_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    async with running(example.Settings.from_env()) as api:
        assert isinstance(SQLModelCache.get_config().transport, MemoryTransport)
        hero_id = await api.create_hero("Deadpond")
        assert (await api.hero(hero_id, routes="/sync"))["name"] == "Deadpond"
        api.statements.clear()
        assert (await api.hero(hero_id))["name"] == "Deadpond"
        assert api.statements == []
    assert (tmp_path / "heroes.db").exists()


def test_settings_are_read_from_the_environment() -> None:
    """Every setting has an environment variable; the async URL is derived when not set."""
    settings = example.Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:pw@db/heroes",
            "REDIS_URL": "redis://cache:6379/1",
            "CACHE_PREFIX": "heroes-prod",
            "SYNC_ENDPOINTS": "0",
        }
    )
    assert settings == example.Settings(
        database_url="postgresql://app:pw@db/heroes",
        redis_url="redis://cache:6379/1",
        cache_prefix="heroes-prod",
        sync_endpoints=False,
    )
    assert settings.async_url == "postgresql+asyncpg://app:pw@db/heroes"
    assert example.Settings.from_env({}) == example.Settings()
    assert example.Settings().async_url == "sqlite+aiosqlite:///./heroes.db"
    psycopg = "postgresql+psycopg://db/heroes"
    assert example.Settings(database_url=psycopg).async_url == psycopg
    explicit = example.Settings(database_url=psycopg, async_database_url="postgresql+asyncpg://x")
    assert explicit.async_url == "postgresql+asyncpg://x"
