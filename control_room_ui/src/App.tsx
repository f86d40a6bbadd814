import { useEffect, useMemo, useSyncExternalStore, type ReactNode } from "react";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { authState, signOut, subscribeAuth } from "./api/auth";
import { rpc, reachability } from "./api/client";
import { feed } from "./api/feed";
import { makeInvalidator } from "./api/live";
import type { Workspace } from "./api/types";
import { pickWorkspace, rememberSlug, rememberedSlug, WorkspaceContext, type WorkspaceCtx } from "./api/workspace";
import { BadStateView, Loading } from "./components/common";
import { can } from "./lib/roles";
import { Link, match, navigate, useLocation } from "./router";
import { LoginPage } from "./pages/Login";
import { RunsPage } from "./pages/Runs";
import { RunsGridPage } from "./pages/RunsGrid";
import { RunDetailPage } from "./pages/RunDetail";
import { JobsPage, JobDetailPage } from "./pages/Jobs";
import { DatasetsPage, DatasetDetailPage } from "./pages/Datasets";
import { HealthPage } from "./pages/Health";
import { AuditPage } from "./pages/Audit";

function useAuth() {
  return useSyncExternalStore(subscribeAuth, authState);
}

export function App() {
  const auth = useAuth();
  const { path, search } = useLocation();
  const client = useQueryClient();
  const next = search.get("next");

  useEffect(() => {
    if (!auth.session) {
      client.clear();
      feed.stop();
      if (path !== "/login") {
        const q = new URLSearchParams();
        if (auth.status === "expired") q.set("expired", "1");
        const here = window.location.pathname + window.location.search;
        if (here !== "/" && here !== "/runs") q.set("next", here);
        const qs = q.toString();
        navigate(`/login${qs ? `?${qs}` : ""}`, { replace: true });
      }
    } else if (path === "/login") {
      navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/runs", { replace: true });
    }
  }, [auth.session, auth.status, path, next, client]);

  if (!auth.session || path === "/login") return <LoginPage expired={auth.status === "expired"} />;
  return <Shell email={auth.session.user.email ?? ""} />;
}

function useDown(): boolean {
  return useSyncExternalStore((l) => reachability.subscribe(l), () => reachability.down);
}

function LiveStatus() {
  const status = useSyncExternalStore((l) => feed.subscribeStatus(l), () => feed.status);
  const down = useDown();
  const shown = down ? "offline" : status;
  const title = shown === "live" ? "live: updates stream from the gateway" : shown === "polling" ? "polling every 5 s (no live feed)" : "offline: the gateway is not answering";
  return (
    <span className={`live live-${shown}`} data-testid="live-status" data-state={shown} title={title}>
      <span className="dot" /> {shown}
    </span>
  );
}

function Shell({ email }: { email: string }) {
  const { path, search } = useLocation();
  const client = useQueryClient();
  const down = useDown();
  const wsQuery = useQuery({ queryKey: ["workspaces"], queryFn: () => rpc<Workspace[]>("list_workspaces", {}), staleTime: 60_000 });
  const list = wsQuery.data ?? [];
  const wanted = search.get("ws");
  const current = pickWorkspace(list, wanted, rememberedSlug());

  useEffect(() => {
    if (current) rememberSlug(current.slug);
  }, [current]);

  useEffect(() => {
    if (!current) return;
    feed.follow(current.id);
    const invalidate = makeInvalidator(client);
    const off = feed.subscribe((s) => {
      if (s.workspace_id === current.id) invalidate(s);
    });
    return () => {
      off();
    };
  }, [current, client]);

  useEffect(() => () => feed.stop(), []);

  const ctx: WorkspaceCtx = useMemo(
    () => ({
      workspaces: list,
      current,
      role: current?.role ?? null,
      select: (slug: string) => {
        rememberSlug(slug);
        navigate("/runs");
        client.invalidateQueries({ queryKey: ["workspaces"] });
      },
    }),
    [list, current, client],
  );

  let body: ReactNode;
  if (wsQuery.error && !wsQuery.data) body = <BadStateView error={wsQuery.error} />;
  else if (wsQuery.isPending) body = <Loading what="Loading workspaces" />;
  else if (!current) body = <div className="bad-state" data-testid="state-forbidden"><h2>No workspace</h2><p>You are not a member of any workspace. Ask an admin to add you.</p></div>;
  else body = <Routes path={path} />;

  const nav = (to: string, id: string, label: string) => (
    <Link to={to} data-testid={`nav-${id}`} className={path === to || path.startsWith(to + "/") ? "nav active" : "nav"}>
      {label}
    </Link>
  );

  return (
    <WorkspaceContext.Provider value={ctx}>
      <div className="shell">
        <header className="topbar">
          <Link to="/runs" className="brand">
            ◧ Control Room
          </Link>
          <nav>
            {nav("/runs", "runs", "Runs")}
            {nav("/jobs", "jobs", "Jobs")}
            {nav("/datasets", "datasets", "Datasets")}
            {nav("/health", "health", "Health")}
            {can(current?.role, "audit") ? nav("/audit", "audit", "Audit") : null}
          </nav>
          <div className="spacer" />
          <LiveStatus />
          <select data-testid="workspace-select" value={current?.slug ?? ""} onChange={(e) => ctx.select(e.target.value)} title="workspace">
            {list.map((w) => (
              <option key={w.id} value={w.slug}>
                {w.slug}
              </option>
            ))}
          </select>
          {current?.role ? <span className="role" title="your role in this workspace">{current.role}</span> : null}
          <span className="user" data-testid="user-email">
            {email}
          </span>
          <button data-testid="sign-out" className="btn-quiet" onClick={() => signOut().then(() => navigate("/login?signed_out=1"))}>
            Sign out
          </button>
        </header>
        {down ? (
          <div className="banner banner-down" data-testid="state-gateway-down" role="alert">
            The gateway is not answering. Showing what was loaded last; retrying.
          </div>
        ) : null}
        <main className="content">{body}</main>
      </div>
    </WorkspaceContext.Provider>
  );
}

function Routes({ path }: { path: string }) {
  let m: Record<string, string> | null;
  if (path === "/" || path === "/runs") return <RunsPage />;
  if (path === "/runs/grid") return <RunsGridPage />;
  if ((m = match("/runs/:id", path))) return <RunDetailPage runId={m.id} key={m.id} />;
  if (path === "/jobs") return <JobsPage />;
  if ((m = match("/jobs/:slug", path))) return <JobDetailPage slug={m.slug} key={m.slug} />;
  if (path === "/datasets") return <DatasetsPage />;
  if ((m = match("/datasets/:name", path))) return <DatasetDetailPage name={m.name} key={m.name} />;
  if (path === "/health") return <HealthPage />;
  if (path === "/audit") return <AuditPage />;
  return (
    <div className="bad-state" data-testid="state-not-found">
      <h2>Page not found</h2>
      <p>
        There is no page at <code>{path}</code>. <Link to="/runs">Runs</Link>
      </p>
    </div>
  );
}
