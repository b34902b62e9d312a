"""Run the benchmark suite: ``python -m nox -s bench`` (``bench_smoke`` in CI); see README.md.

The runner builds the two extra virtual environments (SQLAlchemy 2.0 + this repository, and
SQLAlchemy 2.0 + sqlmodel-cache 0.1.1 with exactly the same package versions), pins itself
to CPU 0 so that everything it starts inherits the pin, starts real Redis and PostgreSQL
servers, and one long-lived worker process per variant (``scenarios.VARIANTS``). Then, round
after round, it runs one batch of every scenario in every variant that has it, variant after
variant, so drift hits all variants alike. It prints tables and the targets of issues 6
(the cache) and 7 (the near cache), and writes JSON and Markdown to ``benchmarks/results/``.

Exit status: 1 when any scenario failed (a worker error, a "hit" that ran SQL, wrong rows),
or, under ``CI=true``, when a server could not be started. Targets never fail the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenarios import (
    APIS,
    CACHED_OPS,
    DBS,
    LABELS,
    PEER_NA,
    PEER_NA_REASON,
    SCENARIOS,
    TARGETS,
    TRANSPORTS,
    VARIANT_NAMES,
    VARIANTS,
    Scenario,
    Target,
    Variant,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from tests import servers  # noqa: E402 - the test-suite's throwaway servers, stdlib only

RESULTS = HERE / "results"
VENVS = ROOT / ".nox" / "bench-venvs"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BY_NAME = {variant.name: variant for variant in VARIANTS}

SQLALCHEMY_20 = "sqlalchemy>=2.0.30,<2.1"
COMMON = ["psycopg[binary]>=3.1", "asyncpg>=0.29", "aiosqlite>=0.20", "greenlet>=3"]
PROFILER = "pyinstrument>=4"

#: Full mode: operations per batch aim at this many milliseconds, within these bounds.
BATCH_MS = 40.0
MIN_N, MAX_N = 10, 400
SMOKE_N = 3


Key = tuple[str, str]  # (variant, scenario name)


# -- environments ------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def ensure_venv(name: str, requirements: list[str], constraints: str = "") -> str:
    """The Python of a virtual environment under .nox/bench-venvs/, built once per spec.

    The key covers pyproject.toml because ``sa20`` installs this repository (editable, so
    the workers always run the current source) with its dependencies."""
    spec = json.dumps(
        [sys.version, requirements, constraints, (ROOT / "pyproject.toml").read_text()]
    )
    path = VENVS / f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    python = str(path / "bin" / "python")
    if (path / "ready").exists():
        return python
    for stale in VENVS.glob(f"{name}-*"):
        shutil.rmtree(stale)
    print(f"creating virtual environment {path.relative_to(ROOT)} ...", flush=True)
    _run([sys.executable, "-m", "venv", str(path)])
    (path / "constraints.txt").write_text(constraints)
    _run([python, "-m", "pip", "install", "-q", "-c", str(path / "constraints.txt"), *requirements])
    (path / "ready").write_text(spec)
    return python


def environments(needed: set[str]) -> dict[str, str]:
    """Python executable per environment. ``peer`` is pinned to the versions ``sa20``
    resolved, so both sides of every peer comparison run the same packages."""
    pythons = {"main": sys.executable}
    if needed & {"sa20", "peer"}:
        pythons["sa20"] = ensure_venv(
            "sa20", ["-e", f"{ROOT}[redis,async]", SQLALCHEMY_20, *COMMON, PROFILER]
        )
    if "peer" in needed:
        # Every package sa20 has (this repository, editable, excluded) becomes a constraint.
        frozen = _run([pythons["sa20"], "-m", "pip", "freeze", "--exclude-editable"])
        pins = "\n".join(line for line in frozen.splitlines() if "==" in line)
        pythons["peer"] = ensure_venv(
            "peer", ["sqlmodel-cache==0.1.1", "redis>=5", SQLALCHEMY_20, *COMMON, PROFILER], pins
        )
    return pythons


def pin_to_cpu0(enabled: bool) -> int | None:
    """Pin this process (and so every server and worker it starts) to CPU 0, like
    ``taskset -c 0``: unpinned loopback timings swing 2-4x with vCPU wake-ups."""
    if not enabled or not hasattr(os, "sched_setaffinity") or 0 not in os.sched_getaffinity(0):
        return None
    os.sched_setaffinity(0, {0})
    return 0


# -- workers -----------------------------------------------------------------------------


class WorkerError(Exception):
    pass


class Worker:
    """One variant's worker process and its line protocol (see worker.py)."""

    def __init__(self, variant: Variant, python: str) -> None:
        self.variant = variant
        RESULTS.mkdir(exist_ok=True)
        self.log_path = RESULTS / f"worker-{variant.name}.log"
        self._log = self.log_path.open("w")
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [python, str(HERE / "worker.py"), variant.mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=HERE,
            env=env,
        )

    def call(self, **msg: Any) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        if stdin is None or stdout is None:
            raise WorkerError(f"worker {self.variant.name} has no pipes")
        try:
            stdin.write(json.dumps(msg) + "\n")
            stdin.flush()
            line = stdout.readline()
        except OSError:  # a broken pipe: the worker is gone
            line = ""
        if not line:
            raise WorkerError(f"worker {self.variant.name} died; see {self.log_path}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Series:
    """Every batch of one scenario in one variant."""

    n: int = SMOKE_N
    rounds: list[list[int]] = field(default_factory=list)
    trips: list[int] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    error: str | None = None
    #: Batches run a second time, and why (the near cache lost its tracking connection).
    retried: list[str] = field(default_factory=list)

    def round_medians(self) -> list[float]:
        return [median(batch) / 1000 for batch in self.rounds]

    def summary(self) -> dict[str, Any]:
        times = [t for batch in self.rounds for t in batch]
        return {
            "n_per_batch": self.n,
            "samples": len(times),
            "median_us": median(times) / 1000 if times else None,
            "p95_us": percentile(times, 95) / 1000 if times else None,
            "round_medians_us": [round(m, 2) for m in self.round_medians()],
            "trips_median": median(self.trips) if self.trips else None,
            "trips_max": max(self.trips) if self.trips else None,
            "statements_median": median(self.statements) if self.statements else None,
            "error": self.error,
            "retried": self.retried,
        }


def median(values: list[int] | list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: list[int], pct: float) -> float:
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)])


def scenario_order(selected: set[str]) -> list[Scenario]:
    """Related scenarios next to each other (an uncached operation, then its cached forms),
    so the batches a ratio compares run close together in time."""
    order = [s for s in SCENARIOS.values() if not s.db]
    for s in SCENARIOS.values():
        if s.db and not s.transport:
            order.append(s)
            order.extend(
                c
                for c in SCENARIOS.values()
                if c.transport and (c.db, c.api, c.base) == (s.db, s.api, s.base)
            )
    return [s for s in order if s.name in selected]


def run_batch(worker: Worker, one: Series, scenario: Scenario, n: int) -> dict[str, Any] | None:
    """One batch, or ``None`` once the scenario has failed in this variant."""
    if one.error is not None:
        return None
    try:
        return worker.call(cmd="run", scenario=scenario.name, n=n)
    except WorkerError as exc:
        one.error = str(exc)
        print(f"  ERROR {worker.variant.name} {scenario.name}:\n{exc}", flush=True)
        return None


def calibrate(workers: dict[str, Worker], series: dict[Key, Series], order: list[Scenario]) -> None:
    """Operations per batch: about BATCH_MS at the speed of the fastest of 5 operations (one
    preempted operation must not shrink the batch), within MIN_N and MAX_N."""
    for scenario in order:
        for variant, worker in workers.items():
            one = series.get((variant, scenario.name))
            reply = None if one is None else run_batch(worker, one, scenario, 5)
            if one is not None and reply is not None:
                per_op_ms = min(reply["times_ns"]) / 1e6
                one.n = min(MAX_N, max(MIN_N, int(BATCH_MS / max(per_op_ms, 1e-3))))


def measure(
    workers: dict[str, Worker], plan: dict[str, list[Scenario]], rounds: int, smoke: bool
) -> dict[Key, Series]:
    series = {(v, s.name): Series() for v, scenarios in plan.items() for s in scenarios}
    order = scenario_order({name for _, name in series})
    if not smoke:
        started = time.monotonic()
        calibrate(workers, series, order)
        print(f"calibrated in {time.monotonic() - started:.0f} s", flush=True)
    variants = list(workers)
    for r in range(rounds):
        started = time.monotonic()
        # Rotate which variant goes first, so no variant always follows the same one.
        rotated = variants[r % len(variants) :] + variants[: r % len(variants)]
        for scenario in order:
            for variant in rotated:
                one = series.get((variant, scenario.name))
                reply = None if one is None else run_batch(workers[variant], one, scenario, one.n)
                if one is not None and reply is not None:
                    one.rounds.append(reply["times_ns"])
                    one.trips.extend(reply["trips"])
                    one.statements.extend(reply["statements"])
                    one.retried.extend(f"round {r + 1}: {why}" for why in reply["retried"])
        print(f"round {r + 1}/{rounds} in {time.monotonic() - started:.0f} s", flush=True)
    return series


# -- reporting ---------------------------------------------------------------------------


class Report:
    """Figures derived from the measured series."""

    def __init__(
        self,
        series: dict[Key, Series],
        memory: dict[str, dict[str, Any]],
        near_memory: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.series = series
        self.memory = memory
        self.near_memory = near_memory or {}

    def measured(self, key: Key) -> Series | None:
        found = self.series.get(key)
        return found if found is not None and found.rounds else None

    def ratio(self, num: Key, den: Key) -> float | None:
        """Median over rounds of the ratio of the two batches' medians in that round."""
        a, b = self.measured(num), self.measured(den)
        if a is None or b is None:
            return None
        # A series that failed in round k stops there: pair the rounds both have.
        pairs = zip(a.round_medians(), b.round_medians(), strict=False)
        return median([x / y for x, y in pairs])

    def overhead(self, num: Key, den: Key, unit: Key) -> float | None:
        """Median over rounds of ``(num - den) / unit``: e.g. a miss's extra cost in GETs."""
        found = [self.measured(key) for key in (num, den, unit)]
        if any(s is None for s in found):
            return None
        medians = [s.round_medians() for s in found if s is not None]
        return median([(a - b) / c for a, b, c in zip(*medians, strict=False)])

    def target(self, target: Target) -> float | None:
        if target.kind == "ratio" and target.den:
            return self.ratio(target.num, target.den)
        if target.kind == "overhead" and target.den and target.unit:
            return self.overhead(target.num, target.den, target.unit)
        if target.kind == "trips":
            found = self.measured(target.num)
            return None if found is None else float(max(found.trips))
        if target.kind == "memory":
            value = self.memory.get(target.num[0], {}).get(target.num[1])
            return None if value is None else float(value)
        raise ValueError(f"unknown target kind {target.kind!r}")

    def cell(self, variant: str, scenario: str) -> str:
        """``median (p95)`` in µs, ``n/a`` for what the peer cannot do, ``-`` if not run."""
        if variant == "peer" and SCENARIOS[scenario].op in PEER_NA:
            return "n/a"
        found = self.series.get((variant, scenario))
        if found is not None and found.error is not None:
            return "ERROR"
        if found is None or not found.rounds:
            return "-"
        times = [t for batch in found.rounds for t in batch]
        return f"{fmt(median(times) / 1000)} ({fmt(percentile(times, 95) / 1000)})"

    def trips(self, variant: str, scenario: str) -> str:
        found = self.measured((variant, scenario))
        if found is None:
            return "n/a" if variant == "peer" and SCENARIOS[scenario].op in PEER_NA else "-"
        low, high = min(found.trips), max(found.trips)
        return str(low) if low == high else f"{low}-{high}"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(title: str, headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Aligned text or Markdown; rows with nothing measured are left out."""
    rows = [row for row in rows if any(cell not in ("-", "n/a") for cell in row[1:])]
    if not rows:
        return ""
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join(["---"] + ["--:"] * (len(headers) - 1)) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in rows)
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [title]
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def cached(db: str, api: str, op: str, transport: str) -> str:
    return f"{db}.{api}.{op}.{transport}"


def uncached(db: str, api: str, op: str) -> str:
    return f"{db}.{api}.{CACHED_OPS[op]}"


ROWS = [(db, api, op) for db in DBS for api in APIS for op in CACHED_OPS]


def label(db: str, api: str, op: str) -> str:
    return f"{db} {api} {LABELS[op]}"


#: The near cache's columns: (variant, transport it fronts).
NEAR_COLUMNS = (("near", "redis"), ("near@2.0", "redis"))


def times_table(report: Report, markdown: bool) -> str:
    columns = [(v, t) for t in TRANSPORTS for v in ("ours", "ours@2.0", "peer")]
    columns += NEAR_COLUMNS
    rows = [
        [label(*k), report.cell("uncached", uncached(*k))]
        + [report.cell(v, cached(*k, t)) for v, t in columns]
        for k in ROWS
    ]
    headers = ["µs per operation", "uncached"] + [f"{v} {t}" for v, t in columns]
    return table("Median µs per operation (p95)", headers, rows, markdown)


def ratios_table(report: Report, markdown: bool) -> str:
    rows = []
    for db, api, op in ROWS:
        k = (db, api, op)
        base = ("uncached", uncached(*k))
        row = [label(*k)] + [
            fmt_ratio(report.ratio(("ours", cached(*k, t)), base)) for t in TRANSPORTS
        ]
        for t in TRANSPORTS:
            ratio = report.ratio(("ours@2.0", cached(*k, t)), ("peer", cached(*k, t)))
            row.append("n/a" if op in PEER_NA else fmt_ratio(ratio))
        get = ("uncached", f"{api}.redis_get")
        row.append(fmt_ratio(report.ratio(("ours", cached(*k, "redis")), get)))
        near = ("near", cached(*k, "redis"))
        row.append(fmt_ratio(report.ratio(near, base)))
        row.append(fmt_ratio(report.ratio(near, ("ours", cached(*k, "memory")))))
        row.append(fmt_ratio(report.ratio(near, ("ours", cached(*k, "redis")))))
        peer = ("peer", cached(*k, "redis"))
        row.append(fmt_ratio(report.ratio(("near@2.0", cached(*k, "redis")), peer)))
        rows.append(row)
    headers = ["ratio (< 1: ours faster)", "ours/uncached memory", "ours/uncached redis"]
    headers += ["ours/peer memory", "ours/peer redis", "ours/raw GET redis"]
    headers += ["near/uncached", "near/ours memory", "near/ours redis", "near/peer redis"]
    title = (
        "Ratios: median over rounds of per-round medians "
        "(ours/peer and near/peer: both on SQLAlchemy 2.0)"
    )
    return table(title, headers, rows, markdown)


def baselines_table(report: Report, markdown: bool) -> str:
    rows = [
        [f"{LABELS[op]} {api}", report.cell("uncached", f"{api}.{op}")]
        for op in ("redis_get", "session")
        for api in APIS
    ]
    return table("Baselines", ["baseline", "µs (p95)"], rows, markdown)


def trips_table(report: Report, markdown: bool) -> str:
    """Round trips do not depend on the database: show PostgreSQL's, else SQLite's."""
    pg = any(report.measured(("ours", cached("pg", api, "get_hit", "redis"))) for api in APIS)
    db = "pg" if pg else "sqlite"
    variants = ("ours", "ours@2.0", "peer", "near")
    rows = [
        [f"{api} {LABELS[op]}"] + [report.trips(v, cached(db, api, op, "redis")) for v in variants]
        for api in APIS
        for op in CACHED_OPS
    ]
    title = f"Cache round trips per operation (Redis requests sent; {db}; min-max)"
    return table(title, ["operation", *variants], rows, markdown)


def memory_table(report: Report, markdown: bool) -> str:
    rows = [
        [
            variant,
            str(m["keys"]),
            fmt(m["value_bytes_per_row"]),
            fmt(m["memory_usage_per_row"]),
            fmt(m["json_bytes_per_row"]),
            fmt_ratio(m["value_ratio"]),
            fmt_ratio(m["memory_usage_ratio"]),
        ]
        for variant, m in report.memory.items()
    ]
    headers = ["variant", "keys", "value B", "MEMORY USAGE B", "JSON B", "value/JSON"]
    headers += ["usage/JSON"]
    title = "Redis memory per cached row (100 rows cached by get(); per row)"
    return table(title, headers, rows, markdown)


def near_memory_table(report: Report, markdown: bool) -> str:
    rows = [
        [
            variant,
            str(m["rows"]),
            str(m["entries"]),
            fmt(m["value_bytes_per_row"]),
            fmt(m["key_chars_per_row"]),
            fmt(m["accounted_per_entry"]),
            fmt(m["measured_per_entry"]),
            fmt_ratio(m["accounted_over_measured"]),
        ]
        for variant, m in report.near_memory.items()
    ]
    headers = ["variant", "rows", "entries", "value B", "key chars", "accounted B/entry"]
    headers += ["tracemalloc B/entry", "accounted/tracemalloc"]
    title = (
        "Near cache memory per entry (every row cached by get(); accounted: NearStore.size(), "
        "tracemalloc: freed when emptied)"
    )
    return table(title, headers, rows, markdown)


def render(report: Report, markdown: bool) -> str:
    """Every table of the report, as aligned text or as Markdown."""
    tables = (
        times_table,
        ratios_table,
        baselines_table,
        trips_table,
        memory_table,
        near_memory_table,
    )
    text = "\n".join(text for text in (t(report, markdown) for t in tables) if text)
    if "n/a" in text:
        text += f"\nn/a: {PEER_NA_REASON}\n"
    return text


def render_targets(report: Report, markdown: bool) -> tuple[str, list[dict[str, Any]]]:
    """The targets with their values and verdicts, as text and as JSON-ready records."""
    rows, found = [], []
    for target in TARGETS:
        value = report.target(target)
        verdict = "n/a" if value is None else ("PASS" if value <= target.limit + 1e-9 else "MISS")
        found.append({"target": target.text, "value": value, "limit": target.limit})
        found[-1].update(verdict=verdict, issue=target.issue)
        rows.append([target.text, verdict, fmt_ratio(value), f"{target.limit:.2f}"])
    title = (
        "Targets (issue 6: the cache, issue 7: the near cache; read, never asserted): "
        "met when value <= limit"
    )
    if markdown:
        return table(title, ["target", "", "value", "limit"], rows, markdown), found
    lines = [f"{v:4}  {value:>6} (limit {limit})  {text}" for text, v, value, limit in rows]
    return f"{title}\n" + "\n".join(lines) + "\n", found


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few iterations, one round (CI)")
    parser.add_argument("--rounds", type=int, help="rounds (default: 10, smoke: 1)")
    parser.add_argument(
        "--only",
        help="run scenarios whose name contains one of these "
        "comma-separated patterns (* matches anything)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="JSON output")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPU 0")
    parser.add_argument("--profile", metavar="SCENARIO", help="profile one scenario instead")
    parser.add_argument("--variant", default="ours", choices=VARIANT_NAMES, help="for --profile")
    parser.add_argument("--iterations", type=int, default=2000, help="for --profile")
    return parser.parse_args(argv)


def start_servers(
    plan: dict[str, list[Scenario]], skipped: list[str]
) -> tuple[Any, Any, dict[str, list[Scenario]]]:
    """Start the servers the plan needs. A server that cannot start fails the run under
    ``CI=true``; elsewhere its scenarios are skipped (and listed in the report)."""
    wanted = [s for scenarios in plan.values() for s in scenarios]
    started: dict[str, Any] = {"redis": None, "pg": None}
    for kind, needed, start in (
        ("redis", any(s.needs_redis for s in wanted), servers.start_redis),
        ("pg", any(s.needs_postgres for s in wanted), servers.start_postgres),
    ):
        if not needed:
            continue
        try:
            started[kind] = start()
        except RuntimeError as exc:
            if IN_CI:
                raise RuntimeError(f"{kind} is required under CI=true: {exc}") from exc
            skipped.append(f"{kind} scenarios: {str(exc).splitlines()[0]}")
    plan = {
        variant: [
            s
            for s in scenarios
            if (started["redis"] or not s.needs_redis) and (started["pg"] or not s.needs_postgres)
        ]
        for variant, scenarios in plan.items()
    }
    return started["redis"], started["pg"], plan


def git_state() -> dict[str, Any]:
    try:
        commit = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).strip()
        dirty = bool(_run(["git", "-C", str(ROOT), "status", "--porcelain"]).strip())
    except (RuntimeError, OSError):
        return {}
    return {"commit": commit, "dirty": dirty}


def select(args: argparse.Namespace) -> dict[str, list[Scenario]]:
    """The scenarios each variant runs: all, those matching ``--only``, or the profiled one."""
    only = [part for part in (args.only or "").split(",") if part]

    def wanted(scenario: Scenario) -> bool:
        if args.profile:
            return scenario.name == args.profile
        return not only or any(fnmatch.fnmatchcase(scenario.name, f"*{p}*") for p in only)

    variants = [v for v in VARIANTS if not args.profile or v.name == args.variant]
    plan = {v.name: [s for s in v.scenarios if wanted(s)] for v in variants}
    return {variant: scenarios for variant, scenarios in plan.items() if scenarios}


def start_workers(
    plan: dict[str, list[Scenario]], pythons: dict[str, str], redis_server: Any, pg_server: Any
) -> tuple[dict[str, Worker], dict[str, dict[str, str]]]:
    """A set-up worker per variant (each with its own Redis database and PostgreSQL
    database), and the package versions each one reports."""
    workers, versions = {}, {}
    for index, variant in enumerate(plan, start=1):
        spec = BY_NAME[variant]
        workers[variant] = worker = Worker(spec, pythons[spec.env])
        reply = worker.call(
            cmd="setup",
            redis_url=redis_server.url if redis_server else None,
            redis_db=index,
            pg=f"127.0.0.1:{pg_server.port}" if pg_server else None,
            pg_db=f"bench_{index}",
        )
        versions[variant] = reply["versions"]
    if "ours@2.0" in versions and "peer" in versions:
        for package in ("sqlalchemy", "sqlmodel", "pydantic", "redis", "psycopg", "asyncpg"):
            ours, peer = versions["ours@2.0"][package], versions["peer"][package]
            if ours != peer:
                raise WorkerError(f"{package} differs: ours@2.0 has {ours}, peer has {peer}")
    return workers, versions


def measure_memory(
    workers: dict[str, Worker], errors: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bytes per cached row in Redis (per variant), and in the near cache."""
    memory, near_memory = {}, {}
    for variant, cmd, found in (
        ("ours", "memory", memory),
        ("ours@2.0", "memory", memory),
        ("peer", "memory", memory),
        ("near", "near_memory", near_memory),
    ):
        if variant in workers:
            try:
                found[variant] = workers[variant].call(cmd=cmd)
            except WorkerError as exc:
                errors[f"{variant} {cmd}"] = str(exc)
    return memory, near_memory


def write_report(
    args: argparse.Namespace,
    document: dict[str, Any],
    series: dict[Key, Series],
    memory: dict[str, Any],
    near_memory: dict[str, Any],
) -> None:
    """Print the tables and targets; write them as Markdown, and everything as JSON."""
    report = Report(series, memory, near_memory)
    pin = "pinned to CPU 0" if document["pinned_cpu"] is not None else "NOT pinned"
    header = (
        f"sqlmodel-cache benchmarks: {document['mode']} run, {document['rounds']} round(s), "
        f"{pin}, {document['cpus']} CPUs, {document['finished'][:16].replace('T', ' ')} UTC\n"
    )
    for variant, found in document["versions"].items():
        version = found.get("sqlmodel-cache", "").split(" (")[0]
        library = f"sqlmodel-cache {version}" if version else "no cache library"
        header += f"- {variant}: {library}, SQLAlchemy {found['sqlalchemy']}\n"
    targets_text, targets = render_targets(report, markdown=False)
    print("\n" + header + "\n" + render(report, markdown=False) + "\n" + targets_text)
    for line in document["skipped"]:
        print(f"SKIPPED {line}")
    retried = [f"{v} {s}, {why}" for (v, s), one in series.items() for why in one.retried]
    for line in retried:
        print(f"RUN AGAIN {line}")
    markdown = render(report, markdown=True) + "\n" + render_targets(report, markdown=True)[0]
    if retried:
        markdown += "\nBatches run again:\n\n" + "".join(f"- {line}\n" for line in retried)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(header.replace("\n", "\n\n", 1) + "\n" + markdown)
    document["results"] = [
        {"variant": v, "scenario": s, **one.summary()} for (v, s), one in series.items()
    ]
    document["targets"] = targets
    document["memory"] = memory
    document["near_memory"] = near_memory
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1))
    print(f"wrote {args.json} and {RESULTS / 'latest.md'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    rounds = args.rounds or (1 if args.smoke else 10)
    plan = select(args)
    if not plan:
        print(f"no scenario matches; scenarios: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    pythons = environments({BY_NAME[variant].env for variant in plan})
    pinned = pin_to_cpu0(not args.no_pin)
    skipped: list[str] = []
    errors: dict[str, str] = {}
    workers: dict[str, Worker] = {}
    redis_server = pg_server = None
    try:
        redis_server, pg_server, plan = start_servers(plan, skipped)
        workers, versions = start_workers(plan, pythons, redis_server, pg_server)
        if args.profile:
            return profile(workers[args.variant], args.profile, args.iterations)
        series = measure(workers, plan, rounds, args.smoke)
        memory, near_memory = measure_memory(workers, errors) if redis_server else ({}, {})
    except (WorkerError, RuntimeError) as exc:
        print(f"benchmark set-up failed:\n{exc}", file=sys.stderr)
        return 1
    finally:
        for worker in workers.values():
            worker.close()
        for server in (redis_server, pg_server):
            if server is not None:
                server.stop()
    errors.update({f"{v} {s}": one.error for (v, s), one in series.items() if one.error})
    document = {
        "mode": "smoke" if args.smoke else "full",
        "rounds": rounds,
        "batch_ms": BATCH_MS,
        "pinned_cpu": pinned,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "git": git_state(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "duration_s": round(time.monotonic() - began, 1),
        "versions": versions,
        "skipped": skipped,
        "errors": errors,
    }
    write_report(args, document, series, memory, near_memory)
    print(f"{document['mode']} run took {document['duration_s']:.0f} s")
    if errors:
        print(f"{len(errors)} scenario(s) FAILED: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


def profile(worker: Worker, scenario: str, iterations: int) -> int:
    """Profile ``iterations`` operations of one scenario (with its untimed preparation, such
    as the invalidation before each miss) in the worker, with pyinstrument."""
    out = RESULTS / f"profile-{worker.variant.name}-{scenario}"
    reply = worker.call(cmd="profile", scenario=scenario, n=iterations, out=str(out))
    print(reply["report"])
    print("wrote " + ", ".join(reply["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
