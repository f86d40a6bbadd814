// The difference between two schema versions of a dataset ([{name, type, nullable, key?}]).
export interface Column {
  name: string;
  type: string;
  nullable?: boolean;
  key?: number;
}

export type ColumnDiff =
  | { column: string; change: "added"; to: Column }
  | { column: string; change: "removed"; from: Column }
  | { column: string; change: "changed"; from: Column; to: Column; what: string[] }
  | { column: string; change: "same"; to: Column };

export function columnsOf(schema: unknown): Column[] {
  if (Array.isArray(schema)) return schema.filter((c): c is Column => !!c && typeof c === "object" && "name" in c);
  if (schema && typeof schema === "object") {
    const s = schema as Record<string, unknown>;
    if (Array.isArray(s.columns)) return columnsOf(s.columns);
    if (Array.isArray(s.fields)) return columnsOf(s.fields);
  }
  return [];
}

export function diffSchemas(fromSchema: unknown, toSchema: unknown): ColumnDiff[] {
  const a = columnsOf(fromSchema);
  const b = columnsOf(toSchema);
  const before = new Map(a.map((c) => [c.name, c]));
  const after = new Map(b.map((c) => [c.name, c]));
  const out: ColumnDiff[] = [];
  for (const c of b) {
    const old = before.get(c.name);
    if (!old) {
      out.push({ column: c.name, change: "added", to: c });
      continue;
    }
    const what: string[] = [];
    if (old.type !== c.type) what.push(`type ${old.type} → ${c.type}`);
    if (Boolean(old.nullable) !== Boolean(c.nullable)) what.push(c.nullable ? "now nullable" : "now required");
    if ((old.key ?? null) !== (c.key ?? null)) what.push(`key ${old.key ?? "–"} → ${c.key ?? "–"}`);
    out.push(what.length ? { column: c.name, change: "changed", from: old, to: c, what } : { column: c.name, change: "same", to: c });
  }
  for (const c of a) if (!after.has(c.name)) out.push({ column: c.name, change: "removed", from: c });
  return out;
}
