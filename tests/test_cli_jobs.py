"""`control-room jobs` and `runs create --job` against the real gateway on a real port over a
fresh database: the shipped example spec registered from a real temporary git repository,
versioned, listed, shown, and run to success by a real worker; bad input exits 2."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from control_room.specs import example_spec, load_spec
from control_room.specs.jobs import job_digest, job_spec_json
from tests.executor.harness import BOUND, Env, Running, gateway_env
from tests.test_cli_runs import bad, cli, ok_json
from tests.test_specs import commit


@pytest.fixture
def env(conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> Iterator[Env]:
    with gateway_env(conn, db_url, tmp_path) as environment:
        yield environment


@pytest.fixture
def spec_repo(tmp_path: Path) -> tuple[Path, str]:
    """The shipped example spec committed in a new git repository: (its path, the sha)."""
    repo = tmp_path / "repo"
    (repo / "specs").mkdir(parents=True)
    spec = repo / "specs" / "example.yaml"
    shutil.copy(example_spec("example"), spec)
    return spec, commit(repo, "the example spec")


def test_the_stored_spec_and_its_digest(spec_repo: tuple[Path, str]) -> None:
    spec, sha = spec_repo
    loaded = load_spec(spec)
    body = job_spec_json(loaded)
    assert (body["slug"], body["version"], loaded.git_sha) == ("example", 1, sha)
    assert body["params"] == {"orders": {"type": "integer", "default": 12, "required": False,
                                         "description": "how many orders the extract writes"}}
    assert [p["name"] for p in body["phases"]] == ["extract", "silver", "gold"]
    assert body["source"] == {"path": "specs/example.yaml", "digest": loaded.digest}
    # the digest is of the canonical JSON: key order does not matter, content does
    assert job_digest(dict(reversed(list(body.items())))) == job_digest(body)
    assert job_digest(body | {"description": "other"}) != job_digest(body)


def test_register_list_show_and_run(env: Env, spec_repo: tuple[Path, str]) -> None:
    spec, sha = spec_repo
    code, out, err = cli(env, "jobs", "register", "--spec", str(spec), "--owner", "data team",
                         "--tag", "tier=gold")
    assert code == 0, err
    assert out.startswith(f"job example: registered 1 @ {sha[:12]}"), out
    code, out, err = cli(env, "jobs", "register", "--spec", str(spec))
    assert code == 0 and "job example: unchanged, version 1" in out, (out, err)
    again = ok_json(env, "jobs", "register", "--spec", str(spec))
    assert again["created"] is False and again["job"]["tags"] == {"tier": "gold"}
    assert again["version"]["digest"] == job_digest(job_spec_json(load_spec(spec)))

    # a new commit of the spec is a new version
    spec.write_text(spec.read_text().replace("default: 12", "default: 9"))
    new_sha = commit(spec.parents[1], "nine orders by default")
    moved = ok_json(env, "jobs", "register", "--spec", str(spec))
    assert (moved["created"], moved["version"]["version"], moved["version"]["git_sha"]) == (
        True, 2, new_sha)

    [listed] = ok_json(env, "jobs", "list")
    assert (listed["slug"], listed["latest_version"], listed["owner"]) == ("example", 2,
                                                                          "data team")
    assert listed["last_run"] is None
    code, out, err = cli(env, "jobs", "list")
    assert code == 0 and "example" in out and "data team" in out, err

    # a run of version 2 with a param, run to success by a worker
    lake = env.tmp / "work" / "lake" / env.world.w1
    running = Running(env.worker(kinds=["python", "sql"]), max_phases=3)
    code, out, err = cli(env, "runs", "create", "--job", "example", "--param", "orders=6",
                         "--wait", "--interval", "0.2")
    assert code == 0, err
    assert "run created" in out and "example v2" in out
    stats = running.join(BOUND * 2)
    assert (stats.succeeded, stats.failed) == (3, 0)
    gold = DeltaTable(str(lake / "gold" / "revenue_by_customer")).to_pyarrow_table()
    assert sum(row["orders"] for row in gold.to_pylist()) == 4   # 6 orders, 4 paid

    # version 1, its default param: queued (no worker now)
    old = ok_json(env, "runs", "create", "--job", "example", "--version", "1")
    assert old["job"]["version"] == 1 and old["git_sha"] == sha
    assert old["input_manifest"]["params"] == {"orders": 12}
    assert old["input_manifest"]["job"] == {"slug": "example", "version": 1}
    code, out, err = cli(env, "runs", "show", old["id"])
    assert code == 0 and "example version 1" in out, err
    keyed = ok_json(env, "runs", "create", "--job", "example", "--idempotency-key", "k1",
                    "--label", "team=data")
    assert ok_json(env, "runs", "create", "--job", "example", "--idempotency-key", "k1",
                   "--label", "team=data")["id"] == keyed["id"]
    assert keyed["labels"] == {"team": "data"}

    shown = ok_json(env, "jobs", "show", "example")
    assert [v["version"] for v in shown["versions"]] == [2, 1]
    assert [r["job"]["version"] for r in shown["recent_runs"]] == [2, 1, 2]
    assert shown["recent_runs"][-1]["state"] == "succeeded"
    code, out, err = cli(env, "jobs", "show", "example")
    assert code == 0, err
    for text in ("versions", new_sha[:12], sha[:12], "specs/example.yaml", "orders",
                 "integer", "recent runs", "succeeded", "data team", "tier=gold"):
        assert text in out, text
    # the viewer reads
    viewer = env.contract.token(env.world.viewer1)
    assert [j["slug"] for j in ok_json(env, "jobs", "list", token=viewer)] == ["example"]


def test_bad_input_exits_2_with_a_message(env: Env, spec_repo: tuple[Path, str],
                                          tmp_path: Path) -> None:
    spec, sha = spec_repo
    missing = tmp_path / "missing.yaml"
    assert bad(env, "jobs", "register", "--spec", str(missing)) == (
        f"error: {missing}: spec file not found\n")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("version: 1\nslug: x\nphases:\n  - {name: a, kind: python, "
                       "depends_on: [b]}\n")
    assert "phases[0].depends_on[0]: unknown phase 'b'" in bad(
        env, "jobs", "register", "--spec", str(invalid))
    assert "--tag must be NAME=VALUE" in bad(env, "jobs", "register", "--spec", str(spec),
                                             "--tag", "gold")
    viewer = env.contract.token(env.world.viewer1)
    assert "forbidden" in bad(env, "jobs", "register", "--spec", str(spec), token=viewer)
    assert "job nothing not found" in bad(env, "jobs", "show", "nothing")
    assert "job nothing not found" in bad(env, "runs", "create", "--job", "nothing")

    assert ok_json(env, "jobs", "register", "--spec", str(spec))["created"] is True
    assert "unknown param 'lakes' of job example (params: orders)" in bad(
        env, "runs", "create", "--job", "example", "--param", "lakes=/x")
    assert "'many' is not an integer (param orders is integer)" in bad(
        env, "runs", "create", "--job", "example", "--param", "orders=many")
    assert "job example has no version 4 (versions 1..1)" in bad(
        env, "runs", "create", "--job", "example", "--version", "4")
    assert "--spec and --job exclude each other" in bad(
        env, "runs", "create", "--job", "example", "--spec", str(spec))
    assert "give either --spec FILE or --job SLUG" in bad(env, "runs", "create")
    assert "--git-sha is for --spec" in bad(env, "runs", "create", "--job", "example",
                                            "--git-sha", sha)
    assert "--version is for --job" in bad(env, "runs", "create", "--spec", str(spec),
                                           "--version", "1")
    assert "forbidden" in bad(env, "runs", "create", "--job", "example", token=viewer)
    # none of the refusals made a run
    assert ok_json(env, "runs", "list") == []


def test_freshness_is_shown_its_slo_set_and_a_breach_alerted_by_the_scheduler(
        env: Env) -> None:
    """A run of job `nightly` published gold 20 minutes ago (its FRESHNESS event): past the
    default 15 minute SLO. `jobs list|show` say so, `scheduler --once` raises slo_breached
    once, `jobs slo` moves the objective, bad durations exit 2."""
    from datetime import UTC, datetime, timedelta

    from tests.contract.jobspec import register
    from tests.contract.test_freshness import JobRun, fresh

    w = env.world
    register(env.contract, w.w1, as_=w.dev1)
    env.contract.call("create_alert_destination", {
        "workspace_id": w.w1, "name": "hook", "type": "webhook", "url": "env:HOOK_URL"},
        as_=w.admin1)
    env.contract.call("create_alert_rule", {
        "workspace_id": w.w1, "name": "stale", "event": "slo_breached", "destination": "hook"},
        as_=w.admin1)
    now = datetime.now(UTC)
    JobRun(env.contract, w, now=now).freshness(fresh(now - timedelta(minutes=20)), now=now)

    code, out, err = cli(env, "jobs", "list")
    assert code == 0, err
    assert re.search(r"breached 20\.\d min / 15\.0 min", out), out
    code, out, err = cli(env, "jobs", "show", "nightly")
    assert code == 0, err
    assert "freshness (SLO 15.0 min)" in out and "gold.odoo.revenue" in out, out
    assert "2031-06-02T08:59:00" in out                       # the newest source change
    shown = ok_json(env, "jobs", "show", "nightly")["freshness"]
    assert (shown["state"], shown["slo_seconds"]) == ("breached", 900)

    code, out, err = cli(env, "scheduler", "--once")
    assert code == 0, err
    assert re.search(r"^slo nightly: breached \(12\d\d s behind\)$", err, re.M), err
    code, out, err = cli(env, "scheduler", "--once")
    assert code == 0 and "slo nightly" not in err, err         # raised once
    alerts = env.contract.call("list_alerts", {"workspace_id": w.w1}, as_=w.admin1)
    assert [a["event"] for a in alerts] == ["slo_breached"]

    code, out, err = cli(env, "jobs", "slo", "nightly", "--freshness", "30m")
    assert code == 0, err
    assert re.match(r"job nightly: freshness SLO 30\.0 min, now ok 2\d\.\d min", out), out
    code, out, err = cli(env, "scheduler", "--once")
    assert "slo nightly: ok" in err, err
    for given, words in (("10s", "from 1 minute to 366 days"), ("soon", "a duration"),
                         ("90.5s", "whole number")):
        assert words in bad(env, "jobs", "slo", "nightly", "--freshness", given)
    assert "not found" in bad(env, "jobs", "slo", "nope", "--freshness", "15m")
