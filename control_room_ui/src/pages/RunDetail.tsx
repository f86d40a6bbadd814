import { useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { rpc } from "../api/client";
import type { Phase, RunCreated, RunDetail } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { BadStateView, ErrorBox, Field, Loading, StateBadge, Tabs } from "../components/common";
import { durationBetween, formatDuration, formatTime, shortId, shortSha } from "../lib/format";
import { can, runActions } from "../lib/roles";
import { Link, navigate, setSearch, useLocation } from "../router";
import { DagTab } from "./run/Dag";
import { GanttTab } from "./run/Gantt";
import { EventsTab } from "./run/Events";
import { ArtifactsTab, SqlTab } from "./run/Artifacts";
import { LineageTab } from "./run/Lineage";
import { ManifestsTab } from "./run/Manifests";

type TabId = "graph" | "gantt" | "events" | "artifacts" | "sql" | "lineage" | "manifests";
const TABS: { id: TabId; label: string }[] = [
  { id: "graph", label: "Graph" },
  { id: "gantt", label: "Gantt" },
  { id: "events", label: "Event log" },
  { id: "artifacts", label: "Artifacts" },
  { id: "sql", label: "SQL outputs" },
  { id: "lineage", label: "Lineage" },
  { id: "manifests", label: "Manifests" },
];

export function useRun(runId: string) {
  return useQuery({
    queryKey: ["run", runId, "detail"],
    queryFn: ({ signal }) => rpc<RunDetail>("get_run", { run_id: runId }, signal),
  });
}

function errorText(error: unknown): string {
  if (!error) return "";
  if (typeof error === "string") return error;
  if (typeof error === "object") {
    const e = error as Record<string, unknown>;
    const msg = e.message ?? e.error;
    if (typeof msg === "string") return msg;
    if (msg && typeof msg === "object" && typeof (msg as Record<string, unknown>).message === "string") return (msg as Record<string, string>).message;
  }
  return JSON.stringify(error);
}

export function PhaseErrors({ phases }: { phases: Phase[] }) {
  const failed = phases.filter((p) => p.error && (p.state === "failed" || p.state === "cancelled" || p.state === "queued" || p.state === "running"));
  if (!failed.length) return null;
  return (
    <div className="phase-errors">
      {failed.slice(0, 20).map((p) => {
        const e = p.error as Record<string, unknown>;
        return (
          <div key={p.id} className="phase-error" data-testid="phase-error" data-phase={p.name}>
            <strong>{p.name}</strong> <span className="muted">attempt {p.attempt}/{p.max_attempts}{e.type ? ` · ${String(e.type)}` : ""}</span>
            <pre>{errorText(e)}</pre>
          </div>
        );
      })}
      {failed.length > 20 ? <div className="muted">… and {failed.length - 20} more failed phases</div> : null}
    </div>
  );
}

function Actions({ run }: { run: RunDetail }) {
  const { role } = useWorkspace();
  const client = useQueryClient();
  const [error, setError] = useState<unknown>(null);
  const applies = runActions(run.state);
  const done = (r: { id: string }) => {
    client.invalidateQueries({ queryKey: ["run", run.id] });
    if (r.id !== run.id) navigate(`/runs/${r.id}`);
  };
  const act = useMutation({
    mutationFn: async (what: "cancel" | "retry" | "repair") => {
      setError(null);
      if (what === "cancel") return rpc<{ id: string }>("cancel_run", { run_id: run.id, reason: "cancelled from the web UI" });
      if (what === "retry") return rpc<RunCreated>("retry_run", { run_id: run.id });
      return rpc<RunCreated>("repair_run", { run_id: run.id });
    },
    onSuccess: done,
    onError: setError,
  });
  const canAct = (a: "cancel" | "retry" | "repair") => can(role, a) && applies[a];
  return (
    <div className="actions">
      {canAct("cancel") ? (
        <button data-testid="run-cancel" className="btn-danger" disabled={act.isPending} onClick={() => act.mutate("cancel")}>
          Cancel
        </button>
      ) : null}
      {canAct("retry") ? (
        <button data-testid="run-retry" disabled={act.isPending} onClick={() => act.mutate("retry")} title="a child run that keeps the succeeded phases">
          Retry
        </button>
      ) : null}
      {canAct("repair") ? (
        <button data-testid="run-repair" disabled={act.isPending} onClick={() => act.mutate("repair")} title="a child run that reruns what failed and everything downstream">
          Repair
        </button>
      ) : null}
      {error ? <ErrorBox error={error} testid="action-error" /> : null}
    </div>
  );
}

export function RunDetailPage({ runId }: { runId: string }) {
  const q = useRun(runId);
  const { search } = useLocation();
  const tab = (TABS.find((t) => t.id === search.get("tab"))?.id ?? "graph") as TabId;
  const setTab = (t: TabId) => {
    const s = new URLSearchParams(search);
    s.set("tab", t);
    setSearch(s);
  };
  if (q.error && !q.data) return <BadStateView error={q.error} what="Run" />;
  if (!q.data) return <Loading what="Loading run" />;
  const run = q.data;
  const counts: Record<string, number> = {};
  for (const p of run.phases) counts[p.state] = (counts[p.state] ?? 0) + 1;
  return (
    <div className="page run-page">
      <div className="page-head">
        <h2>
          Run <span className="mono">{shortId(run.id)}</span>
        </h2>
        <StateBadge state={run.state} testid="run-state" />
        <span className="muted">
          {run.job ? (
            <>
              job <Link to={`/jobs/${encodeURIComponent(run.job.slug)}`}>{run.job.slug}</Link> v{run.job.version}
            </>
          ) : (
            <>spec {run.spec_slug}</>
          )}
        </span>
        <div className="spacer" />
        <Actions run={run} />
      </div>
      <div className="summary">
        <Field label="id"><span className="mono small">{run.id}</span></Field>
        <Field label="git"><span className="mono">{shortSha(run.git_sha)}</span></Field>
        <Field label="env">{run.env}</Field>
        <Field label="created">{formatTime(run.created_at)}</Field>
        <Field label="started">{formatTime(run.started_at)}</Field>
        <Field label="finished">{formatTime(run.finished_at)}</Field>
        <Field label="duration">{formatDuration(durationBetween(run.started_at, run.finished_at))}</Field>
        <Field label="phases">{Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ")}</Field>
        {run.parent_run_id ? <Field label="parent"><Link to={`/runs/${run.parent_run_id}`} className="mono">{shortId(run.parent_run_id)}</Link></Field> : null}
        {run.repairs.length ? (
          <Field label="repairs">
            {run.repairs.map((r) => (
              <Link key={r.id} to={`/runs/${r.id}`} className="mono">{shortId(r.id)} ({r.state}) </Link>
            ))}
          </Field>
        ) : null}
        {Object.keys(run.labels ?? {}).length ? (
          <Field label="labels">
            {Object.entries(run.labels).map(([k, v]) => (
              <span key={k} className="label">{k}={v}</span>
            ))}
          </Field>
        ) : null}
        {run.cancel_reason ? <Field label="cancelled">{run.cancel_reason}</Field> : null}
      </div>
      {run.error && !run.phases.some((p) => p.error) ? (
        <div className="phase-error" data-testid="phase-error">
          <strong>{run.error.phase ?? "run"}</strong>
          <pre>{run.error.message ?? errorText(run.error.error)}</pre>
        </div>
      ) : null}
      <PhaseErrors phases={run.phases} />
      <Tabs tabs={TABS} current={tab} onChange={setTab} />
      <div className="tab-body">
        {tab === "graph" ? <DagTab run={run} /> : null}
        {tab === "gantt" ? <GanttTab run={run} /> : null}
        {tab === "events" ? <EventsTab run={run} /> : null}
        {tab === "artifacts" ? <ArtifactsTab run={run} /> : null}
        {tab === "sql" ? <SqlTab run={run} /> : null}
        {tab === "lineage" ? <LineageTab run={run} /> : null}
        {tab === "manifests" ? <ManifestsTab run={run} /> : null}
      </div>
    </div>
  );
}
