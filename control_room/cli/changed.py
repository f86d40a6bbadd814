"""`runs create --job JOB --changed-since SHA`: a run of only what changed since a commit
(docs/github.md, "Only what changed", dbt Slim CI's idea).

The CLI has the checkout, so it compares the phases' code at the two commits
(`control_room.specs.changes`); the control plane (`create_changed_run`) checks the base run,
adds the spec and param changes it sees itself, reruns the changed phases and everything
downstream, and reuses the base run's outputs for the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_room.cli.common import BadInput, GatewayTarget, err, out

if TYPE_CHECKING:
    from control_room.cli.runs import GithubGate
    from control_room.contract.models import ChangedRunCreated, JobDetail, JobVersion, Run
    from control_room.specs.changes import ChangePlan


def _head_phases(detail: JobDetail, chosen: JobVersion, root: Path) -> list[dict[str, Any]]:
    """The phases of the version run: the latest's spec from get_job, an older one's from its
    spec file at its commit (checked against the version's digest)."""
    from control_room.specs import SpecError, load_spec
    from control_room.specs.jobs import job_digest, job_spec_json

    if detail.latest is not None and detail.latest.version == chosen.version and detail.latest.spec:
        return list(detail.latest.spec.get("phases") or [])
    source = chosen.source
    if source is not None and source.path and not source.path.startswith("/"):
        try:
            loaded = load_spec(root / source.path, git_sha=chosen.git_sha)
        except SpecError:
            loaded = None
        if loaded is not None:
            spec = job_spec_json(loaded)
            if job_digest(spec) == chosen.digest:
                return list(spec["phases"])
    raise BadInput(f"job {detail.slug} version {chosen.version}: its spec is not in {root} at "
                   f"{chosen.git_sha[:12]} as registered, so its phases' code cannot be "
                   "compared; run the latest version, or without --changed-since")


def _base_run(target: GatewayTarget, workspace_id: str, job: str, base_sha: str,
              given: str) -> Run:
    """The newest succeeded run of the job at the base commit."""
    client = target.client
    page = client.list_runs(workspace_id, job_slug=job, git_sha=base_sha, state="succeeded",
                            limit=1)
    if page.runs:
        return client.get_run(page.runs[0].id)
    newest = client.list_runs(workspace_id, job_slug=job, git_sha=base_sha, limit=1).runs
    at = f"{base_sha[:12]}" + ("" if base_sha.startswith(given) else f" ({given})")
    if newest:
        raise BadInput(f"--changed-since {given}: no succeeded run of job {job} at {at} to reuse "
                       f"(the newest, {newest[0].id}, is {newest[0].state}); repair it or run "
                       "everything (without --changed-since)")
    raise BadInput(f"--changed-since {given}: job {job} has no run at {at} to reuse (run the "
                   "job at that commit first, e.g. the gate on pushes to the base branch, or "
                   "run everything without --changed-since)")


def plan_for(target: GatewayTarget, workspace_id: str, detail: JobDetail, chosen: JobVersion,
             values: dict[str, Any], changed_since: str, repo_dir: Path
             ) -> tuple[ChangePlan, Run]:
    """Which phases of `chosen` run with `values`, against the base run at `changed_since`."""
    from control_room.specs.changes import GitError, plan_changes, repo_root, resolve_commit

    try:
        root = repo_root(repo_dir.resolve())
    except GitError as exc:
        raise BadInput(f"--changed-since: {exc}") from None
    base_sha = resolve_commit(root, changed_since)
    if base_sha is None:
        raise BadInput(f"--changed-since {changed_since}: not a commit of the repository at "
                       f"{root} (a shallow checkout? fetch the history: actions/checkout with "
                       "fetch-depth: 0)")
    head_sha = resolve_commit(root, chosen.git_sha)
    if head_sha is None:
        raise BadInput(f"job {detail.slug} version {chosen.version} is at {chosen.git_sha[:12]}, "
                       f"which is not a commit of the repository at {root}: --repo-dir must be "
                       "the checkout the version was registered from")
    head_phases = _head_phases(detail, chosen, root)
    head_params = {name: p.default for name, p in chosen.params.items()}
    head_params.update(values)
    base = _base_run(target, workspace_id, detail.slug, base_sha, changed_since)
    base_phases = [{"name": p.name, "kind": p.kind, "params": p.params,
                    "depends_on": list(p.depends_on), "state": p.state} for p in base.phases]
    try:
        plan = plan_changes(root, base_sha=base_sha, head_sha=head_sha, base_run_id=base.id,
                            base_phases=base_phases,
                            base_params=dict(base.input_manifest.get("params") or {}),
                            head_phases=head_phases, head_params=head_params)
    except GitError as exc:
        raise BadInput(f"--changed-since: {exc}") from None
    return plan, base


def changes_json(plan: ChangePlan) -> list[dict[str, Any]]:
    return [{"phase": p.name, "runs": p.runs, "changed": p.changed, "reason": p.reason,
             "fingerprint": p.fingerprint, "base_fingerprint": p.base_fingerprint}
            for p in plan.phases]


def print_plan(plan: ChangePlan, reasons: dict[str, str] | None = None) -> None:
    """One line per phase: runs or reused, and why."""
    out.print(f"only what changed since {plan.base_sha[:12]} (run {plan.base_run_id}): "
              f"{len(plan.rerun)} phase(s) run, {len(plan.reused)} reused", markup=False)
    for phase in plan.phases:
        reason = (reasons or {}).get(phase.name, phase.reason)
        out.print(f"  {'run   ' if phase.runs else 'reused'} {phase.name}: {reason}",
                  markup=False)


def create_changed(target: GatewayTarget, workspace_id: str, detail: JobDetail,
                   chosen: JobVersion, values: dict[str, Any], labels: dict[str, str],
                   idempotency_key: str | None, changed_since: str, repo_dir: Path, *,
                   as_json: bool, gate: GithubGate | None
                   ) -> tuple[ChangedRunCreated, dict[str, Any]] | None:
    """Create the run of what changed (None: nothing changed, no run: said on stdout, in the
    JSON answer and in the GitHub summary)."""
    plan, base = plan_for(target, workspace_id, detail, chosen, values, changed_since, repo_dir)
    if not plan.rerun:
        _nothing_changed(target, detail, chosen, plan, base, as_json=as_json, gate=gate)
        return None
    created = target.client.create_changed_run(
        workspace_id, detail.slug, base.id, plan.changed, version=chosen.version, params=values,
        idempotency_key=idempotency_key, labels=labels or None)
    since = created.changed_since
    added = [name for name in since.rerun if name not in plan.rerun]
    reasons = {name: f"{since.changed.get(name, 'downstream of a changed phase')} (the "
                     "control plane's check)" for name in added}
    if not as_json:
        print_plan(plan, reasons)
    elif added:
        err.print(f"note: the control plane also reruns {', '.join(added)}", markup=False)
    return created, {"changes": changes_json(plan)}


def _nothing_changed(target: GatewayTarget, detail: JobDetail, chosen: JobVersion,
                     plan: ChangePlan, base: Run, *, as_json: bool,
                     gate: GithubGate | None) -> None:
    text = (f"nothing changed since {plan.base_sha[:12]}: every phase of job {detail.slug} "
            f"version {chosen.version} has the fingerprint of its phase in run {base.id} "
            "(succeeded); no run created")
    if gate is not None:
        from control_room.integrations.github.summary import (
            render_unchanged,
            write_github_files,
        )

        links = gate.links(target, base.id)
        summary = render_unchanged(detail.slug, chosen.version, chosen.git_sha, base,
                                   [(p.name, p.reason) for p in plan.phases], links)
        write_github_files(gate.summary_path, gate.output_path, summary,
                           {"run_id": "", "state": "skipped", "ui_url": "", "api_url": "",
                            "base_run_id": base.id})
    if as_json:
        out.print_json(data={"state": "skipped", "reason": text, "job": detail.slug,
                             "version": chosen.version, "git_sha": chosen.git_sha,
                             "base_run_id": base.id, "base_git_sha": plan.base_sha,
                             "changes": changes_json(plan)})
    else:
        out.print(text, markup=False)
        print_plan(plan)
