"""The ``sqlmodel-cache`` command line and its ``demo`` walk-through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.cli import _demo, main
from tests.helpers import Forgetful
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def _section(out: str, start: str, end: str) -> str:
    return out[out.index(start) : out.index(end)]


def test_demo_shows_miss_hit_invalidation_and_new_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The in-memory demo passes its own checks and shows each step with its SQL."""
    assert main(["demo", "--reads", "50", "--no-color"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == ""
    assert "\033[" not in out

    first = _section(out, "[1]", "[2]")
    assert first.count("SQL: SELECT demo_hero.") == 1
    assert "MISS: 1 SQL statement" in first
    assert "filled the cache" in first

    second = _section(out, "[2]", "[3]")
    assert "SQL: (none)" in second
    assert "HIT: 0 SQL statements" in second

    third = _section(out, "[3]", "[4]")
    assert "SQL: UPDATE demo_hero" in third
    assert "commit invalidated 1 row" in third

    fourth = _section(out, "[4]", "[5]")
    assert "MISS: 1 SQL statement" in fourth
    assert "HIT: 0 SQL statements" in fourth
    assert "power='teleportation'" in fourth

    assert "us median" in _section(out, "[5]", "[6]")
    assert "hits=" in out.split("[6]", 1)[1]
    assert out.rstrip().endswith("All checks passed.")
    assert not SQLModelCache.is_configured()


def test_demo_runs_twice_in_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    """Each run starts from an empty database and cache, so a second run passes too."""
    assert main(["demo", "--reads", "5", "--rows", "1", "--no-color"]) == 0
    assert main(["demo", "--reads", "5", "--rows", "7", "--no-color"]) == 0
    assert "seeded 7 row(s)" in capsys.readouterr().out


def test_no_command_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, the help is printed and the exit status is 2."""
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "usage: sqlmodel-cache" in captured.err
    assert "demo" in captured.err


def test_invalid_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A non-positive ``--reads`` is rejected by argparse with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--reads", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_demo_fails_when_a_hit_issues_sql(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache that never returns what it stored turns the promised hit into SQL: exit 1."""
    monkeypatch.setattr(_demo, "MemoryTransport", Forgetful)
    assert main(["demo", "--reads", "5", "--no-color"]) == 1
    captured = capsys.readouterr()
    assert "expected a cache hit with no SQL" in captured.err
    assert "All checks passed" not in captured.out
    assert not SQLModelCache.is_configured()


@pytest.mark.redis
def test_demo_against_redis_cleans_up_its_keys(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against a real Redis (``redis_server`` from conftest, started with
    ``tests.servers.start_redis``) the demo passes and leaves none of its keys behind."""
    import redis

    assert main(["demo", "--redis-url", redis_server.url, "--reads", "50", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert f"Redis at {redis_server.url}" in out
    assert "HIT: 0 SQL statements" in out
    assert "commit invalidated 1 row" in out
    assert "All checks passed." in out
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match="sqlmodelcache-demo-*")) == []
    finally:
        client.close()


def test_unreachable_redis_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable Redis gives exit status 1 and one line on stderr, no traceback."""
    assert main(["demo", "--redis-url", "redis://127.0.0.1:1/0", "--no-color"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot use Redis at redis://127.0.0.1:1/0")
    assert "Traceback" not in captured.err
    assert not SQLModelCache.is_configured()


def test_redis_password_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """The error message hides the password of the Redis URL."""
    assert main(["demo", "--redis-url", "redis://user:hunter2@127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "user:***@127.0.0.1:1" in err


def test_missing_redis_package_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redis-py, ``--redis-url`` says which extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    assert main(["demo", "--redis-url", "redis://127.0.0.1:1/0", "--no-color"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'sqlmodel-cache[redis]'" in err


def test_module_entry_point_runs_the_demo() -> None:
    """``python -m sqlmodel_cache.cli demo`` runs in a fresh interpreter and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "sqlmodel_cache.cli", "demo", "--reads", "20", "--no-color"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "HIT: 0 SQL statements" in result.stdout
    assert "All checks passed." in result.stdout


#: What ``pip install .`` leaves out: every package only an extra brings.
EXTRAS_ONLY = ("greenlet", "redis", "rich", "opentelemetry", "prometheus_client")

_WITHOUT_EXTRAS = f"""
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def _without_extras(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``program`` in a fresh interpreter where no package of an extra can be imported."""
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS + program, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_the_readme_demo_runs_with_the_base_dependencies_only(tmp_path: Path) -> None:
    """``pip install . && sqlmodel-cache demo``, the README's first command, installs no
    extra: the demo (and importing the library) must work with none of them, greenlet
    included (SQLAlchemy 2.1 does not install it), here made unimportable."""
    program = "from sqlmodel_cache.cli import main\nsys.exit(main(sys.argv[1:]))"
    result = _without_extras(program, "demo", "--reads", "5", "--no-color", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SQL: SELECT demo_hero." in result.stdout


def test_the_pytest_plugin_works_with_the_base_dependencies_only(tmp_path: Path) -> None:
    """Installing the package registers its pytest plugin in every test run of the
    project: with no extra installed, its in-process fixture still serves a test."""
    (tmp_path / "test_cached.py").write_text(
        """
from sqlmodel import Field, Session, SQLModel, create_engine

from sqlmodel_cache import CacheConfig


class Pet(SQLModel, table=True):
    __cache_config__ = CacheConfig(ttl=60)
    id: int | None = Field(default=None, primary_key=True)
    name: str


def test_second_read_is_a_hit(sqlmodel_cache, sql_counter):
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Pet(id=1, name="Rex"))
        session.commit()
    counter = sql_counter(engine)
    for _ in range(2):
        with Session(engine) as session:
            assert session.get(Pet, 1).name == "Rex"
    assert len(counter.statements) == 1
""",
        encoding="utf-8",
    )
    program = "import pytest\nsys.exit(pytest.main(sys.argv[1:]))"
    result = _without_extras(program, "-q", "-p", "no:cacheprovider", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
