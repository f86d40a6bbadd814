-- GitHub check runs of gate runs (issue 14, docs/github.md "Check runs").
--   ops.github_check_runs   one row per gate run and context (the check run's name): the check run
--                           GitHub should show (status queued / in_progress / completed, its
--                           conclusion success / failure / cancelled), kept current by a trigger
--                           on ops.runs in the SAME transaction as the run's change (queued ->
--                           running too, which commit statuses do not post). `version` counts
--                           those changes; the deliverer (`control-room github deliver --as
--                           check-runs`) leases the row, creates the check run on GitHub (POST
--                           /repos/{owner}/{repo}/check-runs) or updates it (PATCH .../{id}),
--                           and records GitHub's check run id here so every later state PATCHes
--                           the same check run. One row per run: a run's check is never leased
--                           to two deliverers at once, and a newer state simply replaces an
--                           undelivered older one. No token is ever stored.
--   list_github_statuses    each status also says the check run id and URL of its run, if any.
-- Commit statuses (ops.github_statuses, 20261203020500) are unchanged: still one row per GitHub
-- state, so queued -> running posts no second pending status.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

create table ops.github_check_runs (
    id                uuid primary key default gen_random_uuid(),
    seq               bigint generated always as identity unique,
    workspace_id      uuid not null references ops.workspaces (id),
    run_id            uuid not null references ops.runs (id),
    repo              text not null check (repo ~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$'),
    sha               text not null check (sha ~ '^[0-9a-f]{40}$'),
    context           text not null check (length(context) between 1 and 255),
    details_url       text check (length(details_url) <= 2048),
    run_state         text not null,
    status            text not null check (status in ('queued', 'in_progress', 'completed')),
    conclusion        text check (conclusion in ('success', 'failure', 'cancelled')),
    title             text not null check (length(title) <= 140),
    started_at        timestamptz,
    completed_at      timestamptz,
    version           integer not null default 1,
    delivered_version integer not null default 0,
    leased_version    integer,
    check_run_id      bigint check (check_run_id > 0),
    html_url          text check (length(html_url) <= 2048),
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    delivery          text not null default 'pending'
                      check (delivery in ('pending', 'delivering', 'delivered', 'failed')),
    claims            integer not null default 0,
    attempts          integer not null default 0,
    max_attempts      integer not null default 8,
    next_attempt_at   timestamptz not null default now(),
    lease_expires_at  timestamptz,
    http_status       integer,
    last_error        text check (length(last_error) <= 500),
    delivered_at      timestamptz,
    unique (run_id, context)
);
create index github_check_runs_workspace_idx on ops.github_check_runs (workspace_id, seq desc);
create index github_check_runs_due_idx on ops.github_check_runs (next_attempt_at) where delivery = 'pending';
create index github_check_runs_leased_idx on ops.github_check_runs (lease_expires_at) where delivery = 'delivering';

alter table ops.github_check_runs enable row level security;
create policy github_check_runs_read on ops.github_check_runs for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
revoke all on ops.github_check_runs from public, anon, authenticated, service_role;
grant select on ops.github_check_runs to authenticated, service_role;

create function ops_private.github_check_run_json(c ops.github_check_runs)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', c.id, 'workspace_id', c.workspace_id, 'run_id', c.run_id, 'repo', c.repo, 'sha', c.sha,
        'context', c.context, 'details_url', c.details_url, 'run_state', c.run_state, 'status', c.status,
        'conclusion', c.conclusion, 'title', c.title, 'started_at', c.started_at,
        'completed_at', c.completed_at, 'version', c.version, 'delivered_version', c.delivered_version,
        'check_run_id', c.check_run_id, 'html_url', c.html_url, 'created_at', c.created_at,
        'updated_at', c.updated_at, 'delivery', c.delivery, 'attempts', c.attempts,
        'max_attempts', c.max_attempts,
        'next_attempt_at', case when c.delivery in ('pending', 'delivering') then c.next_attempt_at end,
        'http_status', c.http_status, 'last_error', c.last_error, 'delivered_at', c.delivered_at)
$$;

-- A commit status with its run's check run (id and URL; null before one was created).
create or replace function ops_private.github_status_json(s ops.github_statuses)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', s.id, 'workspace_id', s.workspace_id, 'run_id', s.run_id, 'repo', s.repo, 'sha', s.sha,
        'context', s.context, 'state', s.state, 'run_state', s.run_state, 'description', s.description,
        'target_url', s.target_url, 'created_at', s.created_at, 'delivery', s.delivery,
        'attempts', s.attempts, 'max_attempts', s.max_attempts,
        'next_attempt_at', case when s.delivery in ('pending', 'delivering') then s.next_attempt_at end,
        'http_status', s.http_status, 'last_error', s.last_error, 'delivered_at', s.delivered_at,
        'check_run_id', (select c.check_run_id from ops.github_check_runs c
                         where c.run_id = s.run_id and c.context = s.context),
        'check_run_url', (select c.html_url from ops.github_check_runs c
                          where c.run_id = s.run_id and c.context = s.context))
$$;

-- runs: inserted or state changed (queued -> running included). Costs two label lookups for a
-- run that is not a gate run.
create function ops_private.github_check_run_on_run()
returns trigger
language plpgsql
as $$
declare
    v_now        timestamptz := ops_private.now();
    v_repo       text := new.labels ->> 'github_repo';
    v_sha        text := pg_catalog.lower(new.labels ->> 'github_sha');
    v_url        text := new.labels ->> 'github_run_url';
    v_context    text := pg_catalog.left(coalesce(nullif(new.labels ->> 'github_context', ''),
                                                  'control-room/' || new.spec_slug), 255);
    v_status     text;
    v_conclusion text;
    v_title      text;
    v_secs       numeric;
begin
    if v_repo is null or v_sha is null
       or v_repo !~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$' or v_sha !~ '^[0-9a-f]{40}$' then
        return null;
    end if;
    if v_url is not null and (v_url !~ '^https://[^[:space:][:cntrl:]@?#]+$' or pg_catalog.length(v_url) > 2048) then
        v_url := null;
    end if;
    v_status := case when new.state in ('succeeded', 'failed', 'cancelled') then 'completed'
                     when new.state = 'running' then 'in_progress' else 'queued' end;
    v_conclusion := case new.state when 'succeeded' then 'success' when 'failed' then 'failure'
                                   when 'cancelled' then 'cancelled' end;
    v_secs := pg_catalog.round(extract(epoch from (coalesce(new.finished_at, v_now) - new.started_at))::numeric, 1);
    v_title := case new.state
        when 'queued' then 'Control Room run queued'
        when 'running' then 'Control Room run running'
        when 'succeeded' then 'Control Room run succeeded' || coalesce(' in ' || v_secs::text || ' s', '')
        when 'failed' then 'Control Room run failed' || coalesce(': phase ' || (new.error ->> 'phase'), '')
        when 'cancelled' then 'Control Room run cancelled'
        else 'Control Room run ' || new.state end;
    insert into ops.github_check_runs as c
        (workspace_id, run_id, repo, sha, context, details_url, run_state, status, conclusion, title,
         started_at, completed_at, created_at, updated_at, next_attempt_at)
    values (new.workspace_id, new.id, v_repo, v_sha, v_context, v_url, new.state, v_status, v_conclusion,
            pg_catalog.left(v_title, 140), coalesce(new.started_at, new.created_at, v_now),
            case when v_status = 'completed' then coalesce(new.finished_at, v_now) end, v_now, v_now, v_now)
    on conflict (run_id, context) do update
    set run_state = excluded.run_state, status = excluded.status, conclusion = excluded.conclusion,
        title = excluded.title, started_at = excluded.started_at, completed_at = excluded.completed_at,
        details_url = excluded.details_url, version = c.version + 1, updated_at = v_now,
        -- a leased row stays leased (its deliverer records the attempt, then the new version is
        -- due at once); otherwise the new state is due now with fresh attempts
        delivery = case when c.delivery = 'delivering' then 'delivering' else 'pending' end,
        attempts = case when c.delivery = 'delivering' then c.attempts else 0 end,
        next_attempt_at = case when c.delivery = 'delivering' then c.next_attempt_at else v_now end;
    return null;
end
$$;

create trigger runs_github_check_run_insert after insert on ops.runs
    for each row when (new.labels ? 'github_repo' and new.labels ? 'github_sha')
    execute function ops_private.github_check_run_on_run();
create trigger runs_github_check_run_state after update of state on ops.runs
    for each row when (new.labels ? 'github_repo' and new.labels ? 'github_sha'
                       and old.state is distinct from new.state)
    execute function ops_private.github_check_run_on_run();

-- A workspace's check runs, newest first (of one run: run_id). Any member but executors.
create function ops.list_github_check_runs(workspace_id text, run_id text default null, "limit" integer default 50)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', list_github_check_runs.workspace_id, true);
    v_run uuid := ops_private.uuid_arg('run_id', list_github_check_runs.run_id, false);
begin
    perform ops_private.alert_workspace(v_ws, array['viewer', 'developer', 'admin']);
    if list_github_check_runs."limit" is null or list_github_check_runs."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    return (select coalesce(jsonb_agg(ops_private.github_check_run_json(c) order by c.seq desc), '[]'::jsonb)
            from (select * from ops.github_check_runs c
                  where c.workspace_id = v_ws and (v_run is null or c.run_id = v_run)
                  order by c.seq desc
                  limit list_github_check_runs."limit") c);
end
$$;

-- Due pending check runs and delivering ones whose lease expired, oldest first, SKIP LOCKED. One
-- row per run and context: a run's check is never leased to two deliverers at once.
create function ops.claim_github_check_runs("limit" integer default 20, lease_seconds integer default 60)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_result jsonb;
begin
    perform ops_private.require_github_deliverer('claim_github_check_runs');
    if claim_github_check_runs."limit" is null or claim_github_check_runs."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if claim_github_check_runs.lease_seconds is null
       or claim_github_check_runs.lease_seconds not between 5 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 5 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    with due as (
        select c.id from ops.github_check_runs c
        where (c.delivery = 'pending' and c.next_attempt_at <= v_now)
           or (c.delivery = 'delivering' and c.lease_expires_at <= v_now)
        order by c.next_attempt_at, c.seq
        limit claim_github_check_runs."limit"
        for update skip locked
    ), leased as (
        update ops.github_check_runs c
        set delivery = 'delivering', leased_version = c.version, claims = c.claims + 1,
            lease_expires_at = v_now + make_interval(secs => claim_github_check_runs.lease_seconds)
        from due where c.id = due.id
        returning c.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', l.id, 'workspace_id', l.workspace_id, 'run_id', l.run_id, 'repo', l.repo, 'sha', l.sha,
               'context', l.context, 'external_id', l.run_id::text, 'details_url', l.details_url,
               'run_state', l.run_state, 'status', l.status, 'conclusion', l.conclusion, 'title', l.title,
               'started_at', l.started_at, 'completed_at', l.completed_at, 'version', l.version,
               'check_run_id', l.check_run_id, 'html_url', l.html_url, 'claims', l.claims,
               'attempt', l.attempts + 1, 'max_attempts', l.max_attempts,
               'lease_expires_at', l.lease_expires_at)
             order by l.next_attempt_at, l.seq), '[]'::jsonb)
    into v_result from leased l;
    return v_result;
end
$$;

-- One attempt of a leased check run (of the version claimed). check_run / html_url: GitHub's id
-- and page of the check run (created, or found by its external_id; the argument is not named
-- *_id, which are uuids), remembered even when the attempt failed after it. Then: when the run
-- changed meanwhile (a newer version), pending again at once (at least retry_after_seconds); else
-- delivered when ok, failed when retry is false (422, 404, a 403 the token's permissions explain)
-- or after max_attempts, otherwise pending after the backoff.
create function ops.record_github_check_run_delivery(check_id text, version integer, ok boolean,
                                                     check_run bigint default null,
                                                     html_url text default null,
                                                     http_status integer default null,
                                                     error text default null, retry boolean default true,
                                                     retry_after_seconds integer default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_id    uuid;
    v_row   ops.github_check_runs;
    v_err   text;
    v_newer boolean;
    v_final boolean;
    v_wait  integer := coalesce(record_github_check_run_delivery.retry_after_seconds, 0);
begin
    perform ops_private.require_github_deliverer('record_github_check_run_delivery');
    v_id := ops_private.uuid_arg('check_id', record_github_check_run_delivery.check_id, true);
    if record_github_check_run_delivery.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    if record_github_check_run_delivery.version is null or record_github_check_run_delivery.version < 1 then
        perform ops_private.fail(400, 'invalid_argument', 'version is required (the claimed version, at least 1)',
                                 jsonb_build_object('argument', 'version'));
    end if;
    if record_github_check_run_delivery.check_run is not null and record_github_check_run_delivery.check_run < 1 then
        perform ops_private.fail(400, 'invalid_argument', 'check_run must be a positive integer (GitHub''s check run id)',
                                 jsonb_build_object('argument', 'check_run'));
    end if;
    if record_github_check_run_delivery.html_url is not null
       and (record_github_check_run_delivery.html_url !~ '^https?://[^[:space:][:cntrl:]@]+$'
            or pg_catalog.length(record_github_check_run_delivery.html_url) > 2048) then
        perform ops_private.fail(400, 'invalid_argument', 'html_url must be an http(s) URL without user info (at most 2048 characters)',
                                 jsonb_build_object('argument', 'html_url'));
    end if;
    if record_github_check_run_delivery.http_status is not null
       and record_github_check_run_delivery.http_status not between 100 and 599 then
        perform ops_private.fail(400, 'invalid_argument', 'http_status must be between 100 and 599',
                                 jsonb_build_object('argument', 'http_status'));
    end if;
    if record_github_check_run_delivery.retry_after_seconds is not null
       and record_github_check_run_delivery.retry_after_seconds not between 0 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'retry_after_seconds must be between 0 and 86400',
                                 jsonb_build_object('argument', 'retry_after_seconds'));
    end if;
    select * into v_row from ops.github_check_runs c where c.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'github check run ' || v_id::text || ' not found',
                                 jsonb_build_object('argument', 'check_id'));
    end if;
    if v_row.delivery <> 'delivering' or v_row.leased_version is distinct from record_github_check_run_delivery.version then
        perform ops_private.fail(409, 'conflict',
            'github check run ' || v_id::text || ' is ' || v_row.delivery
            || case when v_row.delivery = 'delivering' then ' of version ' || v_row.leased_version::text else '' end
            || ', not delivering version ' || record_github_check_run_delivery.version::text
            || ': claim it with claim_github_check_runs first',
            jsonb_build_object('argument', 'check_id', 'delivery', v_row.delivery));
    end if;
    v_err := nullif(ops_private.alert_message(record_github_check_run_delivery.error), '');
    v_newer := v_row.version > v_row.leased_version;
    v_final := not coalesce(record_github_check_run_delivery.retry, true) or v_row.attempts + 1 >= v_row.max_attempts;
    update ops.github_check_runs c
    set attempts = case when v_newer then 0 else c.attempts + 1 end,
        lease_expires_at = null,
        leased_version = null,
        check_run_id = coalesce(record_github_check_run_delivery.check_run, c.check_run_id),
        html_url = coalesce(record_github_check_run_delivery.html_url, c.html_url),
        http_status = record_github_check_run_delivery.http_status,
        delivered_version = case when record_github_check_run_delivery.ok then v_row.leased_version
                                 else c.delivered_version end,
        delivery = case when v_newer then 'pending'
                        when record_github_check_run_delivery.ok then 'delivered'
                        when v_final then 'failed'
                        else 'pending' end,
        delivered_at = case when record_github_check_run_delivery.ok then v_now else c.delivered_at end,
        next_attempt_at = case when v_newer then v_now + make_interval(secs => v_wait)
                               when record_github_check_run_delivery.ok or v_final then c.next_attempt_at
                               else v_now + make_interval(secs => greatest(
                                   ops_private.alert_backoff_seconds(c.attempts + 1), v_wait)) end,
        last_error = case when record_github_check_run_delivery.ok then null
                          else coalesce(v_err, 'HTTP ' || record_github_check_run_delivery.http_status::text, 'failed') end
    where c.id = v_row.id
    returning * into v_row;
    return ops_private.github_check_run_json(v_row);
end
$$;

revoke execute on function ops.list_github_check_runs(text, text, integer),
                           ops.claim_github_check_runs(integer, integer),
                           ops.record_github_check_run_delivery(text, integer, boolean, bigint, text, integer,
                                                                text, boolean, integer),
                           ops_private.github_check_run_json(ops.github_check_runs),
                           ops_private.github_status_json(ops.github_statuses),
                           ops_private.github_check_run_on_run()
    from public, anon, authenticated, service_role;
grant execute on function ops.list_github_check_runs(text, text, integer),
                          ops.claim_github_check_runs(integer, integer),
                          ops.record_github_check_run_delivery(text, integer, boolean, bigint, text, integer,
                                                               text, boolean, integer)
    to authenticated, service_role;
