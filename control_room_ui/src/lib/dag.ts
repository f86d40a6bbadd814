// The phase DAG: nodes and edges from a run's phases (depends_on), laid out with dagre for
// graphs of a readable size, and with a fast longest-path layering for big ones (1,000 phases
// lay out in a few ms instead of seconds).
import dagre from "@dagrejs/dagre";

export interface DagInputNode {
  id: string;
  label: string;
  state: string;
  attempt: number;
  maxAttempts: number;
  kind: string;
}

export interface DagInput {
  nodes: DagInputNode[];
  edges: { from: string; to: string }[];
}

export interface PlacedNode extends DagInputNode {
  x: number; // centre
  y: number;
  width: number;
  height: number;
}

export interface DagLayout {
  nodes: PlacedNode[];
  edges: { from: string; to: string; points: { x: number; y: number }[] }[];
  width: number;
  height: number;
}

export const NODE_W = 168;
export const NODE_H = 38;
export const DAGRE_MAX_NODES = 250;

interface PhaseLike {
  name: string;
  state: string;
  attempt: number;
  max_attempts: number;
  kind: string;
  depends_on: string[];
}

/** Nodes and edges from phases; dependencies on unknown phases are dropped. */
export function dagInput(phases: PhaseLike[]): DagInput {
  const names = new Set(phases.map((p) => p.name));
  return {
    nodes: phases.map((p) => ({ id: p.name, label: p.name, state: p.state, attempt: p.attempt, maxAttempts: p.max_attempts, kind: p.kind })),
    edges: phases.flatMap((p) => p.depends_on.filter((d) => names.has(d)).map((d) => ({ from: d, to: p.name }))),
  };
}

/** Rank of each node: the longest path from a source (cycles, which specs forbid, are cut). */
export function ranks(input: DagInput): Map<string, number> {
  const preds = new Map<string, string[]>();
  for (const n of input.nodes) preds.set(n.id, []);
  for (const e of input.edges) preds.get(e.to)?.push(e.from);
  const rank = new Map<string, number>();
  const visiting = new Set<string>();
  const visit = (id: string): number => {
    const known = rank.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return 0;
    visiting.add(id);
    let r = 0;
    for (const p of preds.get(id) ?? []) r = Math.max(r, visit(p) + 1);
    visiting.delete(id);
    rank.set(id, r);
    return r;
  };
  // iterative enough for deep chains: visit in input order (specs list dependencies first)
  for (const n of input.nodes) visit(n.id);
  return rank;
}

export function layeredLayout(input: DagInput, direction: "LR" | "TB" = "LR"): DagLayout {
  const rank = ranks(input);
  const layers: string[][] = [];
  for (const n of input.nodes) {
    const r = rank.get(n.id) ?? 0;
    (layers[r] ??= []).push(n.id);
  }
  const gapMain = direction === "LR" ? 60 : 40;
  const gapCross = 14;
  const pos = new Map<string, { x: number; y: number }>();
  layers.forEach((layer, r) => {
    layer.forEach((id, i) => {
      const main = r * ((direction === "LR" ? NODE_W : NODE_H) + gapMain) + (direction === "LR" ? NODE_W : NODE_H) / 2 + 20;
      const cross = i * ((direction === "LR" ? NODE_H : NODE_W) + gapCross) + (direction === "LR" ? NODE_H : NODE_W) / 2 + 20;
      pos.set(id, direction === "LR" ? { x: main, y: cross } : { x: cross, y: main });
    });
  });
  const nodes = input.nodes.map((n) => ({ ...n, ...pos.get(n.id)!, width: NODE_W, height: NODE_H }));
  const edges = input.edges.map((e) => {
    const a = pos.get(e.from)!;
    const b = pos.get(e.to)!;
    return direction === "LR"
      ? { ...e, points: [{ x: a.x + NODE_W / 2, y: a.y }, { x: b.x - NODE_W / 2, y: b.y }] }
      : { ...e, points: [{ x: a.x, y: a.y + NODE_H / 2 }, { x: b.x, y: b.y - NODE_H / 2 }] };
  });
  const width = Math.max(...nodes.map((n) => n.x + n.width / 2), 0) + 20;
  const height = Math.max(...nodes.map((n) => n.y + n.height / 2), 0) + 20;
  return { nodes, edges, width, height };
}

export function dagreLayout(input: DagInput, direction: "LR" | "TB" = "LR"): DagLayout {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: direction, nodesep: 14, ranksep: 50, marginx: 20, marginy: 20 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of input.nodes) g.setNode(n.id, { width: NODE_W, height: NODE_H });
  for (const e of input.edges) g.setEdge(e.from, e.to);
  dagre.layout(g);
  const nodes = input.nodes.map((n) => {
    const p = g.node(n.id);
    return { ...n, x: p.x, y: p.y, width: NODE_W, height: NODE_H };
  });
  const edges = input.edges.map((e) => ({ ...e, points: (g.edge(e.from, e.to)?.points ?? []) as { x: number; y: number }[] }));
  const graph = g.graph();
  return { nodes, edges, width: (graph.width ?? 0) + 0, height: (graph.height ?? 0) + 0 };
}

export function layout(input: DagInput, direction: "LR" | "TB" = "LR"): DagLayout {
  return input.nodes.length <= DAGRE_MAX_NODES ? dagreLayout(input, direction) : layeredLayout(input, direction);
}

/** An SVG path through points (straight segments, last one ends at the arrow). */
export function edgePath(points: { x: number; y: number }[]): string {
  if (!points.length) return "";
  if (points.length === 2) {
    const [a, b] = points;
    const mx = (a.x + b.x) / 2;
    return `M${a.x},${a.y} C${mx},${a.y} ${mx},${b.y} ${b.x},${b.y}`;
  }
  return points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
}
