// Gantt bars from get_run_timeline: one row per phase, one bar per attempt from claim (or
// start) to end (or now while running), positioned on a shared time axis.
import type { Timeline } from "../api/types";

export interface GanttBar {
  phase: string;
  row: number;
  attempt: number;
  outcome: string;
  start: number; // ms epoch
  end: number;
  running: boolean;
  queuedMs: number; // claimed → started
}

export interface GanttModel {
  bars: GanttBar[];
  rows: { name: string; kind: string; state: string }[];
  t0: number;
  t1: number;
}

function ms(ts: string | null | undefined): number | null {
  if (!ts) return null;
  const t = Date.parse(ts);
  return Number.isFinite(t) ? t : null;
}

export function ganttBars(timeline: Timeline, now: number = Date.now()): GanttModel {
  const bars: GanttBar[] = [];
  const rows: GanttModel["rows"] = [];
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const phase of timeline.phases) {
    const row = rows.length;
    rows.push({ name: phase.name, kind: phase.kind, state: phase.state });
    for (const a of phase.attempts) {
      const claimed = ms(a.claimed_at);
      const started = ms(a.started_at);
      const start = claimed ?? started;
      if (start === null) continue;
      const ended = ms(a.ended_at);
      const running = ended === null && (a.outcome === "running" || a.outcome === null);
      const end = ended ?? (running ? now : start);
      bars.push({
        phase: phase.name,
        row,
        attempt: a.attempt,
        outcome: a.outcome ?? "running",
        start,
        end: Math.max(end, start),
        running,
        queuedMs: claimed !== null && started !== null ? Math.max(started - claimed, 0) : 0,
      });
      t0 = Math.min(t0, start);
      t1 = Math.max(t1, end);
    }
  }
  if (!Number.isFinite(t0)) {
    t0 = now;
    t1 = now;
  }
  if (t1 <= t0) t1 = t0 + 1000;
  return { bars, rows, t0, t1 };
}

/** x position (px) of time `t` on an axis of `width` px. */
export function xOf(t: number, model: Pick<GanttModel, "t0" | "t1">, width: number): number {
  return ((t - model.t0) / (model.t1 - model.t0)) * width;
}

/** Round tick marks for an axis spanning [t0, t1] ms: about `count` of them. */
export function timeTicks(t0: number, t1: number, count = 6): number[] {
  const span = Math.max(t1 - t0, 1);
  const steps = [1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 9e5, 18e5, 36e5, 72e5, 216e5, 432e5, 864e5];
  const step = steps.find((s) => span / s <= count) ?? 864e5 * Math.ceil(span / 864e5 / count);
  const out: number[] = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}
