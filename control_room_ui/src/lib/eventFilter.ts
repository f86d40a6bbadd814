// The event log's filters and cursors → list_events arguments, and the paging rules of its
// infinite query (pages of PAGE_SIZE events, at most MAX_PAGES kept: memory stays flat however
// many events the run has).
import type { EventPage, ListEventsArgs, RunEvent } from "../api/types";

export const PAGE_SIZE = 200;
export const MAX_PAGES = 8;

export interface EventFilter {
  types: string; // comma-separated event types
  level: string; // "", one level, or comma-separated levels
  phase: string;
  text: string;
}

export const EMPTY_EVENT_FILTER: EventFilter = { types: "", level: "", phase: "", text: "" };

/** Where a page starts: the newest events (`tail`), after a seq, or before a seq. */
export type PageParam = { after: number } | { before: number } | { tail: true };

export function splitList(text: string, upper = false): string[] {
  return text
    .split(/[,\s]+/)
    .map((t) => t.trim())
    .filter(Boolean)
    .map((t) => (upper ? t.toUpperCase() : t.toLowerCase()));
}

export function isFiltered(f: EventFilter): boolean {
  return Boolean(f.types.trim() || f.level.trim() || f.phase.trim() || f.text.trim());
}

/** The largest seq a `before` cursor can name (bigint on the server; a JS-safe integer here). */
export const END_SEQ = Number.MAX_SAFE_INTEGER;

export function eventArgs(runId: string, f: EventFilter, param: PageParam, limit = PAGE_SIZE): ListEventsArgs {
  const args: ListEventsArgs = { run_id: runId, limit };
  if ("after" in param) args.after = param.after;
  else if ("before" in param) args.before = param.before;
  else args.before = END_SEQ;
  const types = splitList(f.types, true);
  if (types.length) args.types = types;
  const levels = splitList(f.level);
  if (levels.length) args.levels = levels;
  if (f.phase.trim()) args.phase = f.phase.trim();
  if (f.text.trim()) args.text = f.text.trim();
  return args;
}

export interface LoadedPage extends EventPage {
  param: PageParam;
  /** no events before this page (a backward page came back short, or seq 1 is in it) */
  atStart: boolean;
  /** no events after this page when it was read (a forward page came back short) */
  atEnd: boolean;
}

export function toLoadedPage(page: EventPage, param: PageParam, limit = PAGE_SIZE): LoadedPage {
  const events = page.events;
  const backward = !("after" in param);
  const first = events[0]?.seq;
  return {
    ...page,
    param,
    atStart: (backward && events.length < limit) || first === 1 || ("after" in param && param.after === 0 && events.length === 0),
    atEnd: !backward ? events.length < limit : "tail" in param,
  };
}

export function firstSeq(page: LoadedPage): number | null {
  return page.events.length ? page.events[0].seq : (page.prev_before ?? null);
}

export function lastSeq(page: LoadedPage): number {
  return page.events.length ? page.events[page.events.length - 1].seq : page.next_after;
}

/** The next (newer) page's cursor: always one (the tail grows), after the last seq read. */
export function nextParam(last: LoadedPage): PageParam {
  const seq = last.events.length ? last.events[last.events.length - 1].seq : Math.max(last.next_after, "after" in last.param ? last.param.after : 0);
  return { after: seq };
}

/** The previous (older) page's cursor, or undefined at the start. */
export function prevParam(first: LoadedPage): PageParam | undefined {
  if (first.atStart || !first.events.length) return undefined;
  return { before: first.events[0].seq };
}

/** Flatten the pages into one list of events, ascending by seq, without duplicates. */
export function flattenPages(pages: LoadedPage[]): RunEvent[] {
  const out: RunEvent[] = [];
  let last = 0;
  for (const p of pages) {
    for (const e of p.events) {
      if (e.seq > last) {
        out.push(e);
        last = e.seq;
      }
    }
  }
  return out;
}

/** Whether a change signal (max seq of the run) may bring events after what is loaded. */
export function hasNewer(pages: LoadedPage[], signalSeq: number | null): boolean {
  if (!pages.length) return false;
  const last = lastSeq(pages[pages.length - 1]);
  return signalSeq === null || signalSeq > last;
}
