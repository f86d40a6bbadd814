// A text/event-stream parser (the WHATWG rules that matter here): feed it chunks, get events.
export interface SseMessage {
  event: string;
  data: string;
  id?: string;
}

export class SseParser {
  private buffer = "";
  private event = "";
  private data: string[] = [];
  private id: string | undefined;

  /** The complete messages in `chunk` (a partial line waits for the next chunk). */
  push(chunk: string): SseMessage[] {
    this.buffer += chunk;
    const out: SseMessage[] = [];
    let nl: number;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      const sep = this.buffer[nl] === "\r" && this.buffer[nl + 1] === "\n" ? 2 : 1;
      // a lone \r at the very end may be the first half of \r\n: wait for more
      if (this.buffer[nl] === "\r" && sep === 1 && nl === this.buffer.length - 1) break;
      this.buffer = this.buffer.slice(nl + sep);
      const msg = this.line(line);
      if (msg) out.push(msg);
    }
    return out;
  }

  private line(line: string): SseMessage | null {
    if (line === "") {
      if (this.data.length === 0 && !this.event) return null;
      const msg: SseMessage = { event: this.event || "message", data: this.data.join("\n") };
      if (this.id !== undefined) msg.id = this.id;
      this.event = "";
      this.data = [];
      return msg;
    }
    if (line.startsWith(":")) return null; // a comment (": ping")
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
    return null;
  }
}

export interface ChangeSignal {
  workspace_id: string;
  run_id: string;
  seq: number;
}

/** A `change` message's data as a signal, or null when it is not one. */
export function parseChange(data: string): ChangeSignal | null {
  try {
    const v = JSON.parse(data) as Record<string, unknown>;
    if (typeof v.workspace_id !== "string" || typeof v.run_id !== "string") return null;
    const seq = Number(v.seq);
    return { workspace_id: v.workspace_id, run_id: v.run_id, seq: Number.isFinite(seq) ? seq : 0 };
  } catch {
    return null;
  }
}

/** Reconnect delay after `failures` failures in a row: 1 s doubling to 30 s, with jitter. */
export function backoffMs(failures: number, random: number = Math.random()): number {
  const base = Math.min(1000 * 2 ** Math.max(failures - 1, 0), 30000);
  return Math.round(base * (0.75 + 0.5 * random));
}
