// The change feed: GET /feed/v1/changes?workspace_id=W[&run_id=R] read with fetch (so the
// bearer goes in a header, never in the URL) as a text/event-stream. `change` messages name a
// run; subscribers invalidate that run's queries. The stream ends at the token's expiry and is
// opened again with a fresh token; on failure it reconnects with backoff and meanwhile a 5 s
// poll stands in (status "polling"). "offline" when the gateway does not answer at all.
import { accessToken } from "./auth";
import { restUrl } from "./config";
import { reachability } from "./client";
import { backoffMs, parseChange, SseParser, type ChangeSignal } from "../lib/sse";

export type LiveStatus = "live" | "polling" | "offline";
export type Signal = ChangeSignal | { workspace_id: string; run_id: null; seq: null }; // null run: a poll tick

export const POLL_MS = 5000;

type Listener = (s: Signal) => void;

class Feed {
  status: LiveStatus = "polling";
  private statusListeners = new Set<() => void>();
  private listeners = new Set<Listener>();
  private workspace: string | null = null;
  private runId: string | null = null;
  private abort: AbortController | null = null;
  private failures = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pollTimer: ReturnType<typeof setInterval> | null = null;
  private generation = 0;

  subscribeStatus(l: () => void): () => void {
    this.statusListeners.add(l);
    return () => this.statusListeners.delete(l);
  }

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  private setStatus(s: LiveStatus): void {
    if (s !== this.status) {
      this.status = s;
      this.statusListeners.forEach((l) => l());
    }
    if (s === "live") this.stopPolling();
    else this.startPolling();
  }

  /** Follow a workspace (and, on a run's page, that run only); null stops. */
  follow(workspace: string | null, runId: string | null = null): void {
    if (workspace === this.workspace && runId === this.runId && (this.abort || this.retryTimer)) return;
    this.stop();
    this.workspace = workspace;
    this.runId = runId;
    if (workspace) this.connect();
  }

  stop(): void {
    this.generation += 1;
    this.abort?.abort();
    this.abort = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopPolling();
  }

  private emit(s: Signal): void {
    this.listeners.forEach((l) => l(s));
  }

  private startPolling(): void {
    if (this.pollTimer || !this.workspace) return;
    this.pollTimer = setInterval(() => {
      if (this.workspace) this.emit({ workspace_id: this.workspace, run_id: null, seq: null });
    }, POLL_MS);
  }

  private stopPolling(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  private retry(): void {
    this.failures += 1;
    this.abort = null;
    this.setStatus(reachability.down ? "offline" : "polling");
    const gen = this.generation;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (gen === this.generation) this.connect();
    }, backoffMs(this.failures));
  }

  private async connect(): Promise<void> {
    const gen = this.generation;
    const ctrl = new AbortController();
    this.abort = ctrl;
    const params = new URLSearchParams({ workspace_id: this.workspace ?? "" });
    if (this.runId) params.set("run_id", this.runId);
    let res: Response;
    try {
      const token = await accessToken();
      if (!token) {
        this.setStatus("offline");
        return;
      }
      res = await fetch(restUrl(`/feed/v1/changes?${params}`), {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
        signal: ctrl.signal,
        cache: "no-store",
      });
    } catch {
      if (gen !== this.generation) return;
      reachability.set(true);
      this.retry();
      return;
    }
    if (gen !== this.generation) return;
    if (!res.ok || !res.body) {
      reachability.set(res.status >= 502 && res.status <= 504);
      this.retry();
      return;
    }
    reachability.set(false);
    const opened = Date.now();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const msg of parser.push(value)) {
          if (msg.event === "ready") {
            this.failures = 0;
            this.setStatus("live");
            // catch up on anything missed while disconnected
            if (this.workspace) this.emit({ workspace_id: this.workspace, run_id: null, seq: null });
          } else if (msg.event === "change") {
            const sig = parseChange(msg.data);
            if (sig) this.emit(sig);
          }
        }
      }
    } catch {
      // aborted or the connection broke
    }
    if (gen !== this.generation) return;
    // the stream ended (token expiry): reconnect at once with a fresh token; a stream that
    // ends as soon as it opens counts as a failure (backoff, not a tight loop)
    if (Date.now() - opened < 2000) {
      this.retry();
      return;
    }
    this.abort = null;
    this.connect();
  }
}

export const feed = new Feed();
