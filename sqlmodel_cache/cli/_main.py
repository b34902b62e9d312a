"""The ``sqlmodel-cache`` command line.

::

    sqlmodel-cache demo                      # SQLite in memory + the in-process cache
    sqlmodel-cache demo --redis-url redis://localhost:6379/0
    sqlmodel-cache stats   --redis-url URL [--prefix P] [--json]
    sqlmodel-cache inspect --redis-url URL [--table T] [--sample N] [--show-values] [--json]
    sqlmodel-cache flush   --redis-url URL (--table T... | --model MOD:CLASS... | --all) [--yes]
    sqlmodel-cache bench   --database-url URL [--redis-url URL [--near-cache]] [--rows N]
                           [--reads N] [--json]

This module is the argparse front and the rendering (``rich`` tables when the ``cli`` extra
is installed, plain text otherwise, JSON with ``--json``). What the commands do to Redis is
in ``_admin``, the measurements in ``_bench``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlmodel_cache import __version__
from sqlmodel_cache._errors import ConfigurationError
from sqlmodel_cache.cli._admin import (
    NO_TTL,
    TTL_BUCKETS,
    CommandError,
    Entry,
    TableStats,
    collect_stats,
    connect,
    flush_all,
    flush_table,
    redact,
    sample_entries,
)
from sqlmodel_cache.cli._bench import MIN_ROWS, NEAR_AFTER, run_bench, scenarios


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed_rows(text: str) -> int:
    value = _positive_int(text)
    if value < MIN_ROWS:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_ROWS} (the 100-row select needs them), got {value}"
        )
    return value


def _key_prefix(text: str) -> str:
    # The same rule as SQLModelCache.configure(key_prefix=...).
    if not text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"must be non-empty, without whitespace: {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sqlmodel-cache`` command."""
    parser = argparse.ArgumentParser(
        prog="sqlmodel-cache",
        description="Transparent, never-stale caching of SQLModel / SQLAlchemy reads.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show a cache miss, a hit, an invalidation and timings, with the SQL issued",
        description=(
            "Walk through a cache miss, a hit, an invalidation on commit and timings, "
            "showing the SQL each read sends to the database (SQLite in memory)."
        ),
    )
    demo.add_argument(
        "--redis-url",
        metavar="URL",
        help="cache in this Redis / Valkey server (default: the in-process MemoryTransport)",
    )
    demo.add_argument(
        "--rows", type=_positive_int, default=3, metavar="N", help="rows to seed (default: 3)"
    )
    demo.add_argument(
        "--reads",
        type=_positive_int,
        default=2000,
        metavar="N",
        help="reads per series in the timing section (default: 2000)",
    )
    demo.add_argument("--no-color", action="store_true", help="never colour the output")
    demo.set_defaults(run=_run_demo)

    json_option = argparse.ArgumentParser(add_help=False)
    json_option.add_argument(
        "--json", action="store_true", help="print machine-readable JSON (stable keys)"
    )
    live = argparse.ArgumentParser(add_help=False, parents=[json_option])
    live.add_argument(
        "--redis-url", required=True, metavar="URL", help="the Redis / Valkey server to look at"
    )
    live.add_argument(
        "--prefix",
        type=_key_prefix,
        default="sqlmodelcache",
        metavar="P",
        help="the key_prefix the application configured (default: sqlmodelcache)",
    )
    live.add_argument("--cluster", action="store_true", help="the URL is a node of a Redis Cluster")

    stats = commands.add_parser(
        "stats",
        parents=[live],
        help="count cached rows, queries, leases, bytes and TTLs per table",
        description=(
            "Count the keys under the prefix per table (SCAN, never KEYS): row entries, "
            "query entries, leases, tags, bytes and a TTL distribution."
        ),
    )
    stats.set_defaults(run=_run_stats)

    inspect = commands.add_parser(
        "inspect",
        parents=[live],
        help="decode a sample of cached entries (no field values unless --show-values)",
        description=(
            "Decode a sample of row and query entries: kind, table, TTL, size, whether "
            "their tags are current, and the shape of their data. Field values are only "
            "printed with --show-values."
        ),
    )
    inspect.add_argument("--table", metavar="T", help="only entries of this table")
    inspect.add_argument(
        "--model", metavar="MODULE:CLASS", help="only entries of this model's table"
    )
    inspect.add_argument(
        "--sample",
        type=_positive_int,
        default=20,
        metavar="N",
        help="entries to decode (default: 20)",
    )
    inspect.add_argument(
        "--show-values", action="store_true", help="print the cached field values too"
    )
    inspect.set_defaults(run=_run_inspect)

    flush = commands.add_parser(
        "flush",
        parents=[live],
        help="invalidate and remove the cache of some tables, or everything under the prefix",
        description=(
            "For each table: retire every cached row and query at once by changing its tags "
            "(what a commit does), then remove its keys (SCAN + UNLINK). With --all: remove "
            "every key under the prefix."
        ),
    )
    flush.add_argument(
        "--table", action="extend", nargs="+", default=[], metavar="T", help="tables to flush"
    )
    flush.add_argument(
        "--model",
        action="extend",
        nargs="+",
        default=[],
        metavar="MODULE:CLASS",
        help="models whose tables to flush, e.g. app.models:Hero",
    )
    flush.add_argument("--all", action="store_true", help="remove every key under the prefix")
    flush.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flush.set_defaults(run=_run_flush)

    bench = commands.add_parser(
        "bench",
        parents=[json_option],
        help="time cached against uncached reads and commits on your database",
        description=(
            "Create a scratch table in your database, seed it, and time session.get, "
            "select() and commits with and without the cache. The table is dropped at the end."
        ),
    )
    bench.add_argument(
        "--database-url", required=True, metavar="URL", help="a SQLAlchemy database URL"
    )
    bench.add_argument(
        "--redis-url",
        metavar="URL",
        help="cache in this Redis / Valkey server (default: the in-process MemoryTransport)",
    )
    bench.add_argument(
        "--cluster", action="store_true", help="the Redis URL is a node of a Redis Cluster"
    )
    bench.add_argument(
        "--near-cache",
        action="store_true",
        help="also time the hits with a near cache (in-process, invalidated by Redis) in "
        "front of Redis; needs --redis-url, not --cluster",
    )
    bench.add_argument(
        "--rows",
        type=_seed_rows,
        default=1000,
        metavar="N",
        help=f"rows to seed, at least {MIN_ROWS} (default: 1000)",
    )
    bench.add_argument(
        "--reads",
        type=_positive_int,
        default=500,
        metavar="N",
        help="timed operations per scenario (default: 500)",
    )
    bench.set_defaults(run=_run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Returns 2 and prints the help when no command is given, 1 with a one-line message on
    stderr when a command fails (Redis or the database unreachable, ...). Invalid arguments,
    ``--help`` and ``--version`` exit through ``SystemExit``, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args.run(args)
    except (CommandError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return status


# -- demo -----------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from sqlmodel_cache.cli._demo import run_demo  # imported late: it defines a table model

    color = not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    return run_demo(
        sys.stdout,
        sys.stderr,
        redis_url=args.redis_url,
        rows=args.rows,
        reads=args.reads,
        color=color,
    )


# -- rendering --------------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2), file=sys.stdout)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> None:
    """Print a table on stdout: with rich when installed (the ``cli`` extra), else plain.

    ``align`` has one letter per column: ``l`` (left) or ``r`` (right).
    """
    out = sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        widths = [
            max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(columns)
        ]

        def line(cells: Sequence[str]) -> str:
            padded = (
                cell.rjust(width) if side == "r" else cell.ljust(width)
                for cell, width, side in zip(cells, widths, align, strict=True)
            )
            return "  ".join(padded).rstrip()

        print(title, file=out)
        print(line(columns), file=out)
        print(line(["-" * width for width in widths]), file=out)
        for row in rows:
            print(line(row), file=out)
        return
    table = Table(title=Text(title), title_justify="left")
    for name, side in zip(columns, align, strict=True):
        table.add_column(name, justify="right" if side == "r" else "left", overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))  # Text: a key like "[42]" is not markup
    # Off a terminal, no width to fit: do not squeeze long keys into 80 columns.
    Console(file=out, width=None if out.isatty() else 200).print(table)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr, advanced by calling ``tick(label)``; only on a terminal,
    so ``--json`` output and logs stay clean."""
    err = sys.stderr
    if not err.isatty():
        yield lambda label: None
        return
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:
        done = 0

        def tick(label: str) -> None:
            nonlocal done
            done += 1
            err.write(f"\r  {label:<24} {100 * done // total:3d}%")
            err.flush()

        try:
            yield tick
        finally:
            err.write("\r" + " " * 40 + "\r")
        return
    with Progress(console=Console(file=err), transient=True) as progress:
        task = progress.add_task("bench", total=total)
        yield lambda label: progress.update(task, advance=1, description=label)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


# -- stats ------------------------------------------------------------------------------------

_TTL_HEADINGS = ("<1m", "1-10m", "10m-1h", ">1h", "no TTL")


def _run_stats(args: argparse.Namespace) -> int:
    with connect(args.redis_url, cluster=args.cluster) as client:
        stats = collect_stats(client, args.prefix)
    if args.json:
        _print_json(stats.as_dict())
        return 0
    if not stats.tables and not stats.other.keys:
        print(f"no keys under prefix {args.prefix!r}")
        return 0

    def cells(name: str, counts: TableStats) -> list[str]:
        numbers = [counts.rows, counts.queries, counts.leases, counts.tags, counts.keys]
        ttls = [counts.ttl[bucket] for bucket, _ in TTL_BUCKETS] + [counts.ttl[NO_TTL]]
        return [name, *map(str, numbers), _size(counts.bytes), *map(str, ttls)]

    rows = [cells(name, stats.tables[name]) for name in sorted(stats.tables)]
    if stats.other.keys:
        rows.append(cells("(other keys)", stats.other))
    rows.append(cells("total", stats.total()))
    _table(
        f"sqlmodel-cache keys under prefix {args.prefix!r}",
        ["table", "rows", "queries", "leases", "tags", "keys", "bytes", *_TTL_HEADINGS],
        rows,
        "l" + "r" * 11,
    )
    if stats.bytes_source == "memory_usage":
        print("bytes: MEMORY USAGE; TTLs: of entries and leases (tags do not expire)")
    else:
        print(
            "bytes: value lengths (this server refuses MEMORY USAGE); TTLs: of entries and leases"
        )
    return 0


# -- inspect ----------------------------------------------------------------------------------


def _tags_text(entry: Entry) -> str:
    if entry.kind.endswith("_lease"):
        return "-"
    if entry.tags_current is None or entry.tags is None:
        return "?"
    if entry.kind == "row":
        return "current" if entry.tags_current else "stale"
    if entry.tags_current:
        return f"current ({entry.tags} tag{'s' if entry.tags != 1 else ''})"
    return f"stale ({entry.tags_matched} of {entry.tags} tags current)"


def _content_text(entry: Entry, show_values: bool) -> str:
    if entry.kind.endswith("_lease"):
        return "lease: a fill in progress"
    if entry.count is None:
        return "undecodable: a miss for every reader"
    if show_values:
        return json.dumps(entry.value)
    if entry.kind == "row":
        return f"{entry.count} values: {', '.join(entry.types)}"
    shape = f" of [{', '.join(entry.types)}]" if entry.types else ""
    return f"{entry.count} row{'s' if entry.count != 1 else ''}{shape}"


def _run_inspect(args: argparse.Namespace) -> int:
    if args.table is not None and args.model is not None:
        print("error: give --table or --model, not both", file=sys.stderr)
        return 2
    table = args.table if args.model is None else _table_of_model(args.model)
    with connect(args.redis_url, cluster=args.cluster) as client:
        entries = sample_entries(
            client, args.prefix, table=table, sample=args.sample, show_values=args.show_values
        )
    if args.json:
        _print_json(
            {
                "prefix": args.prefix,
                "table": table,
                "show_values": args.show_values,
                "entries": [entry.as_dict(args.show_values) for entry in entries],
            }
        )
        return 0
    where = f"prefix {args.prefix!r}" + (f", table {table!r}" if table else "")
    if not entries:
        print(f"no cached rows or queries under {where}")
        return 0
    _table(
        f"{len(entries)} sampled entr{'y' if len(entries) == 1 else 'ies'} under {where}",
        ["key", "kind", "ttl", "bytes", "tags", "data"],
        [
            [
                entry.key,
                entry.kind,
                _duration(entry.ttl),
                _size(entry.bytes),
                _tags_text(entry),
                _content_text(entry, args.show_values),
            ]
            for entry in entries
        ],
        "llrrll",
    )
    if not args.show_values:
        print("field values hidden; --show-values prints them")
    return 0


# -- flush ------------------------------------------------------------------------------------


def _table_of_model(spec: str) -> str:
    """The table of a model given as ``module:Class`` (``app.models:Hero``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"expected a model as module:Class, got {spec!r}")
    # A console script does not put the working directory on sys.path; `python -m` does.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise CommandError(f"{module_name!r} has no {attribute!r}")
    # The cache keys a table by its full name (schema-qualified when it has a schema).
    name = getattr(getattr(found, "__table__", None), "fullname", None)
    if not isinstance(name, str):
        raise CommandError(f"{spec} is not a table model (it has no __table__)")
    return name


def _confirm(question: str) -> bool | None:
    """The user's answer on a terminal; ``None`` when stdin is not one (nobody to ask)."""
    if not sys.stdin.isatty():
        return None
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _run_flush(args: argparse.Namespace) -> int:
    tables = [*args.table, *map(_table_of_model, args.model)]
    if args.all == bool(tables):
        print("error: give --table / --model, or --all (not both)", file=sys.stderr)
        return 2
    what = "EVERY key" if args.all else f"every key of {', '.join(map(repr, tables))}"
    if not args.yes:
        answer = _confirm(
            f"Remove {what} under prefix {args.prefix!r} at {redact(args.redis_url)}?"
        )
        if answer is None:
            print(
                "error: refusing to flush without --yes: stdin is not a terminal", file=sys.stderr
            )
            return 2
        if not answer:
            print("aborted: nothing removed", file=sys.stderr)
            return 1
    with connect(args.redis_url, cluster=args.cluster) as client:
        if args.all:
            removed = {"*": flush_all(client, args.prefix)}
        else:
            removed = {table: flush_table(client, args.prefix, table) for table in tables}
    if args.json:
        _print_json(
            {
                "prefix": args.prefix,
                "all": args.all,
                "tables": {} if args.all else removed,
                "removed": sum(removed.values()),
            }
        )
    elif args.all:
        print(f"removed {removed['*']} key(s) under prefix {args.prefix!r}")
    else:
        for table, count in removed.items():
            retired = "tags renewed (every cached row and query retired)"
            print(f"{table}: {retired}, {count} key(s) removed")
    return 0


# -- bench ------------------------------------------------------------------------------------


def _run_bench(args: argparse.Namespace) -> int:
    if args.near_cache and (args.redis_url is None or args.cluster):
        raise CommandError("--near-cache needs --redis-url, and does not work with --cluster")
    with _progress(len(scenarios(args.near_cache)) * args.reads) as tick:
        report = run_bench(
            args.database_url,
            redis_url=args.redis_url,
            cluster=args.cluster,
            rows=args.rows,
            reads=args.reads,
            tick=tick,
            near_cache=args.near_cache,
        )
    if args.json:
        _print_json(report.as_dict())
        return 0
    print(f"database: {report.database}")
    print(f"cache:    {report.cache}")
    print(f"table:    {report.table} ({report.rows} rows, dropped again)")

    def versus(key: str, other: str | None = None) -> str:
        speedup = report.speedup(key, other)
        if speedup is None:
            return "baseline"
        if speedup >= 1:
            return f"{speedup:.1f}x faster"
        return f"{1 / speedup:.1f}x slower"

    columns = ["scenario", "median us", "p95 us", "vs uncached"]
    redis_hit = {near: hit for hit, near in NEAR_AFTER.items()}
    rows = [
        [
            label,
            f"{report.timings[key].median_us:.1f}",
            f"{report.timings[key].p95_us:.1f}",
            versus(key),
        ]
        for key, label, _ in report.scenarios
    ]
    if report.near_cache:
        columns.append("vs Redis hit")
        for row, (key, _, _) in zip(rows, report.scenarios, strict=True):
            row.append(versus(key, redis_hit[key]) if key in redis_hit else "")
    _table(
        f"{report.reads} timed operations per scenario, each in a new session",
        columns,
        rows,
        "lrrrr"[: len(columns)],
    )
    return 0
