// Types of the RPC results the UI reads, from src/api/schema.d.ts (generated from
// control_room/contract/openapi.yaml by `npm run types`; `npm run types:check` fails when it
// is stale). Argument objects the UI builds are written out here.
import type { components } from "./schema";

type S = components["schemas"];

export type RunState = S["RunState"];
export type PhaseState = S["PhaseState"];
export type EventLevel = S["EventLevel"];
export type Role = S["MemberRole"];
export type Workspace = S["WorkspaceListItem"];
export type Phase = S["Phase"];
export type RunSummary = S["RunSummary"];
export type RunDetail = S["RunDetail"];
export type RunPage = S["RunPage"];
export type RunEvent = S["Event"];
export type ArtifactLink = S["ArtifactLink"];
export type ArtifactPage = S["ArtifactPage"];
export type Dataset = S["Dataset"];
export type DatasetDetail = S["DatasetDetail"];
export type DatasetVersion = S["DatasetVersion"];
export type JobListed = S["JobListed"];
export type JobDetail = S["JobDetail"];
export type JobParam = S["JobParam"];
export type JobVersion = S["JobVersion"];
export type Schedule = S["Schedule"];
export type Tick = S["Tick"];
export type TickPage = S["TickPage"];
export type Sensor = S["Sensor"];
export type Alert = S["Alert"];
export type DeadLetter = S["DeadLetter"];
export type DeadLetterPage = S["DeadLetterPage"];
export type RunCreated = S["RunCreated"];

export interface ListRunsArgs {
  workspace_id?: string | null;
  state?: RunState | null;
  spec_slug?: string | null;
  labels?: Record<string, string> | null;
  parent_run_id?: string | null;
  limit?: number;
  cursor?: string | null;
  job_slug?: string | null;
  git_sha?: string | null;
  env?: string | null;
  created_after?: string | null;
  created_before?: string | null;
}

export interface ListEventsArgs {
  run_id: string;
  after?: number;
  before?: number | null;
  limit?: number;
  phase?: string | null;
  types?: string[] | null;
  levels?: string[] | null;
  text?: string | null;
}

export type EventPage = S["EventPage"];
export type AttemptOutcome = S["AttemptOutcome"];
export type TimelineAttempt = S["TimelineAttempt"];
export type Timeline = S["RunTimeline"];
export type GridCell = S["GridCell"];
export type RunGrid = S["RunGrid"];
export type Lineage = S["RunLineage"];
export type Health = S["Health"];
export type AuditEntry = S["AuditEntry"];
export type AuditPage = S["AuditPage"];

export interface ArtifactPreview {
  digest: string;
  size: number;
  format: "json" | "csv" | "text" | "parquet" | "binary";
  truncated: boolean;
  text?: string;
  columns?: string[];
  rows?: unknown[][];
}
