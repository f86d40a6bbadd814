import { useMemo } from "react";
import { useQuery } from "@tanstack/react-query";
import { rpc } from "../../api/client";
import type { Lineage, RunDetail } from "../../api/types";
import { Empty, Gate } from "../../components/common";
import { dagreLayout, edgePath } from "../../lib/dag";
import { navigate } from "../../router";

export function LineageGraph({ lineage, testid }: { lineage: Lineage; testid?: string }) {
  const placed = useMemo(
    () =>
      dagreLayout({
        nodes: lineage.nodes.map((n) => ({ id: n.id, label: n.label, state: n.type, attempt: 0, maxAttempts: 0, kind: n.type === "dataset" ? (n.layer ?? "dataset") : "phase" })),
        edges: lineage.edges.filter((e) => lineage.nodes.some((n) => n.id === e.from) && lineage.nodes.some((n) => n.id === e.to)),
      }),
    [lineage],
  );
  if (!lineage.nodes.length) return <Empty>No lineage recorded.</Empty>;
  return (
    <div className="dag-scroll" data-testid={testid}>
      <svg width={placed.width} height={placed.height} className="dag lineage">
        <defs>
          <marker id="larrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse">
            <path d="M0,0 L10,5 L0,10 z" fill="#98a2b3" />
          </marker>
        </defs>
        {placed.edges.map((e) => (
          <path key={`${e.from}->${e.to}`} d={edgePath(e.points)} className="dag-edge" markerEnd="url(#larrow)" />
        ))}
        {placed.nodes.map((n) => {
          const isData = n.state === "dataset";
          return (
            <g
              key={n.id}
              transform={`translate(${n.x - n.width / 2},${n.y - n.height / 2})`}
              className={`lin-node ${isData ? `lin-dataset layer-${n.kind}` : "lin-phase"}`}
              data-node-type={n.state}
              onClick={() => isData && navigate(`/datasets/${encodeURIComponent(n.label)}`)}
            >
              <title>{n.label}</title>
              <rect width={n.width} height={n.height} rx={isData ? 14 : 3} />
              <text x={10} y={16} className="dag-label">{n.label.length > 24 ? n.label.slice(0, 23) + "…" : n.label}</text>
              <text x={10} y={30} className="dag-sub">{isData ? n.kind : "phase"}</text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}

export function LineageTab({ run }: { run: RunDetail }) {
  const q = useQuery({ queryKey: ["run", run.id, "lineage"], queryFn: ({ signal }) => rpc<Lineage>("get_run_lineage", { run_id: run.id }, signal) });
  return <Gate q={q}>{() => <LineageGraph lineage={q.data!} testid="run-lineage" />}</Gate>;
}
