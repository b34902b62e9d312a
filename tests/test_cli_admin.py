"""``sqlmodel-cache stats / inspect / flush / bench`` against real servers.

Every Redis test fills the cache through the library itself (``RedisSyncTransport``, a unique
key prefix, ``session.get`` and ``select`` on the shared test models over SQLite), then runs
the command in-process with :func:`sqlmodel_cache.cli.main` and checks what it printed and
what it did to Redis.
"""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, select

from sqlmodel_cache import SQLModelCache
from sqlmodel_cache.cli import main
from sqlmodel_cache.cli._admin import decode_entry, parse_key
from sqlmodel_cache.cli._bench import NEAR_SCENARIOS, SCENARIOS, scenarios
from sqlmodel_cache.transport import RedisSyncTransport
from tests import servers
from tests.helpers import Forgetful
from tests.models import METADATAS, Hero, Team

SECRETS = ("Dive Wilson", "Tommy Sharp")


@dataclass
class Filled:
    """A cache filled through the library: 2 hero rows, 1 team row, 2 query entries."""

    url: str
    prefix: str
    engine: Engine
    client: redis.Redis
    statements: list[str] = field(default_factory=list)

    def run(self, *args: str) -> int:
        return main([*args, "--redis-url", self.url, "--prefix", self.prefix])

    def cache_keys(self) -> list[str]:
        return sorted(k.decode() for k in self.client.scan_iter(match=f"{self.prefix}:*"))

    def get_hero(self, pk: int) -> int:
        """Statements a ``session.get(Hero, pk)`` sends."""
        before = len(self.statements)
        with Session(self.engine) as session:
            assert session.get(Hero, pk) is not None
        return len(self.statements) - before


def _fill(url: str, client: Any, **configure: Any) -> Iterator[Filled]:
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    for metadata in METADATAS:
        metadata.create_all(engine)
    with Session(engine) as session:
        team = Team(name="Preventers")
        session.add(team)
        session.add(Hero(name="Deadpond", secret_name=SECRETS[0], team=team))
        session.add(Hero(name="Spider-Boy", secret_name=SECRETS[1]))
        session.commit()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    filled = Filled(url, prefix, engine, client)
    SQLModelCache.configure(RedisSyncTransport(client), key_prefix=prefix, **configure)
    with Session(engine) as session:
        session.get(Hero, 1)
        session.get(Hero, 2)
        session.get(Team, 1)
        session.exec(select(Hero).where(Hero.name == "Deadpond")).all()
        session.exec(select(Hero, Team).join(Team)).all()
    event.listen(engine, "before_cursor_execute", lambda *args: filled.statements.append(args[2]))
    try:
        yield filled
    finally:
        SQLModelCache.reset()
        engine.dispose()
        client.close()


@pytest.fixture
def filled(redis_server: servers.RedisServer) -> Iterator[Filled]:
    yield from _fill(redis_server.url, redis.Redis.from_url(redis_server.url, socket_timeout=5))


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


# -- stats ----------------------------------------------------------------------------------


@pytest.mark.redis
def test_stats_counts_entries_tags_and_ttls_per_table(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows, queries and tags are counted per table; a 300 s TTL lands in 1m-10m."""
    assert filled.run("stats", "--json") == 0
    stats = _json(capsys)
    hero, team = stats["tables"]["hero"], stats["tables"]["team"]
    assert (hero["rows"], hero["queries"], hero["leases"], hero["tags"]) == (2, 2, 0, 2)
    assert (team["rows"], team["queries"], team["tags"]) == (1, 0, 2)
    assert hero["keys"] == 6
    assert hero["ttl"] == {"under_1m": 0, "1m_to_10m": 4, "10m_to_1h": 0, "over_1h": 0, "no_ttl": 0}
    assert hero["bytes"] > 0
    assert stats["bytes_source"] == "memory_usage"
    assert stats["total"]["keys"] == len(filled.cache_keys()) == 9
    assert stats["other_keys"] == 0


@pytest.mark.redis
def test_stats_counts_leases_and_foreign_keys(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value starting with ``L`` is a lease, not an entry; a key outside the layout is
    counted as other; a key without TTL lands in no_ttl."""
    filled.client.set(f"{filled.prefix}:{{hero}}:r:[3]", b"L0123456789abcdef", px=5000)
    filled.client.set(f"{filled.prefix}:{{hero}}:q:feed", b"00" * 20)
    filled.client.set(f"{filled.prefix}:something-else", b"x")
    assert filled.run("stats", "--json") == 0
    stats = _json(capsys)
    hero = stats["tables"]["hero"]
    assert (hero["rows"], hero["queries"], hero["leases"]) == (2, 3, 1)
    assert hero["ttl"]["under_1m"] == 1
    assert hero["ttl"]["no_ttl"] == 1
    assert stats["other_keys"] == 1


def _without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import rich`` (and of any rich submodule imported earlier) fail."""
    for name in [name for name in sys.modules if name.split(".")[0] == "rich"] + ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.redis
def test_stats_table_and_plain_fallback(
    filled: Filled, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rich, the same table is printed as plain aligned text."""
    _without_rich(monkeypatch)
    assert filled.run("stats") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sqlmodel-cache keys under prefix {filled.prefix!r}"
    assert lines[1].split() == [
        "table", "rows", "queries", "leases", "tags", "keys", "bytes",
        "<1m", "1-10m", "10m-1h", ">1h", "no", "TTL",
    ]  # fmt: skip
    hero = next(line for line in lines if line.startswith("hero "))
    assert hero.split()[1:6] == ["2", "2", "0", "2", "6"]
    assert any(line.startswith("total ") for line in lines)


@pytest.mark.redis
def test_stats_with_rich_prints_a_table(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    """With rich installed (the cli extra), stats prints a boxed table."""
    assert filled.run("stats") == 0
    out = capsys.readouterr().out
    assert "┃ table" in out
    assert "│ hero" in out


@pytest.mark.redis
def test_stats_falls_back_to_value_length_without_memory_usage(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user not allowed to run MEMORY (as on some managed services) still gets sizes."""
    filled.client.acl_setuser(
        "nomemory", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-memory"]
    )
    try:
        url = filled.url.replace("redis://", "redis://nomemory:secret@")
        assert main(["stats", "--redis-url", url, "--prefix", filled.prefix, "--json"]) == 0
    finally:
        filled.client.acl_deluser("nomemory")
    stats = _json(capsys)
    assert stats["bytes_source"] == "value_length"
    assert 0 < stats["tables"]["hero"]["bytes"] < 1000


@pytest.mark.redis
def test_stats_of_an_empty_prefix(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    """A prefix with no keys says so."""
    assert main(["stats", "--redis-url", filled.url, "--prefix", "nothing-here"]) == 0
    assert capsys.readouterr().out.strip() == "no keys under prefix 'nothing-here'"


# -- inspect --------------------------------------------------------------------------------


@pytest.mark.redis
def test_inspect_decodes_entries_without_printing_values(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entries are decoded (kind, table, tags, types) and no field value is printed."""
    assert filled.run("inspect", "--json") == 0
    data = _json(capsys)
    entries = {entry["key"]: entry for entry in data["entries"]}
    assert len(entries) == 5
    row = entries[f"{filled.prefix}:{{hero}}:r:[1]"]
    assert row["kind"] == "row"
    assert row["table"] == "hero"
    assert row["ident"] == "[1]"
    assert row["tags"] == 1
    assert row["tags_current"] is True
    assert row["format_version"] == 1
    assert row["signed"] is False
    assert row["count"] == 5
    assert row["types"] == ["int", "str", "int", "str", "int"]
    assert 0 < row["ttl"] <= 300
    assert "value" not in row
    queries = [entry for entry in entries.values() if entry["kind"] == "query"]
    assert sorted(entry["tags"] for entry in queries) == [1, 2]  # hero; hero + team
    assert all(entry["tags_current"] for entry in queries)

    assert filled.run("inspect") == 0
    out = capsys.readouterr().out
    assert "5 values: int, str, int, str, int" in out
    assert "field values hidden" in out
    for secret in SECRETS:
        assert secret not in out


@pytest.mark.redis
def test_inspect_show_values_prints_them(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--show-values`` prints the cached field values."""
    assert filled.run("inspect", "--show-values") == 0
    out = capsys.readouterr().out
    assert all(secret in out for secret in SECRETS)
    assert filled.run("inspect", "--show-values", "--json") == 0
    values = [entry["value"] for entry in _json(capsys)["entries"]]
    assert [1, "Deadpond", 0, SECRETS[0], 1] in values


@pytest.mark.redis
def test_inspect_sees_stale_query_entries_after_a_commit(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a commit to hero, the query entries still in Redis are reported stale (the join
    with one of its two tags still current); the untouched row stays current."""
    with Session(filled.engine) as session:
        hero = session.get(Hero, 1)
        assert hero is not None
        hero.power = 9
        session.add(hero)
        session.commit()
    assert filled.run("inspect", "--json") == 0
    entries = _json(capsys)["entries"]
    queries = sorted((e for e in entries if e["kind"] == "query"), key=lambda e: e["tags"])
    assert [(q["tags_current"], q["tags_matched"]) for q in queries] == [(False, 0), (False, 1)]
    rows = {e["ident"]: e for e in entries if e["kind"] == "row" and e["table"] == "hero"}
    assert set(rows) == {"[2]"}  # the commit deleted row 1's entry
    assert rows["[2]"]["tags_current"] is True


@pytest.mark.redis
def test_inspect_one_table_by_name_or_model(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--table`` and ``--model module:Class`` limit the sample to one table."""
    assert filled.run("inspect", "--table", "team", "--json") == 0
    assert [e["key"] for e in _json(capsys)["entries"]] == [f"{filled.prefix}:{{team}}:r:[1]"]
    assert filled.run("inspect", "--model", "tests.models:Hero", "--sample", "2", "--json") == 0
    entries = _json(capsys)["entries"]
    assert len(entries) == 2
    assert {e["table"] for e in entries} == {"hero"}


@pytest.mark.redis
def test_inspect_reports_leases(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    """A lease is shown as one, without tags or data."""
    filled.client.set(f"{filled.prefix}:{{team}}:r:[7]", b"L0123456789abcdef", px=5000)
    assert filled.run("inspect", "--table", "team", "--json") == 0
    kinds = {e["ident"]: e["kind"] for e in _json(capsys)["entries"]}
    assert kinds == {"[1]": "row", "[7]": "row_lease"}


@pytest.mark.redis
def test_inspect_decodes_signed_entries(
    redis_server: servers.RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entries signed with ``signing_key`` are decoded past their HMAC."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    for filled in _fill(redis_server.url, client, signing_key=b"k" * 32):
        assert filled.run("inspect", "--json") == 0
        entries = _json(capsys)["entries"]
        assert len(entries) == 5
        assert all(e["signed"] is True and e["tags_current"] is True for e in entries)
        assert sorted(e["tags"] for e in entries) == [1, 1, 1, 1, 2]


def test_decode_entry_finds_the_tag_count_of_a_query_entry() -> None:
    """Tags and schema are all hex: the body's ``[`` (or a signature) marks where they end."""
    tags, schema = b"0123456789abcdef" * 3, b"1fedcba987654321"
    decoded = decode_entry(tags + schema + b"[[1]]", None)
    assert decoded.tags == ("0123456789abcdef",) * 3
    assert (decoded.schema, decoded.signed, decoded.body) == (schema.decode(), False, [[1]])
    signed = decode_entry(tags + schema + b"\x00[garbage mac!!\xff" + b"[[1]]", None)
    assert (signed.tags, signed.signed, signed.body) == (decoded.tags, True, [[1]])
    assert decode_entry(b"not an entry", None).tags is None


def test_parse_key_reads_the_layout() -> None:
    """Keys are classified by the layout; a pk containing ``}:`` does not confuse it."""
    assert parse_key("app", 'app:{hero}:r:["a}:b"]').ident == '["a}:b"]'
    assert parse_key("app", "app:{hero}:rt").kind == "row_tag"
    assert parse_key("app", "app:{s.hero}:dt").table == "s.hero"
    assert parse_key("app", "app:{hero}:q:ab").kind == "query"
    assert parse_key("app", "app:other").kind == "other"


# -- flush ----------------------------------------------------------------------------------


def _tags(filled: Filled, table: str) -> tuple[bytes | None, bytes | None]:
    return (
        filled.client.get(f"{filled.prefix}:{{{table}}}:rt"),
        filled.client.get(f"{filled.prefix}:{{{table}}}:dt"),
    )


@pytest.mark.redis
@pytest.mark.parametrize("how", [["--table", "hero"], ["--model", "tests.models:Hero"]])
def test_flush_table_retags_then_removes_its_keys(
    filled: Filled, capsys: pytest.CaptureFixture[str], how: list[str]
) -> None:
    """Flushing a table renews its tags, removes its entries and nothing else; the next
    read of it is a miss that reads the database, other tables stay hits."""
    old_tags, team_tags = _tags(filled, "hero"), _tags(filled, "team")
    team_keys = [key for key in filled.cache_keys() if "{team}" in key]
    assert filled.get_hero(1) == 0  # a hit before

    assert filled.run("flush", *how, "--yes", "--json") == 0
    assert _json(capsys) == {
        "prefix": filled.prefix,
        "all": False,
        "tables": {"hero": 4},
        "removed": 4,
    }
    new_tags = _tags(filled, "hero")
    assert None not in new_tags
    assert new_tags[0] != old_tags[0]
    assert new_tags[1] != old_tags[1]
    assert all(len(tag or b"") == 16 for tag in new_tags)
    hero_keys = [key for key in filled.cache_keys() if "{hero}" in key]
    assert sorted(hero_keys) == [f"{filled.prefix}:{{hero}}:dt", f"{filled.prefix}:{{hero}}:rt"]
    assert [key for key in filled.cache_keys() if "{team}" in key] == team_keys
    assert _tags(filled, "team") == team_tags

    assert filled.get_hero(1) == 1  # a miss: one SELECT
    assert filled.get_hero(1) == 0  # and filled again


@pytest.mark.redis
def test_flush_all_removes_everything_under_the_prefix_only(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--all`` removes every key under the prefix, none under another prefix."""
    neighbour = f"{filled.prefix}x:{{hero}}:rt"
    filled.client.set(neighbour, b"0123456789abcdef")
    try:
        assert filled.run("flush", "--all", "--yes") == 0
        assert capsys.readouterr().out.strip() == (
            f"removed 9 key(s) under prefix {filled.prefix!r}"
        )
        assert filled.cache_keys() == []
        assert filled.client.exists(neighbour)
        assert filled.get_hero(2) == 1
    finally:
        filled.client.delete(neighbour)


@pytest.mark.redis
def test_flush_refuses_without_yes_when_stdin_is_not_a_terminal(
    filled: Filled, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody to ask: exit status 2, nothing removed."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    before = filled.cache_keys()
    assert filled.run("flush", "--all") == 2
    assert "refusing to flush without --yes" in capsys.readouterr().err
    assert filled.cache_keys() == before


class _Terminal(io.StringIO):
    """A stdin or stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.redis
@pytest.mark.parametrize(("answer", "status", "removed"), [("y\n", 0, True), ("\n", 1, False)])
def test_flush_asks_on_a_terminal(
    filled: Filled,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    status: int,
    removed: bool,
) -> None:
    """On a terminal, flush asks first and does nothing unless the answer is yes."""
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    assert filled.run("flush", "--table", "team") == status
    assert "Remove every key of 'team'" in capsys.readouterr().err
    assert (f"{filled.prefix}:{{team}}:r:[1]" not in filled.cache_keys()) is removed


@pytest.mark.redis
def test_flush_needs_tables_or_all(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    """Neither (or both of) --table and --all is a usage error."""
    assert filled.run("flush", "--yes") == 2
    assert filled.run("flush", "--all", "--table", "hero", "--yes") == 2
    assert capsys.readouterr().err.count("give --table / --model, or --all") == 2
    assert len(filled.cache_keys()) == 9


def test_flush_with_a_bad_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A model that cannot be imported or is not a table gives exit status 1."""
    for spec, message in [
        ("no.such.module:Hero", "cannot import 'no.such.module'"),
        ("tests.models:Nope", "'tests.models' has no 'Nope'"),
        ("tests.models:METADATAS", "is not a table model"),
        ("tests.models", "expected a model as module:Class"),
    ]:
        assert main(["flush", "--redis-url", "redis://127.0.0.1:1/0", "--model", spec]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert message in err


# -- errors and Redis Cluster ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["stats"], ["inspect"], ["flush", "--all", "--yes"], ["stats", "--cluster"]],
)
def test_unreachable_redis_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """An unreachable Redis gives exit status 1 and one line on stderr, with no password."""
    url = "redis://user:hunter2@127.0.0.1:1/0"
    assert main([*command, "--redis-url", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: cannot use Redis at redis://user:***@127.0.0.1:1/0")
    assert "hunter2" not in captured.err


@pytest.mark.redis
def test_admin_commands_on_a_cluster(
    redis_cluster: servers.RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--cluster``, SCAN visits every primary: stats counts all tables, inspect decodes
    entries on every node and flush removes keys from all of them."""
    client = redis.RedisCluster.from_url(redis_cluster.url, socket_timeout=5)
    for filled in _fill(redis_cluster.url, client):
        nodes = {client.get_node_from_key(key).name for key in filled.cache_keys()}
        assert len(nodes) == 2  # {hero} and {team} live on different primaries
        assert filled.run("stats", "--cluster", "--json") == 0
        stats = _json(capsys)
        assert stats["total"]["keys"] == 9
        assert stats["tables"]["team"]["rows"] == 1
        assert filled.run("inspect", "--cluster", "--json") == 0
        entries = _json(capsys)["entries"]
        assert len(entries) == 5
        assert all(entry["tags_current"] for entry in entries)
        assert filled.run("flush", "--cluster", "--table", "team", "--yes") == 0
        assert [key for key in filled.cache_keys() if "{team}" in key and ":r:" in key] == []
        assert filled.run("flush", "--cluster", "--all", "--yes") == 0
        assert filled.cache_keys() == []


# -- bench ----------------------------------------------------------------------------------


def _bench_tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return [name for name in inspect(engine).get_table_names() if "bench" in name]
    finally:
        engine.dispose()


def _run_bench(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run a small bench with ``--json``; check every scenario is there, and return it."""
    assert main(["bench", "--rows", "100", "--reads", "5", "--json", *args]) == 0
    report = _json(capsys)
    expected = scenarios(near_cache="--near-cache" in args)
    assert list(report["scenarios"]) == [key for key, _, _ in expected]
    for scenario in report["scenarios"].values():
        assert scenario["samples"] == 5
        assert 0 < scenario["median_us"] <= scenario["p95_us"]
        assert (scenario["baseline"] is None) == (scenario["speedup"] is None)
    return report


def test_bench_on_sqlite_reports_every_scenario_and_drops_its_table(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON report has every scenario, and the scratch table is gone afterwards."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    report = _run_bench(capsys, "--database-url", url)
    assert report["table"].startswith("sqlmodel_cache_bench_")
    assert report["cache"] == "MemoryTransport (in-process)"
    assert (report["rows"], report["reads"]) == (100, 5)
    assert _bench_tables(url) == []
    assert not SQLModelCache.is_configured()


def test_bench_prints_a_table_with_ratios(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json, bench prints one line per scenario, compared with its baseline."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    assert main(["bench", "--database-url", url, "--rows", "100", "--reads", "3"]) == 0
    out = capsys.readouterr().out
    for _, label, _ in SCENARIOS:
        assert label in out
    assert out.count("baseline") == 4
    assert "faster" in out or "slower" in out


@pytest.mark.postgres
@pytest.mark.redis
def test_bench_on_postgres_with_redis_cleans_up(
    postgres_server: servers.PostgresServer,
    redis_server: servers.RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against PostgreSQL and Redis: every scenario, then no scratch table and no key left."""
    report = _run_bench(
        capsys, "--database-url", postgres_server.sync_url, "--redis-url", redis_server.url
    )
    assert report["database"].startswith("postgresql+psycopg://postgres@")
    assert report["cache"].startswith(f"Redis at {redis_server.url}")
    assert _bench_tables(postgres_server.sync_url) == []
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match="sqlmodelcache-bench-*")) == []
    finally:
        client.close()


@pytest.mark.redis
def test_bench_with_a_near_cache_times_near_hits_next_to_the_redis_hits(
    tmp_path: Any,
    redis_server: servers.RedisServer,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """--near-cache adds a near cache hit after each Redis hit (each one checked to be
    answered in-process), compared with the uncached read and with the Redis hit; the
    keys are removed and the cache left unconfigured as without it."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    args = ("--database-url", url, "--redis-url", redis_server.url, "--near-cache")
    client = redis.Redis.from_url(redis_server.url)
    request.addfinalizer(client.close)

    def tracking() -> set[str]:
        return {c["id"] for c in client.client_list() if "t" in c["flags"]}

    tracking_before = tracking()
    report = _run_bench(capsys, *args)
    assert report["near_cache"] is True
    assert report["cache"].endswith("then with a near cache")
    keys = list(report["scenarios"])
    for near_key, _, baseline in NEAR_SCENARIOS:
        redis_key = near_key.replace("_near_hit", "_hit")
        assert keys.index(near_key) == keys.index(redis_key) + 1
        assert report["scenarios"][near_key]["baseline"] == baseline
    assert not SQLModelCache.is_configured()
    assert list(client.scan_iter(match="sqlmodelcache-bench-*")) == []
    assert tracking() <= tracking_before  # the near cache's tracking connection is closed

    assert main(["bench", *args, "--rows", "100", "--reads", "3"]) == 0
    out = capsys.readouterr().out
    assert "vs Redis hit" in out
    for _, label, _ in scenarios(near_cache=True):
        assert label in out
    near_lines = [line for line in out.splitlines() if "near cache hit" in line]
    assert len(near_lines) == 3
    assert all(line.count("faster") + line.count("slower") == 2 for line in near_lines)


@pytest.mark.redis
def test_bench_stops_when_the_near_cache_does_not_answer_hot_reads(
    tmp_path: Any,
    redis_server: servers.RedisServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A near cache hit that went to Redis (here: a near cache that never answers) is a
    one-line error, not a Redis hit timed as a near cache hit; the table and keys go."""
    from sqlmodel_cache.transport._redis.near import NearStore

    monkeypatch.setattr(NearStore, "lookup", lambda self, *args: None)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    args = ["--database-url", url, "--redis-url", redis_server.url, "--near-cache"]
    assert main(["bench", *args, "--rows", "100", "--reads", "2"]) == 1
    err = capsys.readouterr().err
    assert err == "error: the near cache misbehaved: a hot read went to Redis\n"
    assert _bench_tables(url) == []
    assert not SQLModelCache.is_configured()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match="sqlmodelcache-bench-*")) == []
    finally:
        client.close()


@pytest.mark.parametrize(
    "args",
    [("--database-url", "sqlite://"), ("--database-url", "sqlite://", "--cluster")],
    ids=["without-redis", "cluster"],
)
def test_bench_near_cache_needs_a_single_redis(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """--near-cache without --redis-url, or with --cluster, is a one-line error before any
    work is done."""
    if "--cluster" in args:
        args = (*args, "--redis-url", "redis://127.0.0.1:1/0")
    assert main(["bench", *args, "--near-cache", "--rows", "100", "--reads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--near-cache needs --redis-url" in err


@pytest.mark.postgres
def test_bench_drops_its_table_when_it_fails(
    postgres_server: servers.PostgresServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure half-way (here: a cache that forgets, so a hit sends SQL) is a one-line
    error, and the scratch table is dropped anyway."""
    from sqlmodel_cache.cli import _bench

    monkeypatch.setattr(_bench, "MemoryTransport", Forgetful)
    url = postgres_server.sync_url
    assert main(["bench", "--database-url", url, "--rows", "100", "--reads", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error: the cache misbehaved" in err
    assert _bench_tables(url) == []
    assert not SQLModelCache.is_configured()


@pytest.mark.parametrize("rich", [True, False])
def test_bench_shows_progress_on_a_terminal_only(
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    rich: bool,
) -> None:
    """On a terminal, progress goes to stderr (rich's bar, or a plain percentage), and
    stdout still holds nothing but the JSON."""
    if not rich:
        _without_rich(monkeypatch)
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    assert main(["bench", "--database-url", url, "--rows", "100", "--reads", "2", "--json"]) == 0
    assert set(_json(capsys)["scenarios"]) == {key for key, _, _ in SCENARIOS}
    shown = err.getvalue()
    assert ("100%" in shown) if not rich else ("\x1b[" in shown)


def test_bench_with_an_unusable_database_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database that cannot be reached gives exit status 1 and one line, no traceback."""
    url = "postgresql+psycopg://user:hunter2@127.0.0.1:1/nothing"
    assert main(["bench", "--database-url", url, "--rows", "100", "--reads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: database error:")
    assert "hunter2" not in err


def test_bench_refuses_an_async_driver(capsys: pytest.CaptureFixture[str]) -> None:
    """An async driver URL is refused with a message that names a synchronous one."""
    url = "sqlite+aiosqlite:///nothing.db"
    assert main(["bench", "--database-url", url, "--rows", "100", "--reads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "bench needs a synchronous driver, not 'sqlite+aiosqlite'" in err


def test_bench_needs_100_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """Fewer than 100 rows is a usage error: the 100-row select needs them."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--database-url", "sqlite://", "--rows", "10"])
    assert exit_info.value.code == 2
    assert "must be at least 100" in capsys.readouterr().err
