// rpc(fn, args): POST /rest/v1/rpc/<fn> with the signed-in principal's bearer token. Errors are
// ApiError {status, code, message, details, hint}; a 401 refreshes the session once and
// retries, and a second 401 ends the session (the login page says "Your session expired").
import { accessToken, expire, refresh } from "./auth";
import { getConfig, restUrl } from "./config";
import { ApiError, errorFromBody } from "./errors";

type Listener = () => void;

/** Whether the gateway answered the last call: `live-status` and the gateway-down banner. */
export const reachability = {
  down: false,
  listeners: new Set<Listener>(),
  set(down: boolean) {
    if (this.down !== down) {
      this.down = down;
      this.listeners.forEach((l) => l());
    }
  },
  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  },
};

/** Count of requests made (the benchmark reads it as window.__crRequests). */
let requests = 0;
export function requestCount(): number {
  return requests;
}

function baseHeaders(token: string | null): Record<string, string> {
  const h: Record<string, string> = {};
  if (token) h.Authorization = `Bearer ${token}`;
  const key = getConfig().anon_key;
  if (key) h.apikey = key;
  return h;
}

/** fetch with the bearer token; a 401 refreshes once and retries; network failure → status 0. */
export async function authedFetch(url: string, init: RequestInit = {}, retried = false): Promise<Response> {
  const token = await accessToken();
  let res: Response;
  requests += 1;
  (globalThis as { __crRequests?: number }).__crRequests = requests;
  try {
    res = await fetch(url, { ...init, headers: { ...baseHeaders(token), ...(init.headers as Record<string, string>) } });
  } catch (err) {
    if ((err as Error)?.name === "AbortError") throw err;
    reachability.set(true);
    throw new ApiError(0, "gateway_down", "The gateway did not answer. Is it running?");
  }
  reachability.set(res.status === 502 || res.status === 503 || res.status === 504);
  if (res.status === 401 && token) {
    if (!retried) {
      try {
        await refresh();
      } catch {
        expire();
        throw await toError(res);
      }
      return authedFetch(url, init, true);
    }
    expire();
  }
  return res;
}

async function toError(res: Response): Promise<ApiError> {
  const body = await res.json().catch(() => null);
  return errorFromBody(res.status, body, `HTTP ${res.status}`);
}

export async function rpc<T>(fn: string, args: object = {}, signal?: AbortSignal): Promise<T> {
  const res = await authedFetch(restUrl(`/rest/v1/rpc/${fn}`), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json", "Content-Profile": "ops" },
    body: JSON.stringify(dropUndefined(args)),
    signal,
  });
  if (!res.ok) throw await toError(res);
  return (await res.json()) as T;
}

/** GET a JSON resource of the gateway (artifact previews) with the bearer token. */
export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const res = await authedFetch(restUrl(path), { headers: { Accept: "application/json" }, signal });
  if (!res.ok) throw await toError(res);
  return (await res.json()) as T;
}

/** GET a resource's bytes with the bearer token (artifact content). */
export async function getBlob(path: string): Promise<Blob> {
  const res = await authedFetch(restUrl(path));
  if (!res.ok) throw await toError(res);
  return res.blob();
}

export function dropUndefined(args: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) if (v !== undefined) out[k] = v;
  return out;
}
