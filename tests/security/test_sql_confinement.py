"""The sql kind is confined (issue 10, attack 4): a `query_file` is read only from the run's
checkout, Delta / Parquet locations only under the run's workspace lake, DuckDB spills only
to the attempt's own temporary directory (removed after it), and DuckDB's error text, which a
query controls (`error('...')`), is capped and marked as user data.

Each attack runs through `SqlKind` with a real `PhaseContext` (real DuckDB, real Delta tables
under tmp), and the chain end to end through the real gateway and a real worker: a member who
can create runs reads no file outside the checkout and writes nothing outside the lake, in the
phase's error, its events or its artifacts."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from executor.checkout import OWN_CODE_BASE
from executor.errors import TerminalPhaseError
from executor.kinds.base import PhaseContext
from executor.kinds.python.context import PythonContext
from executor.kinds.sql import MAX_USER_ERROR_BYTES, SqlKind
from executor.outputs import phase_error_json
from executor.tables import OutsideLake, confine
from tests.contract.conftest import phase
from tests.executor.harness import BOUND, Env, Running, gateway_env

MARKER = "CONFIDENTIAL-7f3a9c"
"""In every file a phase must not read: it must appear nowhere a member can see."""


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A checkout with one good query, a secret file beside it (outside), a symbolic link
    out of the checkout, two workspaces' lakes (ws2's with a table) and an outside dir."""
    checkout = tmp_path / "checkout"
    (checkout / "models").mkdir(parents=True)
    (checkout / "models" / "ok.sql").write_text("select 1 as x")
    secret = tmp_path / "secret.sql"
    secret.write_text(f"select '{MARKER}' as leaked")
    (checkout / "models" / "link.sql").symlink_to(secret)
    (checkout / "models" / "environ.sql").symlink_to("/proc/self/environ")
    (checkout / "up").symlink_to(tmp_path)                  # a directory link out
    lakes = tmp_path / "lakes"
    ws1, ws2 = lakes / "ws1", lakes / "ws2"
    ws1.mkdir(parents=True)
    write_deltalake(str(ws2 / "private"), pa.table({"leaked": [MARKER]}))
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"leaked": [MARKER]}), outside / "p.parquet")
    (ws1 / "escape").symlink_to(outside)                   # a link inside the lake, out
    return {"tmp": tmp_path, "checkout": checkout, "secret": secret, "ws1": ws1, "ws2": ws2,
            "outside": outside}


def ctx_for(w: Mapping[str, Path], params: Mapping[str, Any], out: Path,
            events: list[Any] | None = None,
            inputs: Mapping[str, Any] | None = None) -> PhaseContext:
    sink: list[Any] = events if events is not None else []
    return PhaseContext(
        run_id="run-1", phase="p", attempt=1, kind="sql", params=params, inputs=inputs or {},
        git_sha="abc1234", input_manifest={}, output_dir=out,
        emit=lambda *a, **k: sink.append((a, k)), progress=lambda value: None,
        timeout_s=60, code_dir=w["checkout"], lake_root=w["ws1"])


def refused(w: Mapping[str, Path], params: Mapping[str, Any], match: str,
            inputs: Mapping[str, Any] | None = None) -> TerminalPhaseError:
    """The phase fails for good, before anything is read, run or written: no file in its
    output directory (nothing a failed attempt would register), no event, no marker."""
    out = w["tmp"] / "out"
    events: list[Any] = []
    with pytest.raises(TerminalPhaseError, match=match) as info:
        SqlKind().run(ctx_for(w, params, out, events, inputs))
    error = info.value
    assert not error.retryable
    shown = json.dumps(phase_error_json(error))
    assert MARKER not in shown and "root:" not in shown and "PATH=" not in shown, shown
    assert not out.exists() or list(out.rglob("*")) == []
    assert events == []
    return error


def sql(query_file: str | None = None, output: str = "t", **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"output": {"delta": output}, **extra}
    if query_file is not None:
        params["query_file"] = query_file
    elif "query" not in params:
        params["query"] = "select 1 as x"
    return params


# ------------------------------------------------------------------------------ query files

def test_a_query_file_inside_the_checkout_is_read(world: dict[str, Path]) -> None:
    out = world["tmp"] / "o"
    result = SqlKind().run(ctx_for(world, sql("models/ok.sql"), out))
    assert (out / "query.sql").read_text() == "select 1 as x"
    assert result.output_manifest["table"]["uri"] == str(world["ws1"] / "t")
    assert DeltaTable(str(world["ws1"] / "t")).to_pyarrow_table().to_pylist() == [{"x": 1}]


@pytest.mark.parametrize(("query_file", "code_dir", "match"), [
    ("../../etc/passwd", None, "leaves code_dir"),
    ("../secret.sql", None, "leaves code_dir"),
    ("/etc/passwd", None, "must be relative"),
    ("/proc/self/environ", None, "must be relative"),
    ("models/link.sql", None, "leaves code_dir"),            # a symbolic link out
    ("models/environ.sql", None, "leaves code_dir"),         # ... to /proc/self/environ
    ("up/secret.sql", None, "leaves code_dir"),              # through a directory link
    ("passwd", "/etc", "'code_dir' '/etc' is not inside the run's checkout"),
    ("secret.sql", "..", "'code_dir' '..' is not inside the run's checkout"),
    ("environ", "/proc/self", "is not inside the run's checkout"),
])
def test_a_query_file_outside_the_checkout_is_refused_unread(
        world: dict[str, Path], query_file: str, code_dir: str | None, match: str) -> None:
    params = sql(query_file, **({"code_dir": code_dir} if code_dir is not None else {}))
    error = refused(world, params, match)
    assert error.error_type == "ValueError" and not error.user_data


def test_without_a_checkout_only_the_worker_s_pipelines_package_is_readable(
        world: dict[str, Path]) -> None:
    """No repository: the worker's own code, its `pipelines` package only; never the rest
    of its directory (a source tree holds `.control-room/`, with the local secrets)."""
    secret = os.path.relpath(world["secret"], OWN_CODE_BASE)
    for query_file in (secret, "pyproject.toml", ".control-room/jwt_secret",
                       "pipelines/../pyproject.toml"):
        out = world["tmp"] / "o-own"
        ctx = PhaseContext(
            run_id="r", phase="p", attempt=1, kind="sql", params=sql(query_file),
            inputs={}, git_sha=None, input_manifest={}, output_dir=out,
            emit=lambda *a, **k: None, progress=lambda value: None, code_dir=None,
            lake_root=world["ws1"])
        with pytest.raises(TerminalPhaseError, match="not inside the worker's own code"):
            SqlKind().run(ctx)
        assert not out.exists()


# ---------------------------------------------------------------------------------- outputs

@pytest.mark.parametrize(("output", "match"), [
    ("../ws2/evil", "is outside the workspace lake"),
    ("../../outside/evil", "is outside the workspace lake"),
    ("{outside}/evil", "is outside the workspace lake"),
    ("{ws1}/../ws2/evil", "is outside the workspace lake"),
    ("file://{outside}/evil", "is outside the workspace lake"),
    ("escape/evil", "leaves the workspace lake through a symbolic link"),
    ("{ws1}/escape/evil", "leaves the workspace lake through a symbolic link"),
    ("s3://bucket/evil", "object-store URIs are refused"),
    ("memory:///evil", "object-store URIs are refused"),
])
def test_an_output_outside_the_workspace_lake_is_refused_and_nothing_is_written(
        world: dict[str, Path], output: str, match: str) -> None:
    before = sorted(p.relative_to(world["tmp"]) for p in world["tmp"].rglob("*"))
    location = output.format(outside=world["outside"], ws1=world["ws1"])
    error = refused(world, sql(output=location), match)
    assert error.error_type == "OutsideLake"
    after = sorted(p.relative_to(world["tmp"]) for p in world["tmp"].rglob("*"))
    assert after == before                       # not a directory, not a log: nothing
    assert list(world["outside"].iterdir()) == [world["outside"] / "p.parquet"]


def test_an_output_inside_the_lake_written_with_dots_lands_inside(
        world: dict[str, Path]) -> None:
    result = SqlKind().run(ctx_for(world, sql(output="silver/../gold/t"), world["tmp"] / "o"))
    assert result.output_manifest["table"]["uri"] == str(world["ws1"] / "gold" / "t")
    assert (world["ws1"] / "gold" / "t" / "_delta_log").is_dir()


# ----------------------------------------------------------------------------------- inputs

def test_another_workspace_s_table_is_not_an_input(world: dict[str, Path]) -> None:
    other = str(world["ws2"] / "private")
    refused(world, sql(query="select * from t", inputs={"t": {"delta": other}}),
            "input 't' .* is outside the workspace lake")
    refused(world, sql(query="select * from t", inputs={"t": {"delta": "../ws2/private"}}),
            "is outside the workspace lake")
    # an upstream phase's manifest naming it (a python phase may write any manifest)
    upstream = {"extract": {"table": {"uri": other, "version": 0}}}
    refused(world, sql(query="select * from t", inputs={"t": {"upstream": "extract"}}),
            "input 't' \\(upstream 'extract'\\) .* is outside the workspace lake",
            inputs=upstream)


def test_parquet_outside_the_lake_is_not_an_input(world: dict[str, Path]) -> None:
    outside = str(world["outside"] / "p.parquet")
    refused(world, sql(query="select * from t", inputs={"t": {"parquet": outside}}),
            "is outside the workspace lake")
    refused(world, sql(query="select * from t", inputs={"t": {"parquet": "escape/p.parquet"}}),
            "through a symbolic link")
    # a glob inside the lake whose match is a link out of it
    (world["ws1"] / "files").mkdir()
    (world["ws1"] / "files" / "a.parquet").symlink_to(world["outside"] / "p.parquet")
    with pytest.raises(OutsideLake, match=r"a match .* through a symbolic link") as info:
        SqlKind().run(ctx_for(world, sql(query="select * from t",
                                         inputs={"t": {"parquet": "files/*.parquet"}}),
                              world["tmp"] / "o-glob"))
    assert MARKER not in info.value.message


def test_an_input_inside_the_lake_is_read(world: dict[str, Path]) -> None:
    write_deltalake(str(world["ws1"] / "mine"), pa.table({"v": [1, 2]}))
    params = sql(query="select sum(v) as s from t", output="sum",
                 inputs={"t": {"delta": "mine"}})
    SqlKind().run(ctx_for(world, params, world["tmp"] / "o"))
    assert DeltaTable(str(world["ws1"] / "sum")).to_pyarrow_table().to_pylist() == [{"s": 3}]


def test_the_python_kind_s_write_table_applies_the_same_rule(world: dict[str, Path]) -> None:
    """A guard against a wrong path, not a boundary (a python phase is arbitrary code)."""
    ctx = PythonContext(
        run_id="r", phase="p", attempt=1, params={}, args={}, inputs={}, input_manifest={},
        git_sha=None, output_dir=world["tmp"] / "py", timeout_s=None, connections={},
        _send=lambda message: None, lake_root=world["ws1"])
    for uri in ("../ws2/evil", str(world["outside"] / "evil"), "escape/evil", "s3://b/x"):
        with pytest.raises(OutsideLake):
            ctx.write_table("bronze.evil", uri, [{"a": 1}], mode="overwrite")
    assert not (world["ws2"] / "evil").exists() and not (world["outside"] / "evil").exists()
    entry = ctx.write_table("bronze.good", "bronze/good", [{"a": 1}], mode="overwrite")
    assert entry["uri"] == str(world["ws1"] / "bronze" / "good")


def test_a_run_s_lake_dir_stays_inside_its_workspace_lake(tmp_path: Path) -> None:
    """`input_manifest.lake_dir` (a verify's rebuild) moves `${run.lake}` inside the
    workspace lake only; the confinement root stays the workspace lake."""
    from executor.settings import run_lake

    assert run_lake(tmp_path) == tmp_path
    assert run_lake(tmp_path, "_verify/r-1/20261203T1") == tmp_path / "_verify/r-1/20261203T1"
    for bad in ("../ws2", "/etc", "a/../../b", "..", ".", "a//b", "a/", "", 7, "a\x00b"):
        with pytest.raises(ValueError, match="lake_dir must be a relative path"):
            run_lake(tmp_path, bad)


def test_confine_without_a_lake_is_not_confined(tmp_path: Path) -> None:
    assert confine("../anywhere", None) == "../anywhere"
    assert confine("s3://bucket/x", None) == "s3://bucket/x"
    with pytest.raises(OutsideLake, match="is not a path"):
        confine("a\x00b", tmp_path)


# ----------------------------------------------------------------------------------- DuckDB

def test_duckdb_spills_to_a_private_directory_removed_after_the_attempt(
        world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording(*args: Any, **kwargs: Any) -> str:
        path = str(real_mkdtemp(*args, **kwargs))
        made.append(Path(path))
        return path

    monkeypatch.setattr("executor.kinds.sql.tempfile.mkdtemp", recording)
    params = sql(query="select current_setting('temp_directory') as dir", output="where")
    SqlKind().run(ctx_for(world, params, world["tmp"] / "o1"))
    [temp] = made
    [row] = DeltaTable(str(world["ws1"] / "where")).to_pyarrow_table().to_pylist()
    assert row["dir"] == str(temp)                     # DuckDB's temp_directory: the attempt's
    assert not temp.exists()                           # ... removed after it

    # private while it lives (0700), and removed after a failed attempt too
    modes: list[int] = []

    def checking(*args: Any, **kwargs: Any) -> str:
        path = recording(*args, **kwargs)
        modes.append(stat.S_IMODE(os.stat(path).st_mode))
        return path

    monkeypatch.setattr("executor.kinds.sql.tempfile.mkdtemp", checking)
    with pytest.raises(TerminalPhaseError, match="the configuration has been locked"):
        SqlKind().run(ctx_for(world, sql(query="set temp_directory = '/tmp/elsewhere'"),
                              world["tmp"] / "o2"))
    assert modes == [0o700] and not made[-1].exists()
    with pytest.raises(TerminalPhaseError, match="disabled by configuration"):
        SqlKind().run(ctx_for(world, sql(query=f"select * from read_csv('{world['secret']}')"),
                              world["tmp"] / "o3"))
    assert not any(p.exists() for p in made)


@pytest.mark.parametrize("statement", [
    "copy (select 1 as x) to '{outside}/copied.csv'",
    "attach '{outside}/copied.db' as other",
    "select * from read_text('{secret}')",
    "select * from glob('{outside}/*')",
    "install httpfs",
    "select getenv('HOME')",
])
def test_the_query_itself_reaches_no_file(world: dict[str, Path], statement: str) -> None:
    query = statement.format(outside=world["outside"], secret=world["secret"])
    with pytest.raises(TerminalPhaseError) as info:
        SqlKind().run(ctx_for(world, sql(query=query), world["tmp"] / "o"))
    assert MARKER not in info.value.message
    assert sorted(p.name for p in world["outside"].iterdir()) == ["p.parquet"]


def test_a_huge_error_text_is_capped_and_marked_as_user_data(world: dict[str, Path]) -> None:
    query = f"select error(repeat('{MARKER}', 100000))"
    out = world["tmp"] / "o"
    with pytest.raises(TerminalPhaseError) as info:
        SqlKind().run(ctx_for(world, sql(query=query), out))
    error = info.value
    assert error.user_data and error.error_type == "InvalidInputException"
    assert error.message.startswith("sql query failed: Invalid Input Error: ")
    assert len(error.message.encode()) <= MAX_USER_ERROR_BYTES + 100
    assert error.message.endswith(f"... (cut: {len(MARKER) * 100000 + 21} bytes)")
    reported = phase_error_json(error)
    assert reported["user_data"] is True and reported["message"] == error.message
    # the query itself was validated (written in the spec): a failed attempt may register it
    assert (out / "query.sql").read_text() == query


def test_a_postgres_input_s_error_text_is_capped_too(world: dict[str, Path],
                                                     db_url: str) -> None:
    from dataclasses import replace

    from executor.kinds.base import Connection

    query = f"select repeat('{MARKER}', 100000)::integer as n"
    params = sql(query="select * from src", connections=["pg"],
                 inputs={"src": {"postgres": {"connection": "pg", "query": query}}})
    ctx = replace(ctx_for(world, params, world["tmp"] / "o"),
                  connections={"pg": Connection("pg", "postgres", {"dsn": db_url})})
    with pytest.raises(TerminalPhaseError, match="input 'src': connection 'pg': invalid input "
                                                 "syntax for type integer") as info:
        SqlKind().run(ctx)
    assert info.value.user_data and len(info.value.message.encode()) <= 2200
    assert phase_error_json(info.value)["user_data"] is True


# ------------------------------------------------------------------- the chain, end to end

@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def test_a_member_reads_no_file_and_writes_nowhere_outside_through_a_worker(
        env: Env) -> None:
    """A developer's run tries each attack; the worker (no repository: its own code) fails
    each phase for good, and a viewer sees no byte of the files in the run's errors, events
    or artifacts; nothing is written outside the workspace lake."""
    secret = env.tmp / "secret.txt"
    secret.write_text(f"select '{MARKER}' as leaked\n")
    outside = env.tmp / "outside"
    lake = env.tmp / "work" / "lake" / env.world.w1         # the worker's workspace lake
    other = env.tmp / "work" / "lake" / env.world.w2
    write_deltalake(str(other / "private"), pa.table({"leaked": [MARKER]}))
    relative = os.path.relpath(secret, OWN_CODE_BASE)

    def sql_phase(name: str, **params: Any) -> dict[str, Any]:
        params.setdefault("output", {"delta": f"${{run.lake}}/{name}"})
        return phase(name, "sql", params=params, max_attempts=3, retry_backoff_seconds=0)

    attacks = {
        "relative": sql_phase("relative", query_file=relative),
        "code_dir": sql_phase("code_dir", code_dir=str(env.tmp), query_file="secret.txt"),
        "passwd": sql_phase("passwd", query_file="../../../../../../../etc/passwd"),
        "environ": sql_phase("environ", code_dir="/proc/self", query_file="environ"),
        "dotdot_out": sql_phase("dotdot_out", query="select 1 as x",
                                output={"delta": f"../{env.world.w2}/evil"}),
        "absolute_out": sql_phase("absolute_out", query="select 1 as x",
                                  output={"delta": str(outside / "evil")}),
        "other_lake": sql_phase("other_lake", query="select * from t",
                                inputs={"t": {"delta": str(other / "private")}}),
        "error_leak": sql_phase("error_leak", query=f"select error(repeat('{MARKER}', "
                                                    "50000))"),
    }
    # one run each: a run ends with its first phase failed for good
    runs = {name: env.new_run(spec) for name, spec in attacks.items()}
    runs["good"] = env.new_run(sql_phase("good", query="select 42 as answer"))
    stats = Running(env.worker(kinds=["sql"], concurrency=2),
                    max_phases=len(runs)).join(BOUND * 4)
    assert stats.claimed == len(runs)

    errors: dict[str, dict[str, Any]] = {}
    for name in attacks:
        failed = env.get_run(runs[name]).phase(name)     # as a viewer: what every member reads
        assert (failed.state, failed.attempt) == ("failed", 1), (name, failed.error)
        assert failed.error is not None
        errors[name] = failed.error
    assert env.get_run(runs["good"]).phase("good").state == "succeeded"
    assert errors["dotdot_out"]["type"] == errors["absolute_out"]["type"] == "OutsideLake"
    assert errors["other_lake"]["type"] == "OutsideLake"
    assert "leaves code_dir" in errors["relative"]["message"]
    assert "is not inside the worker's own code" in errors["code_dir"]["message"]
    leak = errors["error_leak"]
    assert leak["user_data"] is True and len(leak["message"].encode()) < 2200
    assert not any(errors[name].get("user_data") for name in attacks if name != "error_leak")

    # no byte of a file outside the checkout or the lake reached anything a member sees
    events = json.dumps([[e.type, e.message, e.payload]
                         for run_id in runs.values() for e in env.events(run_id)])
    shown = json.dumps({"errors": errors, "events": events})
    for leaked in ("root:x:0:0", "PATH=", str(secret.read_text()).strip()):
        assert leaked not in shown
    artifacts = [a for run_id in runs.values() for a in env.artifacts(run_id)]
    registered = {(a["phase"], a["name"]) for a in artifacts}
    assert ("good", "query.sql") in registered
    # a refused phase registered nothing; the error_leak's query is the spec's own
    assert {phase_name for phase_name, _ in registered} <= {"good", "error_leak"}
    blobs = [p.read_bytes() for p in (env.tmp / "blobs").rglob("*") if p.is_file()]
    assert blobs and not any(b"root:x:0:0" in blob or b"leaked\n" in blob for blob in blobs)
    assert not outside.exists() and not (other / "evil").exists()
    assert sorted(p.name for p in lake.iterdir()) == ["good"]


def test_threads_are_not_left_behind(world: dict[str, Path]) -> None:
    """A refused phase starts no DuckDB query thread."""
    before = threading.active_count()
    refused(world, sql(output="../ws2/x"), "outside the workspace lake")
    assert threading.active_count() == before
