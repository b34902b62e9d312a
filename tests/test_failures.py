"""Failure, bad input and configuration: reads degrade, bad entries are misses, bad
configuration is refused with the fix."""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from sqlalchemy import create_engine, event
from sqlmodel import Session, select

import sqlmodel_cache
from sqlmodel_cache import (
    CacheConfig,
    CacheError,
    CacheSettings,
    ConfigurationError,
    MissingDependencyError,
    SQLModelCache,
)
from sqlmodel_cache.transport import (
    MemoryTransport,
    RedisAsyncTransport,
    RedisSyncTransport,
)
from tests.helpers import Env, EnvSession, Flaky, truncate_postgres
from tests.models import Gadget, Hero, Team


def _seed(env: Env) -> None:
    env.run(lambda s: (s.add(Hero(id=1, name="Spider")), s.commit()))
    env.reset_sql()


def _name(session: Session) -> str:
    hero = session.get(Hero, 1)
    assert hero is not None
    return hero.name


def _reconfigure(env: Env, transport: object, **options: Any) -> None:
    SQLModelCache.configure(transport, key_prefix=env.prefix, **options)


def test_reads_fail_open_when_the_transport_fails(
    mem_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead cache never raises to the application: the read comes from the database, the
    error is counted and logged once (rate-limited), and reads recover when it is back."""
    _seed(mem_env)
    flaky = Flaky(MemoryTransport())
    _reconfigure(mem_env, flaky)
    flaky.failing = True
    with caplog.at_level(logging.WARNING, logger="sqlmodel_cache"):
        assert [mem_env.run(_name) for _ in range(3)] == ["Spider"] * 3
    assert len(mem_env.selects()) == 3
    assert SQLModelCache.stats()["Hero"]["errors"] == 3
    assert len([r for r in caplog.records if "cache read failed" in r.message]) == 1
    flaky.failing = False
    mem_env.run(_name)
    mem_env.reset_sql()
    assert mem_env.run(_name) == "Spider"
    assert mem_env.statements == []


def test_failed_invalidation_does_not_break_the_commit_and_shouts(
    mem_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """If invalidation fails after the DB commit, commit() still returns; the failure is
    logged at ERROR and counted (never silent)."""
    _seed(mem_env)
    flaky = Flaky(MemoryTransport())
    _reconfigure(mem_env, flaky)

    def rename(session: Session) -> None:
        session.get(Hero, 1).name = "Committed"  # type: ignore[union-attr]
        flaky.failing = True
        session.commit()

    with caplog.at_level(logging.ERROR, logger="sqlmodel_cache"):
        mem_env.run(rename)
    assert any("invalidation after commit FAILED" in r.message for r in caplog.records)
    assert SQLModelCache.stats()["*"]["invalidation_errors"] == 1
    flaky.failing = False
    assert mem_env.run(lambda s: s.get(Hero, 1, execution_options={"cache": False}).name) == (  # type: ignore[union-attr]
        "Committed"
    )


def test_corrupt_entry_is_a_miss_and_is_replaced(env: Env) -> None:
    """Garbage under a row key (with a valid tag) is a miss, never an exception or data."""
    _seed(env)
    env.run(_name)
    [key] = env.row_keys()
    entry = env.raw_get(key)
    assert entry is not None
    header = entry[:32]
    for garbage in (header + b"\xff\xfe not json", header + b'["only one value"]', header):
        env.raw_set(key, garbage)
        env.reset_sql()
        assert env.run(_name) == "Spider"
        assert len(env.selects()) == 1
    env.run(_name)
    env.reset_sql()
    assert env.run(_name) == "Spider"
    assert env.statements == []


def test_foreign_schema_entry_is_a_miss(env: Env) -> None:
    """An entry written by another version of the model (other schema id) is not used."""
    _seed(env)
    env.run(_name)
    [key] = env.row_keys()
    entry = env.raw_get(key)
    assert entry is not None
    forged = entry[:16] + b"1" + b"0" * 15 + entry[32:].replace(b"Spider", b"Forged")
    env.raw_set(key, forged)
    assert env.run(_name) == "Spider"


def test_entry_for_another_key_is_rejected(env: Env) -> None:
    """An entry copied under another row's key is detected by its own primary key."""
    env.run(lambda s: (s.add_all([Hero(id=1, name="One"), Hero(id=2, name="Two")]), s.commit()))
    env.run(lambda s: (s.get(Hero, 1), s.get(Hero, 2)))
    key_one, key_two = sorted(env.row_keys())
    entry_two = env.raw_get(key_two)
    assert entry_two is not None
    env.raw_set(key_one, entry_two)
    assert env.run(_name) == "One"


def test_signed_entries_reject_tampering(mem_env: Env) -> None:
    """With a signing key, an entry altered in the store is a miss."""
    _seed(mem_env)
    _reconfigure(mem_env, mem_env.transport, signing_key=b"k" * 32)
    mem_env.run(_name)
    [key] = mem_env.row_keys()
    entry = mem_env.raw_get(key)
    assert entry is not None
    assert b"Spider" in entry
    mem_env.raw_set(key, entry.replace(b"Spider", b"Forged"))
    assert mem_env.run(_name) == "Spider"  # the forged entry is removed
    assert SQLModelCache.stats()["Hero"]["errors"] == 1
    assert mem_env.run(_name) == "Spider"  # refilled, signed
    mem_env.reset_sql()
    assert mem_env.run(_name) == "Spider"
    assert mem_env.statements == []


def test_entries_over_the_size_limit_are_not_stored(mem_env: Env) -> None:
    """max_entry_bytes bounds what is stored; larger rows are read from the DB each time."""
    mem_env.run(lambda s: (s.add(Hero(id=1, name="x" * 500)), s.commit()))
    _reconfigure(mem_env, mem_env.transport, max_entry_bytes=200)
    mem_env.run(_name)
    mem_env.run(_name)
    assert mem_env.row_keys() == []  # no entry, and each reader gave its lease back
    assert len(mem_env.selects()) == 2
    assert SQLModelCache.stats()["Hero"]["bypass:too_large"] == 2


def test_sync_session_with_async_transport_bypasses_with_one_warning(
    mem_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync Session cannot drive an async transport: reads bypass (warning once), commits
    cannot invalidate (logged at ERROR), nothing raises."""
    _seed(mem_env)
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0")
    _reconfigure(mem_env, RedisAsyncTransport(client))
    with caplog.at_level(logging.WARNING, logger="sqlmodel_cache"):
        assert [mem_env.run(_name) for _ in range(2)] == ["Spider", "Spider"]
        mem_env.run(lambda s: (setattr(s.get(Hero, 1), "name", "New"), s.commit()))
    assert len([r for r in caplog.records if "cannot use the async transport" in r.message]) == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    assert SQLModelCache.stats()["Hero"]["bypass:async_transport_in_sync_session"] == 3


class BasicOnly:
    """A user's own transport with only the three methods of the 0.1.1 protocol."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.data[key] = value

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.data.pop(key, None)


def test_custom_transport_with_get_set_delete_works(mem_env: Env) -> None:
    """Hits, fills and invalidation work over a plain get/set/delete transport."""
    _seed(mem_env)
    store = BasicOnly()
    _reconfigure(mem_env, store)
    mem_env.run(_name)
    mem_env.reset_sql()
    assert mem_env.run(_name) == "Spider"
    assert mem_env.statements == []
    mem_env.run(lambda s: (setattr(s.get(Hero, 1), "name", "New"), s.commit()))
    assert mem_env.run(_name) == "New"
    assert all(key.startswith(mem_env.prefix) for key in store.data)


def test_disabled_configuration_caches_nothing(mem_env: Env) -> None:
    """configure(enabled=False) installs no listener: every read goes to the DB."""
    _seed(mem_env)
    _reconfigure(mem_env, mem_env.transport, enabled=False)
    mem_env.run(_name)
    mem_env.run(_name)
    assert len(mem_env.selects()) == 2
    assert mem_env.row_keys() == []
    assert SQLModelCache.get_config().enabled is False


def test_reset_removes_every_listener(mem_env: Env) -> None:
    """After reset() reads are plain SQLAlchemy and get_config() raises."""
    _seed(mem_env)
    SQLModelCache.reset()
    mem_env.run(_name)
    mem_env.run(_name)
    assert len(mem_env.selects()) == 2
    assert not SQLModelCache.is_configured()
    with pytest.raises(ConfigurationError, match="configure"):
        SQLModelCache.get_config()
    SQLModelCache.reset()  # idempotent


def test_configure_twice_replaces_the_configuration(mem_env: Env) -> None:
    """A second configure() replaces the first; listeners are not installed twice."""
    _seed(mem_env)
    _reconfigure(mem_env, mem_env.transport, default_ttl=42)
    _reconfigure(mem_env, mem_env.transport, default_ttl=43)
    assert SQLModelCache.get_config().default_ttl == 43
    mem_env.run(_name)
    hero = SQLModelCache.stats()["Hero"]
    assert (hero["fills"], hero["misses"], hero.get("hits", 0)) == (1, 1, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"default_ttl": 0}, "default_ttl must be a positive"),
        ({"default_ttl": -1}, "default_ttl must be a positive"),
        ({"default_ttl": 1.5}, "default_ttl must be a positive"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "a b"}, "whitespace"),
        ({"enabled": "yes"}, "enabled must be a bool"),
        ({"max_entry_bytes": 10}, "at least 64"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"signing_key": b"short"}, "signing_key"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any], message: str) -> None:
    """Invalid configure() arguments raise ConfigurationError saying what to fix."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        SQLModelCache.configure(MemoryTransport(), **options)
    assert not SQLModelCache.is_configured()


def test_non_transport_is_refused() -> None:
    """configure() with something that is not a transport raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="not a cache transport"):
        SQLModelCache.configure("redis://localhost")


@pytest.mark.parametrize("ttl", [0, -5, 2.5, True])
def test_bad_model_ttl_is_refused(ttl: Any) -> None:
    """CacheConfig(ttl<=0 or non-int) raises when the model is declared."""
    with pytest.raises(ConfigurationError, match=r"CacheConfig\.ttl"):
        CacheConfig(ttl=ttl)


def test_cache_config_is_frozen_with_0_1_1_defaults() -> None:
    """CacheConfig is a frozen dataclass defaulting to enabled=True, ttl=None."""
    config = CacheConfig()
    assert (config.enabled, config.ttl) == (True, None)
    with pytest.raises(AttributeError):
        config.ttl = 5  # type: ignore[misc]


def test_get_config_returns_the_settings() -> None:
    """get_config() reports what configure() set, with the 0.1.1 defaults."""
    transport = MemoryTransport()
    SQLModelCache.configure(transport)
    config = SQLModelCache.get_config()
    assert isinstance(config, CacheSettings)
    assert (config.transport, config.default_ttl, config.key_prefix, config.enabled) == (
        transport,
        300,
        "sqlmodelcache",
        True,
    )


def test_error_tree() -> None:
    """Every library error is a CacheError."""
    assert issubclass(ConfigurationError, CacheError)
    assert issubclass(MissingDependencyError, ConfigurationError)
    assert "pip install 'sqlmodel-cache[redis]'" in str(MissingDependencyError("redis", "redis"))


@pytest.mark.parametrize(
    "name", ["sqlmodel_cache", "sqlmodel_cache.transport", "sqlmodel_cache.cli"]
)
def test_all_is_exactly_what_a_public_module_exports(name: str) -> None:
    """Every public name of a public module is in its ``__all__`` and every name in
    ``__all__`` exists (derived from the module, as httpx's exported-members test does):
    private modules stay private, nothing public is exported by accident."""
    module = importlib.import_module(name)
    public = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} & set(module.__all__) == set(module.__all__)


def test_the_documented_names_are_exported() -> None:
    """The names the docs and 0.1.1 users import are there (the 0.1.1 API and ours)."""
    assert {"SQLModelCache", "CacheConfig", "CacheError", "ConfigurationError"} <= set(
        sqlmodel_cache.__all__
    )
    import sqlmodel_cache.transport as transport

    assert {"MemoryTransport", "RedisSyncTransport", "RedisAsyncTransport"} <= set(
        transport.__all__
    )


def test_concurrent_commit_during_a_miss_never_leaves_a_stale_entry(
    postgres_server: Any, redis_server: Any
) -> None:
    """SPEC C2 on the real read path: a reader reads the old row, a writer commits and
    invalidates before the reader fills; the reader's fill is dropped, so the next read
    sees the new value. PostgreSQL (READ COMMITTED) and Redis."""
    truncate_postgres(postgres_server.sync_url)
    engine = create_engine(postgres_server.sync_url)
    with Session(engine) as session:
        session.add(Hero(id=1, name="Old"))
        session.commit()
    client = redis.Redis.from_url(redis_server.url)
    SQLModelCache.configure(RedisSyncTransport(client), key_prefix=f"race{os.getpid()}")
    raced = threading.Event()

    def writer_commits_now(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if raced.is_set() or not statement.startswith("SELECT hero"):
            return
        raced.set()
        with Session(engine) as writer:  # another connection, while the reader is mid-miss
            writer.get(Hero, 1, execution_options={"cache": False}).name = "New"  # type: ignore[union-attr]
            writer.commit()

    event.listen(engine, "after_cursor_execute", writer_commits_now)
    with Session(engine) as reader:
        assert reader.get(Hero, 1).name == "Old"  # type: ignore[union-attr]  # read before the commit
    assert raced.is_set()
    assert SQLModelCache.stats()["Hero"].get("fills", 0) == 0  # the stale fill was refused
    with Session(engine) as session:
        assert session.get(Hero, 1).name == "New"  # type: ignore[union-attr]
    client.close()
    engine.dispose()


def test_async_reads_fail_open_on_a_dead_redis(tmp_path: Any) -> None:
    """AsyncSession + RedisAsyncTransport on an unreachable Redis: reads come from the
    database and commits succeed; the application sees no cache exception."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlmodel.ext.asyncio.session import AsyncSession

    from tests.models import METADATAS

    async def scenario() -> list[str]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'dead.db'}")
        async with engine.begin() as connection:
            for metadata in METADATAS:
                await connection.run_sync(metadata.create_all)
        async with AsyncSession(engine) as session:
            session.add(Hero(id=1, name="Spider"))
            await session.commit()
        client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
        SQLModelCache.configure(RedisAsyncTransport(client), key_prefix="dead")
        names = []
        for _ in range(2):
            async with AsyncSession(engine) as session:
                hero = await session.get(Hero, 1)
                assert hero is not None
                names.append(hero.name)
        async with AsyncSession(engine) as session:
            hero = await session.get(Hero, 1)
            assert hero is not None
            hero.name = "Renamed"
            await session.commit()  # the invalidation fails: kept pending, not raised
        async with AsyncSession(engine) as session:
            hero = await session.get(Hero, 1)
            assert hero is not None
            names.append(hero.name)
        await client.aclose()
        await engine.dispose()
        return names

    assert asyncio.run(scenario()) == ["Spider", "Spider", "Renamed"]
    stats = SQLModelCache.stats()
    assert stats["Hero"]["errors"] == 3
    assert stats["*"]["invalidation_errors"] >= 1
    assert stats["Hero"]["bypass:pending_invalidation"] >= 1


def _lazy_team(session: EnvSession) -> object:
    hero = session.get(Hero, 1)
    assert hero is not None
    return session.run_sync(lambda _: hero.team)


FAILING_READS: dict[str, Callable[[EnvSession], object]] = {
    "get": lambda s: s.get(Team, 1),
    "get_with_options": lambda s: s.get(Team, 1, execution_options={"cache_ttl": 60}),
    "lazy_load": _lazy_team,
    "select": lambda s: s.exec(select(Team).where(Team.id == 1)).all(),
}


@pytest.mark.parametrize(
    "read",
    ["get", "get_with_options", "lazy_load", "select"],
)
def test_a_failed_database_read_gives_the_lease_back(env: Env, read: str) -> None:
    """A reader that took the lease and whose SELECT fails gives it back at once, whatever
    kind of read it was: the next reader neither waits for it nor reads unfilled."""
    env.run(lambda s: (s.add_all([Team(id=1, name="A"), Hero(id=1, team_id=1)]), s.commit()))
    env.run(lambda s: s.get(Hero, 1))  # cached: only the team's SELECT fails below
    body = FAILING_READS[read]

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT team"):
            raise RuntimeError("database down")

    event.listen(env.engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(Exception, match="database down"):
            env.run(body)
    finally:
        event.remove(env.engine, "before_cursor_execute", fail)
    leases = [k for k in env.cache_keys() if "{team}" in k and env.raw_get(k)[:1] == b"L"]  # type: ignore[index]
    assert leases == []
    env.run(body)
    team = SQLModelCache.stats()["Team"]
    assert "lease_waits" not in team
    assert team.get("fills", 0) + team.get("query_fills", 0) == 1


def test_a_commit_invalidates_many_rows_in_one_transport_call(mem_env: Env) -> None:
    """W1: however many rows a commit changed, invalidation is one transport call."""
    mem_env.run(lambda s: (s.add_all([Hero(id=i, name=f"h{i}") for i in range(1, 51)]), s.commit()))
    counting = Flaky(mem_env.transport)
    _reconfigure(mem_env, counting)
    for i in range(1, 51):
        mem_env.run(lambda s, i=i: s.get(Hero, i))
    assert len(mem_env.row_keys()) == 50

    def update_all(session: Session) -> None:
        for i in range(1, 51):
            session.get(Hero, i).power = i  # type: ignore[union-attr]
        counting.calls = 0
        session.commit()
        assert counting.calls == 1

    mem_env.run(update_all)
    assert mem_env.row_keys() == []


def test_values_of_the_wrong_json_type_are_corrupt_not_data(mem_env: Env) -> None:
    """An entry whose header is right but whose values have the wrong JSON types (a number
    for a name, a number for a UUID) is a miss, never data and never an exception."""
    gadget_id = uuid.uuid4()
    mem_env.run(lambda s: (s.add(Gadget(id=gadget_id, label="a")), s.commit()))
    mem_env.run(lambda s: s.get(Gadget, gadget_id))
    _seed(mem_env)
    mem_env.run(_name)
    for key in mem_env.row_keys():
        entry = mem_env.raw_get(key)
        assert entry is not None
        header = entry[:32]
        forged = b"[1, 5, 0, null, null]" if "hero" in key else b'[5, "a"]'
        mem_env.raw_set(key, header + forged)
    assert mem_env.run(_name) == "Spider"
    assert mem_env.run(lambda s: s.get(Gadget, gadget_id).label) == "a"  # type: ignore[union-attr]
    assert SQLModelCache.stats()["Hero"]["errors"] == 1
    assert SQLModelCache.stats()["Gadget"]["errors"] == 1


@pytest.mark.parametrize("value", [0, None, "no"])
def test_cache_option_must_be_a_bool(mem_env: Env, value: object) -> None:
    """``cache`` other than True/False is an invalid option: that read bypasses the cache."""
    _seed(mem_env)
    mem_env.run(lambda s: s.get(Hero, 1, execution_options={"cache": value}))
    assert mem_env.row_keys() == []
    assert SQLModelCache.stats()["Hero"]["bypass:invalid_option"] == 1


def test_settings_repr_hides_the_signing_key() -> None:
    """The signing key never shows up in logs or tracebacks that print the settings."""
    SQLModelCache.configure(MemoryTransport(), signing_key=b"s" * 32)
    assert "sss" not in repr(SQLModelCache.get_config())
