import { useMemo, useState } from "react";
import type { RunDetail } from "../../api/types";
import { Field, Json, StateBadge } from "../../components/common";
import { dagInput, edgePath, layout } from "../../lib/dag";
import { durationBetween, formatDuration, formatTime } from "../../lib/format";
import { useLocation } from "../../router";

export function DagTab({ run }: { run: RunDetail }) {
  const { search } = useLocation();
  const [selected, setSelected] = useState<string | null>(search.get("phase"));
  const shape = run.phases.map((p) => `${p.name}:${p.depends_on.join(",")}`).join(";");
  // the layout depends on the graph only; states recolour without a new layout
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const placed = useMemo(() => layout(dagInput(run.phases)), [shape]);
  const byName = useMemo(() => new Map(run.phases.map((p) => [p.name, p])), [run.phases]);
  const phase = selected ? byName.get(selected) : undefined;
  return (
    <div className="dag-wrap">
      <div className="dag-scroll">
        <svg width={placed.width} height={placed.height} className="dag">
          <defs>
            <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse">
              <path d="M0,0 L10,5 L0,10 z" fill="#98a2b3" />
            </marker>
          </defs>
          {placed.edges.map((e) => (
            <path key={`${e.from}->${e.to}`} d={edgePath(e.points)} className="dag-edge" markerEnd="url(#arrow)" />
          ))}
          {placed.nodes.map((n) => {
            const p = byName.get(n.id);
            const state = p?.state ?? n.state;
            const attempt = p?.attempt ?? n.attempt;
            return (
              <g
                key={n.id}
                transform={`translate(${n.x - n.width / 2},${n.y - n.height / 2})`}
                className={`dag-node st-${state}${selected === n.id ? " selected" : ""}`}
                data-testid="dag-node"
                data-phase={n.id}
                data-state={state}
                onClick={() => setSelected(n.id)}
              >
                <title>{`${n.id}: ${state}, attempt ${attempt}/${n.maxAttempts}`}</title>
                <rect width={n.width} height={n.height} rx={4} />
                <rect width={5} height={n.height} rx={2} className="dag-stripe" />
                <text x={12} y={15} className="dag-label">
                  {n.label.length > 22 ? n.label.slice(0, 21) + "…" : n.label}
                </text>
                <text x={12} y={30} className="dag-sub">
                  {n.kind} · {state}
                  {attempt > 1 ? ` · try ${attempt}/${n.maxAttempts}` : ""}
                </text>
              </g>
            );
          })}
        </svg>
      </div>
      {phase ? (
        <aside className="side-panel">
          <header>
            <strong>{phase.name}</strong> <StateBadge state={phase.state} />
            <button className="btn-quiet" onClick={() => setSelected(null)}>×</button>
          </header>
          <Field label="kind">{phase.kind}</Field>
          <Field label="attempt">{phase.attempt} of {phase.max_attempts}</Field>
          <Field label="depends on">{phase.depends_on.join(", ") || "–"}</Field>
          <Field label="started">{formatTime(phase.started_at)}</Field>
          <Field label="finished">{formatTime(phase.finished_at)}</Field>
          <Field label="duration">{formatDuration(durationBetween(phase.started_at, phase.finished_at))}</Field>
          {phase.reused_from_phase_id ? <Field label="reused">from an earlier run</Field> : null}
          {phase.error ? (
            <>
              <h4>Error</h4>
              <Json value={phase.error} />
            </>
          ) : null}
          <h4>Params</h4>
          <Json value={phase.params} />
          {phase.output_manifest ? (
            <>
              <h4>Output manifest</h4>
              <Json value={phase.output_manifest} />
            </>
          ) : null}
        </aside>
      ) : null}
    </div>
  );
}
