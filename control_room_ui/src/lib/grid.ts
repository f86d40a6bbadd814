// The runs × phases grid (Airflow's): runs as columns, oldest left, newest right; one row per
// phase name in the order the server gives; a run without that phase gets an empty cell.
import type { GridCell, RunGrid } from "../api/types";

export interface GridRow {
  phase: string;
  cells: { runId: string; cell: GridCell | null }[];
}

export interface ShapedGrid {
  columns: RunGrid["runs"];
  rows: GridRow[];
}

export function shapeGrid(grid: RunGrid): ShapedGrid {
  const columns = [...grid.runs].sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.id.localeCompare(b.id)));
  const rows = grid.phase_names.map((phase) => ({
    phase,
    cells: columns.map((run) => ({ runId: run.id, cell: run.phases[phase] ?? null })),
  }));
  return { columns, rows };
}

/** Counts of cell states per run column (the bar above each column). */
export function columnSummary(grid: ShapedGrid): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const run of grid.columns) out[run.id] = {};
  for (const row of grid.rows) {
    for (const c of row.cells) {
      if (!c.cell) continue;
      const counts = out[c.runId];
      counts[c.cell.state] = (counts[c.cell.state] ?? 0) + 1;
    }
  }
  return out;
}
