import { useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { rpc } from "../api/client";
import type { Alert, DeadLetterPage, Health } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { Gate, Section, StateBadge } from "../components/common";
import { HBars, Lines, StackedBars } from "../components/Charts";
import { formatDuration, formatPercent, formatRelative, formatTime, shortId } from "../lib/format";
import { Link } from "../router";

const RANGES: Record<string, [number, number]> = { "6h": [6 * 3600, 900], "24h": [86400, 3600], "7d": [7 * 86400, 6 * 3600], "31d": [31 * 86400, 86400] };

export function HealthPage() {
  const { current } = useWorkspace();
  const ws = current!.id;
  const [range, setRange] = useState("24h");
  const [span, bucket] = RANGES[range];
  const q = useQuery({
    queryKey: ["ws", ws, "health", range],
    queryFn: ({ signal }) => rpc<Health>("get_health", { workspace_id: ws, since: new Date(Date.now() - span * 1000).toISOString(), bucket_seconds: bucket }, signal),
    placeholderData: keepPreviousData,
    refetchInterval: 30_000,
  });
  const alerts = useQuery({ queryKey: ["ws", ws, "alerts"], queryFn: ({ signal }) => rpc<Alert[]>("list_alerts", { workspace_id: ws, limit: 20 }, signal) });
  const dead = useQuery({ queryKey: ["ws", ws, "deadletters"], queryFn: ({ signal }) => rpc<DeadLetterPage>("list_dead_letters", { workspace_id: ws, limit: 20 }, signal) });
  return (
    <div className="page">
      <div className="page-head">
        <h2>Health</h2>
        <div className="seg-buttons">
          {Object.keys(RANGES).map((r) => (
            <button key={r} className={r === range ? "active" : ""} onClick={() => setRange(r)}>{r}</button>
          ))}
        </div>
      </div>
      <Gate q={q}>
        {() => {
          const h = q.data!;
          const series = h.series as unknown as { bucket: string; [k: string]: unknown }[];
          return (
            <>
              <div className="kpis">
                <div className="kpi"><span className="kpi-v" data-testid="health-queue-depth">{h.queue_depth}</span><span className="kpi-l">queued phases</span></div>
                <div className="kpi"><span className="kpi-v" data-testid="health-running">{h.running}</span><span className="kpi-l">running phases</span></div>
                <div className="kpi"><span className="kpi-v" data-testid="health-lease-expiries">{h.lease_expiries_last_hour}</span><span className="kpi-l">lease expiries, last hour</span></div>
                <div className="kpi"><span className="kpi-v">{h.alerts?.open ?? 0}</span><span className="kpi-l">open alerts</span></div>
                <div className="kpi"><span className="kpi-v">{typeof h.dead_letters === "number" ? h.dead_letters : dead.data?.dead_letters.length ?? "–"}</span><span className="kpi-l">dead letters</span></div>
              </div>
              <div className="charts">
                <StackedBars name="outcomes" title="Phase outcomes" buckets={series} series={[{ key: "succeeded", label: "succeeded", cls: "c-ok" }, { key: "failed", label: "failed", cls: "c-bad" }]} />
                <Lines name="durations" title="Phase duration p50 / p95" buckets={series} seconds series={[{ key: "p50_s", label: "p50", cls: "c-p50" }, { key: "p95_s", label: "p95", cls: "c-p95" }]} />
                <StackedBars name="lease-expiries" title="Lease expiries" buckets={series} series={[{ key: "lease_expiries", label: "lease expiries", cls: "c-warn" }]} />
                <HBars name="success-by-kind" title="Success rate by kind" rows={h.by_kind.map((k) => ({ label: k.kind, value: k.success_rate, max: 1, text: `${formatPercent(k.success_rate)} · ${k.succeeded + k.failed} · p50 ${formatDuration(k.p50_s)} p95 ${formatDuration(k.p95_s)}`, bad: (k.success_rate ?? 1) < 0.9 }))} />
                <HBars name="freshness" title="Freshness vs SLO" rows={h.freshness.map((f) => ({ label: f.dataset, value: f.lag_s, max: f.slo_s ?? f.lag_s ?? 1, text: `lag ${formatDuration(f.lag_s)}${f.slo_s ? ` / SLO ${formatDuration(f.slo_s)}` : ""}`, bad: f.slo_s !== null && f.lag_s !== null && f.lag_s > f.slo_s }))} />
              </div>
              <Section title="By phase (top 50)">
                <table className="grid-table small">
                  <thead><tr><th>Phase</th><th>Kind</th><th>Succeeded</th><th>Failed</th><th>Success</th><th>p50</th><th>p95</th></tr></thead>
                  <tbody>
                    {h.by_phase.map((p) => (
                      <tr key={`${p.name}/${p.kind}`}>
                        <td>{p.name}</td><td>{p.kind}</td><td className="num">{p.succeeded}</td><td className="num">{p.failed}</td>
                        <td className={(p.success_rate ?? 1) < 0.9 ? "num bad-text" : "num"}>{formatPercent(p.success_rate)}</td>
                        <td className="num">{formatDuration(p.p50_s)}</td><td className="num">{formatDuration(p.p95_s)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </Section>
            </>
          );
        }}
      </Gate>
      <div className="two-col">
        <Section title="Recent alerts">
          {alerts.data?.length ? (
            <table className="grid-table small"><tbody>
              {alerts.data.map((a) => (
                <tr key={a.id}><td>{formatTime(a.created_at)}</td><td>{a.event}</td><td>{a.rule}</td><td><StateBadge state={a.state} /></td><td className="bad-text">{a.last_error ?? ""}</td></tr>
              ))}
            </tbody></table>
          ) : <span className="muted">{alerts.error ? alerts.error.message : "no alerts"}</span>}
        </Section>
        <Section title="Dead letters">
          {dead.data?.dead_letters.length ? (
            <table className="grid-table small"><tbody>
              {dead.data.dead_letters.map((d) => (
                <tr key={d.phase_id}><td title={formatTime(d.failed_at)}>{formatRelative(d.failed_at)}</td><td><Link to={`/runs/${d.run_id}`} className="mono">{shortId(d.run_id)}</Link></td><td>{d.phase}</td><td>{d.kind}</td><td className="clip" title={d.error.message}>{d.error.message}</td></tr>
              ))}
            </tbody></table>
          ) : <span className="muted">{dead.error ? dead.error.message : "no dead letters"}</span>}
        </Section>
      </div>
    </div>
  );
}
