import { useMemo, useState } from "react";
import { useMutation, useQueries, useQuery, useQueryClient } from "@tanstack/react-query";
import { rpc } from "../api/client";
import type { Dataset, DatasetDetail, EventPage, Lineage } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { BadStateView, Empty, ErrorBox, Field, Gate, Json, Loading, Section, StateBadge } from "../components/common";
import { formatCount, formatRelative, formatTime, shortDigest, shortId } from "../lib/format";
import { can } from "../lib/roles";
import { diffSchemas, columnsOf } from "../lib/schemaDiff";
import { Link } from "../router";
import { LineageGraph } from "./run/Lineage";

const LAYERS = ["raw", "bronze", "silver", "gold", "other"];

function useDatasets(ws: string) {
  return useQuery({ queryKey: ["ws", ws, "datasets"], queryFn: ({ signal }) => rpc<Dataset[]>("list_datasets", { workspace_id: ws, limit: 1000 }, signal) });
}

export function DatasetsPage() {
  const { current } = useWorkspace();
  const q = useDatasets(current!.id);
  const [prefix, setPrefix] = useState("");
  const shown = (q.data ?? []).filter((d) => d.name.toLowerCase().includes(prefix.toLowerCase()));
  return (
    <div className="page">
      <div className="page-head">
        <h2>Datasets</h2>
        <input placeholder="name contains…" value={prefix} onChange={(e) => setPrefix(e.target.value)} />
      </div>
      <Gate q={q}>
        {() =>
          !shown.length ? (
            <Empty>No datasets{prefix ? " match" : " in the catalog yet"}.</Empty>
          ) : (
            <div className="layers">
              {LAYERS.filter((l) => shown.some((d) => d.layer === l)).map((layer) => (
                <Section key={layer} title={<span className={`layer layer-${layer}`}>{layer}</span>}>
                  <table className="grid-table">
                    <thead>
                      <tr>
                        <th>Name</th>
                        <th>Schema</th>
                        <th>Rows</th>
                        <th>Last written</th>
                        <th>Data time</th>
                        <th>Owner</th>
                      </tr>
                    </thead>
                    <tbody>
                      {shown
                        .filter((d) => d.layer === layer)
                        .map((d) => (
                          <tr key={d.id} data-testid="dataset-row" data-name={d.name} data-layer={d.layer}>
                            <td>
                              <Link to={`/datasets/${encodeURIComponent(d.name)}`}>{d.name}</Link>
                            </td>
                            <td>
                              v{d.schema_version} {d.schema_state !== "active" ? <StateBadge state={d.schema_state} /> : null}
                            </td>
                            <td className="num">{formatCount(d.last_rows)}</td>
                            <td title={formatTime(d.last_written_at)}>{formatRelative(d.last_written_at)}</td>
                            <td>{formatTime(d.data_time)}</td>
                            <td>{d.owner ?? "–"}</td>
                          </tr>
                        ))}
                    </tbody>
                  </table>
                </Section>
              ))}
            </div>
          )
        }
      </Gate>
    </div>
  );
}

function SchemaDiff({ detail }: { detail: DatasetDetail }) {
  const versions = detail.versions;
  const [to, setTo] = useState(versions[0]?.version ?? 0);
  const [from, setFrom] = useState(versions[1]?.version ?? versions[0]?.version ?? 0);
  const a = versions.find((v) => v.version === from);
  const b = versions.find((v) => v.version === to);
  const diff = useMemo(() => diffSchemas(a?.schema, b?.schema), [a, b]);
  if (!versions.length) return null;
  return (
    <Section
      title="Schema diff"
      testid="schema-diff"
      actions={
        <>
          <select value={from} onChange={(e) => setFrom(Number(e.target.value))}>
            {versions.map((v) => (
              <option key={v.version} value={v.version}>v{v.version}</option>
            ))}
          </select>
          →
          <select value={to} onChange={(e) => setTo(Number(e.target.value))}>
            {versions.map((v) => (
              <option key={v.version} value={v.version}>v{v.version}</option>
            ))}
          </select>
        </>
      }
    >
      <table className="grid-table small">
        <tbody>
          {diff.map((d) => (
            <tr key={d.column} className={`diff-${d.change}`} data-change={d.change}>
              <td>{d.change === "added" ? "+" : d.change === "removed" ? "−" : d.change === "changed" ? "~" : ""}</td>
              <td>{d.column}</td>
              <td className="mono">{d.change === "removed" ? d.from.type : d.to.type}</td>
              <td>{d.change === "changed" ? d.what.join("; ") : d.change === "same" ? "" : d.change}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </Section>
  );
}

function Unblock({ detail }: { detail: DatasetDetail }) {
  const { role, current } = useWorkspace();
  const client = useQueryClient();
  const [note, setNote] = useState("");
  const m = useMutation({
    mutationFn: (resolution: "accept" | "reject") => rpc<Dataset>("unblock_dataset", { workspace_id: current!.id, name: detail.name, resolution, note: note || null }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["ws", current!.id, "dataset", detail.name] }),
  });
  const change = detail.blocked_change as Record<string, unknown> | null;
  return (
    <div className="blocked" data-testid="dataset-blocked">
      <strong>BLOCKED</strong> since {formatTime(detail.blocked_at)}: a breaking schema change waits for a decision. Writes of the new schema are refused until an admin of this
      workspace accepts or rejects it (<code>control-room datasets unblock {detail.name} --accept|--reject</code>).
      {change ? <Json value={change} /> : null}
      {can(role, "unblock") ? (
        <div className="actions">
          <input placeholder="note (why)" value={note} onChange={(e) => setNote(e.target.value)} />
          <button onClick={() => m.mutate("accept")} disabled={m.isPending}>Accept the change</button>
          <button onClick={() => m.mutate("reject")} disabled={m.isPending}>Reject</button>
        </div>
      ) : (
        <div className="muted">Your role ({role}) cannot unblock it: ask an admin.</div>
      )}
      {m.error ? <ErrorBox error={m.error} testid="action-error" /> : null}
    </div>
  );
}

function Quality({ runIds }: { runIds: string[] }) {
  const qs = useQueries({
    queries: runIds.slice(0, 10).map((id) => ({
      queryKey: ["run", id, "events", "quality"],
      queryFn: ({ signal }: { signal: AbortSignal }) => rpc<EventPage>("list_events", { run_id: id, types: ["QUALITY_CHECK"], limit: 200 }, signal),
      staleTime: 60_000,
    })),
  });
  const rows = qs.flatMap((q) => q.data?.events ?? []).sort((a, b) => (a.ts < b.ts ? 1 : -1));
  const failed = qs.find((q) => q.error)?.error;
  return (
    <Section title="Quality checks">
      {failed ? <ErrorBox error={failed} /> : null}
      {!rows.length ? (
        <span className="muted">no quality checks recorded by the runs that wrote it</span>
      ) : (
        <table className="grid-table small">
          <tbody>
            {rows.map((e) => {
              const p = e.payload as Record<string, unknown>;
              return (
                <tr key={`${e.run_id}-${e.seq}`} data-testid="quality-row" data-status={String(p.status ?? e.level)}>
                  <td>{formatTime(e.ts)}</td>
                  <td>{String(p.check ?? e.phase ?? "")}</td>
                  <td>
                    <StateBadge state={String(p.status ?? e.level)} />
                  </td>
                  <td className="num">{p.failed_rows !== undefined ? `${String(p.failed_rows)} failing` : ""}</td>
                  <td>
                    <Link to={`/runs/${e.run_id}?tab=events`} className="mono">{shortId(e.run_id)}</Link>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </Section>
  );
}

export function datasetLineage(detail: Dataset, all: Dataset[]): Lineage {
  const nodes = new Map<string, Lineage["nodes"][number]>();
  const edges: Lineage["edges"] = [];
  const layerOf = new Map(all.map((d) => [d.name, d.layer]));
  const add = (name: string) => {
    if (!nodes.has(name)) nodes.set(name, { id: name, type: "dataset", label: name, layer: layerOf.get(name) ?? (name.startsWith("source:") ? "raw" : "other") });
  };
  add(detail.name);
  for (const up of detail.upstream ?? []) {
    add(up);
    edges.push({ from: up, to: detail.name });
  }
  for (const d of all) {
    if (d.name !== detail.name && (d.upstream ?? []).includes(detail.name)) {
      add(d.name);
      edges.push({ from: detail.name, to: d.name });
    }
  }
  return { nodes: [...nodes.values()], edges };
}

export function DatasetDetailPage({ name }: { name: string }) {
  const { current } = useWorkspace();
  const ws = current!.id;
  const q = useQuery({ queryKey: ["ws", ws, "dataset", name], queryFn: ({ signal }) => rpc<DatasetDetail>("get_dataset", { workspace_id: ws, name }, signal) });
  const all = useDatasets(ws);
  const [version, setVersion] = useState<number | null>(null);
  if (q.error && !q.data) return <BadStateView error={q.error} what="Dataset" />;
  if (!q.data) return <Loading what="Loading dataset" />;
  const d = q.data;
  const runIds = [...new Set([d.last_run_id, d.data_time_run_id, ...d.versions.map((v) => v.run_id)].filter((x): x is string => !!x))];
  const shown = d.versions.find((v) => v.version === version) ?? d.versions[0];
  return (
    <div className="page">
      <div className="page-head">
        <h2>{d.name}</h2>
        <span className={`layer layer-${d.layer}`}>{d.layer}</span>
        <StateBadge state={d.schema_state === "blocked" ? "BLOCKED" : d.schema_state} testid="dataset-schema-state" />
      </div>
      {d.schema_state === "blocked" ? <Unblock detail={d} /> : null}
      <div className="summary">
        <Field label="location"><span className="mono small">{d.location}</span></Field>
        <Field label="format">{d.format}</Field>
        <Field label="owner">{d.owner ?? "–"}</Field>
        <Field label="rows">{formatCount(d.last_rows)}</Field>
        <Field label="table version">{d.last_table_version ?? "–"}</Field>
        <Field label="digest"><span className="mono">{shortDigest(d.last_digest)}</span></Field>
        <Field label="last written">{formatTime(d.last_written_at)}</Field>
        <Field label="data time">{formatTime(d.data_time)}</Field>
      </div>
      <div className="two-col">
        <div>
          <Section title="Schema versions">
            <table className="grid-table small">
              <thead>
                <tr>
                  <th>Version</th>
                  <th>Change</th>
                  <th>Applied</th>
                  <th>Columns</th>
                  <th>Run</th>
                  <th>Recorded</th>
                </tr>
              </thead>
              <tbody>
                {d.versions.map((v) => (
                  <tr key={v.version} data-testid="schema-version" data-version={v.version} className={shown?.version === v.version ? "selected" : ""} onClick={() => setVersion(v.version)}>
                    <td>v{v.version}</td>
                    <td>{v.change}</td>
                    <td>{v.applied ? "yes" : "no"}</td>
                    <td>{columnsOf(v.schema).length}</td>
                    <td>{v.run_id ? <Link to={`/runs/${v.run_id}`} className="mono">{shortId(v.run_id)}</Link> : "–"}</td>
                    <td>{formatTime(v.recorded_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            {shown ? (
              <table className="grid-table small">
                <thead>
                  <tr>
                    <th colSpan={3}>Columns of v{shown.version}</th>
                  </tr>
                </thead>
                <tbody>
                  {columnsOf(shown.schema).map((c) => (
                    <tr key={c.name}>
                      <td>{c.name}{c.key ? ` 🔑${c.key}` : ""}</td>
                      <td className="mono">{c.type}</td>
                      <td>{c.nullable ? "nullable" : "required"}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : null}
          </Section>
          <SchemaDiff detail={d} />
        </div>
        <div>
          <Section title="Lineage">
            <div data-testid="dataset-lineage">
              {all.data ? <LineageGraph lineage={datasetLineage(d, all.data)} /> : <Loading />}
            </div>
          </Section>
          <Section title="Runs that wrote it" testid="dataset-runs">
            {!runIds.length ? (
              <span className="muted">none recorded</span>
            ) : (
              <ul className="plain">
                {runIds.map((r) => (
                  <li key={r}>
                    <Link to={`/runs/${r}`} className="mono">{shortId(r)}</Link>
                    {r === d.last_run_id ? <span className="muted small"> last write</span> : null}
                  </li>
                ))}
              </ul>
            )}
          </Section>
          <Quality runIds={runIds} />
        </div>
      </div>
    </div>
  );
}
