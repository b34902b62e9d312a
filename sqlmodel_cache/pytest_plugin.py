"""pytest plugin of sqlmodel-cache: fixtures for testing code that uses the cache.

Installing the package registers it (``pytest11`` entry point), so every test suite gets:

* ``sqlmodel_cache``: a fresh in-process cache (``MemoryTransport``) for one test.
* ``sqlmodel_cache_redis``: the same on a real Redis, given by ``--sqlmodel-cache-redis-url``
  or ``$SQLMODEL_CACHE_REDIS_URL`` (skipped without one), under a key prefix of its own whose
  keys are deleted after the test.
* ``sql_counter``: ``sql = sql_counter(engine)`` records the SQL statements the engine sends,
  so a test can assert that a read was a hit: ``with sql.assert_no_sql(): session.get(...)``.

Both cache fixtures configure ``SQLModelCache`` before the test and ``reset()`` it after,
pass or fail; ``@pytest.mark.sqlmodel_cache(**options)`` passes ``configure()`` options.

NOTE: pytest imports this module in every run of every project that has the package
installed, so it only defines hooks and fixtures: it configures nothing, and imports redis
only when a fixture needs it. (Importing it imports the ``sqlmodel_cache`` package, and so
SQLAlchemy and SQLModel, which the test suites of this package's users import anyway.)
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from sqlmodel_cache.transport import MemoryTransport, RedisSyncTransport

__all__ = ["CacheFixture", "SQLCounter"]

REDIS_URL_OPTION = "--sqlmodel-cache-redis-url"
REDIS_URL_ENV = "SQLMODEL_CACHE_REDIS_URL"
MARKER = "sqlmodel_cache"

#: Socket timeout of the Redis fixture: generous, because a timed-out read falls back to the
#: database and would fail a test's "no SQL" assertion for a reason that is not the code's.
REDIS_TIMEOUT = 5.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("sqlmodel-cache").addoption(
        REDIS_URL_OPTION,
        metavar="URL",
        default=None,
        help=f"Redis for the sqlmodel_cache_redis fixture (default: ${REDIS_URL_ENV}); "
        "without one, tests using it are skipped.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): SQLModelCache.configure() options for the sqlmodel_cache "
        "and sqlmodel_cache_redis fixtures.",
    )


# -- the cache fixtures --------------------------------------------------------------------


@dataclass(frozen=True)
class CacheFixture:
    """The cache configured for one test.

    Attributes:
        transport: where the entries live: a ``MemoryTransport``, or a ``RedisSyncTransport``
            (which also serves ``AsyncSession``, blocking for each round trip).
        key_prefix: the ``key_prefix`` the cache was configured with.
    """

    transport: MemoryTransport | RedisSyncTransport
    key_prefix: str

    def stats(self) -> dict[str, dict[str, int]]:
        """``SQLModelCache.stats()``: the counters since the test started, per model."""
        from sqlmodel_cache import SQLModelCache

        return SQLModelCache.stats()

    def keys(self) -> list[str]:
        """Every key this test's cache holds (entries and tags), sorted."""
        from sqlmodel_cache.transport import MemoryTransport

        if isinstance(self.transport, MemoryTransport):
            return sorted(self.transport.keys())
        # SCAN, never KEYS: KEYS blocks a shared Redis while it walks the whole keyspace.
        pattern = _glob_escape(self.key_prefix) + ":*"
        found = self.transport.client.scan_iter(match=pattern, count=1000)
        return sorted(key.decode() for key in found)

    def clear(self) -> None:
        """Drop every entry and tag, e.g. after cleaning the database behind the cache's
        back (a ``TRUNCATE`` on a connection no session uses)."""
        keys = self.keys()
        if keys:
            self.transport.delete(*keys)


@pytest.fixture
def sqlmodel_cache(request: pytest.FixtureRequest) -> Iterator[CacheFixture]:
    """A fresh in-process cache (``MemoryTransport``) for this test, and no cache after it."""
    from sqlmodel_cache.transport import MemoryTransport

    yield from _configured(MemoryTransport(), _marker_options(request))


@pytest.fixture
def sqlmodel_cache_redis(request: pytest.FixtureRequest) -> Iterator[CacheFixture]:
    """A cache on the Redis given by ``--sqlmodel-cache-redis-url`` or
    ``$SQLMODEL_CACHE_REDIS_URL``, under a key prefix unique to this test; its keys are
    deleted after the test. Skips the test when no URL is given."""
    url = request.config.getoption(REDIS_URL_OPTION) or os.environ.get(REDIS_URL_ENV)
    if not url:
        pytest.skip(
            f"sqlmodel_cache_redis needs a Redis: pass {REDIS_URL_OPTION}=URL "
            f"or set {REDIS_URL_ENV}"
        )
    import redis

    from sqlmodel_cache.transport import RedisSyncTransport

    options = _marker_options(request)
    # A prefix of its own keeps concurrent tests and runs on one Redis apart, and tells the
    # teardown which keys are this test's.
    base = options.get("key_prefix", "sqlmodelcache")
    options["key_prefix"] = f"{base}:test-{uuid.uuid4().hex[:12]}"
    transport = RedisSyncTransport.from_url(url, timeout=REDIS_TIMEOUT)
    try:
        try:
            transport.client.ping()
        except redis.RedisError as exc:
            # The URL is not shown: it may hold a password.
            message = f"sqlmodel_cache_redis: the Redis does not answer: {exc}"
            raise pytest.fail.Exception(message, pytrace=False) from None
        yield from _configured(transport, options)
    finally:
        transport.client.close()


def _configured(
    transport: MemoryTransport | RedisSyncTransport, options: dict[str, Any]
) -> Iterator[CacheFixture]:
    from sqlmodel_cache import SQLModelCache

    SQLModelCache.configure(transport, **options)
    cache = CacheFixture(transport, SQLModelCache.get_config().key_prefix)
    try:
        yield cache
    finally:
        SQLModelCache.reset()
        cache.clear()


def _marker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return {}
    if marker.args:
        pytest.fail(f"@pytest.mark.{MARKER}() takes keyword arguments only", pytrace=False)
    return dict(marker.kwargs)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# -- counting SQL --------------------------------------------------------------------------


class SQLCounter:
    """Records every SQL statement an engine sends to the database, until :meth:`close`.

    A read answered from the cache sends none. Connection set-up and ``BEGIN``/``COMMIT``
    are not statements sent with a cursor, so they are not recorded.

    Args:
        engine: an ``Engine``, or an ``AsyncEngine`` (its ``sync_engine`` is watched).
    """

    def __init__(self, engine: Engine | AsyncEngine) -> None:
        from sqlalchemy import event

        # An AsyncEngine runs its statements through its sync_engine, where the events fire.
        self._engine = cast("Engine", getattr(engine, "sync_engine", engine))
        #: The statements recorded since the counter started or was last cleared.
        self.statements: list[str] = []
        event.listen(self._engine, "before_cursor_execute", self._record)

    @property
    def count(self) -> int:
        """How many statements were recorded since the counter started or was last cleared."""
        return len(self.statements)

    def clear(self) -> None:
        """Forget the statements recorded so far (start counting from zero)."""
        self.statements.clear()

    def close(self) -> None:
        """Stop recording; the ``sql_counter`` fixture does this after the test."""
        from sqlalchemy import event

        if event.contains(self._engine, "before_cursor_execute", self._record):
            event.remove(self._engine, "before_cursor_execute", self._record)

    def assert_count(self, expected: int) -> None:
        """Assert that exactly ``expected`` statements were recorded since the counter
        started or was last cleared; the failure lists them."""
        __tracebackhide__ = True
        if self.count != expected:
            plural = "" if expected == 1 else "s"
            expectation = f"expected {expected} SQL statement{plural}"
            raise AssertionError(_failure(expectation, self.statements))

    def assert_no_sql(self) -> _NoSQL:
        """Assert that the ``with`` block sends no SQL; the failure lists what it sent::

        with sql.assert_no_sql():
            session.get(Hero, 1)
        """
        return _NoSQL(self)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)


class _NoSQL:
    """The context manager of :meth:`SQLCounter.assert_no_sql`. A class rather than a
    generator, so that pytest hides all of it and reports a failure at the user's line."""

    def __init__(self, counter: SQLCounter) -> None:
        self._counter = counter
        self._start = 0

    def __enter__(self) -> None:
        self._start = self._counter.count

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        __tracebackhide__ = True
        sent = self._counter.statements[self._start :]
        if exc_type is None and sent:
            raise AssertionError(_failure("expected no SQL in the block", sent))


def _failure(expectation: str, statements: list[str]) -> str:
    lines = [f"{expectation}, got {len(statements)}" + (":" if statements else "")]
    lines += [f"  {n}. {' '.join(sql.split())}" for n, sql in enumerate(statements, 1)]
    return "\n".join(lines)


@pytest.fixture
def sql_counter() -> Iterator[Callable[[Engine | AsyncEngine], SQLCounter]]:
    """A factory: ``sql = sql_counter(engine)`` starts a :class:`SQLCounter` on ``engine``
    (sync or async); every counter it started stops recording after the test."""
    counters: list[SQLCounter] = []

    def start(engine: Engine | AsyncEngine) -> SQLCounter:
        counter = SQLCounter(engine)
        counters.append(counter)
        return counter

    yield start
    for counter in counters:
        counter.close()
