// The SQL outputs of a run: per phase, the artifacts the sql (and trino) kind registers:
// query.sql, result_manifest.json, preview.json (executor/kinds/sql record_result). The
// latest attempt's files win.
import type { ArtifactLink } from "../api/types";

export interface SqlOutputFiles {
  phase: string;
  query?: ArtifactLink;
  manifest?: ArtifactLink;
  preview?: ArtifactLink;
}

const FILES: Record<string, keyof Omit<SqlOutputFiles, "phase">> = {
  "query.sql": "query",
  "result_manifest.json": "manifest",
  "preview.json": "preview",
};

function baseName(name: string): string {
  return name.split("/").pop() ?? name;
}

export function sqlOutputs(links: ArtifactLink[]): SqlOutputFiles[] {
  const byPhase = new Map<string, SqlOutputFiles>();
  for (const a of links) {
    const slot = FILES[baseName(a.name)];
    if (!slot || !a.phase || a.role !== "output") continue;
    const entry = byPhase.get(a.phase) ?? { phase: a.phase };
    const had = entry[slot];
    if (!had || (a.attempt ?? 0) >= (had.attempt ?? 0)) entry[slot] = a;
    byPhase.set(a.phase, entry);
  }
  return [...byPhase.values()].filter((o) => o.query).sort((a, b) => a.phase.localeCompare(b.phase));
}
