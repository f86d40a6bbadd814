"""Specs: the YAML file, its schema and checks, and the create_run arguments it becomes.

Every error names the file, the line and the field; every problem of a file is reported at
once. Specs read at a git sha come from a real temporary repository with two commits.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import blake3
import pytest

from control_room.specs import (
    LoadedSpec,
    SpecError,
    example_specs,
    load_spec,
    parse_duration,
)
from executor.kinds import KINDS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "specs" / "example.yaml"
KNOWN_KINDS = ", ".join(sorted(KINDS))

SPEC = """\
version: 1
slug: odoo_medallion
description: Odoo ERP -> bronze -> silver
params:
  lake:   {type: path, default: lake, description: root of the Delta tables}
  as_of:  {type: string, default: 2026-01-31}
  limit:  {type: integer, default: 100}
  ratio:  {type: number, default: 0.5}
  full:   {type: boolean, default: false}
defaults: {retries: 2, timeout: 600, retry_backoff: 5}
phases:
  - name: extract
    kind: python
    description: sale orders
    connections: [odoo]
    params:
      entrypoint: "pipelines.odoo.extract:extract_model"
      args: {model: sale.order, lake: "${params.lake}", limit: "${params.limit}",
             note: "as of ${params.as_of} in run ${run.id}", literal: "$${params.lake}"}
  - name: silver
    kind: sql
    depends_on: [extract]
    retries: 0
    timeout: 10m
    retry_backoff: 30s
    retry_backoff_max: 1h
    inputs: {orders: {upstream: extract}}
    params:
      query: select * from orders
      output: {delta: "${params.lake}/silver/orders", mode: overwrite, name: silver.orders}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path, **options: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, **options)
    return str(caught.value).splitlines()


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=Test",
                           "-c", "user.email=test@example.com", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit(repo: Path, message: str) -> str:
    """Commit everything under `repo` (a new repository if needed); the commit's sha."""
    if not (repo / ".git").exists():
        git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


# ------------------------------------------------------------------------------ valid specs

def test_a_valid_spec_gives_exact_create_run_arguments(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC)
    loaded = load_spec(path)
    assert (loaded.git_sha, loaded.dirty) == ("0" * 40, True)   # tmp_path is outside git
    assert loaded.path == str(path.resolve())
    digest = "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()
    work = tmp_path / "work"
    args = loaded.create_run_args("ws-1", {"limit": "7", "full": "yes"},
                                  idempotency_key="k1", labels={"team": "data"}, cwd=work)
    assert args == {
        "workspace_id": "ws-1",
        "spec_slug": "odoo_medallion",
        "git_sha": "0" * 40,
        "idempotency_key": "k1",
        "labels": {"code_version": "local", "team": "data"},
        "phases": [
            {"name": "extract", "kind": "python", "depends_on": [], "max_attempts": 3,
             "timeout_seconds": 600, "retry_backoff_seconds": 5,
             "params": {
                 "entrypoint": "pipelines.odoo.extract:extract_model",
                 "args": {"model": "sale.order", "lake": "${params.lake}",
                          "limit": "${params.limit}",
                          "note": "as of ${params.as_of} in run ${run.id}",
                          "literal": "$${params.lake}"},
                 "connections": ["odoo"]}},
            {"name": "silver", "kind": "sql", "depends_on": ["extract"], "max_attempts": 1,
             "timeout_seconds": 600, "retry_backoff_seconds": 30,
             "retry_backoff_max_seconds": 3600,
             "params": {
                 "query": "select * from orders",
                 "output": {"delta": "${params.lake}/silver/orders", "mode": "overwrite",
                            "name": "silver.orders"},
                 "inputs": {"orders": {"upstream": "extract"}}}},
        ],
        "input_manifest": {
            "spec": {"slug": "odoo_medallion", "version": 1, "path": str(path.resolve()),
                     "digest": digest, "dirty": True},
            "params": {"lake": str(work / "lake"), "as_of": "2026-01-31", "limit": 7,
                       "ratio": 0.5, "full": True},
        },
    }
    json.dumps(args)                            # all of it is JSON


def test_phase_settings_default_to_the_contracts(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        slug: tiny
        phases: [{name: only, kind: python, params: {entrypoint: 'm:f'}}]
        """)
    args = load_spec(path).create_run_args("ws", {})
    assert args["phases"] == [{"name": "only", "kind": "python",
                               "params": {"entrypoint": "m:f"}, "depends_on": [],
                               "max_attempts": 3, "timeout_seconds": 3600,
                               "retry_backoff_seconds": 10}]
    assert args["input_manifest"]["params"] == {}
    assert "idempotency_key" not in args and args["labels"] == {"code_version": "local"}


def test_the_example_spec_loads(tmp_path: Path) -> None:
    loaded = load_spec(EXAMPLE)
    assert loaded.spec.slug == "example"
    assert [p.name for p in loaded.spec.phases] == ["extract", "silver", "gold"]
    params = loaded.resolve_params({}, cwd=tmp_path)
    assert params == {"orders": 12}


def test_every_shipped_example_spec_loads_and_every_kind_has_one(tmp_path: Path) -> None:
    examples = example_specs()
    kinds: dict[str, list[str]] = {}
    for name, path in examples.items():
        loaded = load_spec(path)            # the schema, each kind's params, the templates
        assert loaded.spec.slug == name, path
        loaded.input_manifest(loaded.resolve_params({}, cwd=tmp_path))
        for phase in loaded.spec.phases:
            kinds.setdefault(phase.kind, []).append(name)
    assert set(KINDS) <= set(kinds), f"kinds without an example spec: {set(KINDS) - set(kinds)}"
    assert set(kinds) <= set(KINDS)


def test_the_spark_and_trino_examples_name_their_connections_and_code() -> None:
    spark = load_spec(REPO / "specs" / "spark_example.yaml")
    assert spark.spec.connections == ["spark_local"]
    job_file = REPO / spark.spec.phases[1].params["job_file"]
    assert job_file.is_file() and "def run(job" in job_file.read_text()
    trino = load_spec(REPO / "specs" / "trino_example.yaml")
    assert trino.spec.connections == ["trino"]
    assert trino.spec.phases[0].params["connection"] == "trino"
    docs = (REPO / "docs" / "kinds.md").read_text()
    for name in example_specs():
        assert f"specs/{name}.yaml" in docs, f"docs/kinds.md does not link specs/{name}.yaml"


def test_the_odoo_spec_names_its_connections_and_declares_none(tmp_path: Path) -> None:
    loaded = load_spec(REPO / "specs" / "odoo_medallion.yaml")
    assert loaded.spec.connections == ["odoo", "warehouse"]
    manifest = loaded.input_manifest(loaded.resolve_params({}, cwd=tmp_path))
    assert set(manifest) == {"spec", "params"}
    assert not any("dsn" in name for name in manifest["params"])


# ------------------------------------------------------------------------------ connections

def test_an_inline_connections_block_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        slug: old
        params: {dsn: {type: string, default: x}}
        connections:
          odoo: {type: postgres, dsn: "${params.dsn}", password: "secret:env:ODOO_PASSWORD"}
        phases:
          - {name: extract, kind: python, connections: [odoo]}
        """)
    [error] = errors_of(path)
    assert error.startswith(f"{path}:4: connections: connections are no longer declared in a "
                            "spec: register each in the workspace with `control-room "
                            "connections create NAME")
    assert "remove this block" in error and "connections: [NAME]" in error


def test_phases_name_connections_literally(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        slug: names
        params: {which: {type: string, default: odoo}}
        phases:
          - {name: a, kind: python, connections: ["${params.which}"], params: {entrypoint: 'm:f'}}
        """)
    [error] = errors_of(path)
    assert error == (f"{path}:5: phases[0].connections[0]: '${{params.which}}' is not a "
                     "connection name: 1-63 lower-case letters, digits or '_', starting with a "
                     "letter (no templates)")
    path = write(tmp_path, """\
        version: 1
        slug: names
        params: {which: {type: string, default: odoo}}
        phases:
          - {name: b, kind: python, params: {entrypoint: m:f, connections: ["${params.which}", 3]}}
          - {name: c, kind: python, params: {entrypoint: 'm:f', connections: odoo}}
        """)
    f = str(path)
    assert errors_of(path) == [
        f"{f}:5: phases[0].params.connections[0]: '${{params.which}}' is not a connection "
        "name (1-63 lower-case letters, digits or '_', starting with a letter; no templates)",
        f"{f}:5: phases[0].params.connections[1]: 3 is not a connection name (1-63 "
        "lower-case letters, digits or '_', starting with a letter; no templates)",
        f"{f}:6: phases[1].params.connections: must be a list of connection names, not string",
    ]
    good = write(tmp_path, """\
        version: 1
        slug: names
        phases:
          - {name: a, kind: python, connections: [odoo, warehouse, odoo], params: {entrypoint: m:f}}
          - {name: b, kind: python, params: {entrypoint: 'm:f', connections: [s3_lake]}}
        """, name="good.yaml")
    loaded = load_spec(good)
    assert [p.params["connections"] for p in loaded.spec.phases] == [
        ["odoo", "warehouse"], ["s3_lake"]]
    assert loaded.spec.connections == ["odoo", "warehouse", "s3_lake"]


@pytest.mark.parametrize(("text", "seconds"), [
    (45, 45), ("45", 45), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400),
    ("10x", None), ("m", None), (-1, None), ("1.5h", None)])
def test_durations(text: int | str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


# ------------------------------------------------------------------------------------ params

def loaded_with_params(tmp_path: Path) -> LoadedSpec:
    return load_spec(write(tmp_path, """\
        version: 1
        slug: p
        params:
          lake: {type: path, default: ~/lake}
          n: {type: integer, default: 1}
          x: {type: number, default: 1}
          flag: {type: boolean, default: true}
          name: {type: string}
        phases: [{name: a, kind: python, params: {entrypoint: 'm:f', args: {n: "${params.n}"}}}]
        """))


def test_params_are_coerced_to_their_types(tmp_path: Path) -> None:
    loaded = loaded_with_params(tmp_path)
    values = loaded.resolve_params({"n": " 42 ", "x": "2.5", "flag": "False", "name": "  a b ",
                                    "lake": "../elsewhere"}, cwd=tmp_path / "here")
    assert values == {"lake": str(tmp_path / "elsewhere"), "n": 42, "x": 2.5, "flag": False,
                      "name": "  a b "}
    assert loaded.resolve_params({"x": "3", "name": "n"})["x"] == 3
    home = loaded.resolve_params({"name": "n"})["lake"]
    assert home == str(Path.home() / "lake")
    # values that already have the type pass as they are
    assert loaded.resolve_params({"n": 5, "flag": False, "name": "n"})["n"] == 5


def test_bad_params_are_named_all_at_once(tmp_path: Path) -> None:
    loaded = loaded_with_params(tmp_path)
    with pytest.raises(SpecError) as caught:
        loaded.create_run_args("ws", {"n": "4.5", "x": "nan", "flag": "maybe", "lakee": "/x"})
    file = str(tmp_path / "spec.yaml")
    assert set(str(caught.value).splitlines()) == {
        f"{file}: --param n: '4.5' is not an integer",
        f"{file}: --param x: 'nan' is not a finite number",
        f"{file}: --param flag: 'maybe' is not a boolean (true or false)",
        f"{file}: --param lakee: unknown param 'lakee' (params: lake, n, x, flag, name)",
        f"{file}: param 'name' has no default: pass --param name=VALUE",
    }
    with pytest.raises(SpecError, match=r"--param n: true is not an integer"):
        loaded.resolve_params({"n": True, "name": "a"})


# ------------------------------------------------------------------------------------ errors

def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nslug: x\nphases:\n  - name: [a\n")
    [line] = errors_of(path)
    assert line.startswith(f"{path}:5: not valid YAML:"), line
    assert errors_of(write(tmp_path, "", "empty.yaml")) == [
        f"{tmp_path / 'empty.yaml'}:1: the spec is empty"]
    assert errors_of(write(tmp_path, "- 1\n", "list.yaml")) == [
        f"{tmp_path / 'list.yaml'}:1: (top level): the spec must be a mapping, not array"]
    dup = write(tmp_path, "version: 1\nslug: x\nslug: y\nphases: [{name: a, kind: python, "
                          "params: {entrypoint: 'm:f'}}]\n",
                "dup.yaml")
    assert errors_of(dup) == [f"{dup}:3: slug: duplicate key 'slug'"]


def test_a_missing_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: spec file not found"]


def test_schema_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 2
        slug: Not A Slug
        params:
          lake: {type: directory}
          bad-name: {type: string}
        phases:
          - name: extract
            kind: python
            retries: many
            colour: blue
          - kind: sql
        """)
    f = str(path)
    assert errors_of(path) == [
        f"{f}:1: version: must be 1, not 2",
        f"{f}:2: slug: 'Not A Slug' is not a name: 1-64 lower-case letters, digits, '_' or "
        "'-', starting with a letter or digit",
        f"{f}:4: params.lake.type: 'directory' is not one of: string, path, integer, number, "
        "boolean",
        f"{f}:5: params.bad-name: invalid name 'bad-name': an identifier: 1-64 letters, digits "
        "or '_', not starting with a digit",
        f"{f}:9: phases[0].retries: must be integer, not string 'many'",
        f"{f}:10: phases[0].colour: unknown field (allowed: connections, depends_on, "
        "description, inputs, kind, name, params, retries, retry_backoff, retry_backoff_max, "
        "timeout)",
        f"{f}:11: phases[1]: missing required field 'name'",
    ]


def test_semantic_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        slug: checks
        params:
          lake: {type: path, default: lake}
          n: {type: integer, default: "5"}
        # a phase names workspace connections; whether the workspace has them is the
        # worker's to find out (they are registered in ops, not in the spec)
        phases:
          - name: extract
            kind: python
            connections: [odo]
            params: {args: {lake: "${params.lakee}", run: "${run.idd}", open: "${params.lake"}}
          - name: silver
            kind: sqll
            depends_on: [silverr, gold]
            timeout: 10x
          - name: gold
            kind: sql
            depends_on: [silver]
            retry_backoff: 2d
            inputs: {t: {upstream: extract}}
          - name: gold
            kind: sql
            depends_on: [gold]
            inputs: {t: {upstream: extract}}
            params: {inputs: {}}
        """)
    f = str(path)
    assert errors_of(path) == [
        f"{f}:5: params.n.default: '5' is not an integer",
        f"{f}:12: phases[0].params.args.lake: unknown param 'lakee' in '${{params.lakee}}' "
        "(params: lake, n)",
        f"{f}:12: phases[0].params.args.run: unknown template name 'run.idd': the run's "
        "fields are run.id, run.git_sha, run.spec_slug, run.lake",
        f"{f}:12: phases[0].params.args.open: template '${{params.lake' has no closing '}}' "
        "(write $${ for a literal ${)",
        f"{f}:12: phases[0].params: missing required field 'entrypoint'",
        f"{f}:14: phases[1].kind: unknown kind 'sqll' (kinds: {KNOWN_KINDS})",
        f"{f}:15: phases[1].depends_on[0]: unknown phase 'silverr' (phases: extract, silver, "
        "gold)",
        f"{f}:15: phases[1].depends_on: dependency cycle: silver -> gold -> silver",
        f"{f}:16: phases[1].timeout: '10x' is not a duration: seconds, or a number followed "
        "by s, m, h or d (30s, 10m, 2h)",
        f"{f}:17: phases[2].params: needs exactly one of 'query', 'query_file'",
        f"{f}:17: phases[2].params: missing required field 'output'",
        f"{f}:20: phases[2].retry_backoff: '2d' is 172800 s: must be within 0..86400 s",
        f"{f}:21: phases[2].inputs.t.upstream: 'extract' is not in depends_on of phase "
        "'gold': an input can only read a phase this one waits for",
        f"{f}:22: phases[3].name: duplicate phase name 'gold' (also phases[2], line 17)",
        f"{f}:24: phases[3].depends_on[0]: phase 'gold' depends on itself",
        f"{f}:25: phases[3].inputs.t.upstream: 'extract' is not in depends_on of phase "
        "'gold': an input can only read a phase this one waits for",
        f"{f}:26: phases[3].params.inputs: give inputs either as the phase's 'inputs' or in "
        "its params, not both",
        f"{f}:26: phases[3].params: needs exactly one of 'query', 'query_file'",
        f"{f}:26: phases[3].params: missing required field 'output'",
    ]


def test_every_cycle_is_named_once(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        slug: cycles
        phases:
          - {name: a, kind: python, params: {entrypoint: 'm:f'}, depends_on: [c]}
          - {name: b, kind: python, params: {entrypoint: 'm:f'}, depends_on: [a]}
          - {name: c, kind: python, params: {entrypoint: 'm:f'}, depends_on: [b]}
          - {name: d, kind: python, params: {entrypoint: 'm:f'}, depends_on: [a, e]}
          - {name: e, kind: python, params: {entrypoint: 'm:f'}, depends_on: [d]}
          - {name: f, kind: python, params: {entrypoint: 'm:f'}, depends_on: [e]}
        """)
    assert errors_of(path) == [
        f"{path}:4: phases[0].depends_on: dependency cycle: a -> c -> b -> a",
        f"{path}:7: phases[3].depends_on: dependency cycle: d -> e -> d",
    ]


def test_templates_must_name_declared_params(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        slug: t
        phases:
          - name: a
            kind: sql
            inputs: {x: {delta: "${params.lake}/x"}}
            params: {query: "select '$${literal}'", output: {delta: "${run.spec_slug}"}}
        """)
    assert errors_of(path) == [
        f"{path}:6: phases[0].inputs.x.delta: unknown param 'lake' in '${{params.lake}}' "
        "(params: none declared)"]


# ------------------------------------------------------------------------------------- git

def test_a_spec_is_read_at_a_git_sha(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "specs").mkdir(parents=True)
    spec = repo / "specs" / "s.yaml"
    spec.write_text("version: 1\nslug: first\nphases: [{name: a, kind: python, "
                    "params: {entrypoint: 'm:f'}}]\n")
    first = commit(repo, "first")
    spec.write_text("version: 1\nslug: second\nphases: [{name: b, kind: sql, "
                    "params: {query: 'select 1', output: {delta: t}}}]\n")
    second = commit(repo, "second")

    at_first = load_spec(spec, git_sha=first[:8])
    assert (at_first.spec.slug, at_first.git_sha, at_first.path) == ("first", first,
                                                                     "specs/s.yaml")
    head = load_spec(spec)                              # clean: HEAD's sha
    assert (head.spec.slug, head.git_sha) == ("second", second)
    assert load_spec(spec, git_sha="HEAD~1").spec.slug == "first"

    spec.write_text("version: 1\nslug: edited\nphases: [{name: c, kind: sql, "
                    "params: {query: 'select 1', output: {delta: t}}}]\n")
    dirty = load_spec(spec)                             # edited: the working file, dirty
    assert (dirty.spec.slug, dirty.git_sha, dirty.dirty) == ("edited", second, True)
    assert dirty.digest == "blake3:" + blake3.blake3(spec.read_bytes()).hexdigest()
    assert load_spec(spec, git_sha=second).spec.slug == "second"

    untracked = repo / "specs" / "new.yaml"
    untracked.write_text("version: 1\nslug: new\nphases: [{name: a, kind: python, "
                         "params: {entrypoint: 'm:f'}}]\n")
    assert (load_spec(untracked).git_sha, load_spec(untracked).dirty) == (second, True)

    assert errors_of(spec, git_sha="deadbeef") == [
        f"{spec}: unknown git revision 'deadbeef' in {repo}"]
    assert errors_of(untracked, git_sha=second) == [
        f"{untracked}: no such file at commit {second[:12]} (specs/new.yaml)"]
    # an error in the file at that sha names it (the working file is fine)
    spec.write_text("version: 1\nslug: bad\nphases: [{name: a, kind: nope}]\n")
    commit(repo, "broken")
    spec.write_text("version: 1\nslug: fixed\nphases: [{name: a, kind: python, "
                    "params: {entrypoint: 'm:f'}}]\n")
    assert errors_of(spec, git_sha="HEAD") == [
        f"{spec}:3: phases[0].kind: unknown kind 'nope' (kinds: {KNOWN_KINDS})"]


def test_git_sha_needs_a_repository(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nslug: x\nphases: [{name: a, kind: python, "
                           "params: {entrypoint: 'm:f'}}]\n")
    assert errors_of(path, git_sha="abc1234") == [
        f"{path}: --git-sha needs the spec inside a git repository"]
