"""The PR gate's job summary and step outputs (docs/github.md).

`control-room runs create ... --wait --github-summary` (and `runs watch --github-summary`)
append a GitHub-flavoured Markdown report of the run to `$GITHUB_STEP_SUMMARY` and its
`run_id`, `state` and `ui_url` to `$GITHUB_OUTPUT`:

- the run: spec or job version @ git sha, state, duration, labels, its error;
- its phases: state, attempts, duration (and the error of each phase that failed);
- the datasets it changed, read from the catalog: the datasets whose last write is this run,
  with the schema versions this run recorded (INITIAL, NON_BREAKING, a refused BREAKING change)
  and their column changes;
- the artifacts it produced and read, with their blake3 digests;
- for a run of only what changed (`runs create --changed-since`): why each phase ran, and the
  phases skipped because they did not change, whose outputs are the base run's;
- a link to the UI's run page (`--ui-url`, `CONTROL_ROOM_UI_URL`, or the local stack's UI
  when it serves one); without a UI, the gateway's `get_run` and the CLI command to read it.

GitHub refuses a step summary above 1 MiB: the report stays under `SUMMARY_LIMIT`, cutting the
longest tables first and saying how many rows it left out and where to see them. Nothing here
reads or prints a token; URLs are shown without user info, query or fragment.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control_room.contract.client import ContractClient, NotFound
from control_room.contract.models import ArtifactLink, Dataset, DatasetVersion, Run

__all__ = [
    "MAX_ROWS",
    "SUMMARY_LIMIT",
    "ChangedDataset",
    "GateReport",
    "RunLinks",
    "collect",
    "github_outputs",
    "output_lines",
    "render_summary",
    "render_unchanged",
    "run_links",
    "safe_url",
    "write_github_files",
]

SUMMARY_LIMIT = 1024 * 1024 - 16 * 1024
"""Bytes: GitHub's step summary limit is 1 MiB; keep a margin for what another step adds."""
MAX_ROWS = 200
"""Rows per table before cutting (each table says how many rows it left out)."""

STATE_MARK = {"succeeded": "✅", "failed": "❌", "cancelled": "🚫", "running": "🔄",
              "queued": "⏳", "waiting": "⏸️", "skipped": "⏭️"}


# --------------------------------------------------------------------------- what we show


@dataclass(frozen=True)
class ChangedDataset:
    """A dataset whose last write is the run, and the schema versions the run recorded."""

    dataset: Dataset
    versions: tuple[DatasetVersion, ...] = ()


@dataclass(frozen=True)
class GateReport:
    """What the summary shows besides the run itself (read from the catalog and artifacts)."""

    datasets: tuple[ChangedDataset, ...] = ()
    artifacts: tuple[ArtifactLink, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunLinks:
    """Where the run is seen: the UI's run page, when there is a UI, else the gateway."""

    ui_url: str | None
    """The UI's run page (`<ui base>/runs/<run id>`); None when no UI is known."""
    api_url: str
    """The gateway's `get_run` (POST `{"run_id": ...}` with a token)."""
    cli: str
    note: str | None = None


def safe_url(url: str) -> str:
    """`url` without user info, query or fragment (what may be printed or linked)."""
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def run_links(run_id: str, *, gateway_url: str, ui_base: str | None,
              ui_note: str | None = None) -> RunLinks:
    """The run's links: `ui_base` is the UI's root (None: there is no UI to link)."""
    api = safe_url(gateway_url).rstrip("/") + "/rpc/get_run"
    cli = f"control-room runs show {run_id}"
    if ui_base:
        return RunLinks(f"{safe_url(ui_base).rstrip('/')}/runs/{run_id}", api, cli)
    note = ui_note or ("no Control Room UI is configured (`--ui-url`, CONTROL_ROOM_UI_URL): "
                       "the run is read from the gateway's get_run")
    return RunLinks(None, api, cli, note)


def collect(client: ContractClient, run: Run, *, max_datasets: int = 1000) -> GateReport:
    """The catalog's datasets whose last write is `run` (and those a refused change of the run
    blocked), the schema versions the run recorded, and the run's artifact links."""
    notes: list[str] = []
    listed = client.list_datasets(run.workspace_id, limit=max_datasets)
    if len(listed) >= max_datasets:
        notes.append(f"the catalog holds more than {max_datasets} datasets: only the first "
                     f"{max_datasets} by name were looked at")
    changed: list[ChangedDataset] = []
    for dataset in listed:
        if dataset.last_run_id != run.id and dataset.schema_state != "blocked":
            continue
        try:
            detail = client.get_dataset(run.workspace_id, dataset.name)
        except NotFound:            # deleted meanwhile
            continue
        mine = tuple(v for v in detail.versions if v.run_id == run.id)
        if dataset.last_run_id == run.id or mine:
            changed.append(ChangedDataset(dataset, mine))
    artifacts = tuple(client.iter_artifacts(run.id))
    return GateReport(tuple(changed), artifacts, tuple(notes))


# ------------------------------------------------------------------------------ Markdown


def cell(value: Any) -> str:
    """A table cell: one line, `|` escaped, no HTML (GitHub renders HTML in summaries)."""
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").split()) or " "


def code(value: Any) -> str:
    text = " ".join(str(value).split()).replace("`", "'")
    return f"`{text}`" if text else " "


def seconds_between(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = ((end or datetime.now(UTC)) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def state_cell(state: str) -> str:
    return f"{STATE_MARK.get(state, '')} {state}".strip()


def _error_message(error: Mapping[str, Any] | None) -> str | None:
    if not error:
        return None
    inner = error.get("error") if isinstance(error.get("error"), Mapping) else error
    message = inner.get("message") if isinstance(inner, Mapping) else None
    return str(message) if message else None


def _change_text(changes: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for change in changes:
        column, what = change.get("column"), change.get("change")
        old, new = change.get("old_type"), change.get("new_type")
        types = f" {old} → {new}" if old and new else f" {new or old}" if (new or old) else ""
        parts.append(f"{column} {what}{types}")
    return "; ".join(parts)


@dataclass(frozen=True)
class _Limits:
    phases: int = MAX_ROWS
    datasets: int = MAX_ROWS
    artifacts: int = MAX_ROWS
    error_chars: int = 500

    def halved(self) -> _Limits:
        return _Limits(self.phases // 2, self.datasets // 2, self.artifacts // 2,
                       max(80, self.error_chars // 2))


@dataclass
class _Doc:
    lines: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Iterable[Sequence[str]], limit: int,
              total: int, more: str) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for n, row in enumerate(rows):
            if n >= limit:
                break
            self.add("| " + " | ".join(row) + " |")
        if total > limit:
            self.add("", f"_{total - limit} more row(s) not shown (of {total}): {more}_")
        self.add("")


def _render(run: Run, report: GateReport, links: RunLinks, limits: _Limits) -> str:
    doc = _Doc()
    what = (f"job {code(run.job.slug)} version {run.job.version}" if run.job is not None
            else f"spec {code(run.spec_slug)}")
    doc.add(f"## {STATE_MARK.get(run.state, '')} Control Room run {run.state}: "
            f"{cell(run.job.slug if run.job else run.spec_slug)}", "")
    see = (f"[the run's page]({links.ui_url})" if links.ui_url
           else f"{code(links.cli)}")
    doc.add(f"{what} @ {code(run.git_sha)} · run {code(run.id)} · "
            f"{seconds_between(run.started_at, run.finished_at)} · {see}", "")
    doc.add("| | |", "|---|---|",
            f"| state | {state_cell(run.state)} |",
            f"| created | {run.created_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC |",
            f"| duration | {seconds_between(run.started_at, run.finished_at)} |")
    if run.labels:
        doc.add("| labels | " + cell(", ".join(f"{k}={v}" for k, v in sorted(
            run.labels.items()))) + " |")
    if run.parent_run_id:
        doc.add(f"| repair of | {code(run.parent_run_id)} |")
    if run.cancel_reason:
        doc.add(f"| cancelled | {cell(run.cancel_reason[:limits.error_chars])} |")
    message = _error_message(run.error)
    if message:
        phase = (run.error or {}).get("phase")
        where = f"phase {phase}: " if phase else ""
        doc.add(f"| error | {cell(where + message[:limits.error_chars])} |")
    doc.add("")

    doc.add(f"### Phases ({len(run.phases)})", "")
    doc.table(("phase", "kind", "state", "attempts", "duration", "error"),
              ((cell(p.name), cell(p.kind), state_cell(p.state),
                f"{p.attempt}/{p.max_attempts}", seconds_between(p.started_at, p.finished_at),
                cell((_error_message(p.error) or "")[:limits.error_chars])
                if p.state in ("failed", "queued", "waiting") and p.error else " ")
               for p in run.phases),
              limits.phases, len(run.phases), f"{code(links.cli)}")

    _changed_sections(doc, run, limits, links)

    doc.add(f"### Datasets changed ({len(report.datasets)})", "")
    if report.datasets:
        doc.table(("dataset", "layer", "state", "schema", "schema changes by this run",
                   "table version", "rows", "digest"),
                  ((code(d.dataset.name), cell(d.dataset.layer), cell(d.dataset.schema_state),
                    f"v{d.dataset.schema_version}",
                    cell("; ".join(
                        f"v{v.version} {v.change}{'' if v.applied else ' (refused)'}"
                        + (f": {_change_text(v.changes)}" if v.changes else "")
                        for v in d.versions) or "none"),
                    cell(d.dataset.last_table_version if d.dataset.last_run_id == run.id
                         else "-"),
                    cell(d.dataset.last_rows if d.dataset.last_run_id == run.id else "-"),
                    code(d.dataset.last_digest) if d.dataset.last_digest
                    and d.dataset.last_run_id == run.id else " ")
                   for d in report.datasets),
                  limits.datasets, len(report.datasets),
                  code(f"control-room datasets list --workspace {run.workspace_id}"))
    else:
        doc.add("_No dataset of the catalog was last written by this run._", "")

    doc.add(f"### Artifacts ({len(report.artifacts)})", "")
    if report.artifacts:
        doc.table(("phase", "name", "role", "kind", "size", "digest"),
                  ((cell(a.phase or "-"), cell(a.name), cell(a.role), cell(a.kind),
                    size_text(a.size_bytes), code(a.digest)) for a in report.artifacts),
                  limits.artifacts, len(report.artifacts),
                  code(f"control-room runs show {run.id} --json") + " and `list_artifacts`")
    else:
        doc.add("_No artifact._", "")

    doc.add("### Links", "")
    if links.ui_url:
        doc.add(f"- The run in the Control Room UI: <{links.ui_url}>")
    else:
        doc.add(f"- {cell(links.note or 'no UI')}")
    body = '{"run_id": "' + run.id + '"}'
    doc.add(f"- The gateway's get_run: {code(links.api_url)} (POST {code(body)} with a token)",
            f"- On the command line: {code(links.cli)}")
    for note in report.notes:
        doc.add(f"- note: {cell(note)}")
    doc.add("")
    return "\n".join(doc.lines)


def _changed_sections(doc: _Doc, run: Run, limits: _Limits, links: RunLinks) -> None:
    """A run of what changed (input_manifest.changed_since): why each phase ran, and the
    phases skipped because they did not change (their outputs are the base run's)."""
    since = run.input_manifest.get("changed_since")
    if not isinstance(since, Mapping) or run.parent_run_id is not None:
        return      # a repair of such a run keeps its parent's outputs, not the base's
    base_id, base_sha = str(since.get("base_run_id", "")), str(since.get("base_git_sha", ""))
    changed = since.get("changed") if isinstance(since.get("changed"), Mapping) else {}
    assert isinstance(changed, Mapping)
    reused = [p for p in run.phases if p.reused_from_phase_id is not None]
    ran = [p for p in run.phases if p.reused_from_phase_id is None]
    upstream = {p.name: p.depends_on for p in run.phases}

    def why(name: str) -> str:
        """The phase's own change, else the first changed phase upstream of it."""
        if name in changed:
            return str(changed[name])
        queue, seen = list(upstream.get(name, ())), set()
        while queue:
            dep = queue.pop(0)
            if dep in changed:
                return f"downstream of {dep}"
            if dep not in seen:
                seen.add(dep)
                queue.extend(upstream.get(dep, ()))
        return "the control plane reruns it"

    doc.add(f"### Only what changed since {code(base_sha[:12])} ({len(ran)} ran, "
            f"{len(reused)} reused from run {code(base_id)})", "")
    doc.table(("phase", "kind", "why it ran"),
              ((cell(p.name), cell(p.kind), cell(why(p.name)[:limits.error_chars]))
               for p in ran), limits.phases, len(ran), code(links.cli))
    doc.add(f"### Skipped (unchanged) ({len(reused)})", "")
    if reused:
        doc.table(("phase", "kind", "reason", "output of phase"),
                  ((cell(p.name), cell(p.kind),
                    cell(f"unchanged since {base_sha[:12]} (run {base_id})"),
                    code(p.reused_from_phase_id)) for p in reused),
                  limits.phases, len(reused), code(links.cli))
    else:
        doc.add("_Every phase changed (or is downstream of a change): nothing was skipped._", "")


def render_unchanged(job: str, version: int, git_sha: str, base: Run,
                     reasons: Sequence[tuple[str, str]], links: RunLinks, *,
                     max_rows: int = MAX_ROWS) -> str:
    """The summary when nothing changed since the base run: no run was created, every phase
    is the base run's (`runs create --changed-since`)."""
    doc = _Doc()
    doc.add(f"## ⏭️ Control Room run skipped: {cell(job)}", "")
    doc.add(f"job {code(job)} version {version} @ {code(git_sha)}: nothing changed since "
            f"{code(base.git_sha[:12])}; every phase's outputs are those of run {code(base.id)} "
            f"({state_cell(base.state)}), so no run was created.", "")
    doc.add(f"### Skipped (unchanged) ({len(reasons)})", "")
    doc.table(("phase", "reason"), ((cell(name), cell(reason)) for name, reason in reasons),
              max_rows, len(reasons), code(links.cli))
    doc.add("### Links", "")
    if links.ui_url:
        doc.add(f"- The base run in the Control Room UI: <{links.ui_url}>")
    doc.add(f"- On the command line: {code(links.cli)}", "")
    text = "\n".join(doc.lines)
    return text if len(text.encode()) <= SUMMARY_LIMIT else text.encode()[:SUMMARY_LIMIT].decode(
        errors="ignore")


def render_summary(run: Run, report: GateReport, links: RunLinks, *,
                   limit: int = SUMMARY_LIMIT, max_rows: int = MAX_ROWS) -> str:
    """The run's summary as GitHub-flavoured Markdown, at most `limit` bytes in UTF-8: the
    tables are cut (halving their rows) until it fits, then the text itself."""
    limits = _Limits(max_rows, max_rows, max_rows)
    while True:
        text = _render(run, report, links, limits)
        if len(text.encode()) <= limit or limits.phases + limits.datasets + limits.artifacts == 0:
            break
        limits = limits.halved()
    data = text.encode()
    if len(data) <= limit:
        return text
    tail = f"\n\n_The summary was cut at {limit} bytes: {code(links.cli)}_\n"
    keep = max(0, limit - len(tail.encode()))
    return data[:keep].decode(errors="ignore") + tail


# ------------------------------------------------------------------- $GITHUB_OUTPUT


def output_lines(values: Mapping[str, str], *,
                 delimiter: Callable[[], str] = lambda: f"ghadelimiter_{secrets.token_hex(16)}"
                 ) -> str:
    """Step outputs in the `$GITHUB_OUTPUT` format: `name=value`, or for a value with a line
    break the heredoc form `name<<DELIMITER` ... `DELIMITER` with a delimiter the value does
    not contain."""
    lines = []
    for name, value in values.items():
        if not name or any(ch in name for ch in "=<\r\n"):
            raise ValueError(f"bad output name {name!r}")
        if "\n" in value or "\r" in value:
            mark = delimiter()
            while mark in value:
                mark = delimiter()
            lines.append(f"{name}<<{mark}\n{value}\n{mark}\n")
        else:
            lines.append(f"{name}={value}\n")
    return "".join(lines)


def github_outputs(run: Run, links: RunLinks) -> dict[str, str]:
    """The step outputs: `run_id`, `state`, `ui_url` (the UI's run page; empty without a UI)
    and `api_url` (the gateway's get_run)."""
    return {"run_id": run.id, "state": run.state, "ui_url": links.ui_url or "",
            "api_url": links.api_url}


def write_github_files(summary_path: Path | None, output_path: Path | None, summary: str | None,
                       outputs: Mapping[str, str]) -> None:
    """Append the summary and the outputs (GitHub reads both files when the step ends)."""
    if summary_path is not None and summary is not None:
        with summary_path.open("a", encoding="utf-8") as handle:
            handle.write(summary if summary.endswith("\n") else summary + "\n")
    if output_path is not None:
        with output_path.open("a", encoding="utf-8") as handle:
            handle.write(output_lines(outputs))
