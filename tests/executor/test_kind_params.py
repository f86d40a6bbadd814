"""Typed kind params: each kind's pydantic params model, its generated JSON Schema
(`params.schema.json` in the kind's package), the spec loader checking every phase against it
(FILE:LINE: phases[i].params.x, exit 2 from the CLI) without importing any kind, and a kind
whose extra is not installed naming the extra (docs/kinds.md, "Params")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from control_room.cli.common import BadInput
from control_room.cli.worker import check_kinds
from control_room.specs import SpecError, load_spec
from executor.kinds import registry
from executor.kinds.base import TerminalPhaseError
from executor.kinds.dbt.params import DbtParams
from executor.kinds.registry import MissingExtra, available_kinds, missing_extra, params_schema
from executor.kinds.schemas import MODELS, main
from executor.kinds.sql import parse_params
from executor.kinds.sql.params import SqlParams

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("duckdb", "deltalake", "pyarrow", "polars", "dbt", "executor.worker",
         "executor.kinds.sql", "executor.kinds.python", "executor.kinds.dbt")

BAD = """\
version: 1
slug: bad
params:
  n: {type: string, default: "a"}
phases:
  - name: a
    kind: python
    params: {entrypoint: "nope", argz: {}}
  - name: b
    kind: sql
    inputs: {x: {delta: "${run.lake}/t", parquet: "y"}}
    depends_on: [a]
    params:
      query: select 1
      query_file: x.sql
      preview_rows: "${params.n}"
      output: {delta: "${run.lake}/o", mode: merge, layer: gold}
  - name: c
    kind: dbt
    params: {select: "x", full_refresh: "yes", outputs: {m: {delta: 3}}}
"""


def test_every_builtin_kind_has_a_model_and_its_generated_schema_is_current() -> None:
    assert set(MODELS) == set(registry.BUILTIN_KINDS)
    assert main(["--check"]) == 0
    for kind in MODELS:
        schema = params_schema(kind)
        assert schema is not None and schema["additionalProperties"] is False, kind


def test_bad_kind_params_are_named_at_their_line_when_the_spec_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    f = str(path)
    assert str(raised.value).splitlines() == [
        f"{f}:8: phases[0].params.argz: unknown field (allowed: args, connections, "
        "entrypoint, inputs)",
        f"{f}:8: phases[0].params.entrypoint: 'nope' is not an entrypoint "
        "'package.module:function'",
        f"{f}:11: phases[1].inputs.x: needs exactly one of 'delta', 'parquet', 'upstream', "
        "'postgres'",
        f"{f}:13: phases[1].params: needs exactly one of 'query', 'query_file'",
        # a whole-string template is checked with the declared param's type (string here)
        f"{f}:16: phases[1].params.preview_rows: must be integer, not string 'a'",
        f"{f}:17: phases[1].params.output: 'layer' needs 'name'",
        f"{f}:17: phases[1].params.output: missing required field 'keys'",
        f"{f}:20: phases[2].params.full_refresh: must be boolean, not string 'yes'",
        f"{f}:20: phases[2].params.outputs.m.delta: must be string, not integer 3",
        f"{f}:20: phases[2].params.select: must be array, not string 'x'",
    ]


def test_templates_of_the_right_type_pass(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        slug: ok
        params: {rows: {type: integer, default: 5}, refresh: {type: boolean}}
        phases:
          - name: s
            kind: sql
            params: {query: select 1, preview_rows: "${params.rows}",
                     output: {delta: "${run.lake}/gold/x", name: gold.x}}
          - name: d
            kind: dbt
            params: {full_refresh: "${params.refresh}", select: ["tag:${params.rows}"],
                     outputs: {x: {delta: "${run.lake}/gold/x"}}}
        """))
    loaded = load_spec(path)
    assert [p.kind for p in loaded.spec.phases] == ["sql", "dbt"]


@pytest.mark.e2e   # `control-room runs create` in a process of its own
def test_the_cli_exits_2_on_bad_kind_params(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    done = subprocess.run([sys.executable, "-m", "control_room.cli", "runs", "create",
                           "--spec", str(path), "--gateway", "http://127.0.0.1:9",
                           "--token", "x"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{path}:8: phases[0].params.argz: unknown field" in done.stderr
    assert "Traceback" not in done.stderr


_PROBE = """
import json, sys
from control_room.specs import load_spec
for path in sys.argv[2:]:
    load_spec(path)
heavy = json.loads(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules
                        if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def test_loading_specs_imports_no_kind_and_no_data_library(tmp_path: Path) -> None:
    dbt_spec = REPO / "specs" / "dbt_example.yaml"
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(HEAVY),
                           str(REPO / "specs" / "example.yaml"),
                           str(REPO / "specs" / "odoo_medallion.yaml"), str(dbt_spec)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


VALID_SQL: list[dict[str, Any]] = [
    {"query": "select 1", "output": {"delta": "t"}},
    {"query_file": "q.sql", "code_dir": "models", "preview_rows": 0,
     "inputs": {"a": {"delta": "x", "version": 2}, "b": {"parquet": "p/*.parquet"},
                "c": {"postgres": {"connection": "odoo", "table": "public.t"}}},
     "output": {"delta": "t", "mode": "merge", "keys": ["id"], "name": "silver.t",
                "layer": "silver"}},
]
INVALID_SQL: list[dict[str, Any]] = [
    {"output": {"delta": "t"}},
    {"query": "select 1", "query_file": "q.sql", "output": {"delta": "t"}},
    {"query": "select 1"},
    {"query": "select 1", "output": {"delta": "t", "mode": "merge"}},
    {"query": "select 1", "output": {"delta": "t", "mode": "upsert"}},
    {"query": "select 1", "output": {"delta": "t", "layer": "gold"}},
    {"query": "select 1", "output": {"delta": "t"}, "preview_rows": 10_001},
    {"query": "select 1", "output": {"delta": "t"}, "colour": "blue"},
    {"query": "select 1", "output": {"delta": "t"}, "inputs": {"a": {}}},
    {"query": "select 1", "output": {"delta": "t"},
     "inputs": {"a": {"parquet": "p", "version": 1}}},
    {"query": "select 1", "output": {"delta": "t"},
     "inputs": {"a": {"postgres": {"connection": "odoo"}}}},
]


def _schema_ok(kind: str, params: dict[str, Any]) -> bool:
    from jsonschema import Draft202012Validator

    schema = params_schema(kind)
    assert schema is not None
    return not list(Draft202012Validator(schema).iter_errors(params))


@pytest.mark.parametrize("params", VALID_SQL)
def test_valid_sql_params_pass_the_model_the_schema_and_the_kind(params: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    SqlParams.model_validate(params)
    assert _schema_ok("sql", params)
    if "query_file" not in params:          # the kind reads query_file from the run's code
        parse_params(params)


@pytest.mark.parametrize("params", INVALID_SQL)
def test_invalid_sql_params_fail_the_model_the_schema_and_the_kind(
        params: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SqlParams.model_validate(params)
    assert not _schema_ok("sql", params)
    with pytest.raises(TerminalPhaseError):
        parse_params(params)


def test_dbt_params_model() -> None:
    from pydantic import ValidationError

    params = DbtParams.model_validate({"select": ["gold"], "vars": {"as_of": "2026-01-31"},
                                       "outputs": {"revenue": {"delta": "gold/revenue"}}})
    assert (params.project_dir, params.command, params.full_refresh) == (".", "build", False)
    with pytest.raises(ValidationError, match="must be one of the phase's connections"):
        DbtParams.model_validate({"target": "warehouse"})
    assert _schema_ok("dbt", {"target": "warehouse", "connections": ["warehouse"]})
    assert not _schema_ok("dbt", {"outputs": {"bad-name": {"delta": "x"}}})


def test_a_kind_whose_extra_is_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    assert missing_extra("dbt") is None and "dbt" in available_kinds()
    for module in ("dbt", "dbt.cli.main", "dbt.adapters.duckdb"):
        monkeypatch.setitem(sys.modules, module, None)  # as if dbt were not installed
    missing = missing_extra("dbt")
    assert isinstance(missing, MissingExtra) and missing.extra == "dbt"
    assert missing.message == ("phase kind 'dbt' needs the [dbt] extra, which is not "
                               "installed (no module dbt.cli.main): pip install "
                               "'lakehouse-control-room[dbt]'")
    assert available_kinds() == ["python", "spark", "sql", "trino"]   # a worker's default
    for module in [m for m in sys.modules if m.startswith("executor.kinds.dbt")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(MissingExtra, match=r"pip install 'lakehouse-control-room\[dbt\]'"):
        registry.KindRegistry(registry.BUILTIN_KINDS)["dbt"]
    assert check_kinds(None) == ["python", "spark", "sql", "trino"]
    with pytest.raises(BadInput, match=r"needs the \[dbt\] extra"):
        check_kinds("python,dbt")


@pytest.mark.e2e   # `control-room worker` in a process of its own
def test_a_worker_told_to_run_a_kind_without_its_extra_exits_2(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['dbt'] = None\n"
            "from control_room.cli import app\n"
            "app(['worker', '--kinds', 'dbt', '--gateway', 'http://127.0.0.1:9', "
            "'--token', 'x'], prog_name='control-room')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "needs the [dbt] extra" in done.stderr
    assert "pip install 'lakehouse-control-room[dbt]'" in done.stderr
    assert "Traceback" not in done.stderr
