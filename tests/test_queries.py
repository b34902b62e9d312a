"""``select()`` caching: hits, and never a stale or uncommitted result, in every
(session x transport x database) combination."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, literal_column, text, update
from sqlmodel import Session, col, select

from sqlmodel_cache import SQLModelCache
from tests.helpers import Env, EnvSession, Flaky, truncate_postgres
from tests.models import (
    Author,
    Course,
    Employee,
    Fact,
    Hero,
    Manager,
    Note,
    Student,
    Team,
    Tip,
)


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        avengers, defenders = Team(id=1, name="Avengers"), Team(id=2, name="Defenders")
        session.add_all([avengers, defenders])
        session.add_all(
            [
                Hero(id=1, name="Spider", power=10, team_id=1),
                Hero(id=2, name="Iron", power=20, team_id=1),
                Hero(id=3, name="Daredevil", power=15, team_id=2),
            ]
        )
        session.commit()

    env.run(body)
    env.reset_sql()


def _strong_names(session: Session) -> list[str]:
    statement = select(Hero).where(Hero.power >= 15).order_by(col(Hero.id))
    return [hero.name for hero in session.exec(statement).all()]


def _twice(env: Env, body: Any) -> Any:
    """Run ``body`` twice: the first run may miss, the second must be served with no SQL."""
    first = env.run(body)
    env.reset_sql()
    second = env.run(body)
    assert env.statements == [], env.statements
    assert second == first
    return second


def _write(env: Env, body: Any) -> None:
    def run(session: Session) -> None:
        body(session)
        session.commit()

    env.run(run)
    env.reset_sql()


def test_entity_query_misses_once_then_hits(env: Env) -> None:
    """The first run of a query issues one SELECT and fills; the next issues none."""
    _seed(env)
    assert env.run(_strong_names) == ["Iron", "Daredevil"]
    assert len(env.selects()) == 1
    env.reset_sql()
    assert env.run(_strong_names) == ["Iron", "Daredevil"]
    assert env.statements == []
    stats = SQLModelCache.stats()["Hero"]
    assert (stats["query_misses"], stats["query_fills"], stats["query_hits"]) == (1, 1, 1)


def test_hit_entities_are_persistent_and_identity_map_aware(env: Env) -> None:
    """Entities from a hit are persistent; an object already in the session is returned as
    that same object; changing one and committing works."""
    _seed(env)
    env.run(_strong_names)

    def body(session: Session) -> None:
        iron = session.get(Hero, 2)
        env.reset_sql()
        heroes = session.exec(select(Hero).where(Hero.power >= 15).order_by(col(Hero.id))).all()
        assert env.statements == []
        assert heroes[0] is iron
        assert heroes[1] in session
        heroes[1].power = 99
        session.commit()

    env.run(body)
    assert env.run(_strong_names) == ["Iron", "Daredevil"]
    assert env.run(lambda s: s.get(Hero, 3).power) == 99  # type: ignore[union-attr]


def test_insert_shows_up_in_a_cached_list(env: Env) -> None:
    """A committed INSERT retires every cached query over the table."""
    _seed(env)
    env.run(_strong_names)
    _write(env, lambda s: s.add(Hero(id=4, name="Thor", power=50)))
    assert env.run(_strong_names) == ["Iron", "Daredevil", "Thor"]


def test_update_and_delete_show_up_in_a_cached_list(env: Env) -> None:
    """ORM updates and deletes retire the queries over the table."""
    _seed(env)
    env.run(_strong_names)
    _write(env, lambda s: setattr(s.get(Hero, 1), "power", 30))
    assert env.run(_strong_names) == ["Spider", "Iron", "Daredevil"]
    _write(env, lambda s: s.delete(s.get(Hero, 2)))
    assert env.run(_strong_names) == ["Spider", "Daredevil"]


def test_bulk_update_and_delete_retire_queries(env: Env) -> None:
    """ORM-enabled bulk UPDATE/DELETE and Core INSERT through the session are seen."""
    _seed(env)
    env.run(_strong_names)
    _write(env, lambda s: s.execute(update(Hero).values(power=1)))
    assert env.run(_strong_names) == []
    _write(env, lambda s: s.execute(insert(Hero).values(id=9, name="Hulk", power=90)))
    assert env.run(_strong_names) == ["Hulk"]
    _write(env, lambda s: s.execute(delete(Hero).where(Hero.power > 50)))
    assert env.run(_strong_names) == []


def test_join_is_retired_by_a_write_to_the_joined_table(env: Env) -> None:
    """A query joining Team is retired when only the team table changes."""
    _seed(env)

    def avengers(session: Session) -> list[str]:
        statement = select(Hero).join(Team).where(Team.name == "Avengers").order_by(col(Hero.id))
        return [hero.name for hero in session.exec(statement)]

    assert _twice(env, avengers) == ["Spider", "Iron"]
    _write(env, lambda s: setattr(s.get(Team, 1), "name", "Renamed"))
    assert env.run(avengers) == []


def test_subquery_table_is_tracked(env: Env) -> None:
    """A table read only inside a subquery (IN (SELECT ...)) retires the query too."""
    _seed(env)

    def in_defenders(session: Session) -> list[str]:
        teams = select(Team.id).where(Team.name == "Defenders")
        statement = select(Hero).where(col(Hero.team_id).in_(teams)).order_by(col(Hero.id))
        return [hero.name for hero in session.exec(statement)]

    assert _twice(env, in_defenders) == ["Daredevil"]
    _write(env, lambda s: setattr(s.get(Team, 1), "name", "Defenders"))
    assert env.run(in_defenders) == ["Spider", "Iron", "Daredevil"]


def test_parameters_are_part_of_the_key(env: Env) -> None:
    """Different parameter values (scalars, IN lists, limit/offset) never share an entry."""
    _seed(env)

    def by_ids(ids: list[int]) -> Any:
        def body(session: Session) -> list[str]:
            statement = select(Hero.name).where(col(Hero.id).in_(ids)).order_by(col(Hero.id))
            return list(session.exec(statement))

        return body

    def page(offset: int) -> Any:
        def body(session: Session) -> list[str]:
            statement = select(Hero.name).order_by(col(Hero.id)).limit(1).offset(offset)
            return list(session.exec(statement))

        return body

    assert _twice(env, by_ids([1, 2])) == ["Spider", "Iron"]
    assert _twice(env, by_ids([3])) == ["Daredevil"]
    assert _twice(env, page(0)) == ["Spider"]
    assert _twice(env, page(2)) == ["Daredevil"]
    assert _twice(env, lambda s: list(s.exec(select(Hero.team_id).distinct()))) in (
        [1, 2],
        [2, 1],
    )


def test_column_select_and_count(env: Env) -> None:
    """Column selects and aggregates are cached and retired by an insert."""
    _seed(env)

    def summary(session: Session) -> tuple[list[tuple[str, int]], int]:
        pairs = session.exec(select(Hero.name, Hero.power).order_by(col(Hero.id))).all()
        count = session.exec(select(func.count()).select_from(Hero)).one()
        return [tuple(pair) for pair in pairs], count  # type: ignore[misc]

    assert _twice(env, summary) == (
        [("Spider", 10), ("Iron", 20), ("Daredevil", 15)],
        3,
    )
    _write(env, lambda s: s.add(Hero(id=4, name="Thor", power=50)))
    assert env.run(summary)[1] == 4


def test_result_methods_on_a_hit(env: Env) -> None:
    """first/one/one_or_none/scalar_one/scalars/iteration/mappings behave on hits."""
    _seed(env)

    def methods(session: Session) -> tuple[Any, ...]:
        by_id = select(Hero).where(Hero.id == 1)
        names = select(Hero.name).order_by(col(Hero.id))
        return (
            session.exec(by_id).first().name,  # type: ignore[union-attr]
            session.exec(by_id).one().name,
            session.exec(select(Hero).where(Hero.id == 99)).one_or_none(),
            session.execute(select(Hero.name).where(Hero.id == 2)).scalar_one(),
            [hero.name for hero in session.scalars(select(Hero).order_by(col(Hero.id)))],
            [row.name for row in session.execute(names)],
            [row["name"] for row in session.execute(names).mappings()],
            [row._mapping[Hero.name] for row in session.execute(names)],
        )

    assert _twice(env, methods) == (
        "Spider",
        "Spider",
        None,
        "Iron",
        ["Spider", "Iron", "Daredevil"],
        ["Spider", "Iron", "Daredevil"],
        ["Spider", "Iron", "Daredevil"],
        ["Spider", "Iron", "Daredevil"],
    )


def test_two_entities_per_row(env: Env) -> None:
    """Rows of (Hero, Team) come back with both entities, by position and by name."""
    _seed(env)

    def pairs(session: Session) -> list[tuple[str, str]]:
        statement = select(Hero, Team).join(Team).order_by(col(Hero.id))
        return [(row.Hero.name, row[1].name) for row in session.execute(statement)]

    assert _twice(env, pairs) == [
        ("Spider", "Avengers"),
        ("Iron", "Avengers"),
        ("Daredevil", "Defenders"),
    ]


def test_uncached_tables_text_and_volatile_functions_are_not_cached(env: Env) -> None:
    """Fail closed: a statement reading a table without __cache_config__, text fragments and
    functions whose value can change without a write always go to the database."""
    _seed(env)
    env.run(lambda s: (s.add(Note(id=1, text="n")), s.commit()))
    statements = [
        select(Note),
        select(Hero).join(Note, Note.id == Hero.id),  # type: ignore[arg-type]
        select(Hero).where(text("power > 5")),
        select(Hero.name, literal_column("1")),
        select(Hero).where(Hero.id > func.random()),
        select(func.now()),
    ]
    for statement in statements:
        env.reset_sql()
        env.run(lambda s, statement=statement: s.execute(statement).all())
        env.run(lambda s, statement=statement: s.execute(statement).all())
        assert len(env.selects()) == 2, statement
    assert [key for key in env.cache_keys() if ":q:" in key] == []


def test_bypasses_for_locks_options_populate_existing_and_text_statements(env: Env) -> None:
    """with_for_update, loader options, populate_existing, cache=False and text() SELECTs
    read the database every time."""
    from sqlalchemy.orm import selectinload

    _seed(env)
    statements: list[Any] = [
        select(Hero).with_for_update(),
        select(Hero).options(selectinload(Hero.team)),  # type: ignore[arg-type]
        select(Hero).execution_options(populate_existing=True),
        select(Hero).execution_options(cache=False),
        text("SELECT name FROM hero"),
    ]
    for statement in statements:
        env.reset_sql()
        for _ in range(2):
            env.run(lambda s, statement=statement: s.execute(statement).all())
        assert len([s for s in env.selects() if "team" not in s.split("FROM")[-1]]) == 2


def test_reads_inside_a_writing_transaction_bypass(env: Env) -> None:
    """After this transaction wrote the table, its queries neither read nor fill the cache;
    after a rollback the cached result is still right."""
    _seed(env)
    env.run(_strong_names)

    def write_then_query(session: Session) -> list[str]:
        session.get(Hero, 1).power = 100  # type: ignore[union-attr]
        session.flush()
        env.reset_sql()
        names = _strong_names(session)
        assert len(env.selects()) == 1
        session.rollback()
        return names

    assert env.run(write_then_query) == ["Spider", "Iron", "Daredevil"]
    env.reset_sql()
    assert env.run(_strong_names) == ["Iron", "Daredevil"]
    assert env.statements == []


def test_savepoints(env: Env) -> None:
    """A released savepoint's write retires the query at commit; a rolled-back one never
    shows."""
    _seed(env)
    env.run(_strong_names)

    def nested(session: Session) -> None:
        with session.begin_nested():
            session.get(Hero, 1).power = 40  # type: ignore[union-attr]
        savepoint = session.begin_nested()
        session.get(Hero, 2).power = 0  # type: ignore[union-attr]
        session.flush()
        savepoint.rollback()
        session.commit()

    env.run(nested)
    assert env.run(_strong_names) == ["Spider", "Iron", "Daredevil"]


def test_joined_inheritance_queries_are_retired_by_either_table(env: Env) -> None:
    """A query over a joined-inheritance subclass reads both tables: a write to the base
    table or to the subclass table retires it. (Entity rows of inherited classes are not
    cached yet; column selects and aggregates are.)"""
    _write(env, lambda s: s.add_all([Manager(id=1, name="Pepper", kind="manager", budget=5)]))

    def managers(session: Session) -> list[tuple[str, int]]:
        statement = select(Manager.name, Manager.budget).order_by(Manager.id)
        return [tuple(row) for row in session.execute(statement)]  # type: ignore[misc]

    assert _twice(env, managers) == [("Pepper", 5)]
    _write(env, lambda s: setattr(s.get(Manager, 1), "budget", 7))
    assert _twice(env, managers) == [("Pepper", 7)]
    _write(env, lambda s: s.execute(update(Employee).values(name="Potts")))
    assert env.run(managers) == [("Potts", 7)]
    assert env.run(lambda s: [m.name for m in s.scalars(select(Manager))]) == ["Potts"]


def test_many_to_many_association_table_retires_queries(env: Env) -> None:
    """Adding a student to a course writes only the association table; queries joining
    through it are retired."""
    _write(
        env,
        lambda s: s.add_all(
            [Course(id=1, title="Math", students=[Student(id=1, name="Ann")]), Student(id=2)]
        ),
    )

    def in_math(session: Session) -> list[str]:
        statement = (
            select(Student.name)
            .join(Student.courses)  # type: ignore[arg-type]
            .where(Course.title == "Math")
            .order_by(col(Student.id))
        )
        return list(session.exec(statement))

    assert _twice(env, in_math) == ["Ann"]

    def name_bob(session: Session) -> None:
        session.get(Student, 2).name = "Bob"  # type: ignore[union-attr]

    _write(env, name_bob)
    assert _twice(env, in_math) == ["Ann"]

    def enroll(session: EnvSession) -> None:
        course, student = session.get(Course, 1), session.get(Student, 2)
        assert course is not None
        assert student is not None
        students = session.run_sync(lambda _: course.students)
        students.append(student)  # writes the enrollment table only

    _write(env, enroll)
    assert env.run(in_math) == ["Ann", "Bob"]


def test_relationship_any_is_cached_and_retired(env: Env) -> None:
    """``Team.heroes.any(...)`` (an EXISTS subquery) is cached and retired by hero writes."""
    _seed(env)

    def strong_teams(session: Session) -> list[str]:
        statement = select(Team.name).where(Team.heroes.any(Hero.power > 18))  # type: ignore[attr-defined]
        return list(session.exec(statement))

    assert _twice(env, strong_teams) == ["Avengers"]
    _write(env, lambda s: setattr(s.get(Hero, 3), "power", 30))
    assert sorted(env.run(strong_teams)) == ["Avengers", "Defenders"]


def test_per_model_control(env: Env) -> None:
    """queries=False keeps a model's queries out of the cache (gets are cached);
    query_ttl sets the lifetime of query entries."""
    _write(env, lambda s: s.add_all([Tip(id=1, text="t"), Fact(id=1, text="f")]))
    for _ in range(2):
        env.run(lambda s: s.exec(select(Tip)).all())
    assert len(env.selects()) == 2
    env.run(lambda s: s.get(Tip, 1))
    assert any(":r:" in key and "{tip}" in key for key in env.cache_keys())
    env.run(lambda s: s.exec(select(Fact)).all())
    [query_key] = [key for key in env.cache_keys() if ":q:" in key]
    remaining = env.ttl(query_key)
    assert remaining is not None
    assert 20 < remaining <= 30


def test_eager_relationship_entities_are_not_cached_by_queries(env: Env) -> None:
    """A model with lazy="selectin" relationships is not served from query entries (its
    collections would not be loaded); the query still works."""
    _write(env, lambda s: s.add(Author(id=1, name="Le Guin")))
    for _ in range(2):
        assert env.run(lambda s: [a.name for a in s.exec(select(Author))]) == ["Le Guin"]
    assert SQLModelCache.stats()["Author"]["query_bypass:eager_relationships"] == 2


def test_entities_the_session_already_held_are_not_stored(env: Env) -> None:
    """An object loaded earlier in the session may be older than the row the query read:
    a result containing it is returned as SQLAlchemy would, but not stored."""
    _seed(env)

    def body(session: Session) -> list[str]:
        held = session.get(Hero, 2)  # referenced: the identity map holds objects weakly
        names = _strong_names(session)
        assert held in session
        return names

    env.run(body)
    assert SQLModelCache.stats()["Hero"]["fill_skipped:session_state"] == 1
    env.reset_sql()
    env.run(_strong_names)
    assert len(env.selects()) == 1  # a miss: nothing had been stored


def test_async_session_exec_directly(env: Env) -> None:
    """``await AsyncSession.exec(select(...))`` is served from the cache (async envs)."""
    _seed(env)
    env.run(_strong_names)
    env.reset_sql()
    if env.mode == "sync":
        assert env.run(_strong_names) == ["Iron", "Daredevil"]
    else:
        from sqlmodel.ext.asyncio.session import AsyncSession

        async def read() -> list[str]:
            async with AsyncSession(env.async_engine) as session:
                statement = select(Hero).where(Hero.power >= 15).order_by(col(Hero.id))
                return [hero.name for hero in (await session.exec(statement)).all()]

        assert env.loop is not None
        assert env.loop.run_until_complete(read()) == ["Iron", "Daredevil"]
    assert env.statements == []


def test_manual_invalidation(env: Env) -> None:
    """invalidate(Model, *pks) / invalidate_model / invalidate_tables retire what changed
    behind the ORM's back (here: SQL through a connection no session uses)."""
    _seed(env)

    def outside_write(sql: str) -> None:
        if env.async_engine is not None:
            assert env.loop is not None

            async def run() -> None:
                assert env.async_engine is not None
                async with env.async_engine.begin() as connection:
                    await connection.execute(text(sql))

            env.loop.run_until_complete(run())
        else:
            with env.engine.begin() as connection:
                connection.execute(text(sql))

    def invalidate(method: str, *args: Any) -> None:
        if env.mode == "async":
            assert env.loop is not None
            env.loop.run_until_complete(getattr(SQLModelCache, f"a{method}")(*args))
        else:
            getattr(SQLModelCache, method)(*args)

    env.run(_strong_names)
    env.run(lambda s: s.get(Hero, 1))
    outside_write("UPDATE hero SET power = 50, name = 'Spidey' WHERE id = 1")
    assert env.run(_strong_names) == ["Iron", "Daredevil"]  # stale, as documented
    invalidate("invalidate", Hero, 1)
    assert env.run(_strong_names) == ["Spidey", "Iron", "Daredevil"]
    assert env.run(lambda s: s.get(Hero, 1).name) == "Spidey"  # type: ignore[union-attr]

    outside_write("UPDATE hero SET name = 'X'")
    invalidate("invalidate_model", Hero)
    assert env.run(lambda s: s.get(Hero, 2).name) == "X"  # type: ignore[union-attr]

    outside_write("UPDATE hero SET name = 'Y'")
    invalidate("invalidate_tables", "hero")
    assert env.run(_strong_names) == ["Y", "Y", "Y"]


def test_the_same_query_in_another_process_shares_the_entry(
    redis_server: Any, postgres_server: Any
) -> None:
    """Two processes with their own engines share one entry: keys are stable across
    processes (no per-process state in them)."""
    truncate_postgres(postgres_server.sync_url)
    prefix = f"shared{os.getpid()}"
    script = textwrap.dedent(
        f"""
        import redis
        from sqlalchemy import create_engine, event
        from sqlmodel import Session, col, select
        from sqlmodel_cache import SQLModelCache
        from sqlmodel_cache.transport import RedisSyncTransport
        from tests.models import Hero

        engine = create_engine({postgres_server.sync_url!r})
        statements = []
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        client = redis.Redis.from_url({redis_server.url!r})
        SQLModelCache.configure(RedisSyncTransport(client), key_prefix={prefix!r})
        with Session(engine) as session:
            if not session.get(Hero, 1):
                session.add(Hero(id=1, name="Spider", power=10))
                session.commit()
        statements.clear()
        with Session(engine) as session:
            names = session.exec(select(Hero.name).where(Hero.power > 5)).all()
        print(len(statements), list(names))
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert outputs == ["1 ['Spider']", "0 ['Spider']"]


@pytest.mark.parametrize("size", [50_000])
def test_results_above_the_size_limit_are_not_stored(mem_env: Env, size: int) -> None:
    """A result larger than max_entry_bytes is returned but not stored."""
    mem_env.run(lambda s: (s.add(Hero(id=1, name="x" * size)), s.commit()))
    SQLModelCache.configure(mem_env.transport, key_prefix=mem_env.prefix, max_entry_bytes=1024)
    mem_env.run(lambda s: s.exec(select(Hero)).all())
    assert SQLModelCache.stats()["Hero"]["query_bypass:too_large"] == 1


def test_unique_works_on_hits(env: Env) -> None:
    """``Result.unique()`` compares entities by identity on a hit, as the ORM does."""
    _seed(env)

    def unique_names(session: Session) -> list[str]:
        heroes = session.execute(select(Hero).order_by(col(Hero.id))).unique().scalars().all()
        return [hero.name for hero in heroes]

    assert _twice(env, unique_names) == ["Spider", "Iron", "Daredevil"]


def test_a_hit_is_one_transport_call_and_compiles_nothing(
    mem_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a shape has been seen once, a hit makes exactly one transport call and never
    compiles SQL (the shape is memoised by SQLAlchemy's statement cache key)."""
    from sqlalchemy.sql import ClauseElement

    _seed(mem_env)
    counting = Flaky(mem_env.transport)
    SQLModelCache.configure(counting, key_prefix=mem_env.prefix)
    mem_env.run(_strong_names)

    def no_compile(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("compiled on the hit path")

    monkeypatch.setattr(ClauseElement, "compile", no_compile)
    counting.calls = 0
    mem_env.reset_sql()
    assert mem_env.run(_strong_names) == ["Iron", "Daredevil"]
    assert counting.calls == 1
    assert mem_env.statements == []


def test_schema_translate_map_bypasses(mem_env: Env) -> None:
    """Keys do not name the schema, so reads under a schema_translate_map bypass the cache
    (one statement, several tenants' schemas, must never share an entry)."""
    _seed(mem_env)
    translated = mem_env.engine.execution_options(schema_translate_map={None: "main"})
    for _ in range(2):
        with Session(translated) as session:
            assert session.get(Hero, 1) is not None
            assert len(session.exec(select(Hero)).all()) == 3
    assert len(mem_env.selects()) == 4
    assert mem_env.row_keys() == []


def test_concurrent_commit_during_a_query_miss_never_leaves_a_stale_result(
    postgres_server: Any, redis_server: Any
) -> None:
    """SPEC C2 for query entries: a reader runs its SELECT, a writer commits an INSERT
    (moving the table's tag) before the reader stores its result; that result carries the
    old tag, so the next read is a miss that sees the new row. PostgreSQL + Redis."""
    import threading

    import redis
    from sqlalchemy import create_engine, event

    from sqlmodel_cache.transport import RedisSyncTransport

    truncate_postgres(postgres_server.sync_url)
    engine = create_engine(postgres_server.sync_url)
    with Session(engine) as session:
        session.add(Hero(id=1, name="Old", power=10))
        session.commit()
    client = redis.Redis.from_url(redis_server.url)
    SQLModelCache.configure(RedisSyncTransport(client), key_prefix=f"qrace{os.getpid()}")
    raced = threading.Event()

    def writer_commits_now(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if raced.is_set() or "WHERE hero.power" not in statement:
            return
        raced.set()
        with Session(engine) as writer:  # another connection, mid-miss
            writer.add(Hero(id=2, name="New", power=10))
            writer.commit()

    def names() -> list[str]:
        with Session(engine) as session:
            statement = select(Hero.name).where(Hero.power >= 10).order_by(col(Hero.id))
            return list(session.exec(statement))

    event.listen(engine, "after_cursor_execute", writer_commits_now)
    assert names() == ["Old"]  # read before the writer's commit
    assert raced.is_set()
    assert names() == ["Old", "New"]  # the result stored mid-race was never served
    assert SQLModelCache.stats()["Hero"]["query_misses"] == 2
    client.close()
    engine.dispose()


def test_parameter_values_of_different_types_never_share_an_entry(mem_env: Env) -> None:
    """inf and -inf, an enum member and its value: JSON would spell them alike; the key
    does not, so each gets its own entry and the right answer."""
    from tests.models import Color, Specimen

    mem_env.run(
        lambda s: (s.add_all([Specimen(id=1, ratio=0.5), Specimen(id=2, ratio=2.0)]), s.commit())
    )

    def ids(statement: Any) -> Any:
        return lambda s: list(s.exec(statement))

    assert mem_env.run(ids(select(Specimen.id).where(Specimen.ratio < float("inf")))) == [1, 2]
    assert mem_env.run(ids(select(Specimen.id).where(Specimen.ratio < float("-inf")))) == []
    assert mem_env.run(ids(select(Specimen.id).where(Specimen.color == Color.RED))) == [1, 2]
    assert mem_env.run(ids(select(Specimen.id).where(Specimen.color == "red"))) == []


def test_corrupt_query_entries_are_misses_and_never_touch_the_session(mem_env: Env) -> None:
    """A query entry whose last row is corrupt is a miss: no object built from its valid
    first rows reaches the session, and the database answers."""
    _seed(mem_env)
    mem_env.run(_strong_names)
    [key] = [k for k in mem_env.cache_keys() if ":q:" in k]
    entry = mem_env.raw_get(key)
    assert entry is not None
    header_size = entry.index(b"[[")
    rows = entry[header_size:]
    forged = rows.replace(b'"Iron"', b'"Forged"').replace(b'"Daredevil"', b"15")
    mem_env.raw_set(key, entry[:header_size] + forged)
    attached: list[object] = []

    def read(session: Session) -> list[str]:
        from sqlalchemy import event

        event.listen(session, "before_attach", lambda _s, obj: attached.append(obj))
        return _strong_names(session)

    assert mem_env.run(read) == ["Iron", "Daredevil"]
    assert attached == []  # nothing built from the entry joined the session
    assert SQLModelCache.stats()["Hero"]["errors"] == 1


def test_query_reads_fail_open(mem_env: Env) -> None:
    """A failing transport makes a query go to the database, counted, never raised."""
    _seed(mem_env)
    flaky = Flaky(mem_env.transport)
    SQLModelCache.configure(flaky, key_prefix=mem_env.prefix)
    flaky.failing = True
    assert mem_env.run(_strong_names) == ["Iron", "Daredevil"]
    assert SQLModelCache.stats()["Hero"]["errors"] == 1
