"""Every check the project runs, one command: ``python -m nox``.

Sessions: ``checks`` (ruff lint + format, mypy --strict, strict docs build), ``tests``
on SQLAlchemy 2.0 and 2.1 (with coverage), and ``bench_smoke`` (every benchmark scenario in
every variant, a few iterations each, so the suite cannot rot). Servers (Redis, PostgreSQL)
are started by the test-suite and the benchmarks themselves; under ``CI=true`` a missing
server fails the run instead of skipping.

Not run by default, nor in CI: ``bench``, the full benchmark suite (``python -m nox -s
bench``; see benchmarks/README.md), and ``mutation``, mutation testing of the core modules
with mutmut (``python -m nox -s mutation``; see its docstring for how to read the results).
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


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing of the core modules with mutmut 3: which plausible bugs no test sees.

    The modules and the tests are listed in ``[tool.mutmut]`` in pyproject.toml (one module
    a line; the tests are those on the memory transport and SQLite, in this process). mutmut
    copies the package and the tests to ``mutants/`` (git-ignored), makes one small change
    at a time inside a function (a *mutant*) and runs the tests that reach that function: a
    mutant no test fails on has *survived*. Arguments after ``--`` go to ``mutmut run``:
    mutant-name globs narrow a run to some modules (and test their mutants again); without
    them, a run resumes where the last one stopped::

        python -m nox -s mutation -- --max-children 2 "sqlmodel_cache._keys.*"

    Cost: a run first generates the mutants, runs every selected test once to learn which
    tests reach which function (about a minute; new tests only, later) and the tests of the
    chosen mutants once unchanged; then a mutant a test kills costs a few seconds, a
    survivor up to a minute (it runs every test that reaches its function). Measured on 2
    shared cores: ``_keys.py`` and ``_breaker.py`` (48 mutants) from scratch, virtual
    environment included, 3 minutes; ``_pending.py`` and ``_invalidation.py`` (169), 2 to
    5 minutes; ``_writes.py`` (273), 13 minutes. The listed modules make about 2,600
    mutants, most in the read path: a whole run takes a few hours.

    Reading the results (this session prints the first, without the mutants not run yet;
    run the others with ``.nox/mutation/bin/mutmut`` or any mutmut 3, from this directory)::

        mutmut results              # every mutant not killed: survived, timeout, not checked
        mutmut show NAME            # the change a mutant made, as a diff
        mutmut browse               # the same, interactively; retests one after a fix

    Each survivor is either a missing test (write one that fails with the mutant applied:
    ``mutmut apply NAME`` writes it into the source, ``git checkout`` takes it back; never
    commit one) or an equivalent mutant, which changes nothing observable (``encode("ASCII")``
    for ``encode("ascii")``, a default no caller uses): leave it, or delete the dead code it
    points at. The tests here leave Redis out: run the whole suite on a survivor (applied)
    before writing a test, in case a Redis test kills it. After a change, a new run tests
    again only the functions that changed.
    """
    session.install("-e", ".[test]", "mutmut>=3.8,<4")
    session.run("mutmut", "run", *session.posargs)
    # The mutants run and not killed (`mutmut results` also lists every one not run yet).
    results = session.run("mutmut", "results", silent=True)
    lines = [line for line in str(results).splitlines() if not line.endswith(": not checked")]
    session.log("Not killed:\n" + ("\n".join(lines) or "    none"))
