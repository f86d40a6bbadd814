import { useState, type FormEvent } from "react";
import { useMutation, useQuery } from "@tanstack/react-query";
import { rpc } from "../api/client";
import type { JobDetail, JobListed, RunCreated, Schedule, Sensor, TickPage } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { BadStateView, Empty, ErrorBox, Gate, Loading, Section, StateBadge } from "../components/common";
import { formatDuration, formatRelative, formatTime, shortDigest, shortId, shortSha } from "../lib/format";
import { validateParams } from "../lib/params";
import { can } from "../lib/roles";
import { Link, navigate } from "../router";

export function JobsPage() {
  const { current } = useWorkspace();
  const q = useQuery({ queryKey: ["ws", current!.id, "jobs"], queryFn: ({ signal }) => rpc<JobListed[]>("list_jobs", { workspace_id: current!.id }, signal) });
  return (
    <div className="page">
      <div className="page-head">
        <h2>Jobs</h2>
      </div>
      <Gate q={q}>
        {() =>
          !q.data?.length ? (
            <Empty>No jobs registered (control-room jobs register).</Empty>
          ) : (
            <table className="grid-table">
              <thead>
                <tr>
                  <th>Job</th>
                  <th>Version</th>
                  <th>Last run</th>
                  <th>Next run</th>
                  <th>Freshness</th>
                  <th>Owner</th>
                </tr>
              </thead>
              <tbody>
                {q.data.map((j) => (
                  <tr key={j.id} data-testid="job-row" data-slug={j.slug}>
                    <td>
                      <Link to={`/jobs/${encodeURIComponent(j.slug)}`}>{j.slug}</Link>
                    </td>
                    <td>v{j.latest_version}</td>
                    <td>
                      {j.last_run ? (
                        <Link to={`/runs/${j.last_run.id}`}>
                          <StateBadge state={j.last_run.state} /> {formatRelative(j.last_run.created_at)}
                        </Link>
                      ) : (
                        "–"
                      )}
                    </td>
                    <td title={formatTime(j.next_run_at)}>{formatRelative(j.next_run_at)}</td>
                    <td>
                      <StateBadge state={j.freshness.state} /> <span className="muted small">lag {formatDuration(j.freshness.lag_seconds)} / SLO {formatDuration(j.freshness.slo_seconds)}</span>
                    </td>
                    <td>{j.owner ?? "–"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )
        }
      </Gate>
    </div>
  );
}

function LaunchForm({ job }: { job: JobDetail }) {
  const { current } = useWorkspace();
  const [version, setVersion] = useState<number | null>(null);
  const chosen = (version ? job.versions.find((v) => v.version === version) : null) ?? job.latest;
  const declared = chosen?.params ?? {};
  const [values, setValues] = useState<Record<string, string>>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const launch = useMutation({
    mutationFn: (params: Record<string, unknown>) => rpc<RunCreated>("create_job_run", { workspace_id: current!.id, job: job.slug, version: chosen?.version ?? null, params }),
    onSuccess: (run) => navigate(`/runs/${run.id}`),
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const given: Record<string, string> = {};
    for (const name of Object.keys(declared)) if (values[name] !== undefined) given[name] = values[name];
    const r = validateParams(declared, given, job.slug);
    setErrors(r.errors);
    if (Object.keys(r.errors).length) return;
    launch.mutate(r.values);
  };
  const problems = Object.entries(errors);
  return (
    <form className="launch" data-testid="job-launch" onSubmit={submit} noValidate>
      <label className="inline">
        version
        <select value={chosen?.version ?? ""} onChange={(e) => setVersion(Number(e.target.value))}>
          {job.versions.map((v) => (
            <option key={v.id} value={v.version}>
              v{v.version} ({shortSha(v.git_sha)})
            </option>
          ))}
        </select>
      </label>
      {Object.keys(declared).length === 0 ? <div className="muted small">This version declares no params.</div> : null}
      <div className="param-grid">
        {Object.entries(declared)
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([name, p]) => (
            <label key={name} className={errors[name] ? "param invalid" : "param"}>
              <span>
                {name} <span className="muted small">{p.type}{p.required ? ", required" : ""}</span>
              </span>
              <input
                data-testid={`param-${name}`}
                value={values[name] ?? ""}
                placeholder={p.default === null || p.default === undefined ? (p.required ? "required" : "") : `default: ${String(p.default)}`}
                onChange={(e) => setValues({ ...values, [name]: e.target.value })}
                list={p.type === "boolean" ? "bool-values" : undefined}
                inputMode={p.type === "integer" || p.type === "number" ? "decimal" : undefined}
              />
              {p.description ? <span className="muted small">{p.description}</span> : null}
            </label>
          ))}
      </div>
      <datalist id="bool-values">
        <option value="true" />
        <option value="false" />
      </datalist>
      {problems.length || launch.error ? (
        <div className="error-box" data-testid="job-launch-error" role="alert">
          {problems.map(([k, v]) => (
            <div key={k}>{v}</div>
          ))}
          {launch.error ? <div>{launch.error.message}</div> : null}
        </div>
      ) : null}
      <button type="submit" className="btn-primary" data-testid="job-launch-submit" disabled={launch.isPending || !chosen}>
        {launch.isPending ? "Launching…" : `Launch v${chosen?.version ?? "?"}`}
      </button>
    </form>
  );
}

function Ticks({ ws, name }: { ws: string; name: string }) {
  const q = useQuery({ queryKey: ["ws", ws, "ticks", name], queryFn: ({ signal }) => rpc<TickPage>("list_schedule_ticks", { workspace_id: ws, name, limit: 10 }, signal) });
  if (q.error) return <ErrorBox error={q.error} />;
  if (!q.data) return <Loading />;
  if (!q.data.ticks.length) return <span className="muted small">no ticks yet</span>;
  return (
    <table className="grid-table small ticks">
      <tbody>
        {q.data.ticks.map((t) => (
          <tr key={t.id} data-testid="tick-row" data-state={t.state}>
            <td>{formatTime(t.scheduled_for)}</td>
            <td>
              <StateBadge state={t.state} />
            </td>
            <td>{t.run_id ? <Link to={`/runs/${t.run_id}`} className="mono">{shortId(t.run_id)}</Link> : null}</td>
            <td className="muted">{t.reason ?? ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function JobDetailPage({ slug }: { slug: string }) {
  const { current, role } = useWorkspace();
  const ws = current!.id;
  const q = useQuery({ queryKey: ["ws", ws, "job", slug], queryFn: ({ signal }) => rpc<JobDetail>("get_job", { workspace_id: ws, slug }, signal) });
  const schedules = useQuery({ queryKey: ["ws", ws, "schedules", slug], queryFn: ({ signal }) => rpc<Schedule[]>("list_schedules", { workspace_id: ws, job: slug }, signal) });
  const sensors = useQuery({ queryKey: ["ws", ws, "sensors", slug], queryFn: ({ signal }) => rpc<Sensor[]>("list_sensors", { workspace_id: ws, job: slug }, signal) });
  if (q.error && !q.data) return <BadStateView error={q.error} what="Job" />;
  if (!q.data) return <Loading what="Loading job" />;
  const job = q.data;
  const f = job.freshness;
  return (
    <div className="page">
      <div className="page-head">
        <h2>Job {job.slug}</h2>
        <span className="muted">v{job.latest_version}{job.owner ? ` · owner ${job.owner}` : ""}</span>
        <Link to={`/runs?job=${encodeURIComponent(job.slug)}`}>runs</Link>
        <Link to={`/runs/grid?job=${encodeURIComponent(job.slug)}`}>grid</Link>
      </div>
      <div className="two-col">
        <div>
          {can(role, "launch") ? (
            <Section title="Launch a run">
              <LaunchForm job={job} />
            </Section>
          ) : null}
          <Section title="Freshness" testid="job-freshness">
            <div className="fresh">
              <StateBadge state={f.state} />
              <span>
                lag <strong>{formatDuration(f.lag_seconds)}</strong> against an SLO of <strong>{formatDuration(f.slo_seconds)}</strong>
              </span>
              {f.lag_seconds !== null ? (
                <span className="meter" title={`${Math.round((100 * f.lag_seconds) / f.slo_seconds)} % of the SLO`}>
                  <span className={f.state === "breached" ? "fill bad" : "fill"} style={{ width: `${Math.min((100 * f.lag_seconds) / f.slo_seconds, 100)}%` }} />
                </span>
              ) : null}
              {f.breached_since ? <span className="muted">breached since {formatTime(f.breached_since)}</span> : null}
            </div>
            {f.datasets.length ? (
              <table className="grid-table small">
                <tbody>
                  {f.datasets.map((d) => (
                    <tr key={d.name}>
                      <td>
                        <Link to={`/datasets/${encodeURIComponent(d.name)}`}>{d.name}</Link>
                      </td>
                      <td>{d.layer}</td>
                      <td>{formatTime(d.data_time)}</td>
                      <td>lag {formatDuration(d.lag_seconds)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : null}
          </Section>
          <Section title="Schedules">
            {schedules.error ? (
              <ErrorBox error={schedules.error} />
            ) : !schedules.data ? (
              <Loading />
            ) : !schedules.data.length ? (
              <span className="muted">no schedules</span>
            ) : (
              schedules.data.map((s) => (
                <div key={s.id} className="schedule" data-testid="schedule-row" data-name={s.name}>
                  <div className="schedule-head">
                    <strong>{s.name}</strong> <span className="mono">{s.cron ?? `every ${formatDuration(s.interval_seconds)}`}</span> <span className="muted">{s.timezone}</span>
                    <StateBadge state={s.enabled ? "enabled" : "disabled"} />
                    <span>
                      next tick <strong title={formatTime(s.next_tick_at)}>{formatRelative(s.next_tick_at)}</strong>
                    </span>
                    <span className="muted small">last {formatRelative(s.last_tick_at)}</span>
                  </div>
                  <Ticks ws={ws} name={s.name} />
                </div>
              ))
            )}
          </Section>
          <Section title="Sensors">
            {sensors.error ? (
              <ErrorBox error={sensors.error} />
            ) : !sensors.data ? (
              <Loading />
            ) : !sensors.data.length ? (
              <span className="muted">no sensors</span>
            ) : (
              <table className="grid-table small">
                <thead>
                  <tr>
                    <th>Sensor</th>
                    <th>Connection</th>
                    <th>Every</th>
                    <th>Last evaluated</th>
                    <th>Last moved</th>
                    <th>Last run</th>
                    <th>Error</th>
                  </tr>
                </thead>
                <tbody>
                  {sensors.data.map((s) => (
                    <tr key={s.id} data-testid="sensor-row" data-name={s.name}>
                      <td>{s.name}{s.enabled ? "" : " (disabled)"}</td>
                      <td>{s.connection}</td>
                      <td>{formatDuration(s.interval_seconds)}</td>
                      <td>{formatRelative(s.last_evaluated_at)}</td>
                      <td>{formatRelative(s.last_moved_at)}</td>
                      <td>{s.last_run_id ? <Link to={`/runs/${s.last_run_id}`} className="mono">{shortId(s.last_run_id)}</Link> : "–"}</td>
                      <td className="bad-text">{s.last_error ?? ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </Section>
        </div>
        <div>
          <Section title="Versions">
            <table className="grid-table small">
              <thead>
                <tr>
                  <th>Version</th>
                  <th>Git</th>
                  <th>Digest</th>
                  <th>Params</th>
                  <th>Registered</th>
                </tr>
              </thead>
              <tbody>
                {job.versions.map((v) => (
                  <tr key={v.id} data-testid="job-version" data-version={v.version}>
                    <td>v{v.version}</td>
                    <td className="mono">{shortSha(v.git_sha)}</td>
                    <td className="mono">{shortDigest(v.digest)}</td>
                    <td>{Object.keys(v.params).join(", ") || "–"}</td>
                    <td>
                      {formatTime(v.created_at)} {v.created_by_name ? `by ${v.created_by_name}` : ""}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </Section>
          <Section title="Recent runs">
            <table className="grid-table small">
              <tbody>
                {job.recent_runs.map((r) => (
                  <tr key={r.id}>
                    <td>
                      <StateBadge state={r.state} />
                    </td>
                    <td>
                      <Link to={`/runs/${r.id}`} className="mono">{shortId(r.id)}</Link>
                    </td>
                    <td>v{r.job?.version}</td>
                    <td>{formatRelative(r.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            {!job.recent_runs.length ? <span className="muted">no runs yet</span> : null}
          </Section>
        </div>
      </div>
    </div>
  );
}
