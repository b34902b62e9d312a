"""A FastAPI app whose sync and async endpoints read through sqlmodel-cache.

Run it with ``uvicorn app:app`` from this directory (see README.md). Settings come from the
environment; with none set it uses a SQLite file and the in-process cache, so it runs
without any server.

The interesting parts are :func:`lifespan` (configure the cache, and reset it on shutdown)
and :func:`make_transport` (which transport can serve which endpoints). The endpoints are
ordinary SQLModel code: caching and invalidation happen inside ``session.get()``,
``session.exec(select(...))`` and ``session.commit()``.
"""

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import registry
from sqlmodel import Field, Relationship, Session, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from sqlmodel_cache import CacheConfig, SQLModelCache
from sqlmodel_cache.transport import MemoryTransport, RedisAsyncTransport, RedisSyncTransport

# -- settings -----------------------------------------------------------------------------

#: Sync drivers and the async driver that reaches the same database.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


def async_url_for(database_url: str) -> str:
    """The URL of the same database for the async engine (psycopg 3 serves both kinds)."""
    url = make_url(database_url)
    driver = _ASYNC_DRIVERS.get(url.drivername)
    return database_url if driver is None else url.set(drivername=driver).render_as_string(False)


def _flag(value: str) -> bool:
    return value.strip().lower() not in {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """What the app needs to know about its surroundings."""

    #: The database, as a sync SQLAlchemy URL (``DATABASE_URL``).
    database_url: str = "sqlite:///./heroes.db"
    #: The same database for the async engine (``ASYNC_DATABASE_URL``); derived when None.
    async_database_url: str | None = None
    #: Redis for the cache (``REDIS_URL``); None keeps the cache in-process.
    redis_url: str | None = None
    #: Starts every cache key (``CACHE_PREFIX``): apps sharing a Redis need distinct ones.
    cache_prefix: str = "heroes"
    #: Serve the sync (``def``) endpoints (``SYNC_ENDPOINTS``, default on); see make_transport.
    sync_endpoints: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        return cls(
            database_url=environ.get("DATABASE_URL", cls.database_url),
            async_database_url=environ.get("ASYNC_DATABASE_URL") or None,
            redis_url=environ.get("REDIS_URL") or None,
            cache_prefix=environ.get("CACHE_PREFIX", cls.cache_prefix),
            sync_endpoints=_flag(environ.get("SYNC_ENDPOINTS") or "1"),
        )

    @property
    def async_url(self) -> str:
        return self.async_database_url or async_url_for(self.database_url)


# -- models -------------------------------------------------------------------------------


class AppModel(SQLModel, registry=registry()):
    """Base of this app's models: its own registry and ``AppModel.metadata``, so the app
    creates only its own tables and can share a process with other SQLModel models."""


class TeamBase(AppModel):
    name: str = Field(index=True)
    headquarters: str


class Team(TeamBase, table=True):
    __cache_config__ = CacheConfig(ttl=3600)  # teams rarely change: keep them an hour

    id: int | None = Field(default=None, primary_key=True)
    heroes: list["Hero"] = Relationship(back_populates="team")


class TeamCreate(TeamBase):
    pass


class TeamPublic(TeamBase):
    id: int


class HeroBase(AppModel):
    name: str = Field(index=True)
    secret_name: str
    age: int | None = None
    team_id: int | None = Field(default=None, foreign_key="team.id")


class Hero(HeroBase, table=True):
    __cache_config__ = CacheConfig(ttl=600)

    id: int | None = Field(default=None, primary_key=True)
    team: Team | None = Relationship(back_populates="heroes")


class HeroCreate(HeroBase):
    pass


class HeroPublic(HeroBase):
    id: int


class HeroUpdate(AppModel):
    name: str | None = None
    secret_name: str | None = None
    age: int | None = None
    team_id: int | None = None


# -- cache and database lifecycle --------------------------------------------------------

Transport = MemoryTransport | RedisSyncTransport | RedisAsyncTransport


def make_transport(settings: Settings) -> Transport:
    """The one cache transport of this process.

    The cache has one configuration per process, so one transport must serve every session
    the app opens. A sync ``Session`` (the ``def`` endpoints) cannot drive the async
    transport: its reads would skip the cache and its commits could not invalidate it. So:

    - no Redis: ``MemoryTransport``, which serves sync and async sessions alike;
    - Redis and sync endpoints: ``RedisSyncTransport``, which also serves ``AsyncSession``
      (each cache call then blocks the event loop for one short round trip);
    - Redis and async endpoints only: ``RedisAsyncTransport``, which never blocks the loop.
    """
    if settings.redis_url is None:
        return MemoryTransport()
    if settings.sync_endpoints:
        return RedisSyncTransport.from_url(settings.redis_url)
    return RedisAsyncTransport.from_url(settings.redis_url)


@dataclass(frozen=True)
class Database:
    """The engines the endpoints open sessions on (``engine`` only with sync endpoints)."""

    engine: Engine | None
    async_engine: AsyncEngine


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    transport = make_transport(settings)
    # Before the first request: configure() installs the listeners every session uses.
    SQLModelCache.configure(transport, key_prefix=settings.cache_prefix)
    async_engine = create_async_engine(settings.async_url)
    engine = create_engine(settings.database_url) if settings.sync_endpoints else None
    try:
        # NOTE: create_all() keeps the example self-contained; use migrations in a real app.
        async with async_engine.begin() as connection:
            await connection.run_sync(AppModel.metadata.create_all)
        app.state.database = Database(engine, async_engine)
        yield
    finally:
        # After the last request: no listener may call a transport whose client is closed.
        SQLModelCache.reset()
        if isinstance(transport, RedisAsyncTransport):
            await transport.client.aclose()
        elif isinstance(transport, RedisSyncTransport):
            transport.client.close()
        await async_engine.dispose()
        if engine is not None:
            engine.dispose()


# -- sessions -----------------------------------------------------------------------------


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_session(request: Request) -> Iterator[Session]:
    engine = _database(request).engine
    if engine is None:  # not reached: the sync routes are only mounted with a sync engine
        raise RuntimeError("this app serves no sync endpoints")
    with Session(engine) as session:
        yield session


async def get_async_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(_database(request).async_engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(get_async_session)]
Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=100)]


def heroes_query(team_id: int | None, offset: int, limit: int) -> SelectOfScalar[Hero]:
    """The list query: cached as a whole, retired by any commit that writes ``hero``."""
    statement = select(Hero).order_by(col(Hero.id)).offset(offset).limit(limit)
    return statement if team_id is None else statement.where(Hero.team_id == team_id)


# -- sync endpoints: plain ``def``, run by FastAPI in its thread pool ---------------------

sync_router = APIRouter(prefix="/sync", tags=["sync"])


@sync_router.post("/teams", status_code=201, response_model=TeamPublic)
def create_team(body: TeamCreate, session: SessionDep) -> Team:
    team = Team.model_validate(body)
    session.add(team)
    session.commit()
    session.refresh(team)
    return team


@sync_router.get("/teams/{team_id}", response_model=TeamPublic)
def read_team(team_id: int, session: SessionDep) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise HTTPException(status_code=404, detail="Team not found")
    return team


@sync_router.post("/heroes", status_code=201, response_model=HeroPublic)
def create_hero(body: HeroCreate, session: SessionDep) -> Hero:
    if body.team_id is not None and session.get(Team, body.team_id) is None:
        raise HTTPException(status_code=404, detail="Team not found")
    hero = Hero.model_validate(body)
    session.add(hero)
    session.commit()  # invalidates every cached hero list before it returns
    session.refresh(hero)
    return hero


@sync_router.get("/heroes", response_model=list[HeroPublic])
def list_heroes(
    session: SessionDep, team_id: int | None = None, offset: Offset = 0, limit: Limit = 100
) -> list[Hero]:
    return list(session.exec(heroes_query(team_id, offset, limit)).all())


@sync_router.get("/heroes/{hero_id}", response_model=HeroPublic)
def read_hero(hero_id: int, session: SessionDep) -> Hero:
    hero = session.get(Hero, hero_id)  # a hit sends no SQL
    if hero is None:
        raise HTTPException(status_code=404, detail="Hero not found")
    return hero


@sync_router.patch("/heroes/{hero_id}", response_model=HeroPublic)
def update_hero(hero_id: int, body: HeroUpdate, session: SessionDep) -> Hero:
    hero = session.get(Hero, hero_id)
    if hero is None:
        raise HTTPException(status_code=404, detail="Hero not found")
    changes = body.model_dump(exclude_unset=True)
    if changes.get("team_id") is not None and session.get(Team, changes["team_id"]) is None:
        raise HTTPException(status_code=404, detail="Team not found")
    hero.sqlmodel_update(changes)
    session.commit()  # hero_id and the hero lists are invalidated before it returns
    session.refresh(hero)
    return hero


@sync_router.delete("/heroes/{hero_id}", status_code=204)
def delete_hero(hero_id: int, session: SessionDep) -> None:
    hero = session.get(Hero, hero_id)
    if hero is None:
        raise HTTPException(status_code=404, detail="Hero not found")
    session.delete(hero)
    session.commit()


# -- async endpoints: ``async def`` with AsyncSession ---------------------------------------

async_router = APIRouter(prefix="/async", tags=["async"])


@async_router.post("/teams", status_code=201, response_model=TeamPublic)
async def acreate_team(body: TeamCreate, session: AsyncSessionDep) -> Team:
    team = Team.model_validate(body)
    session.add(team)
    await session.commit()
    await session.refresh(team)
    return team


@async_router.get("/teams/{team_id}", response_model=TeamPublic)
async def aread_team(team_id: int, session: AsyncSessionDep) -> Team:
    team = await session.get(Team, team_id)
    if team is None:
        raise HTTPException(status_code=404, detail="Team not found")
    return team


@async_router.post("/heroes", status_code=201, response_model=HeroPublic)
async def acreate_hero(body: HeroCreate, session: AsyncSessionDep) -> Hero:
    if body.team_id is not None and await session.get(Team, body.team_id) is None:
        raise HTTPException(status_code=404, detail="Team not found")
    hero = Hero.model_validate(body)
    session.add(hero)
    await session.commit()
    await session.refresh(hero)
    return hero


@async_router.get("/heroes", response_model=list[HeroPublic])
async def alist_heroes(
    session: AsyncSessionDep, team_id: int | None = None, offset: Offset = 0, limit: Limit = 100
) -> list[Hero]:
    return list((await session.exec(heroes_query(team_id, offset, limit))).all())


@async_router.get("/heroes/{hero_id}", response_model=HeroPublic)
async def aread_hero(hero_id: int, session: AsyncSessionDep) -> Hero:
    hero = await session.get(Hero, hero_id)
    if hero is None:
        raise HTTPException(status_code=404, detail="Hero not found")
    return hero


@async_router.patch("/heroes/{hero_id}", response_model=HeroPublic)
async def aupdate_hero(hero_id: int, body: HeroUpdate, session: AsyncSessionDep) -> Hero:
    hero = await session.get(Hero, hero_id)
    if hero is None:
        raise HTTPException(status_code=404, detail="Hero not found")
    changes = body.model_dump(exclude_unset=True)
    if changes.get("team_id") is not None and await session.get(Team, changes["team_id"]) is None:
        raise HTTPException(status_code=404, detail="Team not found")
    hero.sqlmodel_update(changes)
    await session.commit()
    await session.refresh(hero)
    return hero


@async_router.delete("/heroes/{hero_id}", status_code=204)
async def adelete_hero(hero_id: int, session: AsyncSessionDep) -> None:
    hero = await session.get(Hero, hero_id)
    if hero is None:
        raise HTTPException(status_code=404, detail="Hero not found")
    await session.delete(hero)
    await session.commit()


# -- cache introspection ----------------------------------------------------------------

cache_router = APIRouter(prefix="/cache", tags=["cache"])


@cache_router.get("/stats")
async def cache_stats() -> dict[str, dict[str, int]]:
    """Counters since startup, per model: ``hits``, ``misses``, ``query_hits``, ..."""
    return SQLModelCache.stats()


# -- the app ------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: read from the environment)."""
    settings = Settings.from_env() if settings is None else settings
    app = FastAPI(title="Heroes, cached", lifespan=lifespan)
    app.state.settings = settings
    if settings.sync_endpoints:
        app.include_router(sync_router)
    app.include_router(async_router)
    app.include_router(cache_router)
    return app


app = create_app()
