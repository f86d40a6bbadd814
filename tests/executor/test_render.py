"""Templates: `render` and `references` as functions, then through a real worker (the kind
sees rendered params, the run keeps them unrendered, an unknown name fails the phase once)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from executor.kinds import TerminalPhaseError
from executor.kinds.python import PythonContext
from executor.render import Reference, TemplateError, references, render
from tests.contract.conftest import phase
from tests.executor.harness import Env, Running, gateway_env, of_phase

PARAMS: dict[str, Any] = {"lake": "/data/lake", "n": 3, "on": True, "none": None,
                          "list": [1, "a"], "obj": {"k": [1, 2]}}
RUN = {"id": "run-1", "git_sha": "0123abc", "spec_slug": "demo"}


def r(value: Any) -> Any:
    return render(value, params=PARAMS, run=RUN)


# ------------------------------------------------------------------------------ render

@pytest.mark.parametrize("name", ["lake", "n", "on", "none", "list", "obj"])
def test_a_string_that_is_one_template_takes_the_value_with_its_type(name: str) -> None:
    assert r(f"${{params.{name}}}") == PARAMS[name]


def test_a_value_taken_whole_is_a_copy() -> None:
    rendered = r({"x": "${params.obj}"})
    rendered["x"]["k"].append(3)
    assert PARAMS["obj"] == {"k": [1, 2]}


def test_templates_inside_text_are_interpolated_as_text_or_json() -> None:
    assert r("${params.lake}/bronze/orders") == "/data/lake/bronze/orders"
    assert r("n=${params.n} on=${params.on} none=${params.none}") == "n=3 on=true none=null"
    assert r("${params.list}!") == '[1, "a"]!'
    assert r("runs/${run.spec_slug}/${run.id}@${run.git_sha}") == "runs/demo/run-1@0123abc"
    assert r("${params.n}${params.n}") == "33"


def test_dollar_dollar_brace_is_a_literal_and_other_dollars_stay() -> None:
    assert r("$${params.lake}") == "${params.lake}"
    assert r("price: $5, $$, a$") == "price: $5, $$, a$"
    assert r("$${x} and ${params.n}") == "${x} and 3"
    assert references("$${params.nope}") == []


def test_objects_and_arrays_are_rendered_at_any_depth_keys_never() -> None:
    value = {"args": {"lake": "${params.lake}", "paths": ["${params.lake}/a", 7, None]},
             "${params.n}": "key kept", "flag": False}
    original = {**value}
    assert r(value) == {"args": {"lake": "/data/lake", "paths": ["/data/lake/a", 7, None]},
                        "${params.n}": "key kept", "flag": False}
    assert value == original


@pytest.mark.parametrize(("value", "name", "path"), [
    ({"args": {"lake": "${params.nope}"}}, "params.nope", "params.args.lake"),
    ({"inputs": ["x", "a/${params.missing}/b"]}, "params.missing", "params.inputs[1]"),
    ({"q": "${run.owner}"}, "run.owner", "params.q"),
    ({"q": "${lake}"}, "lake", "params.q"),
    ({"q": "${ params.lake }"}, " params.lake ", "params.q"),
])
def test_an_unknown_name_is_a_terminal_error_naming_it_and_where(
        value: Any, name: str, path: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(value, params=PARAMS, run=RUN, path="params")
    error = info.value
    assert isinstance(error, TerminalPhaseError) and not error.retryable
    assert (error.name, error.path) == (name, path)
    assert repr(name.strip()) in error.message or name.strip() in error.message
    assert path in error.message


def test_an_unknown_param_lists_the_known_ones() -> None:
    with pytest.raises(TemplateError, match=r"'params.nope'.*lake"):
        r("${params.nope}")


def test_an_unclosed_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match="no closing"):
        render({"a": "${params.lake"}, params=PARAMS, run=RUN)


# -------------------------------------------------------------------------- references

def test_references_lists_every_template_with_its_path() -> None:
    value = {"entrypoint": "m:f",
             "args": {"lake": "${params.lake}/x", "both": "${params.a}-${run.id}"},
             "inputs": [{"delta": "${params.lake}"}]}
    assert references(value, path="phases[0].params") == [
        Reference("params", "lake", "phases[0].params.args.lake"),
        Reference("params", "a", "phases[0].params.args.both"),
        Reference("run", "id", "phases[0].params.args.both"),
        Reference("params", "lake", "phases[0].params.inputs[0].delta"),
    ]
    assert [ref.text for ref in references(value)] == [
        "params.lake", "params.a", "run.id", "params.lake"]


def test_references_refuses_what_render_could_never_resolve() -> None:
    with pytest.raises(TemplateError, match=r"run\.owner"):
        references({"x": "${run.owner}"})
    with pytest.raises(TemplateError, match="no closing"):
        references(["${params.x"])


# ----------------------------------------------------------------------- through a worker

def echo(ctx: PythonContext) -> dict[str, Any]:
    """The params as the kind saw them."""
    return {"params": dict(ctx.params)}


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


def new_run(env: Env, phases: list[dict[str, Any]], params: dict[str, Any]) -> str:
    run = env.client(env.world.dev1).create_run(
        env.world.w1, "demo", "0123abc", phases, input_manifest={"params": params},
        idempotency_key=str(uuid.uuid4()))
    return run.id


def test_the_kind_sees_rendered_params_and_the_run_keeps_the_templates(env: Env) -> None:
    templated = {"entrypoint": f"{__name__}:echo",
                 "args": {"lake": "${params.lake}/bronze", "n": "${params.n}",
                          "run": "${run.id}", "literal": "$${params.lake}"}}
    run_id = new_run(env, [phase("echo", params=templated),
                           phase("bad", "python", "echo", max_attempts=3, params={
                               "entrypoint": f"{__name__}:echo",
                               "args": {"lake": "${params.lake_dir}"}})],
                     {"lake": "/tmp/lake", "n": 5})
    stats = Running(env.worker(), max_phases=2).join()
    assert (stats.succeeded, stats.failed) == (1, 1)

    run = env.get_run(run_id)
    echoed = run.phase("echo").output_manifest
    assert echoed is not None
    assert echoed["params"]["args"] == {"lake": "/tmp/lake/bronze", "n": 5, "run": run_id,
                                        "literal": "${params.lake}"}
    assert run.phase("echo").params == templated            # stored as written

    bad = run.phase("bad")
    assert (bad.state, bad.attempt) == ("failed", 1)          # terminal: not retried
    assert bad.error is not None and bad.error["type"] == "TemplateError"
    assert "params.lake_dir" in bad.error["message"]
    assert "params.args.lake" in bad.error["message"]
    events = env.events(run_id)
    assert "PHASE_RETRY_SCHEDULED" not in of_phase(events, "bad")
    # no repository configured: an INFO event says the worker's own code runs
    checkout = next(e for e in events if e.type == "CODE_CHECKOUT" and e.phase == "echo")
    assert checkout.level == "info" and "the worker's own code" in checkout.message
    assert checkout.payload == {"git_sha": "0123abc", "commit": None, "code_dir": None}
