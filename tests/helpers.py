"""What the test modules share; the fixtures that build it are in ``conftest.py``.

Test modules import shared helpers from here, never from each other nor from ``conftest.py``.

- :class:`Env` runs one test body in one configuration of the matrix (sync ``Session`` or
  ``AsyncSession`` x transport x database), and :func:`make_env` builds it.
- :class:`EnvSession` and :class:`AwaitingSession` are what a body gets: a real sync
  ``Session``, or a real ``AsyncSession`` whose coroutine methods are awaited one by one.
- Transports for fault injection and counting (:class:`Flaky`, :class:`Forgetful`), a
  :class:`Clock` moved by hand, and :class:`NoClientCalls` for Redis Cluster lanes.
- Near-cache scenes (:func:`hero_database`, :func:`write_behind_the_cache`, :func:`wait_for`).
- The Markdown code-block reader the docs tests run examples with (:func:`parse_blocks`,
  :func:`run_block`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSessionTransaction,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from sqlmodel_cache import NearCache, SQLModelCache
from sqlmodel_cache.transport import (
    Fetched,
    MemoryTransport,
    RedisAsyncTransport,
    RedisSyncTransport,
)
from tests import servers
from tests.models import METADATAS, Hero

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


# -- the session a test body gets ------------------------------------------------------------


class EnvSession(Session):
    """The sync half of the matrix: a plain SQLModel ``Session``, plus the one method of
    :class:`AwaitingSession` a sync ``Session`` lacks."""

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(session, ...)``: what ``await AsyncSession.run_sync(fn)`` does in async mode."""
        return fn(self, *args, **kwargs)


#: sqlmodel's ``AsyncSession.execute`` (which its ``scalars`` and ``scalar`` call) warns at
#: run time that ``exec()`` is preferred; its sync ``Session.execute`` says so only to type
#: checkers. Silenced during the call alone, so that a body behaves alike in both modes.
_EXECUTE_DEPRECATION = r"\s*\W*\s*You probably want to use `session\.exec\(\)`"


class _Awaiting:
    """A sync face over an asyncio object: calling one of its methods calls the real method
    and, when that returns an awaitable, runs it to completion on ``loop``.

    Attributes and sync methods are forwarded as they are. What comes back is wrapped again
    when it is itself an asyncio object a body goes on using (a connection, a transaction).
    Nothing runs in SQLAlchemy's greenlet except what the awaited method itself runs there,
    so anything that would raise ``MissingGreenlet`` in an async application (a lazy load,
    an expired attribute) raises it here too.
    """

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=_EXECUTE_DEPRECATION, category=DeprecationWarning
                )
                result = attribute(*args, **kwargs)
                if hasattr(result, "__await__"):
                    result = self._loop.run_until_complete(result)
            return self._wrap(result)

        return call

    def _wrap(self, result: Any) -> Any:
        if isinstance(result, AsyncSessionTransaction):
            return _AwaitingTransaction(result, self._loop)
        if isinstance(result, AsyncConnection):
            return _Awaiting(result, self._loop)
        return result


class _AwaitingTransaction(_Awaiting):
    """``begin()`` / ``begin_nested()``: started already, as a sync ``Session``'s are; usable
    as ``with session.begin_nested():`` (``async with`` in an async application)."""

    def __enter__(self) -> _AwaitingTransaction:
        # What ``AsyncSessionTransaction.__aenter__`` does after starting the transaction.
        self._target.sync_transaction.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._loop.run_until_complete(self._target.__aexit__(*exc_info))


class AwaitingSession(_Awaiting):
    """The async half of the matrix: a real sqlmodel ``AsyncSession`` behind a sync face.

    ``session.get(...)`` is ``await async_session.get(...)`` (the library's ``aget`` when it
    is installed), ``session.exec(...)``, ``execute``, ``scalars``, ``commit``, ``flush``,
    ``refresh``, ``delete``, ``connection()``, ``begin_nested()`` ... likewise, each awaited
    on the env's event loop from outside any greenlet; ``add``, ``expunge``, ``info``,
    ``new``, ``in_transaction()`` ... are the ``AsyncSession``'s own. A body that needs
    implicit IO (a lazy load) says so as an async application must: ``session.run_sync(fn)``.
    """

    def __contains__(self, instance: object) -> bool:
        return instance in self._target

    def __iter__(self) -> Iterator[object]:
        return iter(self._target)


def assert_missing_greenlet(call: Callable[[], object]) -> None:
    """Assert that ``call()`` raises what implicit IO outside SQLAlchemy's greenlet raises in
    an async application: ``MissingGreenlet``, or the ``StatementError`` wrapping it when a
    statement was on its way to the driver."""
    with warnings.catch_warnings():
        # NOTE: the driver's coroutine that the refused IO created is never awaited; its
        # warning is collected here (gc below) rather than as an unraisable error later.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        try:
            call()
        except (MissingGreenlet, StatementError) as exc:
            refused = isinstance(exc, MissingGreenlet) or isinstance(exc.orig, MissingGreenlet)
            if not refused:
                raise
        else:
            pytest.fail("the implicit IO was not refused (no MissingGreenlet)")
        gc.collect()  # the exception is gone: its traceback held the driver's coroutine


# -- one configuration of the matrix ---------------------------------------------------------


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

    def run(self, body: Callable[[EnvSession], T]) -> T:
        """Run ``body`` with a fresh session of this env's kind, then close the session.

        Sync mode passes an :class:`EnvSession`. Async mode passes an
        :class:`AwaitingSession` over a new ``AsyncSession``: the body runs in this thread,
        outside any greenlet and event loop, and each of its session calls is awaited for
        real, as ``await session.get(...)`` in an async application.
        """
        if self.mode == "sync":
            with EnvSession(self.engine) as session:
                return body(session)
        assert self.loop is not None
        assert self.async_engine is not None
        async_session = AsyncSession(self.async_engine)
        try:
            return body(cast(EnvSession, AwaitingSession(async_session, self.loop)))
        finally:
            self.loop.run_until_complete(async_session.close())

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


def truncate_postgres(url: str) -> None:
    """Empty every test table of the suite's PostgreSQL (its tables outlive a test)."""
    engine = create_engine(url)
    names = ", ".join(
        f'"{table.name}"' for metadata in METADATAS for table in metadata.sorted_tables
    )
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


def make_env(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str, cache: str, db: str
) -> Iterator[Env]:
    """Build one :class:`Env` (servers come from the session fixtures), configure the cache
    for it under a unique key prefix, and tear both down after the test."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    loop = asyncio.new_event_loop() if mode == "async" else None
    async_engine: AsyncEngine | None = None
    if db == "postgres":
        pg: servers.PostgresServer = request.getfixturevalue("postgres_server")
        truncate_postgres(pg.sync_url)
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


# -- transports and clocks -------------------------------------------------------------------


class Flaky:
    """Fault injection: wraps a transport and raises on every call while ``failing``."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.failing = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("injected: cache unreachable")

    def get(self, key: str) -> bytes | None:
        self._check()
        return self.inner.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self._check()
        self.inner.set(key, value, ttl)

    def delete(self, *keys: str) -> None:
        self._check()
        self.inner.delete(*keys)

    def fetch(self, key: str, tag_keys: Sequence[str], *args: Any) -> Fetched:
        self._check()
        return self.inner.fetch(key, tag_keys, *args)

    def fill(self, key: str, value: bytes, ttl: int, lease: bytes) -> bool:
        self._check()
        return self.inner.fill(key, value, ttl, lease)

    def invalidate(self, delete_keys: Sequence[str], tag_keys: Sequence[str], tag: bytes) -> None:
        self._check()
        self.inner.invalidate(delete_keys, tag_keys, tag)


class Forgetful:
    """A basic transport that never returns what it stored: every promised hit sends SQL."""

    def get(self, key: str) -> bytes | None:
        return None

    def set(self, key: str, value: bytes, ttl: int) -> None:
        pass

    def delete(self, *keys: str) -> None:
        pass


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class NoClientCalls:
    """Fails any command sent through the client itself: only lanes may talk."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.original = client.execute_command

    def __enter__(self) -> NoClientCalls:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"sent through the client: {args[:1]}")

        self.client.execute_command = refuse
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.execute_command = self.original


# -- near-cache scenes -----------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def hero_database(path: Path) -> Engine:
    """An engine on a new SQLite file at ``path`` holding one hero, "Spider" (id 1)."""
    engine = create_engine(f"sqlite:///{path}")
    SQLModel.metadata.create_all(engine, tables=[Hero.__table__])  # type: ignore[list-item]
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO hero (id, name, power) VALUES (1, 'Spider', 0)")
    return engine


def write_behind_the_cache(path: Path, client: Any, prefix: str, name: str) -> None:
    """Another program renames the hero in the database at ``path``, and another process's
    commit re-tags its table in Redis (``client``, under ``prefix``)."""
    # closing(): a sqlite3 connection's own "with" commits but does not close it.
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE hero SET name = ? WHERE id = 1", (name,))
    client.set(f"{prefix}:{{hero}}:rt", os.urandom(8).hex())


# -- the docs' code blocks -------------------------------------------------------------------

#: Seconds an example may run.
TIMEOUT = 60

NOT_RUN = "<!-- not-run -->"
PYTEST = "<!-- pytest -->"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    marker: str  # the stripped line before the fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:L{self.line}"


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t")


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, in order (indented fences included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        words = opening["info"].strip().split()
        language = words[0].lower() if words else ""
        marker = lines[index - 1].strip() if index > 0 else ""
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(_dedent(lines[end], indent))
            end += 1
        blocks.append(Block(path, index + 1, language, marker, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def _child_env() -> dict[str, str]:
    """The environment of an example: this checkout first on the path, no outer pytest options."""
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one example in a fresh interpreter in ``cwd``: a program with ``python -c``, a
    ``<!-- pytest -->`` block as a test module."""
    if block.marker == PYTEST:
        module = cwd / "test_doc_example.py"
        module.write_text(block.code, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name]
    else:
        command = [sys.executable, "-c", block.code]
    return subprocess.run(
        command,
        cwd=cwd,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
