import { useMemo } from "react";
import { useQuery } from "@tanstack/react-query";
import { rpc } from "../../api/client";
import type { RunDetail, Timeline } from "../../api/types";
import { Empty, Gate } from "../../components/common";
import { formatDuration } from "../../lib/format";
import { ganttBars, timeTicks, xOf } from "../../lib/gantt";

const ROW = 20;
const LABEL = 200;
const WIDTH = 900;

export function GanttTab({ run }: { run: RunDetail }) {
  const q = useQuery({
    queryKey: ["run", run.id, "timeline"],
    queryFn: ({ signal }) => rpc<Timeline>("get_run_timeline", { run_id: run.id }, signal),
    refetchInterval: run.state === "running" ? 5000 : false,
  });
  const model = useMemo(() => (q.data ? ganttBars(q.data) : null), [q.data]);
  return (
    <Gate q={q}>
      {() => {
        if (!model || !model.bars.length) return <Empty>No attempts yet.</Empty>;
        const ticks = timeTicks(model.t0, model.t1);
        const height = model.rows.length * ROW + 24;
        return (
          <div className="gantt-scroll">
            <svg width={LABEL + WIDTH + 20} height={height} className="gantt">
              {ticks.map((t) => (
                <g key={t} transform={`translate(${LABEL + xOf(t, model, WIDTH)},0)`}>
                  <line y1={16} y2={height} className="gantt-grid" />
                  <text y={11} className="gantt-tick" textAnchor="middle">
                    {formatDuration((t - model.t0) / 1000)}
                  </text>
                </g>
              ))}
              {model.rows.map((r, i) => (
                <text key={r.name} x={LABEL - 6} y={24 + i * ROW + 13} className="gantt-label" textAnchor="end">
                  {r.name.length > 28 ? r.name.slice(0, 27) + "…" : r.name}
                </text>
              ))}
              {model.bars.map((b) => {
                const x = LABEL + xOf(b.start, model, WIDTH);
                const w = Math.max(xOf(b.end, model, WIDTH) - xOf(b.start, model, WIDTH), 2);
                return (
                  <rect
                    key={`${b.phase}#${b.attempt}`}
                    x={x}
                    y={24 + b.row * ROW + 3}
                    width={w}
                    height={ROW - 6}
                    rx={2}
                    className={`gantt-bar out-${b.outcome}`}
                    data-testid="gantt-bar"
                    data-phase={b.phase}
                    data-attempt={b.attempt}
                  >
                    <title>{`${b.phase} attempt ${b.attempt}: ${b.outcome}, ${formatDuration((b.end - b.start) / 1000)}${b.queuedMs ? ` (claimed ${formatDuration(b.queuedMs / 1000)} before start)` : ""}`}</title>
                  </rect>
                );
              })}
            </svg>
          </div>
        );
      }}
    </Gate>
  );
}
