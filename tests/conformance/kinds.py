"""One conformance suite for every executor kind (River's driver tests): the same cases run
against python, sql and dbt, each kind saying through a small driver how its params express a
case. `tests/conformance/test_kinds.py` runs every case against every driver; a kind that
cannot run a case says why in `Driver.cannot`, the one place for it.

The cases (what every kind promises, docs/kinds.md "What every kind does"):

- `success`: a table written with outputs: an output manifest whose `tables` holds the catalog
  entry (name, uri, version, digest, rows), output files, events and a progress that ends at 1;
- `schema_evolution`: the same dataset written INITIAL, then NON_BREAKING (a nullable column
  added), then BREAKING (a column removed) refused with `SchemaBlocked` before anything is
  written; an `accepted` dataset takes the breaking change; a `blocked` one is refused
  (`DatasetBlocked`) before the table is opened;
- `cancel` and `timeout`: a long workload ends with `PhaseCancelled` / `PhaseTimeout` soon
  after the cancel flag or the deadline;
- `errors`: a terminal failure (`retryable` false) and a transient one (`retryable` true, as
  the worker classifies any error with `executor.errors.as_phase_error`);
- `rebuild`: the same phase into a fresh lake gives the same table digest (and the same
  output file digests where the kind promises byte-identical files);
- `confinement`: a table outside the run's lake is refused (`OutsideLake`, terminal), and so
  is code from outside the run's code.
"""

from __future__ import annotations

import textwrap
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from executor.kinds import Kind, KindOptions, load_kind

__all__ = ["CASES", "DRIVERS", "Driver", "Shape"]

Shape = Literal["v1", "v2", "v3"]
"""v1: (id bigint, amount bigint); v2: v1 + note varchar (null), NON_BREAKING; v3: (id)
only, BREAKING (a column removed)."""

CASES = ("success", "schema_evolution", "cancel", "timeout", "terminal_error",
         "transient_error", "rebuild", "lake_confinement", "code_confinement")

ROWS = [(1, 10), (2, 20), (3, 30)]

PHASE_CODE = '''\
"""The python driver's phase code (written into the run's code directory)."""

import time

import pyarrow as pa

SHAPES = {
    "v1": pa.schema([("id", pa.int64()), ("amount", pa.int64())]),
    "v2": pa.schema([("id", pa.int64()), ("amount", pa.int64()), ("note", pa.string())]),
    "v3": pa.schema([("id", pa.int64())]),
}
ROWS = __ROWS__


def write(ctx):
    schema = SHAPES[ctx.args["shape"]]
    columns = {"id": [r[0] for r in ROWS], "amount": [r[1] for r in ROWS],
               "note": [None for _ in ROWS]}
    table = pa.table({name: columns[name] for name in schema.names}, schema=schema)
    ctx.emit("LOG", "writing", payload={"rows": table.num_rows})
    entry = ctx.write_table(ctx.args["name"], ctx.args["uri"], table, mode="overwrite")
    (ctx.output_dir / "summary.json").write_text('{"rows": %d}' % entry["rows"])
    ctx.progress(1.0)
    return {}


def slow(ctx):
    time.sleep(120)


def fail_terminal(ctx):
    from executor.sdk import TerminalPhaseError
    raise TerminalPhaseError("the source says no")


def fail_transient(ctx):
    raise ConnectionError("the source is down")
'''.replace("__ROWS__", repr(ROWS))

_SQL_SHAPES = {
    "v1": "id, amount",
    "v2": "id, amount, cast(null as varchar) as note",
    "v3": "id",
}
_VALUES = ", ".join(f"({i}::bigint, {a}::bigint)" for i, a in ROWS)
SQL_ROWS = f"select * from (values {_VALUES}) as t(id, amount)"
SLOW_SQL = "select count(*) as n from range(1000000000) a, range(1000000000) b"


@dataclass
class Driver(ABC):
    """How one kind expresses each case as params (and the code it needs)."""

    kind: ClassVar[str]
    cannot: ClassVar[dict[str, str]] = {}
    """Case -> why this kind cannot run it here (the one place it is said)."""
    identical_files: ClassVar[tuple[str, ...]] = ()
    """Output files the kind promises byte-identical on a rebuild."""
    code_dir: Path = field(default_factory=Path)

    def make(self) -> Kind:
        return load_kind(self.kind)()

    def prepare(self) -> None:  # noqa: B027 (optional: most kinds need no code)
        """Write the code the driver's phases need into `code_dir` (the run's code)."""

    @abstractmethod
    def write(self, uri: str, name: str, shape: Shape) -> dict[str, Any]:
        """Params writing `shape` to the table at `uri` named `name`."""

    @abstractmethod
    def slow(self, lake: Path) -> dict[str, Any]:
        """Params of a phase that runs long enough to be cancelled or timed out."""

    @abstractmethod
    def terminal(self, lake: Path) -> dict[str, Any]:
        """Params of a phase failing for good (bad input)."""

    @abstractmethod
    def transient(self, lake: Path) -> dict[str, Any]:
        """Params of a phase failing retryably."""

    def outside_code(self, lake: Path) -> dict[str, Any]:
        """Params reaching for code outside the run's checkout. A kind with no code path
        lists the case in `cannot` instead (then this is never called)."""
        raise TypeError(f"the {self.kind} driver neither builds outside_code nor lists it "
                        "in `cannot`")


class PythonDriver(Driver):
    kind = "python"
    cannot: ClassVar[dict[str, str]] = {
        "code_confinement": "a python entrypoint is a module name, imported with the run's "
                            "checkout first on sys.path: there is no path to leave the code "
                            "with (and the function is arbitrary code: docs/security.md)",
    }
    identical_files = ("summary.json",)

    def prepare(self) -> None:
        (self.code_dir / "conformance_phase.py").write_text(PHASE_CODE)

    def _call(self, function: str, **args: Any) -> dict[str, Any]:
        return {"entrypoint": f"conformance_phase:{function}", "args": args}

    def write(self, uri: str, name: str, shape: Shape) -> dict[str, Any]:
        return self._call("write", uri=uri, name=name, shape=shape)

    def slow(self, lake: Path) -> dict[str, Any]:
        return self._call("slow")

    def terminal(self, lake: Path) -> dict[str, Any]:
        return self._call("fail_terminal")

    def transient(self, lake: Path) -> dict[str, Any]:
        return self._call("fail_transient")


class SqlDriver(Driver):
    kind = "sql"
    identical_files = ("query.sql", "result_manifest.json", "preview.json")

    def write(self, uri: str, name: str, shape: Shape) -> dict[str, Any]:
        return {"query": f"select {_SQL_SHAPES[shape]} from ({SQL_ROWS})",
                "output": {"delta": uri, "mode": "overwrite", "name": name}}

    def slow(self, lake: Path) -> dict[str, Any]:
        return {"query": SLOW_SQL, "output": {"delta": str(lake / "slow")}}

    def terminal(self, lake: Path) -> dict[str, Any]:
        return {"query": "select no_such_column from range(3)",
                "output": {"delta": str(lake / "t")}}

    def transient(self, lake: Path) -> dict[str, Any]:
        # a Parquet input that cannot be read (an IO-level failure, not the SQL's)
        broken = lake / "broken.parquet"
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_bytes(b"PAR1 not really parquet")
        return {"query": "select * from broken", "inputs": {"broken": {"parquet": str(broken)}},
                "output": {"delta": str(lake / "t")}}

    def outside_code(self, lake: Path) -> dict[str, Any]:
        return {"query_file": "../outside.sql", "output": {"delta": str(lake / "t")}}


DBT_PROJECT = {
    "dbt_project.yml": """\
        name: conformance
        version: "1.0"
        config-version: 2
        profile: any
        models:
          conformance:
            +materialized: table
        """,
    "models/rows.sql": """\
        {% set shape = var('shape', 'v1') %}
        select {% if shape == 'v3' %} id {% elif shape == 'v2' %} id, amount,
               cast(null as varchar) as note {% else %} id, amount {% endif %}
        from (values __VALUES__) as t(id, amount)
        """.replace("__VALUES__", _VALUES),
    "models/slow.sql": f"{SLOW_SQL}\n",
    "models/broken.sql": "select * from read_csv('/nonexistent/conformance/*.csv')\n",
    "models/wrong.sql": "select no_such_column from range(3)\n",
}


class DbtDriver(Driver):
    kind = "dbt"
    cannot: ClassVar[dict[str, str]] = {}
    identical_files = ()
    """manifest.json and run_results.json carry dbt's invocation id, timestamps and absolute
    paths: not byte-identical on a rebuild (the tables are: their digests are compared)."""

    def prepare(self) -> None:
        root = self.code_dir / "conformance_dbt"
        for path, text in DBT_PROJECT.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(textwrap.dedent(text))

    def _select(self, model: str, **extra: Any) -> dict[str, Any]:
        return {"project_dir": "conformance_dbt", "select": [model], **extra}

    def write(self, uri: str, name: str, shape: Shape) -> dict[str, Any]:
        return self._select("rows", vars={"shape": shape},
                            outputs={"rows": {"delta": uri, "name": name}})

    def slow(self, lake: Path) -> dict[str, Any]:
        return self._select("slow")

    def terminal(self, lake: Path) -> dict[str, Any]:
        return self._select("wrong")

    def transient(self, lake: Path) -> dict[str, Any]:
        return self._select("broken")     # DuckDB's IO Error: transient, as in the sql kind

    def outside_code(self, lake: Path) -> dict[str, Any]:
        return {"project_dir": "../elsewhere"}


SPARK_JOB = '''\
"""The spark driver's job (written into the run's code directory)."""

import time

SHAPES = {
    "v1": "id, amount",
    "v2": "id, amount, cast(null as string) as note",
    "v3": "id",
}
VALUES = __VALUES__


def run(job):
    mode = job.args.get("mode", "write")
    if mode == "slow":
        # bounded partial sums (sum(id * id) overflowed in ANSI mode on fast machines, so the
        # job failed before the cancel or the timeout it is there for)
        job.spark.range(10**12).selectExpr("sum(hash(id) % 7)").collect()
        time.sleep(600)
    if mode == "terminal":
        return job.spark.sql("select no_such_column from range(3)")
    if mode == "transient":
        raise ConnectionError("the source is down")
    rows = job.spark.sql(f"select * from values {VALUES} as t(id, amount)")
    job.log("writing", rows=3)
    return rows.selectExpr(*SHAPES[job.args["shape"]].split(", "))
'''.replace("__VALUES__", repr(", ".join(f"(cast({i} as bigint), cast({a} as bigint))"
                                           for i, a in ROWS)))


class SparkDriver(Driver):
    kind = "spark"
    cannot: ClassVar[dict[str, str]] = {}
    identical_files = ("result_manifest.json",)
    """spark.log holds the driver's log lines (application ids, times): not compared."""
    shared: ClassVar[Kind | None] = None

    def make(self) -> Kind:
        # one kind, started, for every case: its driver (one JVM) is kept warm between the
        # phases, as in a worker; cancel and timeout kill it and the next phase starts another
        if SparkDriver.shared is None:
            kind = load_kind("spark")()
            kind.start(KindOptions())  # type: ignore[attr-defined]
            SparkDriver.shared = kind
        return SparkDriver.shared

    def prepare(self) -> None:
        (self.code_dir / "conformance_job.py").write_text(SPARK_JOB)

    def _job(self, uri: str, **args: Any) -> dict[str, Any]:
        return {"job_file": "conformance_job.py", "args": args,
                "outputs": {"rows": {"delta": uri, "name": "gold.amounts"}}}

    def write(self, uri: str, name: str, shape: Shape) -> dict[str, Any]:
        params = self._job(uri, shape=shape)
        params["outputs"]["rows"]["name"] = name
        return params

    def slow(self, lake: Path) -> dict[str, Any]:
        return self._job(str(lake / "slow"), mode="slow")

    def terminal(self, lake: Path) -> dict[str, Any]:
        return self._job(str(lake / "t"), mode="terminal")

    def transient(self, lake: Path) -> dict[str, Any]:
        return self._job(str(lake / "t"), mode="transient")

    def outside_code(self, lake: Path) -> dict[str, Any]:
        return {"job_file": "../outside.py", "outputs": {"rows": {"delta": str(lake / "t")}}}


_TRINO_VALUES = ", ".join(f"(cast({i} as bigint), cast({a} as bigint))" for i, a in ROWS)
TRINO_CONNECTION = {"host": "trino.test", "port": 8443, "http_scheme": "https",
                    "catalog": "lake", "schema": "gold", "user": "conformance"}


class _FakeTrinoKind:
    """The trino kind against the fake server (tests/executor/trino_fake.py): the phase's
    `warehouse` connection points at it, and its requests are routed to it."""

    NAME: ClassVar[str] = "trino"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset({"trino"})

    def run(self, ctx: Any) -> Any:
        import dataclasses

        from executor.kinds.base import Connection
        from tests.executor.trino_fake import FakeTrino

        fake = FakeTrino()
        connection = Connection("warehouse", "trino", dict(TRINO_CONNECTION))
        ctx = dataclasses.replace(ctx, connections={**ctx.connections,
                                                    "warehouse": connection})
        with fake.router:
            return load_kind("trino")().run(ctx)


class TrinoDriver(Driver):
    """Against a fake Trino that speaks the client protocol and answers from DuckDB, so the
    queries below are in the SQL both understand (CAST, VALUES) except where DuckDB's own
    functions stand for a long query (range) and an external failure (read_csv)."""

    kind = "trino"
    cannot: ClassVar[dict[str, str]] = {}
    identical_files = ("query.sql", "result_manifest.json", "preview.json")

    def make(self) -> Kind:
        return _FakeTrinoKind()

    def _query(self, query: str, uri: str, **output: Any) -> dict[str, Any]:
        return {"query": query, "connection": "warehouse", "connections": ["warehouse"],
                "output": {"delta": uri, **output}}

    def write(self, uri: str, name: str, shape: Shape) -> dict[str, Any]:
        rows = f"select * from (values {_TRINO_VALUES}) as t(id, amount)"
        return self._query(f"select {_SQL_SHAPES[shape].replace('::bigint', '')} from "
                           f"({rows}) as r", uri, name=name)

    def slow(self, lake: Path) -> dict[str, Any]:
        return self._query(SLOW_SQL, str(lake / "slow"))

    def terminal(self, lake: Path) -> dict[str, Any]:
        return self._query("select no_such_column from (values (1)) as t(x)", str(lake / "t"))

    def transient(self, lake: Path) -> dict[str, Any]:
        # the fake answers DuckDB's IO error as Trino's EXTERNAL error type
        return self._query("select * from read_csv('/nonexistent/conformance/*.csv')",
                           str(lake / "t"))

    def outside_code(self, lake: Path) -> dict[str, Any]:
        return {"query_file": "../outside.sql", "connection": "warehouse",
                "connections": ["warehouse"], "output": {"delta": str(lake / "t")}}


DRIVERS: dict[str, type[Driver]] = {"python": PythonDriver, "sql": SqlDriver,
                                    "dbt": DbtDriver, "spark": SparkDriver,
                                    "trino": TrinoDriver}
"""Every kind the suite runs against: a kind added to the registry needs a driver here (a test
checks that every registered kind has one)."""
