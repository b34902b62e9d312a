"""Every check the project runs, one command: ``python -m nox``.

Sessions: ``checks`` (ruff lint + format, mypy --strict, strict docs build), ``tests``
on SQLAlchemy 2.0 and 2.1 (with coverage), and ``bench_smoke`` (every benchmark scenario in
every variant, a few iterations each, so the suite cannot rot). Servers (Redis, PostgreSQL)
are started by the test-suite and the benchmarks themselves; under ``CI=true`` a missing
server fails the run instead of skipping.

Not run by default: ``bench``, the full benchmark suite (``python -m nox -s bench``; see
benchmarks/README.md).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["checks", "tests", "bench_smoke"]
nox.options.reuse_existing_virtualenvs = True

SQLALCHEMY = {"2.0": "sqlalchemy>=2.0.30,<2.1", "2.1": "sqlalchemy>=2.1.0b1,<2.2"}
# The benchmarks' own environment: this repository on SQLAlchemy 2.1 with every driver. The
# runner builds the SQLAlchemy 2.0 and sqlmodel-cache 0.1.1 environments itself (.nox/bench-venvs).
BENCH = (
    "-e",
    ".[redis,async]",
    SQLALCHEMY["2.1"],
    "psycopg[binary]>=3.1",
    "asyncpg>=0.29",
    "aiosqlite>=0.20",
)


@nox.session
def checks(session: nox.Session) -> None:
    """Lint, format check, strict typing and the strict docs build."""
    session.install("-e", ".[lint,docs,test]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "sqlmodel_cache")
    site = f"{session.create_tmp()}/site"
    session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
@nox.parametrize("sqlalchemy", list(SQLALCHEMY))
def tests(session: nox.Session, sqlalchemy: str) -> None:
    """The whole test-suite against real servers, on one SQLAlchemy version."""
    session.install("-e", ".[test]", SQLALCHEMY[sqlalchemy])
    session.run("python", "-c", "import sqlalchemy; print('SQLAlchemy', sqlalchemy.__version__)")
    session.run(
        "pytest",
        "--cov=sqlmodel_cache",
        "--cov-report=term-missing:skip-covered",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The full benchmark suite, about 3 minutes (see benchmarks/README.md).

    Arguments after ``--`` go to benchmarks/run.py, e.g. ``--only pg.sync`` or
    ``--profile sqlite.sync.get_hit.redis``.
    """
    session.install(*BENCH, "pyinstrument>=4")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def bench_smoke(session: nox.Session) -> None:
    """Every benchmark scenario and variant, a few iterations, no targets: fails on any error."""
    session.install(*BENCH)
    session.run("python", "benchmarks/run.py", "--smoke", *session.posargs)
