"""Every check the project runs, one command: ``python -m nox``.

Sessions: ``checks`` (ruff lint + format, mypy --strict, strict docs build) and ``tests``
on SQLAlchemy 2.0 and 2.1 (with coverage). Servers (Redis, PostgreSQL) are started by the
test-suite itself; under ``CI=true`` a missing server fails the run instead of skipping.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["checks", "tests"]
nox.options.reuse_existing_virtualenvs = True

SQLALCHEMY = {"2.0": "sqlalchemy>=2.0.30,<2.1", "2.1": "sqlalchemy>=2.1.0b1,<2.2"}


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
