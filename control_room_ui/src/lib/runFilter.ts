// The runs page's filters: URL search params <-> form values <-> list_runs arguments.
import type { ListRunsArgs, RunState } from "../api/types";

export interface RunFilter {
  state: string;
  spec: string;
  job: string;
  git_sha: string;
  env: string;
  label: string; // "key=value[,key=value]"
  from: string; // datetime-local or ISO
  to: string;
}

export const EMPTY_RUN_FILTER: RunFilter = { state: "", spec: "", job: "", git_sha: "", env: "", label: "", from: "", to: "" };
export const RUN_FILTER_KEYS = Object.keys(EMPTY_RUN_FILTER) as (keyof RunFilter)[];
export const RUN_STATES: RunState[] = ["queued", "running", "succeeded", "failed", "cancelled"];

export function filterFromSearch(search: URLSearchParams): RunFilter {
  const f = { ...EMPTY_RUN_FILTER };
  for (const k of RUN_FILTER_KEYS) f[k] = search.get(k) ?? "";
  return f;
}

export function filterToSearch(f: RunFilter): URLSearchParams {
  const s = new URLSearchParams();
  for (const k of RUN_FILTER_KEYS) if (f[k].trim()) s.set(k, f[k].trim());
  return s;
}

/** "a=1, b=2" → {a: "1", b: "2"}; an error message for a malformed part. */
export function parseLabels(text: string): { labels: Record<string, string> | null; error: string | null } {
  const t = text.trim();
  if (!t) return { labels: null, error: null };
  const labels: Record<string, string> = {};
  for (const part of t.split(",")) {
    const p = part.trim();
    if (!p) continue;
    const eq = p.indexOf("=");
    if (eq <= 0) return { labels: null, error: `label filter "${p}" is not key=value` };
    labels[p.slice(0, eq).trim()] = p.slice(eq + 1).trim();
  }
  return { labels, error: null };
}

/** A datetime-local value ("2026-12-04T10:00") or an ISO time as an ISO timestamp. */
export function toIso(value: string): string | null {
  const v = value.trim();
  if (!v) return null;
  const t = Date.parse(v);
  return Number.isFinite(t) ? new Date(t).toISOString() : null;
}

/** list_runs arguments for a filter: only the filters that are set (older gateways refuse
 *  unknown arguments, so nothing is sent as null that need not be). */
export function runFilterToArgs(workspaceId: string, f: RunFilter, cursor: string | null, limit = 50): { args: ListRunsArgs; error: string | null } {
  const args: ListRunsArgs = { workspace_id: workspaceId, limit };
  if (cursor) args.cursor = cursor;
  if (f.state && (RUN_STATES as string[]).includes(f.state)) args.state = f.state as RunState;
  if (f.spec.trim()) args.spec_slug = f.spec.trim();
  if (f.job.trim()) args.job_slug = f.job.trim();
  if (f.env.trim()) args.env = f.env.trim();
  let error: string | null = null;
  const sha = f.git_sha.trim().toLowerCase();
  if (sha) {
    if (!/^[0-9a-f]{4,40}$/.test(sha)) error = "git sha: give at least 4 hex characters";
    else args.git_sha = sha;
  }
  const { labels, error: labelError } = parseLabels(f.label);
  if (labelError) error = labelError;
  else if (labels) args.labels = labels;
  const from = toIso(f.from);
  const to = toIso(f.to);
  if (f.from.trim() && !from) error = "from: not a date and time";
  if (f.to.trim() && !to) error = "to: not a date and time";
  if (from) args.created_after = from;
  if (to) args.created_before = to;
  if (from && to && from > to) error = "from is after to";
  return { args, error };
}
