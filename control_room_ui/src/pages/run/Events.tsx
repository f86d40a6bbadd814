import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";
import { useInfiniteQuery, useQueryClient, type InfiniteData } from "@tanstack/react-query";
import { useVirtualizer } from "@tanstack/react-virtual";
import { rpc } from "../../api/client";
import { feed } from "../../api/feed";
import type { EventPage, RunDetail, RunEvent } from "../../api/types";
import { BadStateView, Empty, Json } from "../../components/common";
import {
  EMPTY_EVENT_FILTER,
  eventArgs,
  flattenPages,
  hasNewer,
  MAX_PAGES,
  nextParam,
  prevParam,
  toLoadedPage,
  type EventFilter,
  type LoadedPage,
  type PageParam,
} from "../../lib/eventFilter";
import { formatTime } from "../../lib/format";

const ROW = 22;

function clock(ts: string): string {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function EventsTab({ run }: { run: RunDetail }) {
  const client = useQueryClient();
  const [form, setForm] = useState<EventFilter>(EMPTY_EVENT_FILTER);
  const [filter, setFilter] = useState<EventFilter>(EMPTY_EVENT_FILTER);
  const [selected, setSelected] = useState<RunEvent | null>(null);
  const [following, setFollowing] = useState(true);
  const [newer, setNewer] = useState(false);
  const [start, setStart] = useState<"tail" | "head">("tail");
  const scroller = useRef<HTMLDivElement>(null);
  const anchor = useRef<{ seq: number; offset: number } | null>(null);

  // selects apply at once, the text after a pause
  useEffect(() => {
    const t = setTimeout(() => setFilter(form), form.text !== filter.text || form.types !== filter.types ? 250 : 0);
    return () => clearTimeout(t);
  }, [form, filter.text, filter.types]);

  const key = useMemo(() => ["run", run.id, "events", filter, start] as const, [run.id, filter, start]);
  const q = useInfiniteQuery({
    queryKey: key,
    queryFn: async ({ pageParam, signal }) => toLoadedPage(await rpc<EventPage>("list_events", eventArgs(run.id, filter, pageParam), signal), pageParam),
    initialPageParam: (start === "tail" ? { tail: true } : { after: 0 }) as PageParam,
    getNextPageParam: (last: LoadedPage) => nextParam(last),
    getPreviousPageParam: (first: LoadedPage) => prevParam(first),
    maxPages: MAX_PAGES,
    staleTime: Infinity,
  });
  const pages = q.data?.pages;
  const events = useMemo(() => flattenPages(pages ?? []), [pages]);

  // live tail: a change of this run (or a poll tick) fetches the events after the last one.
  // A change that comes while the log is being read (its first page, or a tail read already
  // on its way) may be newer than what that read sees: it is remembered and read after it,
  // never dropped.
  const fetching = useRef(false);
  const missed = useRef(false);
  const pullRef = useRef<(() => Promise<void>) | null>(null);
  useEffect(() => {
    const pull = async () => {
      if (fetching.current) {
        missed.current = true;
        return;
      }
      fetching.current = true;
      try {
        do {
          missed.current = false;
          await q.fetchNextPage();
          // an empty newest page carries no events: drop it (its cursor is the previous page's)
          client.setQueryData<InfiniteData<LoadedPage, PageParam>>(key, (d) => {
            if (!d || d.pages.length < 2 || d.pages[d.pages.length - 1].events.length) return d;
            return { pages: d.pages.slice(0, -1), pageParams: d.pageParams.slice(0, -1) };
          });
        } while (missed.current);
      } finally {
        fetching.current = false;
      }
    };
    pullRef.current = pull;
    return feed.subscribe((s) => {
      if (s.run_id !== null && s.run_id !== run.id) return;
      const data = client.getQueryData<InfiniteData<LoadedPage, PageParam>>(key);
      if (!data) {
        missed.current = true; // the first page is on its way: read after it once it is here
        return;
      }
      if (!hasNewer(data.pages, s.seq)) return;
      if (following) pull();
      else setNewer(true);
    });
  }, [client, key, following, q, run.id]);
  useEffect(() => {
    if (!pages || !missed.current || fetching.current) return;
    if (following) pullRef.current?.();
    else setNewer(true);
  }, [pages, following]);

  const virt = useVirtualizer({ count: events.length, getScrollElement: () => scroller.current, estimateSize: () => ROW, overscan: 30 });

  // keep the rows on screen where they were when pages come or go; at the bottom when following
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el || !events.length) return;
    if (following) {
      el.scrollTop = el.scrollHeight;
      return;
    }
    const a = anchor.current;
    if (!a) return;
    let lo = 0;
    let hi = events.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (events[mid].seq < a.seq) lo = mid + 1;
      else hi = mid;
    }
    const top = lo * ROW + a.offset;
    if (Math.abs(el.scrollTop - top) > 1) el.scrollTop = top;
  }, [events, following]);

  const onScroll = () => {
    const el = scroller.current;
    if (!el || !events.length) return;
    const i = Math.min(Math.floor(el.scrollTop / ROW), events.length - 1);
    anchor.current = { seq: events[i].seq, offset: el.scrollTop - i * ROW };
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < ROW * 2;
    if (atBottom !== following) setFollowing(atBottom);
    if (atBottom) setNewer(false);
    if (el.scrollTop < ROW * 20 && q.hasPreviousPage && !q.isFetchingPreviousPage) q.fetchPreviousPage();
    if (atBottom && !fetching.current && !q.isFetchingNextPage && pages && !pages[pages.length - 1].atEnd) q.fetchNextPage();
  };

  const toBottom = () => {
    setFollowing(true);
    setNewer(false);
    if (start === "tail") client.resetQueries({ queryKey: key });
    else setStart("tail");
  };
  const toTop = () => {
    setFollowing(false);
    anchor.current = null;
    if (scroller.current) scroller.current.scrollTop = 0;
    if (start === "head") client.resetQueries({ queryKey: key });
    else setStart("head");
  };

  const set = (k: keyof EventFilter) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });
  const first = events[0]?.seq;
  const last = events[events.length - 1]?.seq;

  return (
    <div className="events">
      <div className="filters">
        <input data-testid="events-filter-type" placeholder="types (e.g. PHASE_FAILED, LOG)" value={form.types} onChange={set("types")} list="event-types" />
        <datalist id="event-types">
          {["LOG", "PHASE_CLAIMED", "PHASE_STARTED", "PHASE_SUCCEEDED", "PHASE_FAILED", "PHASE_RETRY", "RUN_CREATED", "RUN_CANCELLED", "QUALITY_CHECK", "LEASE_EXPIRED"].map((t) => (
            <option key={t} value={t} />
          ))}
        </datalist>
        <select data-testid="events-filter-level" value={form.level} onChange={set("level")} title="level">
          <option value="">any level</option>
          <option value="debug">debug</option>
          <option value="info">info</option>
          <option value="warning">warning</option>
          <option value="error">error</option>
          <option value="warning,error">warning + error</option>
        </select>
        <select data-testid="events-filter-phase" value={form.phase} onChange={set("phase")} title="phase">
          <option value="">any phase</option>
          {run.phases.map((p) => (
            <option key={p.name} value={p.name}>
              {p.name}
            </option>
          ))}
        </select>
        <input data-testid="events-filter-text" placeholder="message contains…" value={form.text} onChange={set("text")} />
        <span className="spacer" />
        <span className="muted small">
          {events.length ? `seq ${first}–${last} loaded` : ""} · {run.last_event_seq.toLocaleString("en-US")} events in the run
        </span>
        <button className="btn-quiet" onClick={toTop} title="the oldest events">⤒ oldest</button>
        <button className={following ? "btn-quiet active" : "btn-quiet"} onClick={toBottom} title="follow the newest events">
          ⤓ follow
        </button>
      </div>
      {q.error && !q.data ? (
        <BadStateView error={q.error} />
      ) : (
        <div className="events-body">
          <div className="event-log" ref={scroller} onScroll={onScroll}>
            {q.isFetchingPreviousPage ? <div className="loading-top">loading older…</div> : null}
            <div style={{ height: virt.getTotalSize(), position: "relative" }}>
              {virt.getVirtualItems().map((v) => {
                const e = events[v.index];
                return (
                  <div
                    key={e.seq}
                    className={`event-row lv-${e.level}${selected?.seq === e.seq ? " selected" : ""}`}
                    data-testid="event-row"
                    data-seq={e.seq}
                    data-type={e.type}
                    style={{ position: "absolute", top: v.start, height: ROW, left: 0, right: 0 }}
                    onClick={() => setSelected(e)}
                  >
                    <span className="ev-seq">{e.seq}</span>
                    <span className="ev-ts" title={formatTime(e.ts)}>{clock(e.ts)}</span>
                    <span className={`ev-level lv-${e.level}`}>{e.level}</span>
                    <span className="ev-type">{e.type}</span>
                    <span className="ev-phase" title={e.phase ?? ""}>{e.phase ?? ""}{e.attempt ? `#${e.attempt}` : ""}</span>
                    <span className="ev-msg" title={e.message}>{e.message}</span>
                  </div>
                );
              })}
            </div>
            {!q.isPending && !events.length ? <Empty>No events{filter !== EMPTY_EVENT_FILTER ? " match" : ""}.</Empty> : null}
            {q.isPending ? <div className="loading">Loading events…</div> : null}
          </div>
          {newer && !following ? (
            <button className="new-events" onClick={toBottom}>
              new events ↓
            </button>
          ) : null}
          {selected ? (
            <aside className="side-panel">
              <header>
                <strong>#{selected.seq} {selected.type}</strong>
                <button className="btn-quiet" onClick={() => setSelected(null)}>×</button>
              </header>
              <div className="small muted">{formatTime(selected.ts)} · {selected.level} · {selected.phase ?? "run"}</div>
              <pre className="msg">{selected.message}</pre>
              <Json value={selected.payload} />
            </aside>
          ) : null}
        </div>
      )}
    </div>
  );
}
