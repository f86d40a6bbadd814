import { useMemo, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { getBlob, getJson, rpc } from "../../api/client";
import type { ArtifactLink, ArtifactPage, ArtifactPreview, RunDetail } from "../../api/types";
import { Empty, ErrorBox, Gate, Json, Loading } from "../../components/common";
import { cellText, formatBytes, shortDigest, shortId } from "../../lib/format";
import { sqlOutputs } from "../../lib/sqlOutputs";
import { Link } from "../../router";

export function artifactPath(ws: string, digest: string): string {
  // digests are `blake3:<hex>` and ids UUIDs: nothing to escape (the gateway expects the colon)
  return `/artifacts/v1/${ws}/${digest}`;
}

export function useArtifacts(run: RunDetail) {
  return useQuery({
    queryKey: ["run", run.id, "artifacts"],
    queryFn: async ({ signal }) => {
      const all: ArtifactLink[] = [];
      let after = 0;
      for (let i = 0; i < 20; i++) {
        const page = await rpc<ArtifactPage>("list_artifacts", { run_id: run.id, limit: 1000, after }, signal);
        all.push(...page.artifacts);
        if (page.artifacts.length < 1000) break;
        after = page.next_after;
      }
      return all;
    },
  });
}

export function usePreview(ws: string, digest: string | null, rows = 50) {
  return useQuery({
    queryKey: ["artifact", ws, digest, "preview", rows],
    queryFn: ({ signal }) => getJson<ArtifactPreview>(`${artifactPath(ws, digest!)}/preview?rows=${rows}`, signal),
    enabled: !!digest,
    staleTime: Infinity, // content-addressed: never changes
  });
}

export function PreviewTable({ columns, rows }: { columns: string[]; rows: unknown[][] }) {
  return (
    <div className="preview-table-wrap">
      <table className="grid-table preview-table" data-testid="sql-preview">
        <thead>
          <tr>
            {columns.map((c) => (
              <th key={c}>{c}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i}>
              {r.map((v, j) => (
                <td key={j} className={v === null ? "null" : typeof v === "number" ? "num" : ""}>
                  {cellText(v)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function PreviewBody({ p }: { p: ArtifactPreview }) {
  return (
    <>
      <div className="muted small">
        {p.format} · {formatBytes(p.size)}
        {p.truncated ? " · truncated" : ""}
      </div>
      {p.columns && p.rows ? <PreviewTable columns={p.columns} rows={p.rows} /> : null}
      {p.text !== undefined && p.text !== null ? <pre className="preview-text">{p.text}</pre> : null}
      {p.format === "binary" ? <Empty>Binary content: download it to look inside.</Empty> : null}
    </>
  );
}

async function download(ws: string, a: ArtifactLink, setError: (e: unknown) => void) {
  try {
    const blob = await getBlob(artifactPath(ws, a.digest));
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = a.name.split("/").pop() || "artifact";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (e) {
    setError(e);
  }
}

function SharedWith({ ws, a, runId }: { ws: string; a: ArtifactLink; runId: string }) {
  const q = useQuery({
    queryKey: ["artifact", ws, a.digest, "links"],
    queryFn: ({ signal }) => rpc<ArtifactPage>("list_artifacts", { workspace_id: ws, digest: a.digest, limit: 50 }, signal),
    staleTime: 60_000,
  });
  if (!q.data) return <span className="muted">…</span>;
  const runs = [...new Set(q.data.artifacts.map((l) => l.run_id))].filter((r) => r !== runId);
  if (!runs.length) return <span className="muted">this run only</span>;
  return (
    <span>
      {runs.slice(0, 8).map((r) => (
        <Link key={r} to={`/runs/${r}`} className="mono">
          {shortId(r)}{" "}
        </Link>
      ))}
      {runs.length > 8 ? `+${runs.length - 8}` : ""}
    </span>
  );
}

export function ArtifactsTab({ run }: { run: RunDetail }) {
  const q = useArtifacts(run);
  const ws = run.workspace_id;
  const [open, setOpen] = useState<ArtifactLink | null>(null);
  const [shared, setShared] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const preview = usePreview(ws, open?.digest ?? null);
  return (
    <Gate q={q}>
      {() =>
        !q.data?.length ? (
          <Empty>This run has no artifacts.</Empty>
        ) : (
          <div className="artifacts">
            {error ? <ErrorBox error={error} /> : null}
            <table className="grid-table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Phase</th>
                  <th>Role</th>
                  <th>Type</th>
                  <th>Size</th>
                  <th>Digest</th>
                  <th>Location</th>
                  <th>Shared with</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {q.data.map((a) => (
                  <tr key={a.id} data-testid="artifact-row" data-digest={a.digest} data-name={a.name} className={open?.id === a.id ? "selected" : ""}>
                    <td>{a.name}</td>
                    <td>{a.phase ?? "–"}{a.attempt ? ` #${a.attempt}` : ""}</td>
                    <td>{a.role}</td>
                    <td className="small">{a.media_type}</td>
                    <td className="num">{formatBytes(a.size_bytes)}</td>
                    <td className="mono small" title={a.digest}>{shortDigest(a.digest)}</td>
                    <td className="small clip" title={a.uri}>{a.uri}</td>
                    <td className="small">
                      {shared === a.digest ? <SharedWith ws={ws} a={a} runId={run.id} /> : <button className="link-btn" onClick={() => setShared(a.digest)}>which runs?</button>}
                    </td>
                    <td className="nowrap">
                      <button data-testid="artifact-preview" className="btn-small" onClick={() => setOpen(a)}>
                        Preview
                      </button>{" "}
                      <a
                        data-testid="artifact-download"
                        className="btn-small"
                        href={artifactPath(ws, a.digest)}
                        onClick={(e) => {
                          e.preventDefault();
                          download(ws, a, setError);
                        }}
                      >
                        Download
                      </a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            {open ? (
              <div className="panel preview-panel" data-testid="artifact-preview-panel">
                <header className="panel-head">
                  <h3>
                    {open.name} <span className="mono small muted">{shortDigest(open.digest)}</span>
                  </h3>
                  <button className="btn-quiet" onClick={() => setOpen(null)}>×</button>
                </header>
                <div className="panel-body">
                  {preview.error ? <ErrorBox error={preview.error} /> : preview.data ? <PreviewBody p={preview.data} /> : <Loading />}
                </div>
              </div>
            ) : null}
          </div>
        )
      }
    </Gate>
  );
}

function useArtifactJson(ws: string, digest: string | undefined) {
  return useQuery({
    queryKey: ["artifact", ws, digest, "json"],
    enabled: !!digest,
    staleTime: Infinity,
    queryFn: async ({ signal }) => {
      const p = await getJson<ArtifactPreview>(`${artifactPath(ws, digest!)}/preview?rows=200`, signal);
      if (p.text !== undefined && !p.truncated) {
        try {
          return JSON.parse(p.text) as unknown;
        } catch {
          // fall through to the full content
        }
      }
      const blob = await getBlob(artifactPath(ws, digest!));
      return JSON.parse(await blob.text()) as unknown;
    },
  });
}

function useArtifactText(ws: string, digest: string | undefined) {
  return useQuery({
    queryKey: ["artifact", ws, digest, "text"],
    enabled: !!digest,
    staleTime: Infinity,
    queryFn: async ({ signal }) => {
      const p = await getJson<ArtifactPreview>(`${artifactPath(ws, digest!)}/preview`, signal);
      return { text: p.text ?? "", truncated: p.truncated };
    },
  });
}

function SqlOutput({ ws, out }: { ws: string; out: ReturnType<typeof sqlOutputs>[number] }) {
  const query = useArtifactText(ws, out.query?.digest);
  const manifest = useArtifactJson(ws, out.manifest?.digest);
  const preview = useArtifactJson(ws, out.preview?.digest);
  const m = manifest.data as { result?: { rows?: number; schema?: { name: string; type: string }[] }; table?: { name?: string; digest?: string; rows?: number; mode?: string } } | undefined;
  const pv = preview.data as { columns?: string[]; rows?: unknown[][] } | undefined;
  return (
    <section className="panel sql-output" data-testid="sql-output" data-phase={out.phase}>
      <header className="panel-head">
        <h3>{out.phase}</h3>
        {m?.table ? (
          <span className="muted small">
            → {m.table.name} ({m.table.mode}) · {m.result?.rows ?? "?"} rows · <span className="mono">{shortDigest(m.table.digest)}</span>
          </span>
        ) : null}
      </header>
      <div className="panel-body sql-body">
        <div>
          <h4>Query</h4>
          <pre className="sql" data-testid="sql-query">
            {query.data ? query.data.text + (query.data.truncated ? "\n-- … (cut)" : "") : query.error ? "" : "…"}
          </pre>
          {query.error ? <ErrorBox error={query.error} /> : null}
          {m?.result?.schema ? (
            <>
              <h4>Result schema</h4>
              <table className="grid-table small">
                <tbody>
                  {m.result.schema.map((c) => (
                    <tr key={c.name}>
                      <td>{c.name}</td>
                      <td className="mono">{c.type}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </>
          ) : null}
          {manifest.data ? (
            <details>
              <summary>result_manifest.json</summary>
              <Json value={manifest.data} />
            </details>
          ) : null}
        </div>
        <div>
          <h4>Preview</h4>
          {pv?.columns ? <PreviewTable columns={pv.columns} rows={pv.rows ?? []} /> : preview.error ? <ErrorBox error={preview.error} /> : out.preview ? <Loading /> : <Empty>No preview.</Empty>}
        </div>
      </div>
    </section>
  );
}

export function SqlTab({ run }: { run: RunDetail }) {
  const q = useArtifacts(run);
  const outs = useMemo(() => sqlOutputs(q.data ?? []), [q.data]);
  return (
    <Gate q={q}>
      {() => (!outs.length ? <Empty>No SQL outputs in this run (the sql and trino kinds write query.sql, result_manifest.json and preview.json).</Empty> : <>{outs.map((o) => <SqlOutput key={o.phase} ws={run.workspace_id} out={o} />)}</>)}
    </Gate>
  );
}
