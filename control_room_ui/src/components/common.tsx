import { useState, type ReactNode } from "react";
import { ApiError, badStateOf, messageOf } from "../api/errors";
import { Link } from "../router";

export function StateBadge({ state, testid }: { state: string | null | undefined; testid?: string }) {
  const s = state ?? "unknown";
  return (
    <span className={`badge st-${s}`} data-testid={testid} data-state={s}>
      {s}
    </span>
  );
}

const BAD_TEXT: Record<string, [string, string]> = {
  "expired-session": ["Your session expired", "Sign in again to continue."],
  "gateway-down": ["The gateway is not answering", "The control-room gateway did not answer. Check that it is running; this page retries on its own."],
  "not-found": ["Not found", "It does not exist, or this workspace cannot see it."],
  forbidden: ["No permission", "Your role in this workspace may not see or do this."],
};

/** A plain page-level state for an error: expired session, gateway down, not found, forbidden. */
export function BadStateView({ error, what }: { error: unknown; what?: string }) {
  const state = badStateOf(error);
  if (!state) return <ErrorBox error={error} />;
  const [title, text] = BAD_TEXT[state];
  return (
    // gateway down: the shell's banner carries data-testid="state-gateway-down" (one element)
    <div className={`bad-state bad-${state}`} data-testid={state === "gateway-down" ? undefined : `state-${state}`} role="alert">
      <h2>{state === "not-found" && what ? `${what} not found` : title}</h2>
      <p>{text}</p>
      {error instanceof ApiError && error.message && state !== "gateway-down" ? <p className="muted">{error.message}</p> : null}
      {state === "expired-session" ? <Link to="/login">Sign in</Link> : null}
    </div>
  );
}

export function ErrorBox({ error, testid }: { error: unknown; testid?: string }) {
  if (!error) return null;
  const e = error instanceof ApiError ? error : null;
  return (
    <div className="error-box" data-testid={testid} role="alert">
      <strong>{e ? `${e.status || "network"} ${e.machineCode}` : "error"}:</strong> {messageOf(error)}
    </div>
  );
}

export function Loading({ what = "Loading" }: { what?: string }) {
  return <div className="loading">{what}…</div>;
}

/** Query result gate: the bad state, a loading line, or the children. */
export function Gate({ q, what, children }: { q: { isPending: boolean; error: unknown; data?: unknown }; what?: string; children: () => ReactNode }) {
  if (q.error && q.data === undefined) return <BadStateView error={q.error} what={what} />;
  if (q.isPending) return <Loading />;
  return <>{children()}</>;
}

export function Json({ value, max = 200_000 }: { value: unknown; max?: number }) {
  let text = value === undefined ? "" : JSON.stringify(value, null, 2);
  if (text.length > max) text = text.slice(0, max) + "\n… (cut)";
  return <pre className="json">{text}</pre>;
}

export function Tabs<T extends string>({ tabs, current, onChange }: { tabs: { id: T; label: string; count?: number }[]; current: T; onChange: (t: T) => void }) {
  return (
    <div className="tabs" role="tablist">
      {tabs.map((t) => (
        <button key={t.id} role="tab" aria-selected={t.id === current} className={t.id === current ? "tab active" : "tab"} data-testid={`tab-${t.id}`} onClick={() => onChange(t.id)}>
          {t.label}
          {t.count !== undefined ? <span className="count">{t.count}</span> : null}
        </button>
      ))}
    </div>
  );
}

export function Copy({ text, label }: { text: string; label?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      className="link-btn"
      title={`copy ${text}`}
      onClick={() => {
        navigator.clipboard?.writeText(text).then(() => {
          setDone(true);
          setTimeout(() => setDone(false), 1000);
        });
      }}
    >
      {done ? "copied" : (label ?? "copy")}
    </button>
  );
}

export function Field({ label, children }: { label: string; children: ReactNode }) {
  return (
    <div className="field">
      <span className="field-label">{label}</span>
      <span className="field-value">{children}</span>
    </div>
  );
}

export function Section({ title, children, actions, testid }: { title: ReactNode; children: ReactNode; actions?: ReactNode; testid?: string }) {
  return (
    <section className="panel" data-testid={testid}>
      <header className="panel-head">
        <h3>{title}</h3>
        {actions ? <div className="panel-actions">{actions}</div> : null}
      </header>
      <div className="panel-body">{children}</div>
    </section>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}
