"""One transform through every kind that runs here, beside the sql kind (DuckDB) as baseline.

    python bench/engines.py [--rows 1000000] [--kinds python,sql,dbt,spark] [--big]

The transform: `orders` (--rows rows: id, customer, amount) joined to `customers` (rows / 100:
id, region) and grouped by region (orders, total amount), from two Delta tables of a fresh
lake to a Delta output, as a phase of each kind (the python kind with pyarrow's join and
group_by, the sql kind's DuckDB query, a dbt model on dbt-duckdb, a PySpark job on local[2]).
Each kind runs in a process of its own (its peak RSS is the peak sum of the resident sets of
that process and everything it started: the dbt child, the Spark driver and its JVM), the
phase twice: cold (what a phase pays the first time: a spawned interpreter, dbt's start, a
JVM) and warm (a second phase of the same kind instance: the spark kind's driver is kept).
Beside each kind, its engine called directly in the same run (a process of its own, the
same two runs: DuckDB on the Arrow tables for sql, pyarrow for python, dbt's `dbtRunner` on
dbt-duckdb for dbt, a `SparkSession` on local[2] for spark; each reads the Delta inputs and
writes a Delta output, as the kinds do). Printed per kind and direct engine: wall time cold /
warm, rows/s warm, peak RSS, the kind's overhead ratio (kind warm / direct warm), the ratio to
the sql kind, the load average; the kinds' output digests must be the same, and the direct
results the same (exit 1 otherwise); a line says whether Spark pays off at the size measured.
`--big` is the 10 M-row variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

QUERY = ("select c.region, count(*) as orders, cast(sum(o.amount) as bigint) as total "
         "from orders o join customers c on c.id = o.customer group by c.region")

PYTHON_PHASE = '''\
import pyarrow as pa
from deltalake import DeltaTable


def run(ctx):
    orders = DeltaTable(ctx.args["orders"]).to_pyarrow_table()
    customers = DeltaTable(ctx.args["customers"]).to_pyarrow_table()
    joined = orders.join(customers, keys="customer", right_keys="id")
    grouped = joined.group_by("region").aggregate([("id", "count"), ("amount", "sum")])
    table = pa.table({"region": grouped["region"],
                      "orders": grouped["id_count"].cast(pa.int64()),
                      "total": grouped["amount_sum"].cast(pa.int64())})
    ctx.write_table("gold.region_totals", ctx.args["out"], table, mode="overwrite")
    return {}
'''

SPARK_JOB = f'''\
def run(job):
    return job.spark.sql({QUERY!r})
'''

DBT_PROJECT = {
    "dbt_project.yml": """\
        name: engines
        version: "1.0"
        config-version: 2
        profile: any
        models:
          engines:
            +materialized: table
        """,
    "models/region_totals.sql": QUERY.replace("from orders o", "from {{ source('lake', "
                                              "'orders') }} o").replace(
        "join customers c", "join {{ source('lake', 'customers') }} c") + "\n",
    "models/sources.yml": """\
        version: 2
        sources:
          - name: lake
            tables: [{name: orders}, {name: customers}]
        """,
}


def _params(kind: str, lake: Path, out: str) -> dict[str, Any]:
    inputs = {"orders": {"delta": str(lake / "bronze" / "orders")},
              "customers": {"delta": str(lake / "bronze" / "customers")}}
    output = {"delta": out, "name": "gold.region_totals"}
    if kind == "python":
        return {"entrypoint": "engines_phase:run",
                "args": {"orders": inputs["orders"]["delta"],
                         "customers": inputs["customers"]["delta"], "out": out}}
    if kind == "sql":
        return {"query": QUERY, "inputs": inputs, "output": output, "preview_rows": 0}
    if kind == "dbt":
        return {"project_dir": "engines_dbt", "inputs": inputs,
                "outputs": {"region_totals": output}}
    if kind == "spark":
        return {"job_file": "engines_job.py", "inputs": inputs,
                "outputs": {"totals": output}}
    raise SystemExit(f"unknown kind {kind}")


def _write_code(code: Path) -> None:
    (code / "engines_phase.py").write_text(PYTHON_PHASE)
    (code / "engines_job.py").write_text(SPARK_JOB)
    for path, text in DBT_PROJECT.items():
        target = code / "engines_dbt" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


def generate(lake: Path, rows: int) -> None:
    import random

    import pyarrow as pa

    from executor.tables import write_table

    draw = random.Random(42)
    customers = max(rows // 100, 1)
    write_table(str(lake / "bronze" / "customers"), pa.table({
        "id": pa.array(range(customers), pa.int64()),
        "region": pa.array([f"region-{draw.randrange(20):02d}" for _ in range(customers)])}),
        mode="overwrite")
    write_table(str(lake / "bronze" / "orders"), pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "customer": pa.array([draw.randrange(customers) for _ in range(rows)], pa.int64()),
        "amount": pa.array([draw.randrange(1, 1000) for _ in range(rows)], pa.int64())}),
        mode="overwrite")


def one(kind: str, lake: Path, code: Path) -> dict[str, Any]:
    """Run the phase twice on one kind instance (in this process); the figures as JSON."""
    from executor.kinds import KindOptions, PhaseContext, load_kind

    instance = load_kind(kind)()
    start = getattr(instance, "start", None)
    if kind == "spark" and callable(start):
        start(KindOptions(python_spares=0))   # the driver kept between phases, as a worker
    figures: dict[str, Any] = {"kind": kind}
    try:
        for run in ("cold", "warm"):
            out = str(lake / "gold" / f"{kind}_{run}")
            work = Path(tempfile.mkdtemp(prefix=f"engines-{kind}-"))
            ctx = PhaseContext(
                run_id=f"bench-{run}", phase="transform", attempt=1, kind=kind,
                params=_params(kind, lake, out), inputs={}, git_sha=None, input_manifest={},
                output_dir=work / "out", emit=lambda *a, **k: None,
                progress=lambda value: None, timeout_s=3600, code_dir=code, lake_root=lake)
            started = time.perf_counter()
            result = instance.run(ctx)
            figures[run] = time.perf_counter() - started
            [entry] = result.output_manifest["tables"]
            figures[f"{run}_digest"] = entry["digest"]
            figures["out_rows"] = entry["rows"]
            shutil.rmtree(work, ignore_errors=True)
    finally:
        close = getattr(instance, "close", None)
        if callable(close):
            close()
    return figures


def _read_inputs(lake: Path) -> dict[str, Any]:
    from deltalake import DeltaTable

    return {name: DeltaTable(str(lake / "bronze" / name)).to_pyarrow_table()
            for name in ("orders", "customers")}


def _write_out(out: str, table: Any) -> None:
    from executor.tables import write_table

    write_table(out, table, mode="overwrite")


def _direct_sql(lake: Path, out: str, state: dict[str, Any]) -> Any:
    import duckdb

    tables = _read_inputs(lake)
    con = duckdb.connect()
    for name, table in tables.items():
        con.register(name, table)
    result = con.sql(QUERY).to_arrow_table()
    con.close()
    _write_out(out, result)
    return result


def _direct_python(lake: Path, out: str, state: dict[str, Any]) -> Any:
    import pyarrow as pa

    tables = _read_inputs(lake)
    joined = tables["orders"].join(tables["customers"], keys="customer", right_keys="id")
    grouped = joined.group_by("region").aggregate([("id", "count"), ("amount", "sum")])
    result = pa.table({"region": grouped["region"],
                       "orders": grouped["id_count"].cast(pa.int64()),
                       "total": grouped["amount_sum"].cast(pa.int64())})
    _write_out(out, result)
    return result


def _direct_dbt(lake: Path, out: str, state: dict[str, Any]) -> Any:
    import duckdb
    import pyarrow.parquet as pq
    from dbt.cli.main import dbtRunner

    work = Path(tempfile.mkdtemp(prefix="engines-direct-dbt-"))
    project = work / "project"
    for path, text in DBT_PROJECT.items():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    for name, table in _read_inputs(lake).items():       # dbt-duckdb reads Parquet sources
        (work / name).mkdir()
        pq.write_table(table, work / name / "part.parquet")
    (project / "models" / "sources.yml").write_text(textwrap.dedent(f"""\
        version: 2
        sources:
          - name: lake
            meta: {{external_location: "read_parquet('{work}/{{name}}/*.parquet')"}}
            tables: [{{name: orders}}, {{name: customers}}]
        """))
    (work / "profiles.yml").write_text(textwrap.dedent(f"""\
        any:
          target: dev
          outputs:
            dev: {{type: duckdb, path: "{work}/direct.duckdb", threads: 2}}
        """))
    outcome = dbtRunner().invoke(["--quiet", "build", "--project-dir", str(project),
                                  "--profiles-dir", str(work)])
    if not outcome.success:
        raise SystemExit(f"direct dbt build failed: {outcome.exception}")
    con = duckdb.connect(str(work / "direct.duckdb"))
    result = con.sql("select * from region_totals").to_arrow_table()
    con.close()
    _write_out(out, result)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _direct_spark(lake: Path, out: str, state: dict[str, Any]) -> Any:
    from deltalake import DeltaTable

    if "spark" not in state:                 # cold: the session (a JVM) starts here
        from pyspark.sql import SparkSession

        state["spark"] = (SparkSession.builder.master("local[2]").appName("engines-direct")
                          .config("spark.ui.enabled", "false")
                          .config("spark.driver.host", "127.0.0.1")
                          .config("spark.sql.shuffle.partitions", "2")
                          .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                          .getOrCreate())
    spark = state["spark"]
    for name in ("orders", "customers"):     # a Delta table's files are Parquet
        files = DeltaTable(str(lake / "bronze" / name)).file_uris()
        spark.read.parquet(*files).createOrReplaceTempView(name)
    result = spark.sql(QUERY).toArrow()          # no pandas: Arrow straight from the JVM
    _write_out(out, result)
    return result


DIRECT = {"sql": _direct_sql, "python": _direct_python, "dbt": _direct_dbt,
          "spark": _direct_spark}


def direct(kind: str, lake: Path) -> dict[str, Any]:
    """The kind's engine called directly, twice in this process (cold, warm); as JSON."""
    import hashlib

    figures: dict[str, Any] = {"kind": kind}
    state: dict[str, Any] = {}
    try:
        for run in ("cold", "warm"):
            started = time.perf_counter()
            result = DIRECT[kind](lake, str(lake / "gold" / f"direct_{kind}_{run}"), state)
            figures[run] = time.perf_counter() - started
            rows = sorted(tuple(row.values()) for row in result.to_pylist())
            figures[f"{run}_digest"] = hashlib.sha256(repr(rows).encode()).hexdigest()
            figures["out_rows"] = result.num_rows
    finally:
        if "spark" in state:
            state["spark"].stop()
    return figures


def _tree_rss(root: int) -> int:
    """The resident set of `root` and all its descendants, in bytes (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * page
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def measure(kind: str, lake: Path, code: Path, mode: str = "--one") -> dict[str, Any]:
    process = subprocess.Popen([sys.executable, __file__, mode, kind, "--lake", str(lake),
                                "--code", str(code)], stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{kind} ({mode}): exit {process.returncode}")
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    figures["peak_rss_mb"] = peak / 2**20
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="10 M rows")
    parser.add_argument("--kinds", default="python,sql,dbt,spark")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--direct", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.one:
        print(json.dumps(one(args.one, Path(args.lake), Path(args.code))))
        return 0
    if args.direct:
        print(json.dumps(direct(args.direct, Path(args.lake))))
        return 0
    rows = 10_000_000 if args.big else args.rows
    from executor.kinds.registry import missing_extra

    kinds = [k for k in args.kinds.split(",") if k]
    root = Path(tempfile.mkdtemp(prefix="engines-bench-"))
    try:
        lake, code = root / "lake", root / "code"
        code.mkdir()
        _write_code(code)
        started = time.perf_counter()
        generate(lake, rows)
        print(f"{rows:,} orders, {max(rows // 100, 1):,} customers generated in "
              f"{time.perf_counter() - started:.1f} s")
        results = []
        directs: dict[str, dict[str, Any]] = {}
        for kind in ["sql", *[k for k in kinds if k != "sql"]]:
            missing = missing_extra(kind)
            if missing is not None:
                print(f"{kind}: skipped ({missing.message})")
                continue
            results.append(measure(kind, lake, code))
            directs[kind] = measure(kind, lake, code, "--direct")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results[0]
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cpus)")
    print(f"{'kind':<7} {'run':<7} {'cold s':>8} {'warm s':>8} {'rows/s warm':>12} "
          f"{'peak RSS MB':>12} {'kind/direct':>11} {'x sql warm':>10}")
    for r in results:
        d = directs[r["kind"]]
        for label, f in (("kind", r), ("direct", d)):
            ratio = f"{r['warm'] / d['warm']:>11.2f}" if label == "kind" else f"{'':>11}"
            print(f"{r['kind']:<7} {label:<7} {f['cold']:>8.2f} {f['warm']:>8.2f} "
                  f"{rows / f['warm']:>12,.0f} {f['peak_rss_mb']:>12.0f} {ratio} "
                  f"{f['warm'] / base['warm']:>10.2f}")
    digests = {r[key] for r in results for key in ("cold_digest", "warm_digest")}
    direct_digests = {d[key] for d in directs.values() for key in ("cold_digest", "warm_digest")}
    same = len(digests) == 1 and len(direct_digests) == 1
    print(f"\nkind output digests {'identical' if len(digests) == 1 else 'DIFFER'}, direct "
          f"results {'identical' if len(direct_digests) == 1 else 'DIFFER'} across "
          f"{', '.join(r['kind'] for r in results)} ({results[0]['out_rows']} rows)")
    if "spark" in directs:
        fastest = min((r for r in results if r["kind"] != "spark"), key=lambda r: r["warm"])
        spark = next(r for r in results if r["kind"] == "spark")
        verdict = ("pays off" if spark["warm"] < fastest["warm"] else "does not pay off yet")
        print(f"spark at {rows:,} rows on this machine: warm {spark['warm']:.2f} s "
              f"(direct {directs['spark']['warm']:.2f} s) vs {fastest['kind']} warm "
              f"{fastest['warm']:.2f} s (direct {directs[fastest['kind']]['warm']:.2f} s): "
              f"{verdict} (measured at this size only)")
    return 0 if same else 1

if __name__ == "__main__":
    raise SystemExit(main())
