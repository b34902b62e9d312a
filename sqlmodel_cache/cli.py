"""The ``sqlmodel-cache`` command line.

::

    sqlmodel-cache demo                      # SQLite in memory + the in-process cache
    sqlmodel-cache demo --redis-url redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import os
import sys

from sqlmodel_cache import __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Returns 2 and prints the help when no command is given. Invalid arguments, ``--help``
    and ``--version`` exit through ``SystemExit``, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from sqlmodel_cache._demo import run_demo  # imported late: it defines a table model

    color = not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    return run_demo(
        sys.stdout,
        sys.stderr,
        redis_url=args.redis_url,
        rows=args.rows,
        reads=args.reads,
        color=color,
    )


if __name__ == "__main__":
    raise SystemExit(main())
