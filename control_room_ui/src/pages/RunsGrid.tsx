import { useMemo, useRef } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useVirtualizer } from "@tanstack/react-virtual";
import { rpc } from "../api/client";
import type { RunGrid } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { Empty, Gate, StateBadge } from "../components/common";
import { formatTime, shortId, shortSha } from "../lib/format";
import { shapeGrid } from "../lib/grid";
import { Link, navigate, setSearch, useLocation } from "../router";

const ROW_H = 22;
const CELL_W = 22;

export function RunsGridPage() {
  const { current } = useWorkspace();
  const { search } = useLocation();
  const job = search.get("job") ?? "";
  const spec = search.get("spec") ?? "";
  const limit = Math.min(Math.max(Number(search.get("limit") ?? 25) || 25, 1), 100);
  const args: Record<string, unknown> = { workspace_id: current!.id, limit };
  if (job) args.job_slug = job;
  if (spec) args.spec_slug = spec;
  const q = useQuery({
    queryKey: ["ws", current!.id, "grid", job, spec, limit],
    queryFn: ({ signal }) => rpc<RunGrid>("get_run_grid", args, signal),
    placeholderData: keepPreviousData,
  });
  const shaped = useMemo(() => (q.data ? shapeGrid(q.data) : null), [q.data]);
  const scroller = useRef<HTMLDivElement>(null);
  const virt = useVirtualizer({ count: shaped?.rows.length ?? 0, getScrollElement: () => scroller.current, estimateSize: () => ROW_H, overscan: 20 });

  return (
    <div className="page">
      <div className="page-head">
        <h2>Grid {job ? `of job ${job}` : spec ? `of spec ${spec}` : "(all runs)"}</h2>
        <Link to={job ? `/runs?job=${encodeURIComponent(job)}` : spec ? `/runs?spec=${encodeURIComponent(spec)}` : "/runs"}>List view</Link>
        <label className="inline">
          runs
          <select value={limit} onChange={(e) => setSearch(new URLSearchParams({ ...(job ? { job } : {}), ...(spec ? { spec } : {}), limit: e.target.value }))}>
            {[10, 25, 50, 100].map((n) => (
              <option key={n}>{n}</option>
            ))}
          </select>
        </label>
      </div>
      <Gate q={q}>
        {() =>
          !shaped || !shaped.columns.length ? (
            <Empty>No runs{job ? ` of job ${job}` : ""}.</Empty>
          ) : (
            <div className="rungrid">
              <div className="rungrid-head" style={{ paddingLeft: 220 }}>
                {shaped.columns.map((r) => (
                  <Link key={r.id} to={`/runs/${r.id}`} className={`rungrid-col st-${r.state}`} style={{ width: CELL_W }} title={`${shortId(r.id)} ${r.state}\n${formatTime(r.created_at)}\n${shortSha(r.git_sha)}`}>
                    <span className="colbar" />
                  </Link>
                ))}
              </div>
              <div className="rungrid-body" ref={scroller} style={{ height: Math.min(shaped.rows.length * ROW_H + 4, 640) }}>
                <div style={{ height: virt.getTotalSize(), position: "relative" }}>
                  {virt.getVirtualItems().map((v) => {
                    const row = shaped.rows[v.index];
                    return (
                      <div key={row.phase} className="rungrid-row" style={{ position: "absolute", top: v.start, height: ROW_H, left: 0, right: 0 }}>
                        <div className="rungrid-name" title={row.phase}>
                          {row.phase}
                        </div>
                        {row.cells.map(({ runId, cell }) => (
                          <button
                            key={runId}
                            className={`rungrid-cell st-${cell?.state ?? "none"}`}
                            data-testid="grid-cell"
                            data-run-id={runId}
                            data-phase={row.phase}
                            data-state={cell?.state ?? "none"}
                            title={cell ? `${row.phase}: ${cell.state} (attempt ${cell.attempt})` : `${row.phase}: not in this run`}
                            onClick={() => navigate(`/runs/${runId}?phase=${encodeURIComponent(row.phase)}`)}
                            style={{ width: CELL_W - 4 }}
                          />
                        ))}
                      </div>
                    );
                  })}
                </div>
              </div>
              <div className="legend">
                {["succeeded", "running", "queued", "waiting", "failed", "cancelled", "skipped"].map((s) => (
                  <StateBadge key={s} state={s} />
                ))}
              </div>
            </div>
          )
        }
      </Gate>
    </div>
  );
}
