"""Odoo medallion benchmark: specs/odoo_medallion.yaml through a LocalStack beside the same
transforms as one hand-written DuckDB script, on the same data in the same run.

    python bench/odoo_medallion.py [--sizes 100k,1m] [--quick] [--workers 1]
                                   [--concurrency 2] [--profile]

Per size (sale order lines; `--quick`: 10k only):

- Source: `pipelines.odoo.generator.generate` (scale = lines / 100,000, 30 days, seed 42)
  into a database of its own on 127.0.0.1:5432, then `VACUUM ANALYZE` and a checkpoint so
  that no side meets autovacuum or hint-bit writes; not measured. A warehouse database of
  its own takes the three publications (schemas `gold`, `gold_baseline`, `gold_layers`).
  Both databases are dropped at the end.
- Pipeline: a `control_room.localstack.LocalStack` (control plane: a third scratch
  database, migrated by the stack; the gateway on a free port, a thread of this process;
  `--workers` worker processes of `--concurrency` slots, default 1 x 2: two phases at once
  on the two cores) runs the spec with param as_of (the day after the last simulated
  day) into the stack's workspace lake (a fresh temp directory: a first, full load), its
  connections `odoo` and `warehouse` registered in the stack's workspace as `control-room
  demo` registers them (the password a file: reference the stack's workers may resolve,
  empty here). The stack is up and its workers are waiting
  for work before the run is created. Wall time: the run's `created_at` -> `finished_at`
  (the database's clock; the run finishes when its last phase completes), so the polling
  (every 0.5 s) adds nothing to it.
- Baseline: bench/odoo_medallion_baseline.py in a process of its own (its docstring says
  what it does and omits); then again with `--persist-layers` ("baseline + layers": bronze
  and silver written to Delta too, no digests), which separates the medallion's storage
  from the orchestration. Wall time: from starting the process to its exit (interpreter
  start and imports included, as each python phase of the pipeline pays them too).
- Peak memory: a thread reads `/proc/<pid>/status` of every process of the measured tree
  every 100 ms: the worker processes and all their descendants (the phases'
  subprocesses), or the baseline's process. "Peak RSS" is the largest `VmHWM` (a process's
  own peak RSS, so a peak between two samples still counts) of any one process, also given
  per role (worker, phase subprocess); "tree" the largest sum of `VmRSS` over the tree at
  one sample. The gateway (in this process) and PostgreSQL are in neither.
- CPU: the worker processes' user + system time during the run, their reaped phase
  subprocesses included (/proc/<pid>/stat); the baseline's from `wait4`. The gateway's and
  PostgreSQL's (control plane included) are not counted.
- Checked: the run succeeded, and the three publications of gold are identical (EXCEPT
  ALL both ways, per mart).

Printed: one table with every size (wall, ratio, rows/s = sale_order_line rows / wall, peak
memory, CPU), then per size the slowest phases with their inner steps (from the phases'
claim and finish times and the worker's timestamps of their `PHASE_STARTED` and
`PHASE_PROGRESS` events: extract 0.1 schema checked, 0.6 rows read, 0.9 bronze written and
digested, 1.0 watermark; sql 0.5 query done, 0.8 output written and digested), the phase
time per step summed over all phases, and the baselines' steps. `--profile` also times,
after the run and one table at a time, the digest of every table the run wrote as the
catalog takes it (all columns) and by the table's key, and a bare Delta rewrite of it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from deltalake import DeltaTable, write_deltalake
from psycopg import sql
from rich.console import Console
from rich.table import Table

from control_room.cli.up import CONNECTION_SECRETS, register_connections
from control_room.contract.client import ContractClient, Event, Phase, Run
from control_room.localstack import LocalStack
from control_room.settings import load_settings
from control_room.specs import load_spec
from executor.digests import arrow_table_digest, table_digest
from executor.tables import table_keys
from pipelines.odoo.generator import generate

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SPEC = REPO / "specs" / "odoo_medallion.yaml"
BASELINE = BENCH_DIR / "odoo_medallion_baseline.py"
MARTS = ("revenue", "receivables_ageing", "order_invoice_lag")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
POLL_S = 0.5
SAMPLE_S = 0.1
BOUND_S = 3600.0
LINES_PER_SCALE = 100_000

console = Console(width=160)


# --------------------------------------------------------------------------------- sizes

def parse_size(text: str) -> int:
    """`10k`, `100k`, `1m`, `250000` -> order lines."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([km]?)\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100k, 1m)")
    lines = float(match[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[match[2]]
    if lines < 1_000:
        raise argparse.ArgumentTypeError(f"size {text!r} is below 1k order lines")
    return int(lines)


def label(lines: int) -> str:
    if lines % 1_000_000 == 0:
        return f"{lines // 1_000_000}M"
    return f"{lines // 1_000}k" if lines % 1_000 == 0 else str(lines)


# --------------------------------------------------------------------------------- memory

@dataclass
class Peak:
    process_mib: float = 0.0
    """The largest VmHWM of any one process seen."""
    tree_mib: float = 0.0
    """The largest sum of VmRSS over the tree at one sample."""
    by_role: dict[str, float] = field(default_factory=dict)
    """The largest VmHWM per role: `worker` (the root's children), `phase subprocess`
    (deeper), or `baseline` (the root itself)."""


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process now."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()     # after "pid (comm) "
        parents[int(entry)] = int(fields[1])
    return parents


def _tree(root: int) -> list[tuple[int, int]]:
    """(pid, depth) of `root` (depth 0) and every descendant."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in _parents().items():
        children[parent].append(pid)
    found, todo = [], [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        found.append((pid, depth))
        todo.extend((child, depth + 1) for child in children[pid])
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB; zeros for a process gone or without memory (a zombie)."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, its reaped children's included (utime, stime, cutime,
    cstime of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class TreeSampler:
    """Samples the memory of `root`'s process tree every `SAMPLE_S` in a thread; the root
    itself only when `include_root`."""

    def __init__(self, root: int, *, include_root: bool) -> None:
        self.root, self.include_root = root, include_root
        self.peak = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        total = 0
        for pid, depth in _tree(self.root):
            if depth == 0 and not self.include_root:
                continue
            rss, hwm = _memory_kib(pid)
            total += rss
            role = ("baseline" if depth == 0 else "worker" if depth == 1
                    else "phase subprocess")
            self.peak.by_role[role] = max(self.peak.by_role.get(role, 0.0), hwm / 1024)
            self.peak.process_mib = max(self.peak.process_mib, hwm / 1024)
        self.peak.tree_mib = max(self.peak.tree_mib, total / 1024)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()


def load_average() -> float:
    """The 1-minute load average (other jobs on the machine show here)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


# --------------------------------------------------------------------------------- source

@dataclass
class Source:
    dsn: str
    warehouse: str
    lines: int
    """sale_order_line rows generated."""
    as_of: str
    seconds: float


@contextlib.contextmanager
def source_databases(lines: int, seed: int, days: int) -> Iterator[Source]:
    """A generated Odoo database and an empty warehouse, both dropped afterwards."""
    with own_database(ADMIN_URL, "bench_odoo_src") as dsn, \
            own_database(ADMIN_URL, "bench_odoo_wh") as warehouse:
        console.print(f"[dim]generating {label(lines)} order lines ...[/]")
        report = generate(dsn, scale=lines / LINES_PER_SCALE, seed=seed, days=days,
                          start=dt.date(2026, 1, 1))
        with psycopg.connect(dsn, autocommit=True) as pg:
            pg.execute("vacuum analyze")
            pg.execute("checkpoint")
        as_of = (report.last_day + dt.timedelta(days=1)).isoformat()
        yield Source(dsn, warehouse, report.rows["sale_order_line"], as_of, report.seconds)


# --------------------------------------------------------------------------------- pipeline

@dataclass
class PipelineResult:
    wall_s: float
    peak: Peak
    cpu_s: float
    """CPU time of the worker processes during the run (their reaped phase subprocesses'
    included)."""
    load: tuple[float, float]
    """The 1-minute load average before and after."""
    run: Run
    events: list[Event]


def _wait_for_workers(state_dir: Path, workers: int) -> None:
    """Until every worker logged its start (then it is claiming, waiting for work)."""
    deadline = time.monotonic() + 120
    logs = [state_dir / "log" / f"worker-{n}.log" for n in range(workers)]
    while not all(log.is_file() and "slot(s)" in log.read_text(errors="replace")
                  for log in logs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not start; see {state_dir / 'log'}")
        time.sleep(0.1)
    time.sleep(1.0)     # the first claim is out, waiting on the gateway


def run_pipeline(source: Source, tmp: Path, workers: int, concurrency: int) -> PipelineResult:
    loaded = load_spec(SPEC)
    params = {"as_of": source.as_of}
    with own_database(ADMIN_URL, "bench_odoo_cp") as control_plane:
        settings = load_settings(database_url=control_plane, state_dir=tmp / "state", port=0)
        with LocalStack(settings, workers=workers, concurrency=concurrency) as stack:
            assert stack.info is not None
            _wait_for_workers(settings.state_dir, workers)
            args = loaded.create_run_args(stack.info.workspace_id, params,
                                          labels={"bench": "odoo_medallion"})
            with ContractClient(stack.info.gateway_url,
                                stack.info.token.get_secret_value()) as client:
                register_connections(client, stack.info.workspace_id,
                                     settings.state_dir / CONNECTION_SECRETS,
                                     {"odoo": source.dsn, "warehouse": source.warehouse},
                                     stack.database_url)
                workers_pids = [pid for pid, depth in _tree(os.getpid()) if depth == 1]
                load_before = load_average()
                cpu_before = sum(cpu_seconds(pid) for pid in workers_pids)
                with TreeSampler(os.getpid(), include_root=False) as sampler:
                    began = time.perf_counter()
                    run_id = client.create_run(**args).id
                    run = client.get_run(run_id)
                    while run.state not in FINAL:
                        if time.perf_counter() - began > BOUND_S:
                            raise RuntimeError(f"run {run_id} did not finish in {BOUND_S} s")
                        stack.check_workers()
                        time.sleep(POLL_S)
                        run = client.get_run(run_id)
                cpu = sum(cpu_seconds(pid) for pid in workers_pids) - cpu_before
                load = (load_before, load_average())
                events = list(client.iter_events(run_id))
            if run.state != "succeeded":
                failed = {p.name: (p.error or {}).get("message") for p in run.phases
                          if p.state != "succeeded"}
                log = settings.state_dir / "log" / "worker-0.log"
                tail = log.read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError(f"the pipeline run {run_id} ended {run.state}: {failed}\n"
                                   "worker 0's log ends:\n" + "\n".join(tail))
    assert run.finished_at is not None
    wall = (run.finished_at - run.created_at).total_seconds()
    return PipelineResult(wall, sampler.peak, cpu, load, run, events)


# --------------------------------------------------------------------------------- baseline

@dataclass
class BaselineResult:
    wall_s: float
    peak: Peak
    cpu_s: float
    load: tuple[float, float]
    steps: dict[str, float]


def run_baseline(source: Source, tmp: Path, *, persist_layers: bool = False) -> BaselineResult:
    """bench/odoo_medallion_baseline.py in a process of its own, into a fresh lake;
    publishing to `gold_baseline` (`gold_layers` with `persist_layers`)."""
    name = "layers" if persist_layers else "baseline"
    report = tmp / f"{name}.json"
    command = [sys.executable, str(BASELINE), "--odoo-dsn", source.dsn,
               "--warehouse-dsn", source.warehouse, "--lake", str(tmp / f"{name}_lake"),
               "--as-of", source.as_of, "--schema", f"gold_{name}", "--report", str(report)]
    if persist_layers:
        command.append("--persist-layers")
    load_before = load_average()
    began = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL)
    with TreeSampler(proc.pid, include_root=True) as sampler:
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} script exited with {proc.returncode}")
    steps = json.loads(report.read_text())["steps"]
    return BaselineResult(wall, sampler.peak, usage.ru_utime + usage.ru_stime,
                          (load_before, load_average()),
                          {k: float(v) for k, v in steps.items()})


def gold_differences(warehouse: str, other: str) -> int:
    """The rows of the three marts in one of schemas `gold` and `other` and not in the
    other (EXCEPT ALL both ways): 0 when both published the same gold."""
    found = 0
    with psycopg.connect(warehouse) as pg:
        for mart in MARTS:
            a, b = sql.Identifier("gold", mart), sql.Identifier(other, mart)
            query = sql.SQL("select (select count(*) from (table {a} except all table {b}) x)"
                            " + (select count(*) from (table {b} except all table {a}) y)"
                            ).format(a=a, b=b)
            row = pg.execute(query).fetchone()
            assert row is not None
            found += int(row[0])
    return found


# --------------------------------------------------------------------------------- phases

ENTRYPOINT_CLASS = {"extract_table": "extract", "check_quality": "quality",
                    "publish_gold": "publish"}


def phase_class(phase: Phase) -> str:
    """extract | sql | quality | publish (python phases by their entrypoint's function)."""
    if phase.kind == "sql":
        return "sql"
    function = str(phase.params.get("entrypoint", "")).rsplit(":", 1)[-1]
    return ENTRYPOINT_CLASS.get(function, function)


PREPARE = "prepare: render, connections, catalog states"
STEP_NAMES: dict[str, dict[float, str]] = {
    "extract": {0.1: "spawn, imports, connect, schema", 0.6: "read (COPY -> Arrow)",
                0.9: "bronze write + table digest", 1.0: "watermark commit"},
    "sql": {0.5: "inputs + query", 0.8: "output write + table digest",
            1.0: "result manifest + preview"},
    "publish": {0.9: "spawn, imports + publish (COPY)"},
}
UNMARKED = {"quality": "spawn, imports + checks + report"}
"""Phases that report no progress: what their run is."""
FINISH = "finish: result, artifacts, catalog, complete"


def phase_steps(phase: Phase, events: Sequence[Event]) -> list[tuple[str, float]]:
    """The phase's last attempt from its claim to its finish, cut at its PHASE_STARTED and
    PHASE_PROGRESS events (timestamps taken by the worker when it emitted them): (step,
    seconds)."""
    assert phase.started_at is not None and phase.finished_at is not None
    kind = phase_class(phase)
    names = STEP_NAMES.get(kind, {})
    marks: list[tuple[str, dt.datetime]] = []
    for event in events:
        if event.phase != phase.name or event.attempt != phase.attempt:
            continue
        if event.type == "PHASE_STARTED":
            marks.append((PREPARE, event.ts))
        elif event.type == "PHASE_PROGRESS" and "fraction" in event.payload:
            fraction = float(event.payload["fraction"])
            marks.append((names.get(fraction, f"to progress {fraction:g}"), event.ts))
    marks.append((FINISH if len(marks) > 1 else UNMARKED.get(kind, "run"), phase.finished_at))
    steps, previous = [], phase.started_at
    for name, at in marks:
        steps.append((name, (at - previous).total_seconds()))
        previous = at
    return steps


def seconds(phase: Phase) -> float:
    assert phase.started_at is not None and phase.finished_at is not None
    return (phase.finished_at - phase.started_at).total_seconds()


def busy_seconds(phases: Sequence[Phase]) -> float:
    """The time at least one phase was running (the union of their intervals)."""
    spans = sorted((p.started_at, p.finished_at) for p in phases
                   if p.started_at is not None and p.finished_at is not None)
    total, end = 0.0, None
    for start, finish in spans:
        if end is None or start > end:
            total += (finish - start).total_seconds()
            end = finish
        elif finish > end:
            total += (finish - end).total_seconds()
            end = finish
    return total


def critical_path(phases: Sequence[Phase]) -> tuple[float, list[str]]:
    """The longest chain of dependent phases by their claim -> finish durations: the run's
    wall time with unlimited slots at the same phase durations."""
    by_name = {p.name: p for p in phases}
    longest: dict[str, tuple[float, list[str]]] = {}

    def chain(name: str) -> tuple[float, list[str]]:
        if name not in longest:
            before = max((chain(d) for d in by_name[name].depends_on), default=(0.0, []))
            longest[name] = (before[0] + seconds(by_name[name]), [*before[1], name])
        return longest[name]

    return max(chain(name) for name in by_name)


# --------------------------------------------------------------------------------- profile

@dataclass
class TableCost:
    name: str
    rows: int
    digest_all_s: float
    digest_key_s: float | None
    """None: the table has no key."""
    read_s: float
    """Reading the version back from Delta into Arrow (what the digest starts with)."""
    digest_memory_s: float
    """The same digest over the Arrow table already in memory (`arrow_table_digest`)."""
    rewrite_s: float


def profile_tables(run: Run, scratch: Path) -> list[TableCost]:
    """For every table the run wrote: its digest as the catalog takes it (all columns), by
    its key, reading it back from Delta, its digest over the rows in memory, and a bare Delta
    rewrite of the same rows."""
    costs = []
    for phase in run.phases:
        manifest = phase.output_manifest or {}
        table = manifest.get("table")
        if not isinstance(table, dict) or "uri" not in table:
            continue
        uri, version = str(table["uri"]), int(table["version"])
        began = time.perf_counter()
        digest = table_digest(uri, version)
        all_s = time.perf_counter() - began
        key_s = None
        keys = table_keys(uri)
        if keys:
            began = time.perf_counter()
            table_digest(uri, version, primary_key=keys)
            key_s = time.perf_counter() - began
        began = time.perf_counter()
        rows = DeltaTable(uri, version=version).to_pyarrow_table()
        read_s = time.perf_counter() - began
        began = time.perf_counter()
        arrow_table_digest(rows)
        memory_s = time.perf_counter() - began
        target = scratch / phase.name
        began = time.perf_counter()
        write_deltalake(str(target), rows, mode="overwrite")
        rewrite_s = time.perf_counter() - began
        shutil.rmtree(target, ignore_errors=True)
        costs.append(TableCost(str(table.get("name", phase.name)), digest.rows, all_s, key_s,
                               read_s, memory_s, rewrite_s))
    return sorted(costs, key=lambda c: -c.digest_all_s)


# --------------------------------------------------------------------------------- report

@dataclass
class Measured:
    size: int
    source: Source
    pipeline: PipelineResult
    baseline: BaselineResult
    layers: BaselineResult
    """The baseline writing bronze and silver to Delta too (`--persist-layers`)."""
    differences: int
    """Gold rows that differ between the pipeline's and the baselines' publications."""
    costs: list[TableCost] = field(default_factory=list)


def summary_table(results: Sequence[Measured], workers: int, concurrency: int) -> Table:
    table = Table(title=f"Odoo medallion: pipeline (LocalStack, {workers} worker(s) x "
                        f"{concurrency} slots) vs one hand-written DuckDB script, "
                        f"{os.cpu_count()} CPUs")
    for column in ("size (order lines)", "pipeline wall s", "baseline wall s", "ratio",
                   "pipeline rows/s", "baseline rows/s", "pipeline peak RSS MiB",
                   "baseline peak RSS MiB", "pipeline tree MiB", "CPU s pipeline / baseline",
                   "baseline + layers wall s (ratio)", "gold identical"):
        table.add_column(column, justify="left" if column.startswith("size") else "right")
    for m in results:
        p, b, lines = m.pipeline, m.baseline, m.source.lines
        table.add_row(f"{label(m.size)} ({lines:,})", f"{p.wall_s:.1f}", f"{b.wall_s:.1f}",
                      f"{p.wall_s / b.wall_s:.2f}x", f"{lines / p.wall_s:,.0f}",
                      f"{lines / b.wall_s:,.0f}", f"{p.peak.process_mib:,.0f}",
                      f"{b.peak.process_mib:,.0f}", f"{p.peak.tree_mib:,.0f}",
                      f"{p.cpu_s:.1f} / {b.cpu_s:.1f}",
                      f"{m.layers.wall_s:.1f} ({p.wall_s / m.layers.wall_s:.2f}x)",
                      "yes" if m.differences == 0 else f"NO ({m.differences} rows differ)")
    return table


def notes(m: Measured) -> str:
    p, b, layers = m.pipeline, m.baseline, m.layers
    roles = ", ".join(f"{role} {mib:,.0f}" for role, mib in sorted(p.peak.by_role.items()))
    length, path = critical_path(p.run.phases)
    return (f"{label(m.size)}: critical path {length:.1f} s: {' > '.join(path)}. "
            f"Pipeline peak RSS by process role (MiB): {roles}; baseline + "
            f"layers peak {layers.peak.process_mib:,.0f} MiB, CPU {layers.cpu_s:.1f} s. "
            f"1-min load average before/after: pipeline {p.load[0]:.1f}/{p.load[1]:.1f}, "
            f"baseline {b.load[0]:.1f}/{b.load[1]:.1f}, baseline + layers "
            f"{layers.load[0]:.1f}/{layers.load[1]:.1f}.")


def slowest_table(m: Measured, count: int = 5) -> Table:
    run = m.pipeline.run
    table = Table(title=f"{label(m.size)}: the {count} slowest phases (claim -> finish)")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("steps (s)")
    for phase in sorted(run.phases, key=seconds, reverse=True)[:count]:
        steps = phase_steps(phase, m.pipeline.events)
        table.add_row(phase.name, f"{seconds(phase):.1f}",
                      "; ".join(f"{name} {s:.1f}" for name, s in steps))
    return table


def where_table(m: Measured) -> Table:
    """Phase time per class and step, summed over the phases (not wall: phases overlap)."""
    run = m.pipeline.run
    totals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for phase in run.phases:
        for name, s in phase_steps(phase, m.pipeline.events):
            totals[(phase_class(phase), name)].append(s)
    table = Table(title=f"{label(m.size)}: phase time per step, summed over phases")
    for column in ("phases", "step", "sum s", "max s"):
        table.add_column(column, justify="right" if column.endswith(" s") else "left")
    for (kind, name), values in totals.items():
        table.add_row(f"{kind} x{len(values)}", name, f"{sum(values):.1f}",
                      f"{max(values):.1f}")
    assert run.finished_at is not None
    in_db = (run.finished_at - run.created_at).total_seconds()
    busy = busy_seconds(run.phases)
    phase_sum = sum(seconds(p) for p in run.phases)
    table.add_row("run", "phase time, all phases", f"{phase_sum:.1f}", "")
    table.add_row("run", "created -> finished (database clock)", f"{in_db:.1f}", "")
    table.add_row("run", "no phase running (claims, DAG releases, finalize)",
                  f"{in_db - busy:.2f}", "")
    table.add_row("run", "critical path (the wall with unlimited slots)",
                  f"{critical_path(run.phases)[0]:.1f}", "")
    for title, baseline in (("baseline", m.baseline), ("baseline + layers", m.layers)):
        for name, s in baseline.steps.items():
            table.add_row(title, name, f"{s:.1f}", "")
        table.add_row(title, "process start, imports, spec, exit",
                      f"{baseline.wall_s - sum(baseline.steps.values()):.1f}", "")
    return table


def profile_table(m: Measured) -> Table:
    table = Table(title=f"{label(m.size)}: per table written, measured alone after the run "
                        "(one at a time)")
    for column in ("table", "rows", "digest all columns s", "digest by key s",
                   "of which Delta read s", "digest in memory s", "Delta rewrite s"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for c in m.costs:
        keyed = "-" if c.digest_key_s is None else f"{c.digest_key_s:.2f}"
        table.add_row(c.name, f"{c.rows:,}", f"{c.digest_all_s:.2f}", keyed,
                      f"{c.read_s:.2f}", f"{c.digest_memory_s:.2f}", f"{c.rewrite_s:.2f}")
    keyed_tables = [c for c in m.costs if c.digest_key_s is not None]
    table.add_row("total", "", f"{sum(c.digest_all_s for c in m.costs):.1f}",
                  f"{sum(c.digest_key_s or 0.0 for c in keyed_tables):.1f} (keyed tables; "
                  f"all columns: {sum(c.digest_all_s for c in keyed_tables):.1f})",
                  f"{sum(c.read_s for c in m.costs):.1f}",
                  f"{sum(c.digest_memory_s for c in m.costs):.1f}",
                  f"{sum(c.rewrite_s for c in m.costs):.1f}")
    return table


# --------------------------------------------------------------------------------- main

def measure(size: int, args: argparse.Namespace) -> Measured:
    with source_databases(size, args.seed, args.days) as source, \
            tempfile.TemporaryDirectory(prefix="bench_odoo_") as directory:
        tmp = Path(directory)
        console.print(f"[dim]{label(size)}: {source.lines:,} order lines generated in "
                      f"{source.seconds:.0f} s; running the pipeline ...[/]")
        pipeline = run_pipeline(source, tmp, args.workers, args.concurrency)
        console.print(f"[dim]{label(size)}: pipeline {pipeline.wall_s:.1f} s; running the "
                      "baseline ...[/]")
        baseline = run_baseline(source, tmp)
        console.print(f"[dim]{label(size)}: baseline {baseline.wall_s:.1f} s; running the "
                      "baseline with bronze and silver written to Delta ...[/]")
        layers = run_baseline(source, tmp, persist_layers=True)
        differences = (gold_differences(source.warehouse, "gold_baseline")
                       + gold_differences(source.warehouse, "gold_layers"))
        result = Measured(size, source, pipeline, baseline, layers, differences)
        if args.profile:
            console.print(f"[dim]{label(size)}: profiling the tables written ...[/]")
            result.costs = profile_tables(pipeline.run, tmp / "scratch")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100k,1m",
                        help="order lines per size, comma-separated (10k, 100k, 1m, ...)")
    parser.add_argument("--quick", action="store_true", help="one smoke size: 10k")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (>= 1)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="phases each worker runs at once (>= 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--profile", action="store_true",
                        help="also time each written table's digest and a Delta rewrite")
    args = parser.parse_args()
    try:
        sizes = [10_000] if args.quick else [parse_size(s) for s in args.sizes.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be at least 1")

    results = [measure(size, args) for size in sizes]
    console.print(summary_table(results, args.workers, args.concurrency))
    for m in results:
        console.print(notes(m))
    for m in results:
        console.print(slowest_table(m))
        console.print(where_table(m))
        if m.costs:
            console.print(profile_table(m))
    console.print(
        "wall: pipeline = the run's created_at -> finished_at (database clock); baseline = "
        "its process start -> exit. rows/s = sale_order_line rows / wall. Peak RSS = the "
        "largest VmHWM of one process (workers and their phase subprocesses; the baseline's "
        "process); tree = the largest VmRSS sum at one 100 ms sample. CPU = user + system of "
        "the workers (phase subprocesses included) / of the baseline; gateway and PostgreSQL "
        "not counted. Generation not measured.")


if __name__ == "__main__":
    main()
