import { useState, type FormEvent } from "react";
import { signIn } from "../api/auth";
import { ApiError } from "../api/errors";
import { useLocation } from "../router";

/** GoTrue's error codes in plain words (the server's message otherwise). */
export function signInMessage(err: unknown): string {
  if (err instanceof ApiError) {
    switch (err.machineCode) {
      case "invalid_credentials":
        return "Wrong email or password.";
      case "over_request_rate_limit":
        return "Too many failed sign-ins. Wait a few minutes and try again.";
      case "validation_failed":
        return err.message || "Give an email and a password.";
      case "gateway_down":
        return "The gateway did not answer. Is it running?";
    }
    return err.message || `Sign-in failed (HTTP ${err.status}).`;
  }
  return String(err);
}

export function LoginPage({ expired }: { expired: boolean }) {
  const { search } = useLocation();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const showExpired = expired || search.get("expired") === "1";
  const signedOut = search.get("signed_out") === "1";

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (!email.trim() || !password) {
      setError("Give your email and password.");
      return;
    }
    setBusy(true);
    try {
      await signIn(email.trim(), password);
    } catch (err) {
      setError(signInMessage(err));
      setPassword("");
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="login-page">
      <form className="login-card" onSubmit={submit} noValidate>
        <h1>◧ Control Room</h1>
        <p className="muted">Sign in with your Control Room account.</p>
        {showExpired ? (
          <div className="notice" data-testid="login-message">
            <span data-testid="state-expired-session">Your session expired. Sign in again.</span>
          </div>
        ) : signedOut ? (
          <div className="notice" data-testid="login-message">
            You are signed out.
          </div>
        ) : null}
        <label>
          Email
          <input data-testid="login-email" type="email" autoComplete="username" value={email} onChange={(e) => setEmail(e.target.value)} autoFocus />
        </label>
        <label>
          Password
          <input data-testid="login-password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} />
        </label>
        {error ? (
          <div className="error-box" data-testid="login-error" role="alert">
            {error}
          </div>
        ) : null}
        <button data-testid="login-submit" type="submit" className="btn-primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </div>
  );
}
