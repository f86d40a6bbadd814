import { useEffect, useMemo, useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { createColumnHelper, flexRender, getCoreRowModel, useReactTable } from "@tanstack/react-table";
import { rpc } from "../api/client";
import type { RunPage, RunSummary } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { BadStateView, Empty, ErrorBox, StateBadge } from "../components/common";
import { durationBetween, formatDuration, formatRelative, formatTime, shortId, shortSha } from "../lib/format";
import { filterFromSearch, filterToSearch, RUN_FILTER_KEYS, RUN_STATES, runFilterToArgs, type RunFilter } from "../lib/runFilter";
import { Link, setSearch, useLocation } from "../router";

const col = createColumnHelper<RunSummary>();

export function PhaseCounts({ counts }: { counts: Record<string, number> }) {
  const order = ["succeeded", "running", "queued", "waiting", "failed", "cancelled", "skipped"];
  const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
  return (
    <span className="counts" title={order.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(", ")}>
      <span className="countbar">
        {order.filter((s) => counts[s]).map((s) => (
          <span key={s} className={`seg st-${s}`} style={{ width: `${(100 * counts[s]) / total}%` }} />
        ))}
      </span>
      <span className="muted small">{total}</span>
    </span>
  );
}

const columns = [
  col.accessor("state", { header: "State", cell: (c) => <StateBadge state={c.getValue()} /> }),
  col.accessor("id", { header: "Run", cell: (c) => <Link to={`/runs/${c.getValue()}`} className="mono">{shortId(c.getValue())}</Link> }),
  col.display({
    id: "what",
    header: "Job / spec",
    cell: (c) => {
      const r = c.row.original;
      return r.job ? (
        <span>
          <Link to={`/jobs/${encodeURIComponent(r.job.slug)}`}>{r.job.slug}</Link> <span className="muted">v{r.job.version}</span>
        </span>
      ) : (
        <span>{r.spec_slug}</span>
      );
    },
  }),
  col.accessor("phase_counts", { header: "Phases", cell: (c) => <PhaseCounts counts={c.getValue() as Record<string, number>} /> }),
  col.accessor("git_sha", { header: "Git", cell: (c) => <span className="mono">{shortSha(c.getValue())}</span> }),
  col.accessor("env", { header: "Env" }),
  col.accessor("created_at", { header: "Created", cell: (c) => <span title={formatTime(c.getValue())}>{formatRelative(c.getValue())}</span> }),
  col.display({ id: "duration", header: "Duration", cell: (c) => formatDuration(durationBetween(c.row.original.started_at, c.row.original.finished_at)) }),
  col.accessor("labels", {
    header: "Labels",
    cell: (c) => (
      <span className="labels">
        {Object.entries(c.getValue() ?? {}).slice(0, 4).map(([k, v]) => (
          <span key={k} className="label">
            {k}={v}
          </span>
        ))}
      </span>
    ),
  }),
];

export function RunsPage() {
  const { current } = useWorkspace();
  const { search } = useLocation();
  const applied = filterFromSearch(search);
  const [form, setForm] = useState<RunFilter>(applied);
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const key = filterToSearch(applied).toString();

  // the form follows the URL (back/forward); the state select applies at once, typing
  // updates the URL after a pause
  useEffect(() => setForm(filterFromSearch(new URLSearchParams(key))), [key]);
  useEffect(() => setCursors([null]), [key, current?.id]);
  useEffect(() => {
    const next = filterToSearch(form).toString();
    if (next === key) return;
    const typed = RUN_FILTER_KEYS.some((k) => k !== "state" && form[k] !== applied[k]);
    const t = setTimeout(() => setSearch(filterToSearch(form)), typed ? 300 : 0);
    return () => clearTimeout(t);
  }, [form, key]); // applied is derived from key

  const cursor = cursors[cursors.length - 1];
  const { args, error: filterError } = runFilterToArgs(current!.id, applied, cursor);
  const q = useQuery({
    queryKey: ["ws", current!.id, "runs", args],
    queryFn: ({ signal }) => rpc<RunPage>("list_runs", args, signal),
    enabled: !filterError,
    placeholderData: keepPreviousData,
    refetchInterval: false,
  });
  const rows = useMemo(() => q.data?.runs ?? [], [q.data]);
  const table = useReactTable({ data: rows, columns, getCoreRowModel: getCoreRowModel(), getRowId: (r) => r.id });

  const set = (k: keyof RunFilter) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });
  const gridLink = applied.job ? `/runs/grid?job=${encodeURIComponent(applied.job)}` : applied.spec ? `/runs/grid?spec=${encodeURIComponent(applied.spec)}` : null;

  return (
    <div className="page">
      <div className="page-head">
        <h2>Runs</h2>
        {gridLink ? <Link to={gridLink}>Grid view</Link> : <span className="muted small">filter by a job or spec for the grid view</span>}
      </div>
      <div className="filters">
        <select data-testid="filter-state" value={form.state} onChange={set("state")} title="state">
          <option value="">any state</option>
          {RUN_STATES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
        <input data-testid="filter-job" placeholder="job" value={form.job} onChange={set("job")} />
        <input data-testid="filter-spec" placeholder="spec" value={form.spec} onChange={set("spec")} />
        <input data-testid="filter-git-sha" placeholder="git sha" value={form.git_sha} onChange={set("git_sha")} className="narrow" />
        <input data-testid="filter-env" placeholder="env" value={form.env} onChange={set("env")} className="narrow" />
        <input data-testid="filter-label" placeholder="label k=v" value={form.label} onChange={set("label")} />
        <label className="inline">
          from <input data-testid="filter-from" type="datetime-local" value={form.from} onChange={set("from")} />
        </label>
        <label className="inline">
          to <input data-testid="filter-to" type="datetime-local" value={form.to} onChange={set("to")} />
        </label>
        {key ? (
          <button className="btn-quiet" onClick={() => setForm(filterFromSearch(new URLSearchParams()))}>
            clear
          </button>
        ) : null}
      </div>
      {filterError ? <ErrorBox error={new Error(filterError)} /> : null}
      {q.error && !q.data ? (
        <BadStateView error={q.error} />
      ) : (
        <>
          {q.error ? <ErrorBox error={q.error} /> : null}
          <table className="grid-table runs-table">
            <thead>
              {table.getHeaderGroups().map((hg) => (
                <tr key={hg.id}>
                  {hg.headers.map((h) => (
                    <th key={h.id}>{flexRender(h.column.columnDef.header, h.getContext())}</th>
                  ))}
                </tr>
              ))}
            </thead>
            <tbody className={q.isPlaceholderData ? "stale" : ""}>
              {table.getRowModel().rows.map((row) => (
                <tr key={row.id} data-testid="run-row" data-run-id={row.original.id} data-state={row.original.state}>
                  {row.getVisibleCells().map((cell) => (
                    <td key={cell.id}>{flexRender(cell.column.columnDef.cell, cell.getContext())}</td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
          {q.isPending ? <div className="loading">Loading…</div> : !rows.length ? <Empty>No runs match.</Empty> : null}
          <div className="pager">
            <button data-testid="runs-prev" disabled={cursors.length <= 1} onClick={() => setCursors(cursors.slice(0, -1))}>
              ← Newer
            </button>
            <span className="muted small">page {cursors.length}</span>
            <button data-testid="runs-next" disabled={!q.data?.next_cursor} onClick={() => q.data?.next_cursor && setCursors([...cursors, q.data.next_cursor])}>
              Older →
            </button>
          </div>
        </>
      )}
    </div>
  );
}
