-- GitHub commit statuses of gate runs (issue 14, docs/github.md).
--   A gate run is a run whose labels carry github_repo ('owner/name') and github_sha (40 hex
--   digits), as the reusable gate workflow creates them (retries and repairs copy the labels, so
--   a repaired gate run reports too). Optional labels: github_context (the status context,
--   default 'control-room/<spec_slug>') and github_run_url (an https URL: the status's target_url).
--   ops.github_statuses   the outbox: one row per GitHub state a gate run reaches (pending while
--                         queued or running, success, failure, error when cancelled), inserted by a
--                         trigger in the SAME transaction as the run's state change. A newer row of
--                         a run supersedes its older undelivered ones, and a run's rows are never
--                         leased twice at once, so GitHub sees them in order. Delivered at least
--                         once by `control-room github deliver` through claim_github_statuses /
--                         record_github_status_delivery (service_role). No token is ever stored:
--                         the deliverer resolves its own GitHub token from a secret reference.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

create table ops.github_statuses (
    id               uuid primary key default gen_random_uuid(),
    seq              bigint generated always as identity unique,
    workspace_id     uuid not null references ops.workspaces (id),
    run_id           uuid not null references ops.runs (id),
    repo             text not null check (repo ~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$'),
    sha              text not null check (sha ~ '^[0-9a-f]{40}$'),
    context          text not null check (length(context) between 1 and 255),
    state            text not null check (state in ('pending', 'success', 'failure', 'error')),
    run_state        text not null,
    description      text not null check (length(description) <= 140),
    target_url       text check (length(target_url) <= 2048),
    created_at       timestamptz not null default now(),
    delivery         text not null default 'pending'
                     check (delivery in ('pending', 'delivering', 'delivered', 'failed', 'superseded')),
    attempts         integer not null default 0,
    max_attempts     integer not null default 8,
    next_attempt_at  timestamptz not null default now(),
    lease_expires_at timestamptz,
    http_status      integer,
    last_error       text check (length(last_error) <= 500),
    delivered_at     timestamptz
);
create index github_statuses_run_idx on ops.github_statuses (run_id, seq desc);
create index github_statuses_workspace_idx on ops.github_statuses (workspace_id, seq desc);
create index github_statuses_due_idx on ops.github_statuses (next_attempt_at) where delivery = 'pending';
create index github_statuses_leased_idx on ops.github_statuses (lease_expires_at) where delivery = 'delivering';

alter table ops.github_statuses enable row level security;
create policy github_statuses_read on ops.github_statuses for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
revoke all on ops.github_statuses from public, anon, authenticated, service_role;
grant select on ops.github_statuses to authenticated, service_role;

-- The GitHub state of a run state.
create function ops_private.github_state(p_run_state text)
returns text
language sql immutable
as $$
    select case p_run_state when 'succeeded' then 'success' when 'failed' then 'failure'
                            when 'cancelled' then 'error' else 'pending' end
$$;

create function ops_private.github_status_json(s ops.github_statuses)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', s.id, 'workspace_id', s.workspace_id, 'run_id', s.run_id, 'repo', s.repo, 'sha', s.sha,
        'context', s.context, 'state', s.state, 'run_state', s.run_state, 'description', s.description,
        'target_url', s.target_url, 'created_at', s.created_at, 'delivery', s.delivery,
        'attempts', s.attempts, 'max_attempts', s.max_attempts,
        'next_attempt_at', case when s.delivery in ('pending', 'delivering') then s.next_attempt_at end,
        'http_status', s.http_status, 'last_error', s.last_error, 'delivered_at', s.delivered_at)
$$;

-- runs: inserted or state changed. Costs two label lookups for a run that is not a gate run.
create function ops_private.github_status_on_run()
returns trigger
language plpgsql
as $$
declare
    v_now     timestamptz := ops_private.now();
    v_repo    text := new.labels ->> 'github_repo';
    v_sha     text := pg_catalog.lower(new.labels ->> 'github_sha');
    v_state   text := ops_private.github_state(new.state);
    v_last    text;
    v_desc    text;
    v_url     text := new.labels ->> 'github_run_url';
    v_context text := coalesce(nullif(new.labels ->> 'github_context', ''), 'control-room/' || new.spec_slug);
    v_secs    numeric;
begin
    if v_repo is null or v_sha is null
       or v_repo !~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$' or v_sha !~ '^[0-9a-f]{40}$' then
        return null;
    end if;
    select s.state into v_last from ops.github_statuses s
    where s.run_id = new.id order by s.seq desc limit 1;
    if v_last is not distinct from v_state then
        return null;                -- queued -> running: still pending
    end if;
    if v_url is not null and (v_url !~ '^https://[^[:space:][:cntrl:]@?#]+$' or pg_catalog.length(v_url) > 2048) then
        v_url := null;
    end if;
    v_secs := pg_catalog.round(extract(epoch from (coalesce(new.finished_at, v_now) - new.started_at))::numeric, 1);
    v_desc := case new.state
        when 'queued' then 'Control Room run queued'
        when 'running' then 'Control Room run running'
        when 'succeeded' then 'Control Room run succeeded' || coalesce(' in ' || v_secs::text || ' s', '')
        when 'failed' then 'Control Room run failed' || coalesce(': phase ' || (new.error ->> 'phase'), '')
        when 'cancelled' then 'Control Room run cancelled'
        else 'Control Room run ' || new.state end;
    update ops.github_statuses s set delivery = 'superseded', next_attempt_at = v_now
    where s.run_id = new.id and s.delivery = 'pending';
    insert into ops.github_statuses (workspace_id, run_id, repo, sha, context, state, run_state, description,
                                     target_url, created_at, next_attempt_at)
    values (new.workspace_id, new.id, v_repo, v_sha, pg_catalog.left(v_context, 255), v_state, new.state,
            pg_catalog.left(v_desc, 140), v_url, v_now, v_now);
    return null;
end
$$;

create trigger runs_github_status_insert after insert on ops.runs
    for each row when (new.labels ? 'github_repo' and new.labels ? 'github_sha')
    execute function ops_private.github_status_on_run();
create trigger runs_github_status_state after update of state on ops.runs
    for each row when (new.labels ? 'github_repo' and new.labels ? 'github_sha'
                       and old.state is distinct from new.state)
    execute function ops_private.github_status_on_run();

create function ops_private.require_github_deliverer(p_fn text)
returns void
language plpgsql stable
as $$
begin
    if not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        perform ops_private.fail(403, 'forbidden',
            p_fn || ' is for the GitHub status deliverer (service_role): members read statuses with list_github_statuses');
    end if;
end
$$;

-- A workspace's statuses, newest first (of one run: run_id). Any member but executors.
create function ops.list_github_statuses(workspace_id text, run_id text default null, "limit" integer default 50)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', list_github_statuses.workspace_id, true);
    v_run uuid := ops_private.uuid_arg('run_id', list_github_statuses.run_id, false);
begin
    perform ops_private.alert_workspace(v_ws, array['viewer', 'developer', 'admin']);
    if list_github_statuses."limit" is null or list_github_statuses."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    return (select coalesce(jsonb_agg(ops_private.github_status_json(s) order by s.seq desc), '[]'::jsonb)
            from (select * from ops.github_statuses s
                  where s.workspace_id = v_ws and (v_run is null or s.run_id = v_run)
                  order by s.seq desc
                  limit list_github_statuses."limit") s);
end
$$;

-- Due pending statuses and delivering ones whose lease expired, oldest first, SKIP LOCKED; never
-- a status of a run another deliverer holds a live lease on (GitHub sees a run's states in order).
create function ops.claim_github_statuses("limit" integer default 20, lease_seconds integer default 60)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_result jsonb;
begin
    perform ops_private.require_github_deliverer('claim_github_statuses');
    if claim_github_statuses."limit" is null or claim_github_statuses."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if claim_github_statuses.lease_seconds is null or claim_github_statuses.lease_seconds not between 5 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 5 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    with due as (
        select s.id from ops.github_statuses s
        where ((s.delivery = 'pending' and s.next_attempt_at <= v_now)
               or (s.delivery = 'delivering' and s.lease_expires_at <= v_now))
          and not exists (select 1 from ops.github_statuses o
                          where o.run_id = s.run_id and o.id <> s.id and o.delivery = 'delivering'
                            and o.lease_expires_at > v_now)
        order by s.next_attempt_at, s.seq
        limit claim_github_statuses."limit"
        for update skip locked
    ), leased as (
        update ops.github_statuses s
        set delivery = 'delivering',
            lease_expires_at = v_now + make_interval(secs => claim_github_statuses.lease_seconds)
        from due where s.id = due.id
        returning s.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', l.id, 'workspace_id', l.workspace_id, 'run_id', l.run_id, 'repo', l.repo, 'sha', l.sha,
               'context', l.context, 'state', l.state, 'description', l.description, 'target_url', l.target_url,
               'created_at', l.created_at, 'attempt', l.attempts + 1, 'max_attempts', l.max_attempts,
               'lease_expires_at', l.lease_expires_at)
             order by l.next_attempt_at, l.seq), '[]'::jsonb)
    into v_result from leased l;
    return v_result;
end
$$;

-- One attempt of a leased status: delivered when ok; else superseded when the run has a newer
-- status, failed when retry is false (GitHub refused it for good: 422) or after max_attempts,
-- otherwise pending again after the backoff (at least retry_after_seconds: a rate limit's reset).
create function ops.record_github_status_delivery(status_id text, ok boolean, http_status integer default null,
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
    v_row   ops.github_statuses;
    v_err   text;
    v_newer boolean;
begin
    perform ops_private.require_github_deliverer('record_github_status_delivery');
    v_id := ops_private.uuid_arg('status_id', record_github_status_delivery.status_id, true);
    if record_github_status_delivery.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    if record_github_status_delivery.http_status is not null
       and record_github_status_delivery.http_status not between 100 and 599 then
        perform ops_private.fail(400, 'invalid_argument', 'http_status must be between 100 and 599',
                                 jsonb_build_object('argument', 'http_status'));
    end if;
    if record_github_status_delivery.retry_after_seconds is not null
       and record_github_status_delivery.retry_after_seconds not between 0 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'retry_after_seconds must be between 0 and 86400',
                                 jsonb_build_object('argument', 'retry_after_seconds'));
    end if;
    select * into v_row from ops.github_statuses s where s.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'github status ' || v_id::text || ' not found',
                                 jsonb_build_object('argument', 'status_id'));
    end if;
    if v_row.delivery <> 'delivering' then
        perform ops_private.fail(409, 'conflict',
            'github status ' || v_id::text || ' is ' || v_row.delivery
            || ', not delivering: claim it with claim_github_statuses first',
            jsonb_build_object('argument', 'status_id', 'delivery', v_row.delivery));
    end if;
    v_err := nullif(ops_private.alert_message(record_github_status_delivery.error), '');
    v_newer := exists (select 1 from ops.github_statuses o
                       where o.run_id = v_row.run_id and o.seq > v_row.seq);
    update ops.github_statuses s
    set attempts = s.attempts + 1,
        lease_expires_at = null,
        http_status = record_github_status_delivery.http_status,
        delivery = case when record_github_status_delivery.ok then 'delivered'
                        when v_newer then 'superseded'
                        when not coalesce(record_github_status_delivery.retry, true)
                             or s.attempts + 1 >= s.max_attempts then 'failed'
                        else 'pending' end,
        delivered_at = case when record_github_status_delivery.ok then v_now end,
        next_attempt_at = case when record_github_status_delivery.ok or v_newer
                                    or not coalesce(record_github_status_delivery.retry, true)
                                    or s.attempts + 1 >= s.max_attempts then s.next_attempt_at
                               else v_now + make_interval(secs => greatest(
                                   ops_private.alert_backoff_seconds(s.attempts + 1),
                                   coalesce(record_github_status_delivery.retry_after_seconds, 0))) end,
        last_error = case when record_github_status_delivery.ok then s.last_error
                          else coalesce(v_err, 'HTTP ' || record_github_status_delivery.http_status::text, 'failed') end
    where s.id = v_row.id
    returning * into v_row;
    return ops_private.github_status_json(v_row);
end
$$;

revoke execute on function ops.list_github_statuses(text, text, integer),
                           ops.claim_github_statuses(integer, integer),
                           ops.record_github_status_delivery(text, boolean, integer, text, boolean, integer),
                           ops_private.github_state(text),
                           ops_private.github_status_json(ops.github_statuses),
                           ops_private.github_status_on_run(),
                           ops_private.require_github_deliverer(text)
    from public, anon, authenticated, service_role;
grant execute on function ops.list_github_statuses(text, text, integer),
                          ops.claim_github_statuses(integer, integer),
                          ops.record_github_status_delivery(text, boolean, integer, text, boolean, integer)
    to authenticated, service_role;
