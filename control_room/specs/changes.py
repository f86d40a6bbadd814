"""What changed between two commits, phase by phase: `runs create --job J --changed-since SHA`
(docs/github.md, "Only what changed", dbt Slim CI's idea).

A phase's **change fingerprint** at a commit is the blake3 of the canonical JSON of what decides
its output and that git can tell: its kind, its params as stored (templates unrendered), its
`depends_on` (as a set), the values of the run params it uses (`${params.X}`), the commit when
it uses `${run.git_sha}`, and the git object ids of the files its code lives in at that commit:

- python (`entrypoint` `a.b.c:fn`): the tree of the module's package directory (`a/b/` for
  `a/b/c.py`, `a/b/c/` for a package `a/b/c/__init__.py`; the whole commit for a top-level
  module) and the `__init__.py` of each package above it;
- sql, trino: `query_file` (inside `code_dir` when given); an inline `query` has no file;
- dbt: the tree of `project_dir` (default `.`: the whole commit);
- spark: `job_file`.

A phase whose code cannot be located (an unknown kind, a module or file in neither commit, a
path with a template or an absolute `code_dir`) counts as changed: reusing it would be a guess.
A phase is changed when it is new, its base counterpart did not succeed, or the fingerprints
differ; the rerun set is the changed phases and everything downstream of them (the control
plane computes the same closure again, `create_changed_run`).

What git cannot tell is not compared: the data a phase reads from outside the run (a source
database, a Delta table another job writes), a connection's registered config, modules a phase
imports from outside its package directory, and files a spark job reads beside its job file.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import blake3

__all__ = [
    "FINGERPRINT_FORMAT",
    "ChangePlan",
    "GitError",
    "PhaseChange",
    "code_locations",
    "plan_changes",
    "resolve_commit",
]

FINGERPRINT_FORMAT = "cr-change-v1"
_PARAM_REF = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")
_ENTRYPOINT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):[A-Za-z_]\w*$")
ROOT = ""
"""The path of the commit's whole tree."""


class GitError(ValueError):
    """git could not answer (not a repository, a commit it does not have)."""


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True,
                              text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {args[0]} failed in {repo}: {exc}") from None
    if done.returncode != 0:
        raise GitError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                       else f"git {args[0]} failed in {repo}")
    return done.stdout


def repo_root(start: Path) -> Path:
    """The top of the git working tree holding `start`."""
    try:
        return Path(_git(start, "rev-parse", "--show-toplevel").strip())
    except GitError:
        raise GitError(f"{start} is not inside a git repository (--repo-dir: the checkout "
                       "holding the job's code)") from None


def resolve_commit(repo: Path, revision: str) -> str | None:
    """The full sha of `revision` (a sha, a prefix, a branch, `HEAD~1`) in `repo`, or None."""
    if not revision or revision.startswith("-"):
        return None
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").strip()
    except GitError:
        return None


def _objects(repo: Path, sha: str, paths: Iterable[str]) -> dict[str, str | None]:
    """`path -> "<type> <object id>"` at commit `sha` (None: no such path); ROOT is the tree."""
    wanted = sorted(set(paths))
    if not wanted:
        return {}
    lines = "".join((f"{sha}^{{tree}}" if p == ROOT else f"{sha}:{p}") + "\n" for p in wanted)
    answer = _git(repo, "cat-file", "--batch-check=%(objecttype) %(objectname)",
                  stdin=lines).splitlines()
    if len(answer) != len(wanted):
        raise GitError(f"git cat-file answered {len(answer)} lines for {len(wanted)} paths")
    return {p: (None if line.endswith(" missing") or line.endswith(" ambiguous") else line)
            for p, line in zip(wanted, answer, strict=True)}


def _clean(path: str) -> str | None:
    """A relative path inside the checkout, normalised; None for a template, an absolute path
    or one leaving the checkout."""
    if "${" in path or path.startswith("/") or "\\" in path:
        return None
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def code_locations(kind: str, params: Mapping[str, Any]) -> list[tuple[str, ...]] | None:
    """The candidate code of a phase: a list of alternatives, each a tuple of paths whose first
    element must exist at the commit for the alternative to hold (python: the module file or
    the package's `__init__.py`); `[()]` when the phase has no code file (an inline query);
    None when its code cannot be located."""
    if kind == "python":
        entrypoint = params.get("entrypoint")
        match = _ENTRYPOINT.match(entrypoint) if isinstance(entrypoint, str) else None
        if match is None:
            return None
        parts = match.group(1).split(".")
        inits = tuple("/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts)))
        module_dir = "/".join(parts[:-1])
        package_dir = "/".join(parts)
        return [("/".join(parts) + ".py", module_dir or ROOT, *inits),
                (package_dir + "/__init__.py", package_dir, *inits)]
    if kind in ("sql", "trino"):
        query_file = params.get("query_file")
        if query_file is None:
            return [()] if isinstance(params.get("query"), str) else None
        if not isinstance(query_file, str):
            return None
        code_dir = params.get("code_dir")
        if code_dir is not None and not isinstance(code_dir, str):
            return None
        path = _clean(f"{code_dir}/{query_file}" if code_dir else query_file)
        return None if not path else [(path,)]
    if kind == "dbt":
        project = params.get("project_dir", ".")
        path = _clean(project) if isinstance(project, str) else None
        return None if path is None else [(path or ROOT,)]
    if kind == "spark":
        job_file = params.get("job_file")
        path = _clean(job_file) if isinstance(job_file, str) else None
        return None if not path else [(path,)]
    return None


def _code_at(locations: list[tuple[str, ...]] | None,
             objects: Mapping[str, str | None]) -> dict[str, str | None] | None:
    """The phase's code at a commit: path -> object (None: absent); None when not found."""
    if locations is None:
        return None
    for alternative in locations:
        if not alternative:
            return {}
        if objects.get(alternative[0]) is not None:
            return {p: objects.get(p) for p in alternative}
    return None


@dataclass(frozen=True)
class _Side:
    """A phase at one commit: what its fingerprint covers."""

    kind: str
    params: Mapping[str, Any]
    depends_on: tuple[str, ...]
    used_params: Mapping[str, Any]
    git_sha: str | None
    code: Mapping[str, str | None] | None

    def fingerprint(self) -> str:
        document = {"format": FINGERPRINT_FORMAT, "kind": self.kind, "params": self.params,
                    "depends_on": sorted(self.depends_on), "run_params": self.used_params,
                    "git_sha": self.git_sha, "code": self.code}
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "blake3:" + blake3.blake3(text.encode("utf-8")).hexdigest()


def _side(phase: Mapping[str, Any], run_params: Mapping[str, Any], git_sha: str,
          objects: Mapping[str, str | None]) -> _Side:
    params = phase.get("params") or {}
    text = json.dumps(params, sort_keys=True)
    used = {name: run_params.get(name) for name in sorted(set(_PARAM_REF.findall(text)))}
    kind = str(phase.get("kind"))
    return _Side(kind, params, tuple(phase.get("depends_on") or ()), used,
                 git_sha if "${run.git_sha}" in text else None,
                 _code_at(code_locations(kind, params), objects))


@dataclass(frozen=True)
class PhaseChange:
    """One phase of the head: whether it runs, and why (or why it is reused)."""

    name: str
    runs: bool
    changed: bool
    reason: str
    fingerprint: str
    base_fingerprint: str | None


@dataclass(frozen=True)
class ChangePlan:
    """The head's phases in order, each run or reused, against the base run at `base_sha`."""

    base_sha: str
    head_sha: str
    base_run_id: str
    phases: tuple[PhaseChange, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> dict[str, str]:
        """The changed phases (not those only downstream of one) -> why."""
        return {p.name: p.reason for p in self.phases if p.changed}

    @property
    def rerun(self) -> list[str]:
        return [p.name for p in self.phases if p.runs]

    @property
    def reused(self) -> list[str]:
        return [p.name for p in self.phases if not p.runs]


def _why(base: _Side, head: _Side) -> str:
    if head.code is None or base.code is None:
        if head.kind not in ("python", "sql", "trino", "dbt", "spark"):
            return f"the code of a {head.kind} phase cannot be located: it always runs"
        where = ("either commit" if head.code is None and base.code is None
                 else "this commit" if head.code is None else "the base commit")
        return f"its code is not found in the repository at {where}"
    if base.kind != head.kind:
        return f"kind changed: {base.kind} -> {head.kind}"
    if sorted(base.depends_on) != sorted(head.depends_on):
        return "depends_on changed"
    if base.params != head.params:
        return "params changed"
    for name, value in head.used_params.items():
        if base.used_params.get(name) != value:
            old = json.dumps(base.used_params.get(name))[:60]
            return f"param {name} changed: {old} -> {json.dumps(value)[:60]}"
    if base.git_sha != head.git_sha:
        return "uses ${run.git_sha}, which changed"
    files = sorted(p for p in set(base.code) | set(head.code)
                   if base.code.get(p) != head.code.get(p))
    shown = ", ".join(p or "(the whole commit)" for p in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return f"code changed: {shown}{more}"


def plan_changes(repo: Path, *, base_sha: str, head_sha: str, base_run_id: str,
                 base_phases: Sequence[Mapping[str, Any]], base_params: Mapping[str, Any],
                 head_phases: Sequence[Mapping[str, Any]], head_params: Mapping[str, Any]
                 ) -> ChangePlan:
    """Compare each phase of the head (its spec at `head_sha`, the run's params) with the base
    run's phase of the same name (its phases and params, at `base_sha`)."""
    paths: set[str] = set()
    for phase in (*base_phases, *head_phases):
        for alternative in code_locations(str(phase.get("kind")), phase.get("params") or {}) or []:
            paths.update(alternative)
    base_objects = _objects(repo, base_sha, paths)
    head_objects = _objects(repo, head_sha, paths)
    by_name = {str(p["name"]): p for p in base_phases}
    changed: dict[str, tuple[str, str, str | None]] = {}
    prints: dict[str, tuple[str, str | None]] = {}
    for phase in head_phases:
        name = str(phase["name"])
        head = _side(phase, head_params, head_sha, head_objects)
        old = by_name.get(name)
        if old is None:
            prints[name] = (head.fingerprint(), None)
            changed[name] = ("new: the base run has no phase " + name, *prints[name])
            continue
        base = _side(old, base_params, base_sha, base_objects)
        prints[name] = (head.fingerprint(), base.fingerprint())
        if old.get("state", "succeeded") != "succeeded":
            changed[name] = (f"the base run's phase is {old.get('state')}", *prints[name])
        elif head.code is None or base.code is None or prints[name][0] != prints[name][1]:
            changed[name] = (_why(base, head), *prints[name])
    downstream = _closure(head_phases, set(changed), {})
    out = []
    for phase in head_phases:
        name = str(phase["name"])
        fingerprint, base_fingerprint = prints[name]
        if name in changed:
            out.append(PhaseChange(name, True, True, changed[name][0], fingerprint,
                                   base_fingerprint))
        elif name in downstream:
            out.append(PhaseChange(name, True, False, downstream[name], fingerprint,
                                   base_fingerprint))
        else:
            out.append(PhaseChange(name, False, False,
                                   f"unchanged since {base_sha[:12]} (run {base_run_id})",
                                   fingerprint, base_fingerprint))
    return ChangePlan(base_sha, head_sha, base_run_id, tuple(out))


def _closure(phases: Sequence[Mapping[str, Any]], changed: set[str],
             known: dict[str, str]) -> dict[str, str]:
    """Every phase downstream of a changed one -> `downstream of <changed phase>`, whatever
    the order the phases are listed in."""
    reasons = dict(known)
    grew = True
    while grew:
        grew = False
        for phase in phases:
            name = str(phase["name"])
            if name in changed or name in reasons:
                continue
            for dep in phase.get("depends_on") or ():
                if dep in changed:
                    reasons[name] = f"downstream of {dep}"
                elif dep in reasons:
                    reasons[name] = reasons[dep]
                else:
                    continue
                grew = True
                break
    return reasons
