import { describe, expect, it } from "vitest";
import { columnSummary, shapeGrid } from "./grid";
import { ganttBars, timeTicks, xOf } from "./gantt";
import { dagInput, DAGRE_MAX_NODES, layeredLayout, layout, ranks } from "./dag";
import { eventArgs, flattenPages, hasNewer, nextParam, prevParam, toLoadedPage, END_SEQ, EMPTY_EVENT_FILTER } from "./eventFilter";
import { coerceParam, validateParams } from "./params";
import { formatBytes, formatDuration, formatPercent, formatRelative, shortDigest, cellText } from "./format";
import { backoffMs, parseChange, SseParser } from "./sse";
import { runFilterToArgs, parseLabels, EMPTY_RUN_FILTER, filterFromSearch, filterToSearch } from "./runFilter";
import { diffSchemas } from "./schemaDiff";
import { sqlOutputs } from "./sqlOutputs";
import { can, runActions } from "./roles";
import { isolatedPoints, linearScale, linePath, niceMax } from "./charts";
import { isRunQuery, isWorkspaceList } from "../api/live";
import { refreshDelay } from "../api/auth";
import { ApiError, badStateOf, errorFromBody } from "../api/errors";
import type { ArtifactLink, JobParam, RunEvent, RunGrid } from "../api/types";

const ev = (seq: number): RunEvent => ({ seq, event_id: `e${seq}`, run_id: "r", phase: null, attempt: null, ts: "2026-12-04T10:00:00Z", recorded_at: "2026-12-04T10:00:00Z", level: "info", type: "LOG", message: `m${seq}`, payload: {}, principal_id: null });

describe("grid shaping", () => {
  const grid: RunGrid = {
    phase_names: ["extract", "load"],
    runs: [
      { id: "b", state: "failed" as const, created_at: "2026-12-04T11:00:00Z", finished_at: null, git_sha: "abc", phases: { extract: { state: "failed" as const, attempt: 2, started_at: null, finished_at: null } } },
      { id: "a", state: "succeeded" as const, created_at: "2026-12-04T10:00:00Z", finished_at: null, git_sha: "abc", phases: { extract: { state: "succeeded" as const, attempt: 1, started_at: null, finished_at: null }, load: { state: "succeeded" as const, attempt: 1, started_at: null, finished_at: null } } },
    ],
  };
  it("puts runs oldest first and gives a missing phase an empty cell", () => {
    const g = shapeGrid(grid);
    expect(g.columns.map((c) => c.id)).toEqual(["a", "b"]);
    expect(g.rows.map((r) => r.phase)).toEqual(["extract", "load"]);
    expect(g.rows[1].cells[1]).toEqual({ runId: "b", cell: null });
    expect(g.rows[0].cells[1].cell?.state).toBe("failed");
    expect(columnSummary(g)).toEqual({ a: { succeeded: 2 }, b: { failed: 1 } });
  });
});

describe("gantt bars", () => {
  it("makes a bar per attempt, running ones end now, and spans the axis", () => {
    const now = Date.parse("2026-12-04T10:10:00Z");
    const m = ganttBars(
      {
        run_id: "r",
        phases: [
          { name: "a", kind: "sql", state: "succeeded", attempts: [
            { attempt: 1, claimed_at: "2026-12-04T10:00:00Z", started_at: "2026-12-04T10:00:02Z", ended_at: "2026-12-04T10:01:00Z", outcome: "lease_expired" },
            { attempt: 2, claimed_at: "2026-12-04T10:02:00Z", started_at: "2026-12-04T10:02:00Z", ended_at: "2026-12-04T10:03:00Z", outcome: "succeeded" },
          ] },
          { name: "b", kind: "python", state: "running", attempts: [{ attempt: 1, claimed_at: "2026-12-04T10:05:00Z", started_at: "2026-12-04T10:05:00Z", ended_at: null, outcome: "running" }] },
          { name: "c", kind: "python", state: "waiting", attempts: [] },
        ],
      },
      now,
    );
    expect(m.bars.map((b) => [b.phase, b.attempt, b.outcome, b.row])).toEqual([["a", 1, "lease_expired", 0], ["a", 2, "succeeded", 0], ["b", 1, "running", 1]]);
    expect(m.bars[0].queuedMs).toBe(2000);
    expect(m.bars[2].end).toBe(now);
    expect(m.rows).toHaveLength(3);
    expect(m.t0).toBe(Date.parse("2026-12-04T10:00:00Z"));
    expect(m.t1).toBe(now);
    expect(xOf(m.t1, m, 500)).toBe(500);
    const ticks = timeTicks(m.t0, m.t1);
    expect(ticks.length).toBeGreaterThan(2);
    expect(ticks.length).toBeLessThanOrEqual(7);
  });
});

describe("dag layout input", () => {
  const phases = [
    { name: "a", state: "succeeded", attempt: 1, max_attempts: 3, kind: "sql", depends_on: [] },
    { name: "b", state: "failed", attempt: 2, max_attempts: 3, kind: "sql", depends_on: ["a", "ghost"] },
    { name: "c", state: "waiting", attempt: 0, max_attempts: 1, kind: "python", depends_on: ["a", "b"] },
  ];
  it("builds edges from depends_on and drops unknown phases", () => {
    const input = dagInput(phases);
    expect(input.edges).toEqual([{ from: "a", to: "b" }, { from: "a", to: "c" }, { from: "b", to: "c" }]);
    expect(input.nodes[1]).toMatchObject({ id: "b", state: "failed", attempt: 2, maxAttempts: 3 });
    expect([...ranks(input).entries()]).toEqual([["a", 0], ["b", 1], ["c", 2]]);
  });
  it("lays out with dagre and, for big graphs, by layers left to right", () => {
    const small = layout(dagInput(phases));
    const x = Object.fromEntries(small.nodes.map((n) => [n.id, n.x]));
    expect(x.a).toBeLessThan(x.b);
    expect(x.b).toBeLessThan(x.c);
    const many = Array.from({ length: DAGRE_MAX_NODES + 50 }, (_, i) => ({ name: `p${i}`, state: "queued", attempt: 0, max_attempts: 1, kind: "sql", depends_on: i ? [`p${Math.floor((i - 1) / 2)}`] : [] }));
    const started = performance.now();
    const big = layout(dagInput(many));
    expect(performance.now() - started).toBeLessThan(500);
    expect(big.nodes).toHaveLength(many.length);
    const lay = layeredLayout(dagInput(many));
    const byId = new Map(lay.nodes.map((n) => [n.id, n]));
    for (const e of lay.edges) expect(byId.get(e.from)!.x).toBeLessThan(byId.get(e.to)!.x);
  });
});

describe("event filter → list_events arguments", () => {
  it("sends only the filters that are set, and the cursor of the page", () => {
    expect(eventArgs("r", EMPTY_EVENT_FILTER, { tail: true })).toEqual({ run_id: "r", limit: 200, before: END_SEQ });
    expect(eventArgs("r", { types: "phase_failed, LOG", level: "warning,error", phase: " load ", text: " boom " }, { after: 42 }, 50)).toEqual({
      run_id: "r", limit: 50, after: 42, types: ["PHASE_FAILED", "LOG"], levels: ["warning", "error"], phase: "load", text: "boom",
    });
    expect(eventArgs("r", EMPTY_EVENT_FILTER, { before: 7 })).toMatchObject({ before: 7 });
  });
  it("pages forward after the last seq and backward before the first, until the start", () => {
    const tail = toLoadedPage({ events: [ev(301), ev(302)], next_after: 302, prev_before: 301 }, { tail: true }, 2);
    expect(tail.atStart).toBe(false);
    expect(nextParam(tail)).toEqual({ after: 302 });
    expect(prevParam(tail)).toEqual({ before: 301 });
    const older = toLoadedPage({ events: [ev(1)], next_after: 1, prev_before: 1 }, { before: 301 }, 2);
    expect(older.atStart).toBe(true);
    expect(prevParam(older)).toBeUndefined();
    const empty = toLoadedPage({ events: [], next_after: 302, prev_before: null }, { after: 302 }, 2);
    expect(nextParam(empty)).toEqual({ after: 302 });
    expect(flattenPages([older, tail, empty]).map((e) => e.seq)).toEqual([1, 301, 302]);
    expect(hasNewer([older, tail], 302)).toBe(false);
    expect(hasNewer([older, tail], 303)).toBe(true);
    expect(hasNewer([older, tail], null)).toBe(true);
  });
});

describe("param validation (as the CLI)", () => {
  const declared: Record<string, JobParam> = {
    orders: { type: "integer", default: 10, required: false, description: null },
    ratio: { type: "number", default: null, required: true, description: null },
    dry: { type: "boolean", default: false, required: false, description: null },
    name: { type: "string", default: "x", required: false, description: null },
    out: { type: "path", default: "/tmp", required: false, description: null },
  };
  it("coerces each type", () => {
    expect(coerceParam("integer", " 20 ")).toEqual([20, null]);
    expect(coerceParam("integer", "2.5")).toEqual([null, "is not an integer"]);
    expect(coerceParam("number", "3")).toEqual([3, null]);
    expect(coerceParam("number", "0.25")).toEqual([0.25, null]);
    expect(coerceParam("number", "inf")).toEqual([null, "is not a finite number"]);
    expect(coerceParam("number", "abc")).toEqual([null, "is not a number"]);
    expect(coerceParam("boolean", "Yes")).toEqual([true, null]);
    expect(coerceParam("boolean", "off")).toEqual([false, null]);
    expect(coerceParam("boolean", "maybe")).toEqual([null, "is not a boolean (true or false)"]);
    expect(coerceParam("path", "  ")).toEqual([null, "is not a path (empty)"]);
    expect(coerceParam("string", " a ")).toEqual([" a ", null]);
  });
  it("names a missing required param and a malformed one; empty fields keep defaults", () => {
    const r = validateParams(declared, { orders: "x1", dry: "", name: "" }, "example");
    expect(r.errors.orders).toBe('"x1" is not an integer (param orders is integer)');
    expect(r.errors.ratio).toMatch(/param ratio of job example has no default/);
    expect(r.values).toEqual({});
    const ok = validateParams(declared, { orders: "20", ratio: "0.5", dry: "true" }, "example");
    expect(ok.errors).toEqual({});
    expect(ok.values).toEqual({ orders: 20, ratio: 0.5, dry: true });
  });
});

describe("formatters", () => {
  it("formats durations, bytes, rates, digests and relative times", () => {
    expect(formatDuration(0.25)).toBe("250 ms");
    expect(formatDuration(5.25)).toBe("5.3 s");
    expect(formatDuration(65)).toBe("1m 05s");
    expect(formatDuration(7260)).toBe("2h 01m");
    expect(formatDuration(3 * 86400 + 3600 * 4)).toBe("3d 4h");
    expect(formatDuration(null)).toBe("–");
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(50 * 1024 * 1024)).toBe("50 MiB");
    expect(formatPercent(0.973)).toBe("97.3 %");
    expect(formatPercent(null)).toBe("–");
    expect(shortDigest("blake3:" + "ab".repeat(32))).toBe("blake3:abababababab");
    const now = Date.parse("2026-12-04T10:00:00Z");
    expect(formatRelative("2026-12-04T09:57:00Z", now)).toBe("3m ago");
    expect(formatRelative("2026-12-04T12:00:00Z", now)).toBe("in 2h");
    expect(cellText(null)).toBe("∅");
    expect(cellText({ a: 1 })).toBe('{"a":1}');
  });
});

describe("feed message parsing", () => {
  it("parses events split across chunks, CRLF, comments and multi-line data", () => {
    const p = new SseParser();
    expect(p.push("event: ready\ndata: {}\n")).toEqual([]);
    expect(p.push("\n: ping\n\nevent: change\r\ndata: {\"workspace_id\":\"w\",")).toEqual([{ event: "ready", data: "{}" }]);
    const out = p.push("\"run_id\":\"r\",\"seq\":9}\r\n\r\ndata: a\ndata: b\n\n");
    expect(out).toEqual([{ event: "change", data: '{"workspace_id":"w","run_id":"r","seq":9}' }, { event: "message", data: "a\nb" }]);
    expect(parseChange(out[0].data)).toEqual({ workspace_id: "w", run_id: "r", seq: 9 });
    expect(parseChange("not json")).toBeNull();
    expect(parseChange('{"run_id":"r"}')).toBeNull();
  });
  it("backs off from 1 s doubling to 30 s", () => {
    expect(backoffMs(1, 0.5)).toBe(1000);
    expect(backoffMs(3, 0.5)).toBe(4000);
    expect(backoffMs(20, 0.5)).toBe(30000);
    expect(backoffMs(1, 0)).toBe(750);
  });
});

describe("run filters → list_runs arguments", () => {
  it("sends only what is set and refuses a short sha or a bad label", () => {
    expect(runFilterToArgs("w", EMPTY_RUN_FILTER, null).args).toEqual({ workspace_id: "w", limit: 50 });
    const r = runFilterToArgs("w", { ...EMPTY_RUN_FILTER, state: "failed", job: "daily", git_sha: "ABCD12", env: "prod", label: "team=a, tier=1", from: "2026-12-01T00:00:00Z" }, "5:" + "0".repeat(36));
    expect(r.error).toBeNull();
    expect(r.args).toEqual({ workspace_id: "w", limit: 50, cursor: "5:" + "0".repeat(36), state: "failed", job_slug: "daily", env: "prod", git_sha: "abcd12", labels: { team: "a", tier: "1" }, created_after: "2026-12-01T00:00:00.000Z" });
    expect(runFilterToArgs("w", { ...EMPTY_RUN_FILTER, git_sha: "ab" }, null).error).toMatch(/4 hex/);
    expect(parseLabels("oops").error).toMatch(/key=value/);
    const s = filterToSearch({ ...EMPTY_RUN_FILTER, job: "daily" });
    expect(s.toString()).toBe("job=daily");
    expect(filterFromSearch(s).job).toBe("daily");
  });
});

describe("schema diff, sql outputs, roles, charts, invalidation, errors", () => {
  it("diffs two schema versions", () => {
    const d = diffSchemas(
      [{ name: "id", type: "int64", nullable: false, key: 1 }, { name: "x", type: "int32", nullable: true }, { name: "gone", type: "string", nullable: true }],
      [{ name: "id", type: "int64", nullable: false, key: 1 }, { name: "x", type: "int64", nullable: false }, { name: "new", type: "string", nullable: true }],
    );
    expect(d.map((c) => [c.column, c.change])).toEqual([["id", "same"], ["x", "changed"], ["new", "added"], ["gone", "removed"]]);
    expect(d[1].change === "changed" && d[1].what).toEqual(["type int32 → int64", "now required"]);
  });
  it("groups the sql kind's files by phase, latest attempt first", () => {
    const link = (name: string, phase: string, attempt: number, digest: string): ArtifactLink => ({ id: attempt, run_id: "r", workspace_id: "w", phase, role: "output", name, attempt, linked_at: "", digest, size_bytes: 1, media_type: "", kind: "file", uri: "", metadata: {}, first_run_id: null });
    const outs = sqlOutputs([link("query.sql", "gold", 1, "d1"), link("query.sql", "gold", 2, "d2"), link("preview.json", "gold", 2, "p"), link("result_manifest.json", "gold", 2, "m"), link("other.csv", "gold", 2, "o"), link("preview.json", "nosql", 1, "x")]);
    expect(outs).toHaveLength(1);
    expect(outs[0]).toMatchObject({ phase: "gold", query: { digest: "d2" }, preview: { digest: "p" }, manifest: { digest: "m" } });
  });
  it("hides actions from viewers and shows those that apply", () => {
    expect(can("viewer", "cancel")).toBe(false);
    expect(can("developer", "repair")).toBe(true);
    expect(can("developer", "audit")).toBe(false);
    expect(can("admin", "unblock")).toBe(true);
    expect(runActions("running")).toEqual({ cancel: true, retry: false, repair: false });
    expect(runActions("failed")).toEqual({ cancel: false, retry: true, repair: true });
  });
  it("scales charts", () => {
    expect(niceMax(7)).toBe(10);
    expect(niceMax(0.3)).toBe(0.5);
    const y = linearScale(7, 100);
    expect(y(0)).toBe(100);
    expect(y(10)).toBe(0);
    expect(linePath([{ x: 0, y: 1 }, { x: 1, y: null }, { x: 2, y: 3 }])).toBe("M0.0,1.0M2.0,3.0");
    // a bucket with data between empty ones is a dot (a lone "M" draws nothing)
    expect(isolatedPoints([{ x: 0, y: null }, { x: 1, y: 5 }, { x: 2, y: null }, { x: 3, y: 1 }, { x: 4, y: 2 }]))
      .toEqual([{ x: 1, y: 5 }]);
    expect(isolatedPoints([{ x: 0, y: 4 }])).toEqual([{ x: 0, y: 4 }]);
  });
  it("invalidates only the changed run's queries, never its event log", () => {
    expect(isRunQuery(["run", "r1", "detail"], "r1")).toBe(true);
    expect(isRunQuery(["run", "r1", "events", {}], "r1")).toBe(false);
    expect(isRunQuery(["run", "r2", "detail"], "r1")).toBe(false);
    expect(isWorkspaceList(["ws", "w", "runs", {}], "w")).toBe(true);
    expect(isWorkspaceList(["ws", "other", "runs", {}], "w")).toBe(false);
  });
  it("refreshes a minute before expiry, or half way for short tokens", () => {
    expect(refreshDelay(1000 + 900, 1000)).toBe(840);
    expect(refreshDelay(1000 + 60, 1000)).toBe(30);
    expect(refreshDelay(900, 1000)).toBe(0);
  });
  it("reads both error shapes and names the bad state", () => {
    const rpcErr = errorFromBody(403, { code: "PT403", message: "viewers may not cancel", details: null, hint: "forbidden" }, "x");
    expect(rpcErr.machineCode).toBe("forbidden");
    expect(badStateOf(rpcErr)).toBe("forbidden");
    const gt = errorFromBody(400, { code: 400, error_code: "invalid_credentials", msg: "Invalid login credentials" }, "x");
    expect(gt.machineCode).toBe("invalid_credentials");
    expect(gt.message).toBe("Invalid login credentials");
    expect(badStateOf(new ApiError(0, "gateway_down", "down"))).toBe("gateway-down");
    expect(badStateOf(new ApiError(404, "PT404", "run not found", null, "not_found"))).toBe("not-found");
    expect(badStateOf(new ApiError(401, "PT401", "expired"))).toBe("expired-session");
    expect(badStateOf(new ApiError(409, "PT409", "conflict"))).toBeNull();
  });
});
