"""The spark kind: what it would submit to a cluster (no JVM), what it refuses before a driver
starts, how a driver error is summarised, the extra it needs; and one started kind (one JVM,
module-scoped) running a job over inputs, whose events, tables and error summary are checked.
The conformance suite (tests/conformance) runs the rest of its cases."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.digests import table_digest
from executor.kinds import Connection, KindOptions, TerminalPhaseError
from executor.kinds.registry import MissingExtra, missing_extra
from executor.kinds.spark import FORBIDDEN_CONF, SparkKind, submit_config
from executor.kinds.spark.child import summarize
from executor.tables import write_table
from tests.executor.dbt_projects import Recorder, make_ctx

JOB = '''\
def run(job):
    job.log("joining", inputs=sorted(job.inputs))
    totals = job.spark.sql(
        "select o.customer, c.name, sum(o.amount) as total, count(*) as orders "
        "from orders o join customers c on c.id = o.customer group by o.customer, c.name")
    return {"totals": totals, "big": job.inputs["orders"].where("amount >= 20")}
'''
BROKEN_JOB = '''\
def run(job):
    return job.spark.sql("select no_such_column from orders")
'''


def test_a_cluster_master_is_submitted_in_client_mode_with_the_connections_conf(
        tmp_path: Path) -> None:
    connection = Connection("cluster", "spark", {
        "master": "spark://spark-master.internal:7077", "spark.executor.memory": "4g",
        "spark.executor.cores": 2, "spark.hadoop.fs.s3a.secret.key": "s3cr3t-value"})
    config = submit_config(connection, tmp_path)
    assert config.master == "spark://spark-master.internal:7077"
    assert config.conf["spark.submit.deployMode"] == "client"
    assert "spark.driver.host" not in config.conf          # a cluster reaches the driver
    assert config.conf["spark.ui.enabled"] == "false"
    assert config.conf["spark.local.dir"] == str(tmp_path / "local")
    assert config.conf["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"
    assert config.connection_conf == {"spark.executor.memory": "4g",
                                      "spark.executor.cores": "2",
                                      "spark.hadoop.fs.s3a.secret.key": "s3cr3t-value"}
    shown = json.dumps(config.shown())
    assert "s3cr3t-value" not in shown and '"spark.executor.memory": "4g"' in shown
    # the warm driver's key is the master and the connection's conf, not the directories
    assert config.key() == submit_config(connection, tmp_path / "other").key()
    k8s = submit_config(Connection("k8s", "spark", {
        "master": "k8s://https://kubernetes.default.svc:443",
        "spark.kubernetes.container.image": "registry.internal/spark:4.3.0"}), tmp_path)
    assert k8s.master.startswith("k8s://") and k8s.conf["spark.submit.deployMode"] == "client"
    local = submit_config(None, tmp_path)
    assert (local.master, local.conf["spark.driver.bindAddress"]) == ("local[2]", "127.0.0.1")


@pytest.mark.parametrize(("config", "message"), [
    ({"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.0"}, "download"),
    ({"master": "http://x"}, "is not local"),
    ({"executor_memory": "4g"}, "neither 'master' nor a spark"),
])
def test_a_connection_that_would_download_or_is_not_spark_conf_is_refused(
        tmp_path: Path, config: dict[str, Any], message: str) -> None:
    assert "spark.jars.packages" in FORBIDDEN_CONF
    with pytest.raises(TerminalPhaseError, match=message):
        submit_config(Connection("c", "spark", config), tmp_path)


def test_a_phase_is_refused_before_any_driver_starts(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (tmp_path / "outside.py").write_text(JOB)
    kind = SparkKind()
    base = {"outputs": {"t": {"delta": str(tmp_path / "lake" / "t")}}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"job_file": "../outside.py", **base}, "not inside the run's"),
        ({"job_file": "/etc/x.py", **base}, "must be relative"),
        ({"job_file": "missing.py", **base}, "not a file"),
        ({"job_file": "x.py"}, "outputs"),
        ({"job_file": "x.py", "connection": "c", **base}, "one of the phase's connections")]
    for params, message in cases:
        ctx = make_ctx(tmp_path / "out", params, kind="spark", code_dir=code,
                       lake_root=tmp_path / "lake")
        with pytest.raises(TerminalPhaseError, match=message):
            kind.run(ctx)
    assert kind._warm is None and not list(tmp_path.glob("cr-spark-*"))


class _JavaThrowable:
    def __init__(self, name: str, text: str, cause: _JavaThrowable | None = None) -> None:
        self.name, self.text, self.cause = name, text, cause

    def getCause(self) -> _JavaThrowable | None:
        return self.cause

    def getClass(self) -> Any:
        name = self.name
        return type("Class", (), {"getName": staticmethod(lambda: name)})()

    def toString(self) -> str:
        return f"{self.name}: {self.text}\n\tat org.apache.spark.Something(Spark.scala:1)"


class Py4JJavaError(Exception):
    """Shaped like py4j's: the Java exception in `java_exception`."""

    def __init__(self, java: _JavaThrowable) -> None:
        super().__init__("An error occurred while calling o42.parquet.\n" + "\tat x\n" * 300)
        self.java_exception = java


def test_a_driver_error_is_its_first_cause_in_one_line() -> None:
    root = _JavaThrowable("java.io.FileNotFoundException", "/data/x.parquet (No such file)")
    error = Py4JJavaError(_JavaThrowable("org.apache.spark.SparkException", "Job aborted",
                                         _JavaThrowable("java.lang.RuntimeException", "wrap",
                                                        root)))
    summary = summarize(error)
    assert summary["type"] == "java.io.FileNotFoundException"
    assert summary["message"] == ("java.io.FileNotFoundException: /data/x.parquet (No such "
                                  "file)")
    assert not summary["terminal"]          # IO: a retry may find the file
    parse = summarize(Py4JJavaError(_JavaThrowable(
        "org.apache.spark.sql.catalyst.parser.ParseException", "syntax error at 'selec'")))
    assert parse["terminal"]
    assert summarize(ValueError("bad arg\nmore"))["message"] == "bad arg"
    assert not summarize(ConnectionError("down"))["terminal"]


def test_a_worker_without_pyspark_is_told_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    missing = missing_extra("spark")
    assert isinstance(missing, MissingExtra) and missing.extra == "spark"
    assert missing.message == ("phase kind 'spark' needs the [spark] extra, which is not "
                               "installed (no module pyspark): pip install "
                               "'lakehouse-control-room[spark]'")


# -- one JVM for the module ------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark_kind() -> Iterator[SparkKind]:
    kind = SparkKind()
    kind.start(KindOptions())
    yield kind
    kind.close()


@pytest.mark.slow
def test_a_job_reads_its_inputs_and_writes_each_dataframe_to_delta(
        spark_kind: SparkKind, tmp_path: Path) -> None:
    import pyarrow as pa

    lake = tmp_path / "lake"
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text(JOB)
    (code / "broken.py").write_text(BROKEN_JOB)
    orders = write_table(str(lake / "bronze" / "orders"), pa.table({
        "id": [1, 2, 3, 4], "customer": [1, 1, 2, 2], "amount": [10, 20, 30, 5]}),
        mode="overwrite")
    write_table(str(lake / "bronze" / "orders"), pa.table({
        "id": [9], "customer": [1], "amount": [1000]}), mode="append")   # not read: v0
    customers = {"parquet": str(lake / "raw" / "customers.parquet")}
    (lake / "raw").mkdir(parents=True)
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": [1, 2], "name": ["ada", "bob"]}), customers["parquet"])
    params = {"job_file": "job.py",
              "inputs": {"orders": {"upstream": "extract"}, "customers": customers},
              "outputs": {"totals": {"delta": str(lake / "gold" / "totals"),
                                     "name": "gold.totals"},
                          "big": {"delta": str(lake / "silver" / "big"), "name": "silver.big"}}}
    recorder = Recorder()
    ctx = make_ctx(tmp_path / "out", params, kind="spark", recorder=recorder, code_dir=code,
                   lake_root=lake, inputs={"extract": {"table": {
                       "uri": str(lake / "bronze" / "orders"), "version": orders.version}}})
    result = spark_kind.run(ctx)
    totals, big = result.output_manifest["tables"]
    assert (totals["name"], totals["rows"], big["rows"]) == ("gold.totals", 2, 2)
    from deltalake import DeltaTable
    rows = sorted(DeltaTable(totals["uri"]).to_pyarrow_table().to_pylist(),
                  key=lambda r: r["customer"])
    assert rows == [{"customer": 1, "name": "ada", "total": 30, "orders": 2},
                    {"customer": 2, "name": "bob", "total": 35, "orders": 2}]
    assert totals["digest"] == table_digest(totals["uri"]).digest
    [app] = recorder.of("SPARK_APPLICATION")
    assert app["master"] == "local[2]" and app["ui"] is None and app["app_id"]
    assert app["submit"]["conf"]["spark.ui.enabled"] == "false"
    assert [p["output"] for p in recorder.of("SPARK_OUTPUT")] == ["totals", "big"]
    assert {"source": "job", "inputs": ["customers", "orders"]} in recorder.of("LOG")
    assert recorder.progress[-1] == 1.0
    assert {o.name for o in result.outputs} == {"result_manifest.json", "spark.log"}
    assert not list(tmp_path.glob("cr-spark-stage-*"))      # staging removed

    # a failing job: the first line of Spark's error, terminal; the warm driver survives it
    bad = make_ctx(tmp_path / "bad", {**params, "job_file": "broken.py",
                                      "outputs": {"t": {"delta": str(lake / "t")}}},
                   kind="spark", code_dir=code, lake_root=lake, inputs=ctx.inputs)
    warm = spark_kind._warm
    with pytest.raises(TerminalPhaseError) as raised:
        spark_kind.run(bad)
    message = raised.value.message
    assert message.startswith("spark job failed at broken.py:2: AnalysisException: ")
    assert "no_such_column" in message and "\n" not in message and len(message) < 1000
    assert spark_kind._warm is warm and warm is not None and warm.alive


@pytest.mark.slow
def test_the_shipped_spark_example_runs_on_its_local_connection(
        spark_kind: SparkKind, tmp_path: Path) -> None:
    import pyarrow as pa
    from deltalake import DeltaTable

    from control_room.specs import example_spec, load_spec
    from pipelines.example import orders

    repo = Path(__file__).resolve().parents[2]
    [_, phase] = load_spec(example_spec("spark_example")).spec.phases
    lake = tmp_path / "lake"
    params = json.loads(json.dumps(phase.params).replace("${run.lake}", str(lake)))
    bronze = write_table(str(lake / "bronze" / "orders"), pa.Table.from_pylist(orders(12)),
                         mode="overwrite")
    ctx = make_ctx(tmp_path / "out", params, kind="spark", code_dir=repo, lake_root=lake,
                   connections={"spark_local": Connection("spark_local", "spark",
                                                          {"master": "local[2]"})},
                   inputs={"extract": {"table": {"uri": str(lake / "bronze" / "orders"),
                                                 "version": bronze.version}}})
    [table] = spark_kind.run(ctx).output_manifest["tables"]
    assert table["name"] == "gold.spark_revenue_by_customer"
    rows = sorted(DeltaTable(table["uri"]).to_pyarrow_table().to_pylist(),
                  key=lambda r: r["customer"])
    paid = [o for o in orders(12) if o["status"] == "paid"]
    assert rows == [{"customer": c, "orders": sum(1 for o in paid if o["customer"] == c),
                     "revenue": sum(o["amount"] for o in paid if o["customer"] == c)}
                    for c in ("ada", "bob", "cyd")]
