"""``session.get()`` read path and commit invalidation, in every (session x transport x db)."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import inspect, text, update
from sqlalchemy.orm import selectinload
from sqlmodel import Session, select

from sqlmodel_cache import SQLModelCache
from tests.helpers import Env, EnvSession, assert_missing_greenlet
from tests.models import (
    Album,
    Author,
    Book,
    Color,
    Course,
    Document,
    Enrollment,
    Gadget,
    Hero,
    Membership,
    Note,
    Reading,
    Shelf,
    ShelfItem,
    Specimen,
    Student,
    Switched,
    Team,
    Track,
)


def _seed(env: Env) -> None:
    def body(session: Session) -> None:
        team = Team(name="Avengers")
        session.add(team)
        session.flush()
        session.add(Hero(name="Spider", power=10, team_id=team.id))
        session.add(Hero(name="Iron", power=20, team_id=team.id))
        session.commit()

    env.run(body)
    env.reset_sql()


def _name_of(hero_id: object) -> object:
    def body(session: Session) -> object:
        hero = session.get(Hero, hero_id)
        return None if hero is None else hero.name

    return body


def test_miss_issues_one_select_then_hit_issues_none(env: Env) -> None:
    """The first get reads the database once and fills; the next get issues no SQL."""
    _seed(env)
    assert env.run(_name_of(1)) == "Spider"
    assert len(env.selects()) == 1
    assert len(env.row_keys()) == 1
    env.reset_sql()
    assert env.run(_name_of(1)) == "Spider"
    assert env.statements == []
    stats = SQLModelCache.stats()["Hero"]
    assert (stats["misses"], stats["fills"], stats["hits"]) == (1, 1, 1)


def test_hit_returns_a_persistent_instance_that_can_be_changed(env: Env) -> None:
    """A hit is a normal persistent object: changing it and committing issues an UPDATE."""
    _seed(env)
    env.run(_name_of(1))

    def change(session: Session) -> None:
        hero = session.get(Hero, 1)
        assert hero is not None
        state = inspect(hero)
        assert state.persistent
        assert hero in session
        assert session.get(Hero, 1) is hero  # identity map
        hero.power = 99
        session.commit()

    env.reset_sql()
    env.run(change)
    assert [s for s in env.statements if s.lstrip().upper().startswith("UPDATE")]
    assert env.selects() == []
    assert env.run(lambda s: s.get(Hero, 1).power) == 99  # type: ignore[union-attr]


def test_lazy_many_to_one_after_a_hit_loads_and_is_cached_too(env: Env) -> None:
    """After a hit, ``hero.team`` lazy-loads; that load is a get, so it is cached as well.
    (An async application awaits the load: ``run_sync`` here, ``awaitable_attrs`` there.)"""
    _seed(env)

    def team_name(session: EnvSession) -> str:
        hero = session.get(Hero, 1)
        assert hero is not None
        team = session.run_sync(lambda _: hero.team)
        assert team is not None
        return team.name

    assert env.run(team_name) == "Avengers"
    env.reset_sql()
    assert env.run(team_name) == "Avengers"
    assert env.statements == []


def test_eager_relationships_are_loaded_on_a_hit(env: Env) -> None:
    """A model with ``lazy="selectin"`` has its collection loaded on a hit too."""

    def seed(session: Session) -> None:
        author = Author(name="Le Guin", books=[Book(title="Earthsea"), Book(title="Lathe")])
        session.add(author)
        session.commit()

    env.run(seed)

    def titles(session: Session) -> list[str]:
        author = session.get(Author, 1)
        assert author is not None
        assert "books" in inspect(author).dict  # loaded without touching the attribute
        return sorted(book.title for book in author.books)

    assert env.run(titles) == ["Earthsea", "Lathe"]
    env.reset_sql()
    assert env.run(titles) == ["Earthsea", "Lathe"]
    assert len(env.selects()) == 1  # the collection; the author came from the cache


def test_update_commit_invalidates_the_row(env: Env) -> None:
    """A committed update removes the entry before ``commit()`` returns."""
    _seed(env)
    env.run(_name_of(1))

    def rename(session: Session) -> None:
        hero = session.get(Hero, 1)
        assert hero is not None
        hero.name = "Venom"
        session.commit()
        assert env.row_keys() == []  # invalidated by the time commit() returned

    env.run(rename)
    env.reset_sql()
    assert env.run(_name_of(1)) == "Venom"
    assert len(env.selects()) == 1
    env.reset_sql()
    assert env.run(_name_of(1)) == "Venom"
    assert env.statements == []


def test_delete_commit_invalidates_the_row(env: Env) -> None:
    """A deleted row is not served from the cache afterwards."""
    _seed(env)
    env.run(_name_of(2))

    def delete(session: Session) -> None:
        session.delete(session.get(Hero, 2))
        session.commit()

    env.run(delete)
    assert env.run(_name_of(2)) is None


def test_rollback_touches_nothing(env: Env) -> None:
    """A rolled-back change leaves the cached value in place and correct."""
    _seed(env)
    env.run(_name_of(1))
    before = env.cache_keys()

    def change_and_roll_back(session: Session) -> None:
        hero = session.get(Hero, 1)
        assert hero is not None
        hero.name = "Uncommitted"
        session.flush()
        session.rollback()

    env.run(change_and_roll_back)
    assert env.cache_keys() == before
    env.reset_sql()
    assert env.run(_name_of(1)) == "Spider"
    assert env.statements == []


def test_reads_inside_a_writing_transaction_bypass_the_cache(env: Env) -> None:
    """Read-your-own-writes: once a transaction wrote a table, its gets neither read nor
    fill the cache, so an uncommitted value can never reach it."""
    _seed(env)
    env.run(_name_of(2))  # cached

    def write_then_read(session: Session) -> None:
        hero = session.get(Hero, 1)
        assert hero is not None
        hero.name = "Uncommitted"
        session.flush()
        session.expunge_all()
        env.reset_sql()
        assert session.get(Hero, 1).name == "Uncommitted"  # type: ignore[union-attr]
        assert session.get(Hero, 2).name == "Iron"  # type: ignore[union-attr]
        assert len(env.selects()) == 2  # both from the database, hero 2 despite its entry
        session.rollback()

    env.run(write_then_read)
    assert env.run(_name_of(1)) == "Spider"
    assert SQLModelCache.stats()["Hero"]["bypass:own_writes"] == 2


def test_autoflushed_pending_row_is_never_cached(env: Env) -> None:
    """A get that autoflushes a pending INSERT reads an uncommitted row: it must not be
    stored, so after the rollback the row does not exist for anyone."""

    def add_get_roll_back(session: Session) -> str:
        session.add(Hero(id=9, name="Pending"))
        hero = session.get(Hero, 9)  # autoflush inside the get, then SELECT
        assert hero is not None
        name = hero.name
        session.rollback()
        return name

    assert env.run(add_get_roll_back) == "Pending"
    assert env.row_keys() == [] or all(env.raw_get(k)[:1] == b"L" for k in env.row_keys())  # type: ignore[index]
    assert env.run(_name_of(9)) is None


def test_released_savepoint_is_invalidated_at_commit(env: Env) -> None:
    """Writes in a released savepoint are invalidated by the outer commit."""
    _seed(env)
    env.run(_name_of(1))

    def nested(session: Session) -> None:
        with session.begin_nested():
            session.get(Hero, 1).name = "Nested"  # type: ignore[union-attr]
        session.commit()

    env.run(nested)
    assert env.run(_name_of(1)) == "Nested"


def test_rolled_back_savepoint_keeps_values_correct(env: Env) -> None:
    """A rolled-back savepoint's write never shows; the outer commit's write does."""
    _seed(env)
    env.run(_name_of(1))
    env.run(_name_of(2))

    def nested(session: Session) -> None:
        savepoint = session.begin_nested()
        session.get(Hero, 1).name = "Discarded"  # type: ignore[union-attr]
        session.flush()
        savepoint.rollback()
        session.get(Hero, 2).name = "Kept"  # type: ignore[union-attr]
        session.commit()

    env.run(nested)
    assert env.run(_name_of(1)) == "Spider"
    assert env.run(_name_of(2)) == "Kept"


def test_bulk_update_invalidates_every_cached_row_of_the_table(env: Env) -> None:
    """An ORM bulk UPDATE changes the table's row tag: all cached rows become misses."""
    _seed(env)
    env.run(_name_of(1))
    env.run(_name_of(2))

    def bulk(session: Session) -> None:
        session.execute(update(Hero).values(name="Bulk"))
        session.commit()

    env.run(bulk)
    env.reset_sql()
    assert env.run(_name_of(1)) == "Bulk"
    assert env.run(_name_of(2)) == "Bulk"
    assert len(env.selects()) == 2
    env.reset_sql()
    assert env.run(_name_of(1)) == "Bulk"
    assert env.statements == []


def test_core_update_through_the_session_invalidates(env: Env) -> None:
    """A Core ``update(table)`` executed by the session invalidates that table."""
    _seed(env)
    env.run(_name_of(1))

    def core(session: Session) -> None:
        table = Hero.__table__  # type: ignore[attr-defined]
        session.execute(update(table).where(table.c.id == 1).values(name="Core"))
        session.commit()

    env.run(core)
    assert env.run(_name_of(1)) == "Core"


def test_core_dml_on_the_session_connection_is_seen(env: Env) -> None:
    """``session.connection().execute(update(...))`` bypasses the session's events but not
    the cache: gets in that transaction bypass it, and the commit invalidates the table."""
    _seed(env)
    env.run(_name_of(1))
    env.run(_name_of(2))

    def direct(session: Session) -> None:
        table = Hero.__table__  # type: ignore[attr-defined]
        session.connection().execute(update(table).where(table.c.id == 1).values(name="Direct"))
        session.expunge_all()
        env.reset_sql()
        assert session.get(Hero, 1).name == "Direct"  # type: ignore[union-attr]
        assert len(env.selects()) == 1  # uncommitted: read from the database, not stored
        session.commit()

    env.run(direct)
    assert env.run(_name_of(1)) == "Direct"
    assert env.run(_name_of(2)) == "Iron"


def test_driver_sql_on_the_session_connection_rolls_back_cleanly(env: Env) -> None:
    """Raw driver SQL that is rolled back leaves no trace in the cache."""
    _seed(env)
    env.run(_name_of(1))

    def raw_then_roll_back(session: Session) -> None:
        session.connection().exec_driver_sql("UPDATE hero SET name = 'Ghost' WHERE id = 1")
        session.expunge_all()
        assert session.get(Hero, 1).name == "Ghost"  # type: ignore[union-attr]
        session.rollback()

    env.run(raw_then_roll_back)
    env.reset_sql()
    assert env.run(_name_of(1)) == "Spider"
    assert env.statements == []  # the committed entry is still there and still right


def test_a_row_update_leaves_other_cached_rows_alone(env: Env) -> None:
    """Row-level invalidation: updating hero 1 keeps hero 2's entry (a flush is not bulk)."""
    _seed(env)
    env.run(_name_of(1))
    env.run(_name_of(2))

    def rename(session: Session) -> None:
        session.get(Hero, 1).name = "Changed"  # type: ignore[union-attr]
        session.commit()

    env.run(rename)
    env.reset_sql()
    assert env.run(_name_of(2)) == "Iron"
    assert env.statements == []


def test_text_dml_through_the_session_invalidates_every_cached_table(env: Env) -> None:
    """Raw SQL writes cannot be attributed to a table, so the commit invalidates them all."""
    _seed(env)
    env.run(_name_of(1))

    def raw(session: Session) -> None:
        session.execute(text("UPDATE hero SET name = 'Raw' WHERE id = 1"))
        assert session.get(Hero, 2) is not None  # bypassed: this transaction wrote raw SQL
        session.commit()

    env.run(raw)
    assert env.run(_name_of(1)) == "Raw"


def test_text_select_does_not_disable_the_cache(env: Env) -> None:
    """A raw SELECT in a transaction is a read: gets after it are still served."""
    _seed(env)
    env.run(_name_of(1))

    def read(session: Session) -> str:
        session.execute(text("SELECT 1"))
        env.reset_sql()
        return session.get(Hero, 1).name  # type: ignore[union-attr]

    assert env.run(read) == "Spider"
    assert env.statements == []


def test_insert_then_get(env: Env) -> None:
    """A missing row is not cached as missing: inserting it makes the next get find it."""
    assert env.run(_name_of(7)) is None

    def insert(session: Session) -> None:
        session.add(Hero(id=7, name="New"))
        session.commit()

    env.run(insert)
    assert env.run(_name_of(7)) == "New"


def test_cache_false_bypasses_reads_and_fills(env: Env) -> None:
    """``execution_options={"cache": False}`` goes to the database and stores nothing."""
    _seed(env)
    for _ in range(2):
        env.run(lambda s: s.get(Hero, 1, execution_options={"cache": False}))
    assert len(env.selects()) == 2
    assert env.row_keys() == []
    assert SQLModelCache.stats()["Hero"]["bypass:option"] == 2


def test_cache_ttl_option_sets_the_entry_ttl(env: Env) -> None:
    """``execution_options={"cache_ttl": 60}`` stores the entry for 60 s, not the model's 300."""
    _seed(env)
    env.run(lambda s: s.get(Hero, 1, execution_options={"cache_ttl": 60}))
    [key] = env.row_keys()
    remaining = env.ttl(key)
    assert remaining is not None
    assert 50 < remaining <= 60
    env.run(_name_of(2))
    [other] = [k for k in env.row_keys() if k != key]
    remaining = env.ttl(other)
    assert remaining is not None
    assert 250 < remaining <= 300


def test_invalid_cache_ttl_option_falls_back_to_the_database(env: Env) -> None:
    """A bad per-call TTL is not an error on a read: the read bypasses the cache."""
    _seed(env)
    assert env.run(lambda s: s.get(Hero, 1, execution_options={"cache_ttl": -5}).name) == "Spider"  # type: ignore[union-attr]
    assert env.row_keys() == []


def test_bypasses_for_locking_refreshing_and_options(env: Env) -> None:
    """populate_existing, with_for_update, loader options, refresh() and expired or deferred
    attribute loads always read the database."""
    _seed(env)
    env.run(_name_of(1))  # cached

    def reads(session: EnvSession) -> None:
        env.reset_sql()
        session.get(Hero, 1, populate_existing=True)
        session.expunge_all()
        session.get(Hero, 1, with_for_update=True)
        session.expunge_all()
        session.get(Hero, 1, options=[selectinload(Hero.team)])  # type: ignore[arg-type]
        assert len(env.selects()) >= 3
        hero = session.get(Hero, 1)
        env.reset_sql()
        session.refresh(hero)
        assert len(env.selects()) == 1
        session.expire(hero, ["name"])
        env.reset_sql()
        assert session.run_sync(lambda _: hero.name) == "Spider"  # type: ignore[union-attr]
        assert len(env.selects()) == 1

    env.run(reads)
    bypasses = SQLModelCache.stats()["Hero"]
    assert bypasses["bypass:populate_existing"] == 1
    assert bypasses["bypass:statement_options"] == 2


def test_deferred_column_loads_from_the_database(env: Env) -> None:
    """A deferred column is not in the entry; reading it after a hit issues one SELECT."""

    def seed(session: Session) -> None:
        session.add(Document(id=1, title="Spec", body="long text"))
        session.commit()

    env.run(seed)
    env.run(lambda s: s.get(Document, 1))

    def read(session: EnvSession) -> tuple[str, int, str, int]:
        env.reset_sql()
        doc = session.get(Document, 1)
        assert doc is not None
        title, after_get = doc.title, len(env.selects())
        return title, after_get, session.run_sync(lambda _: doc.body), len(env.selects())

    assert env.run(read) == ("Spec", 0, "long text", 1)


def test_models_without_cache_config_are_never_cached(env: Env) -> None:
    """Models without ``__cache_config__`` (or with ``enabled=False``) always read the DB."""

    def seed(session: Session) -> None:
        session.add(Note(id=1, text="n"))
        session.add(Switched(id=1, text="s"))
        session.commit()

    env.run(seed)
    for _ in range(2):
        env.run(lambda s: (s.get(Note, 1), s.get(Switched, 1)))
    assert len(env.selects()) == 4
    assert env.row_keys() == []


def test_other_key_spellings_bypass_instead_of_making_a_second_entry(env: Env) -> None:
    """``get(Hero, "1")`` never creates a second entry that an invalidation of the canonical
    key would miss: it bypasses the cache (a str UUID the drivers refuse anyway)."""
    _seed(env)
    gadget_id = uuid.uuid4()
    env.run(lambda s: (s.add(Gadget(id=gadget_id, label="a")), s.commit()))
    env.run(_name_of(1))
    env.run(lambda s: s.get(Gadget, gadget_id))
    keys = env.row_keys()
    assert len(keys) == 2
    if env.async_engine is None or env.db == "sqlite":  # asyncpg itself rejects "1" for an int
        env.reset_sql()
        assert env.run(_name_of("1")) == "Spider"
        assert len(env.selects()) == 1
        assert env.row_keys() == keys
        assert SQLModelCache.stats()["Hero"]["bypass:key_type"] == 1

    def relabel(session: Session) -> None:
        session.get(Gadget, gadget_id).label = "b"  # type: ignore[union-attr]
        session.commit()

    env.run(relabel)
    env.reset_sql()
    assert env.run(lambda s: s.get(Gadget, gadget_id).label) == "b"  # type: ignore[union-attr]
    assert len(env.selects()) == 1


def test_integer_keys_are_spelled_as_json_and_huge_ones_bypass(mem_env: Env) -> None:
    """Integer keys take a shortcut to their JSON spelling; it must be orjson's exactly (an
    invalidation computes the same key), and an integer JSON cannot hold (beyond 64 bits)
    reads the database, which then answers as it would without the cache."""
    from sqlmodel_cache import _state
    from sqlmodel_cache._codec import encode_key_part

    assert _state.runtime is not None
    plan = _state.runtime.registry.plan_for(inspect(Hero))
    assert plan is not None
    prefix = plan.row_key_for((1,)).rsplit("[", 1)[0]
    for value in (0, 1, -1, 7, 2**31, 2**63 - 1, -(2**63), 2**64 - 1):
        assert plan.row_key_for((value,)) == f"{prefix}{encode_key_part([value])}"

    def huge(session: Session) -> object:
        return session.get(Hero, 2**70)

    with pytest.raises(OverflowError):  # SQLite's own error, as without the cache
        mem_env.run(huge)
    assert SQLModelCache.stats()["Hero"]["bypass:key_type"] == 1


def test_composite_key(env: Env) -> None:
    """Composite keys work as tuples and dicts and are invalidated on update."""
    env.run(lambda s: (s.add(Membership(org="acme", user_id=1, role="dev")), s.commit()))
    assert env.run(lambda s: s.get(Membership, ("acme", 1)).role) == "dev"  # type: ignore[union-attr]
    env.reset_sql()
    role = env.run(lambda s: s.get(Membership, {"org": "acme", "user_id": 1}).role)  # type: ignore[union-attr]
    assert role == "dev"
    assert env.statements == []

    def promote(session: Session) -> None:
        session.get(Membership, ("acme", 1)).role = "lead"  # type: ignore[union-attr]
        session.commit()

    env.run(promote)
    assert env.run(lambda s: s.get(Membership, ("acme", 1)).role) == "lead"  # type: ignore[union-attr]


def test_datetime_key(env: Env) -> None:
    """A datetime primary key is cached and invalidated."""
    at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    env.run(lambda s: (s.add(Reading(at=at, value=1.5)), s.commit()))
    assert env.run(lambda s: s.get(Reading, at).value) == 1.5  # type: ignore[union-attr]
    env.reset_sql()
    assert env.run(lambda s: s.get(Reading, at).value) == 1.5  # type: ignore[union-attr]
    assert env.statements == []


def test_every_column_type_round_trips_exactly(env: Env) -> None:
    """A hit returns the same values, of the same types, as a database load."""
    specimen_token = uuid.uuid4()

    def seed(session: Session) -> None:
        session.add(
            Specimen(
                id=1,
                price=decimal.Decimal("12.3400"),
                ratio=0.25,
                flag=True,
                blob=b"\x00\xffbytes",
                color=Color.BLUE,
                data={"a": [1, 2, {"b": None}]},
                token=specimen_token,
            )
        )
        session.commit()

    env.run(seed)

    def snapshot(session: Session) -> dict[str, object]:
        specimen = session.get(Specimen, 1)
        assert specimen is not None
        return {key: getattr(specimen, key) for key in Specimen.model_fields}

    from_db = env.run(snapshot)
    env.reset_sql()
    from_cache = env.run(snapshot)
    assert env.statements == []
    assert from_cache == from_db

    def kind(value: object) -> type:
        # asyncpg loads its own uuid.UUID subclass; the cache gives back uuid.UUID itself
        return uuid.UUID if isinstance(value, uuid.UUID) else type(value)

    assert {k: kind(v) for k, v in from_cache.items()} == {k: kind(v) for k, v in from_db.items()}


def test_every_key_starts_with_the_prefix(env: Env) -> None:
    """``key_prefix`` really prefixes every key the cache writes."""
    _seed(env)
    env.run(_name_of(1))
    env.run(lambda s: (setattr(s.get(Hero, 2), "name", "x"), s.commit()))
    keys = env.cache_keys()
    assert keys
    assert all(key.startswith(env.prefix + ":") for key in keys)


def test_async_session_get_directly(env: Env) -> None:
    """``await AsyncSession.get()`` is served from the cache without SQL (async envs only;
    in sync envs the same assertion runs on ``Session.get``)."""
    _seed(env)
    env.run(_name_of(1))
    env.reset_sql()
    if env.mode == "sync":
        assert env.run(_name_of(1)) == "Spider"
    else:
        from sqlmodel.ext.asyncio.session import AsyncSession

        async def read() -> str:
            async with AsyncSession(env.async_engine) as session:
                hero = await session.get(Hero, 1)
                assert hero is not None
                return hero.name

        assert env.loop is not None
        assert env.loop.run_until_complete(read()) == "Spider"
    assert env.statements == []


def test_many_to_many_change_invalidates_cached_link_rows(env: Env) -> None:
    """Removing a student from a course deletes a link row through the relationship; the
    cached link model row must not be served afterwards."""

    def seed(session: Session) -> None:
        session.add(Course(id=1, title="Math", students=[Student(id=1, name="Ann")]))
        session.commit()

    env.run(seed)
    assert env.run(lambda s: s.get(Enrollment, (1, 1))) is not None  # cached now

    def drop(session: EnvSession) -> None:
        course = session.get(Course, 1)
        assert course is not None
        session.run_sync(lambda _: course.students.clear())
        session.commit()

    env.run(drop)
    assert env.run(lambda s: s.get(Enrollment, (1, 1))) is None


def test_delete_orphan_rows_are_invalidated(env: Env) -> None:
    """A child deleted as an orphan (not via session.delete) is not served from the cache."""

    def seed(session: Session) -> None:
        session.add(Album(id=1, tracks=[Track(id=1, title="A"), Track(id=2, title="B")]))
        session.commit()

    env.run(seed)
    env.run(lambda s: (s.get(Track, 1), s.get(Track, 2)))

    def orphan(session: EnvSession) -> None:
        album = session.get(Album, 1)
        assert album is not None
        tracks = session.run_sync(lambda _: album.tracks)
        album.tracks = [track for track in tracks if track.id == 2]
        session.commit()

    env.run(orphan)
    assert env.run(lambda s: s.get(Track, 1)) is None
    env.reset_sql()
    assert env.run(lambda s: s.get(Track, 2).title) == "B"  # type: ignore[union-attr]
    assert env.statements == []  # the untouched sibling stayed cached


def test_sql_expression_column_property_model_is_not_cached(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A column_property computed from other rows would go stale: the model is not cached,
    with a warning saying why."""

    def seed(session: Session) -> None:
        session.add(Shelf(id=1, label="top"))
        session.add(ShelfItem(id=1, shelf_id=1))
        session.commit()

    env.run(seed)
    with caplog.at_level(logging.WARNING, logger="sqlmodel_cache"):
        assert env.run(lambda s: s.get(Shelf, 1).item_count) == 1  # type: ignore[union-attr]
    env.run(lambda s: (s.add(ShelfItem(id=2, shelf_id=1)), s.commit()))
    assert env.run(lambda s: s.get(Shelf, 1).item_count) == 2  # type: ignore[union-attr]
    assert env.row_keys() == []
    assert any("column_property 'item_count'" in r.message for r in caplog.records)


def test_a_hit_still_autoflushes_like_a_database_read(env: Env) -> None:
    """Plain SQLAlchemy flushes pending changes before a get's SELECT; so does a hit, and a
    table written by that flush is then read from the database."""
    _seed(env)
    env.run(_name_of(1))

    def pending_then_get(session: Session) -> tuple[bool, str]:
        session.add(Team(id=5, name="Pending"))
        hero = session.get(Hero, 1)  # a hit: still flushes the pending team first
        flushed = not session.new
        assert hero is not None
        name = hero.name  # read before the rollback expires it
        session.rollback()
        return flushed, name

    assert env.run(pending_then_get) == (True, "Spider")


def test_a_hit_does_not_hide_implicit_io_outside_the_greenlet(env: Env) -> None:
    """The uncached run is the oracle: in async code, a lazy load outside SQLAlchemy's
    greenlet raises ``MissingGreenlet``; with the row cached it must raise too, or code that
    works while the cache is warm fails when it is cold (or with the cache off)."""
    _seed(env)
    env.run(lambda s: (s.add_all([Team(id=2, name="Cold"), Hero(id=3, team_id=2)]), s.commit()))
    env.run(lambda s: (s.get(Team, 1), s.get(Hero, 1), s.get(Hero, 3)))  # team 2 not cached

    def lazy_team(hero_id: int) -> Callable[[Session], str]:
        def body(session: Session) -> str:
            hero = session.get(Hero, hero_id)
            assert hero is not None
            assert hero.team is not None  # implicit IO: a lazy many-to-one load
            return hero.team.name

        return body

    if env.mode == "sync":
        assert (env.run(lazy_team(3)), env.run(lazy_team(1))) == ("Cold", "Avengers")
        return
    assert_missing_greenlet(lambda: env.run(lazy_team(3)))  # team 2 from the database
    assert_missing_greenlet(lambda: env.run(lazy_team(1)))  # team 1 cached: raises all the same
    assert SQLModelCache.stats()["Team"]["bypass:outside_greenlet"] == 2
    assert "bypass:async_transport_in_sync_session" not in SQLModelCache.stats()["Team"]


def test_lookalike_column_select_is_not_mistaken_for_a_get(env: Env) -> None:
    """A user SELECT of a column with the same WHERE clause and bind name as ``get()``'s is
    run by the database, not answered with an entity from the cache."""
    from sqlalchemy import bindparam, select

    _seed(env)
    env.run(_name_of(1))  # cached entity
    statement = select(Hero.name).where(Hero.id == bindparam("pk_1"))  # type: ignore[arg-type]
    assert env.run(lambda s: s.execute(statement, {"pk_1": 1}).scalar_one()) == "Spider"


def _write_hero_then_end(session: Session, end: str) -> None:
    """Write hero 1 and flush, then end the transaction without committing (``end``:
    ``"rollback"`` or ``"close"``); the session is reused afterwards."""
    session.get(Hero, 1).name = "Uncommitted"  # type: ignore[union-attr]
    session.flush()
    getattr(session, end)()


@pytest.mark.parametrize("end", ["rollback", "close"])
def test_a_session_reused_after_a_rollback_reads_from_the_cache_again(env: Env, end: str) -> None:
    """Writes rolled back (or dropped by ``close()``) are forgotten with their transaction:
    the same session's next gets and queries of that table are hits again (no SQL, no
    ``bypass:own_writes``)."""
    _seed(env)
    strong = select(Hero).where(Hero.power >= 15)
    env.run(_name_of(2))
    env.run(lambda s: s.exec(strong).all())  # both cached

    def write_end_read(session: Session) -> tuple[str, list[str]]:
        _write_hero_then_end(session, end)
        env.reset_sql()
        name = session.get(Hero, 2).name  # type: ignore[union-attr]
        names = [hero.name for hero in session.exec(strong).all()]
        assert env.selects() == []  # both answered by the cache
        return name, names

    assert env.run(write_end_read) == ("Iron", ["Iron"])
    stats = SQLModelCache.stats()["Hero"]
    assert "bypass:own_writes" not in stats
    assert "query_bypass:own_writes" not in stats
    assert (stats["hits"], stats["query_hits"]) == (1, 1)


@pytest.mark.parametrize("end", ["rollback", "close"])
def test_a_session_reused_after_a_rollback_invalidates_only_what_it_commits(
    env: Env, end: str
) -> None:
    """The next commit of a session reused after a rollback invalidates what that commit
    wrote and nothing the rolled-back transaction had written: a Team update leaves the
    cached Hero rows and Hero queries in place."""
    _seed(env)
    strong = select(Hero).where(Hero.power >= 15)
    env.run(_name_of(1))
    env.run(_name_of(2))
    env.run(lambda s: s.exec(strong).all())
    cached = env.cache_keys()
    before = SQLModelCache.stats()

    def write_end_commit_another_table(session: Session) -> None:
        _write_hero_then_end(session, end)
        session.get(Team, 1).name = "Defenders"  # type: ignore[union-attr]
        session.commit()

    env.run(write_end_commit_another_table)
    after = SQLModelCache.stats()
    assert after["Hero"]["invalidations"] == before["Hero"]["invalidations"]
    assert after["Team"]["invalidations"] == before["Team"]["invalidations"] + 1
    assert set(cached) <= set(env.cache_keys())  # every Hero entry is still there
    env.reset_sql()
    assert env.run(_name_of(1)) == "Spider"
    assert env.run(_name_of(2)) == "Iron"
    assert [hero.name for hero in env.run(lambda s: s.exec(strong).all())] == ["Iron"]
    assert env.statements == []  # ... and still served
