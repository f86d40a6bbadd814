// Sign-in against GoTrue's endpoints (the gateway's /auth/v1 or a Supabase project's): password
// sign-in, refresh before expiry (single flight), logout. The session lives in sessionStorage
// (this tab only; gone when the tab closes), never in a URL or localStorage.
import { authUrl, getConfig } from "./config";
import { ApiError, errorFromBody } from "./errors";

export interface User {
  id: string;
  email: string | null;
  user_metadata?: { name?: string | null } | null;
}

export interface Session {
  access_token: string;
  refresh_token: string;
  expires_at: number; // epoch seconds
  user: User;
}

export type AuthStatus = "signed-in" | "signed-out" | "expired";

const KEY = "control-room.session";
/** Refresh this many seconds before the access token expires. */
export const REFRESH_MARGIN_S = 60;

interface State {
  session: Session | null;
  status: AuthStatus;
}

let state: State = { session: readStored(), status: "signed-out" };
state = { ...state, status: state.session ? "signed-in" : "signed-out" };
const listeners = new Set<() => void>();
let refreshing: Promise<Session> | null = null;
let timer: ReturnType<typeof setTimeout> | null = null;

function readStored(): Session | null {
  try {
    const raw = globalThis.sessionStorage?.getItem(KEY);
    if (!raw) return null;
    const s = JSON.parse(raw) as Session;
    return s && s.access_token && s.refresh_token ? s : null;
  } catch {
    return null;
  }
}

function store(session: Session | null): void {
  try {
    if (session) globalThis.sessionStorage?.setItem(KEY, JSON.stringify(session));
    else globalThis.sessionStorage?.removeItem(KEY);
  } catch {
    // storage unavailable (private mode): the session lives in memory only
  }
}

function set(next: State): void {
  state = next;
  store(next.session);
  schedule();
  listeners.forEach((l) => l());
}

export function subscribeAuth(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function authState(): State {
  return state;
}

/** The seconds to wait before refreshing a token that expires at `expiresAt`. */
export function refreshDelay(expiresAt: number, nowS: number): number {
  const left = expiresAt - nowS;
  const margin = Math.min(REFRESH_MARGIN_S, Math.max(left / 2, 0));
  return Math.max(left - margin, 0);
}

function schedule(): void {
  if (timer) clearTimeout(timer);
  timer = null;
  const s = state.session;
  if (!s) return;
  const delay = refreshDelay(s.expires_at, Date.now() / 1000);
  timer = setTimeout(() => {
    refresh().catch(() => undefined);
  }, Math.min(delay * 1000, 2 ** 31 - 1));
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const h: Record<string, string> = { "Content-Type": "application/json", Accept: "application/json", ...extra };
  const key = getConfig().anon_key;
  if (key) h.apikey = key;
  return h;
}

async function tokenCall(grant: string, body: Record<string, string>): Promise<Session> {
  let res: Response;
  try {
    res = await fetch(authUrl(`/token?grant_type=${grant}`), {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "gateway_down", "The gateway did not answer. Is it running?");
  }
  const json = await res.json().catch(() => null);
  if (!res.ok) throw errorFromBody(res.status, json, `sign-in failed (HTTP ${res.status})`);
  return toSession(json);
}

export function toSession(json: unknown): Session {
  const b = json as Record<string, unknown>;
  const expiresIn = Number(b.expires_in ?? 0);
  const expiresAt = Number(b.expires_at ?? Math.floor(Date.now() / 1000) + expiresIn);
  return {
    access_token: String(b.access_token),
    refresh_token: String(b.refresh_token),
    expires_at: expiresAt,
    user: (b.user as User) ?? { id: "", email: null },
  };
}

export async function signIn(email: string, password: string): Promise<Session> {
  const session = await tokenCall("password", { email, password });
  set({ session, status: "signed-in" });
  return session;
}

/** Refresh the session (one request at a time, whoever asks). A refusal ends the session. */
export function refresh(): Promise<Session> {
  const s = state.session;
  if (!s) return Promise.reject(new ApiError(401, "no_session", "Your session expired"));
  if (!refreshing) {
    refreshing = tokenCall("refresh_token", { refresh_token: s.refresh_token })
      .then((next) => {
        set({ session: next, status: "signed-in" });
        return next;
      })
      .catch((err: unknown) => {
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) expire();
        throw err;
      })
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

/** A token valid for at least a little while: refreshed first when it is about to expire. */
export async function accessToken(): Promise<string | null> {
  const s = state.session;
  if (!s) return null;
  if (s.expires_at - Date.now() / 1000 < 15) {
    try {
      return (await refresh()).access_token;
    } catch (err) {
      if (err instanceof ApiError && err.status === 0) return s.access_token;
      throw err;
    }
  }
  return s.access_token;
}

/** The server said the session is over (401): back to the login page, saying so. */
export function expire(): void {
  if (state.session || state.status !== "expired") set({ session: null, status: "expired" });
}

export async function signOut(): Promise<void> {
  const s = state.session;
  set({ session: null, status: "signed-out" });
  if (!s) return;
  try {
    await fetch(authUrl("/logout?scope=local"), {
      method: "POST",
      headers: headers({ Authorization: `Bearer ${s.access_token}` }),
    });
  } catch {
    // signed out locally anyway; the token expires on its own
  }
}
