"""The pytest plugin: its fixtures used directly here, and in pytest runs of small user suites.

A user suite runs in a subprocess (``pytester.runpytest_subprocess``): that is how a user's
pytest finds the plugin (through the entry point), and SQLModel's table metadata is
process-global, so the users' ``Hero`` models cannot be defined in this process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.pytest_plugin import REDIS_URL_ENV, CacheFixture, SQLCounter
from tests import servers
from tests.models import Hero

pytest_plugins = ["pytester"]

StartCounter = Callable[[Engine], SQLCounter]


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An in-memory SQLite database with hero 1, "Deadpond"."""
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Hero(name="Deadpond"))
        session.commit()
    yield engine
    engine.dispose()


def _get_hero(engine: Engine) -> str:
    with Session(engine) as session:
        hero = session.get(Hero, 1)
        assert hero is not None
        return hero.name


# -- the fixtures, used by this suite ------------------------------------------------------


def test_memory_fixture_serves_a_second_get_without_sql(
    sqlmodel_cache: CacheFixture, engine: Engine, sql_counter: StartCounter
) -> None:
    """With the ``sqlmodel_cache`` fixture, a get that was just filled issues no SQL."""
    sql = sql_counter(engine)
    _get_hero(engine)
    sql.assert_count(1)
    with sql.assert_no_sql():
        assert _get_hero(engine) == "Deadpond"
    counters = sqlmodel_cache.stats()["Hero"]
    assert (counters["misses"], counters["fills"], counters["hits"]) == (1, 1, 1)


def test_cache_fixture_lists_and_clears_its_keys(
    sqlmodel_cache: CacheFixture, engine: Engine
) -> None:
    """``keys()`` shows the row's entry under the default prefix; ``clear()`` drops it all."""
    _get_hero(engine)
    assert sqlmodel_cache.key_prefix == "sqlmodelcache"
    keys = sqlmodel_cache.keys()
    assert "sqlmodelcache:{hero}:r:[1]" in keys
    sqlmodel_cache.clear()
    assert sqlmodel_cache.keys() == []


@pytest.mark.sqlmodel_cache(default_ttl=60, key_prefix="app")
def test_marker_passes_configure_options(sqlmodel_cache: CacheFixture) -> None:
    """``@pytest.mark.sqlmodel_cache(...)`` options reach ``SQLModelCache.configure()``."""
    assert SQLModelCache.get_config().default_ttl == 60
    assert sqlmodel_cache.key_prefix == "app"


def test_redis_fixture_serves_hits_under_its_own_prefix(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: servers.RedisServer,
    engine: Engine,
    sql_counter: StartCounter,
) -> None:
    """``sqlmodel_cache_redis`` caches in the Redis named by the environment, under a key
    prefix unique to the test."""
    monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)
    cache: CacheFixture = request.getfixturevalue("sqlmodel_cache_redis")
    assert cache.key_prefix.startswith("sqlmodelcache:test-")
    sql = sql_counter(engine)
    _get_hero(engine)
    with sql.assert_no_sql():
        assert _get_hero(engine) == "Deadpond"
    keys = cache.keys()
    assert f"{cache.key_prefix}:{{hero}}:r:[1]" in keys
    assert all(key.startswith(f"{cache.key_prefix}:") for key in keys)


def test_counter_lists_statements_and_clears(engine: Engine, sql_counter: StartCounter) -> None:
    """The counter records each statement sent; ``clear()`` starts again from zero."""
    sql = sql_counter(engine)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        connection.execute(text("SELECT 2"))
    assert (sql.count, sql.statements) == (2, ["SELECT 1", "SELECT 2"])
    sql.clear()
    sql.assert_count(0)


def test_assert_count_failure_lists_the_statements(
    engine: Engine, sql_counter: StartCounter
) -> None:
    """A wrong count fails with the statements that were sent, one per line."""
    sql = sql_counter(engine)
    with engine.connect() as connection:
        connection.execute(text("SELECT\n  1"))
    with pytest.raises(AssertionError) as failure:
        sql.assert_count(0)
    assert str(failure.value) == "expected 0 SQL statements, got 1:\n  1. SELECT 1"


def test_assert_no_sql_checks_only_its_block(engine: Engine, sql_counter: StartCounter) -> None:
    """Statements sent before the ``with`` block do not count against it."""
    sql = sql_counter(engine)
    _get_hero(engine)
    with sql.assert_no_sql():
        pass
    expected = r"expected no SQL in the block, got 1:\n  1\. SELECT hero\.id"
    with pytest.raises(AssertionError, match=expected), sql.assert_no_sql():
        _get_hero(engine)


def test_closed_counter_records_nothing(engine: Engine) -> None:
    """After ``close()`` (what the fixture does after the test) nothing is recorded."""
    sql = SQLCounter(engine)
    sql.close()
    sql.close()  # idempotent
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert sql.count == 0


async def test_counter_watches_an_async_engine() -> None:
    """On an ``AsyncEngine`` the counter records what its ``sync_engine`` sends."""
    engine = create_async_engine("sqlite+aiosqlite://")
    sql = SQLCounter(engine)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert sql.statements == ["SELECT 1"]
    finally:
        sql.close()
        await engine.dispose()


def test_loading_the_plugin_configures_nothing_and_imports_no_redis() -> None:
    """Loading the plugin (as pytest does in every run) neither configures the cache nor
    imports redis."""
    code = (
        "import sys, sqlmodel_cache.pytest_plugin\n"
        "from sqlmodel_cache import SQLModelCache\n"
        "assert not SQLModelCache.is_configured()\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- user suites, run by pytest ------------------------------------------------------------

USER_CONFTEST = """
import pytest
from sqlmodel import Field, Session, SQLModel, create_engine

from sqlmodel_cache import CacheConfig


class Hero(SQLModel, table=True):
    __cache_config__ = CacheConfig(ttl=600)

    id: int | None = Field(default=None, primary_key=True)
    name: str


@pytest.fixture
def engine():
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Hero(name="Deadpond"))
        session.commit()
    yield engine
    engine.dispose()
"""

RunSuite = Callable[..., pytest.RunResult]


@pytest.fixture
def run_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> RunSuite:
    """``run_suite(test_module_source, *pytest_args)`` runs a user suite with the shared
    ``Hero`` model and ``engine`` fixture, warnings as errors, and no Redis URL."""
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makeini(
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(USER_CONFTEST)

    def run(source: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(source)
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--strict-markers", *args, timeout=60
        )

    return run


def test_cache_is_reset_after_each_test_even_a_failed_one(run_suite: RunSuite) -> None:
    """After a test that used the cache, even one that failed, the next test starts with no
    configuration, or with a fresh cache and zero counters."""
    result = run_suite(
        """
        from sqlmodel import Session
        from sqlmodel_cache import SQLModelCache
        from conftest import Hero

        def test_fills_then_fails(sqlmodel_cache, engine):
            with Session(engine) as session:
                session.get(Hero, 1)
            assert sqlmodel_cache.keys()
            raise RuntimeError("boom")

        def test_next_test_sees_no_cache():
            assert not SQLModelCache.is_configured()

        def test_next_cache_is_fresh(sqlmodel_cache):
            assert sqlmodel_cache.keys() == []
            assert sqlmodel_cache.stats() == {}
        """
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["E*RuntimeError: boom"])


def test_assert_no_sql_failure_shows_the_statements_at_the_users_line(
    run_suite: RunSuite,
) -> None:
    """A read that was not a hit fails the test with the SQL it sent, reported at the
    user's ``with`` line rather than inside the plugin."""
    result = run_suite(
        """
        from sqlmodel import Session
        from conftest import Hero

        def test_uncached_read(engine, sql_counter):
            sql = sql_counter(engine)
            with Session(engine) as session:
                with sql.assert_no_sql():
                    session.get(Hero, 1)
        """
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*with sql.assert_no_sql():",
            "E*AssertionError: expected no SQL in the block, got 1:",
            "E*1. SELECT hero.id*FROM hero WHERE hero.id = ?",  # SQLAlchemy 2.0 adds labels
        ]
    )
    for hidden in ("*pytest_plugin.py*", "*contextlib*"):
        result.stdout.no_fnmatch_line(hidden)


def test_counters_are_detached_after_the_test(run_suite: RunSuite) -> None:
    """A counter stops recording when its test ends, even on an engine that lives on."""
    result = run_suite(
        """
        import pytest
        from sqlalchemy import create_engine, text

        ENGINE = create_engine("sqlite://")
        FIRST = []

        def test_first(sql_counter):
            FIRST.append(sql_counter(ENGINE))

        def test_second():
            with ENGINE.connect() as connection:
                connection.execute(text("SELECT 1"))
            assert FIRST[0].count == 0
        """
    )
    result.assert_outcomes(passed=2)


def test_redis_fixture_skips_without_a_url(run_suite: RunSuite) -> None:
    """Without a Redis URL, a test using ``sqlmodel_cache_redis`` is skipped, saying how
    to give one."""
    result = run_suite("def test_needs_redis(sqlmodel_cache_redis):\n    pass\n", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*sqlmodel_cache_redis needs a Redis: pass --sqlmodel-cache-redis-url=URL"
            " or set SQLMODEL_CACHE_REDIS_URL"
        ]
    )


def test_redis_fixture_fails_when_redis_does_not_answer(run_suite: RunSuite) -> None:
    """A URL to a Redis that is down is an error of the test's set-up that says so, rather
    than a cache that silently falls back to the database."""
    dead = "redis://127.0.0.1:1/0"  # a privileged port nothing listens on
    result = run_suite(
        "def test_needs_redis(sqlmodel_cache_redis):\n    pass\n",
        f"--sqlmodel-cache-redis-url={dead}",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*sqlmodel_cache_redis: the Redis does not answer: *"])
    result.stdout.no_fnmatch_line(f"*{dead}*")


@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_redis_fixture_deletes_its_keys_after_each_test(
    run_suite: RunSuite,
    redis_server: servers.RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    given_by: str,
) -> None:
    """The Redis fixture (URL from the option or the environment) serves hits, and after
    each test, passed or failed, its prefix holds no key."""
    args = []
    if given_by == "option":
        args.append(f"--sqlmodel-cache-redis-url={redis_server.url}")
    else:
        monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)
    result = run_suite(
        """
        import pytest
        from sqlmodel import Session
        from conftest import Hero

        pytestmark = pytest.mark.sqlmodel_cache(key_prefix="plugintest")

        def test_hit(sqlmodel_cache_redis, engine, sql_counter):
            sql = sql_counter(engine)
            with Session(engine) as session:
                session.get(Hero, 1)
            with Session(engine) as session, sql.assert_no_sql():
                assert session.get(Hero, 1).name == "Deadpond"
            assert sqlmodel_cache_redis.keys()

        def test_fills_then_fails(sqlmodel_cache_redis, engine):
            with Session(engine) as session:
                session.get(Hero, 1)
            assert sqlmodel_cache_redis.keys()
            raise RuntimeError("boom")
        """,
        *args,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E*RuntimeError: boom"])
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match="plugintest:*")) == []
    finally:
        client.close()
