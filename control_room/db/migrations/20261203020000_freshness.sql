-- Freshness and freshness SLOs (issue 11): how current each dataset is, and a per-job objective
-- whose breach raises the `slo_breached` alert.
--   1. ops.datasets.data_time: every source change made before this moment is in the dataset
--      (the "data time" of Dagster's freshness policies). A phase that knows it says so with a
--      FRESHNESS event naming the datasets (payload `{data_time, source_cursor, datasets}`);
--      the trigger below moves the catalog's data_time forward only, never back, and never past
--      the control plane's clock. `source_cursor` is the newest source change included, in the
--      source's own terms (Odoo: the newest write_date read), shown as it was given.
--      freshness (lag) = now - data_time. An idle source does not make a dataset stale: a run
--      that read it at T proves everything up to T is in.
--   2. ops.jobs.freshness_slo_seconds (default 900: 15 minutes), set with set_job_slo; a job's
--      lag is its stalest dataset's (the datasets whose data_time its runs moved last).
--   3. evaluate_slos (the scheduler calls it each round; pg_cron may on Supabase): a job whose
--      lag passes its SLO turns `breached` and raises `slo_breached` once per breach; back
--      within its SLO it turns `ok` again.
-- docs/jobs.md ("Freshness and SLOs") describes them; docs/contract.md the calls.

-- ---------------------------------------------------------------------------------------------
-- columns
-- ---------------------------------------------------------------------------------------------
alter table ops.datasets
    add column data_time             timestamptz,
    add column source_cursor         text check (length(source_cursor) <= 200),
    add column data_time_run_id      uuid,
    add column data_time_job_id      uuid references ops.jobs (id) on delete set null,
    add column data_time_recorded_at timestamptz;
comment on column ops.datasets.data_time is
    'Every source change before this moment is in the dataset (FRESHNESS events move it forward).';
comment on column ops.datasets.source_cursor is
    'The newest source change included, in the source''s terms (e.g. Odoo''s newest write_date).';
create index datasets_freshness_job_idx on ops.datasets (data_time_job_id, data_time)
    where data_time_job_id is not null;

alter table ops.jobs
    add column freshness_slo_seconds integer not null default 900
        check (freshness_slo_seconds between 60 and 31622400),
    add column slo_state       text not null default 'unknown' check (slo_state in ('unknown', 'ok', 'breached')),
    add column slo_breached_at timestamptz,
    add column slo_checked_at  timestamptz;
comment on column ops.jobs.freshness_slo_seconds is
    'The freshness objective: the job''s stalest dataset at most this many seconds behind its source.';
comment on column ops.jobs.slo_state is
    'What evaluate_slos last found: unknown (no dataset with a data time yet), ok, breached.';

-- ---------------------------------------------------------------------------------------------
-- FRESHNESS events -> the catalog
-- ---------------------------------------------------------------------------------------------
-- The payload is untrusted (any executor of the run's workspace writes it): a FRESHNESS event
-- without data_time is only a log line; one with a malformed data_time, source_cursor or
-- datasets is refused with the whole append (400, naming the field). Only datasets of the run's
-- own workspace are touched.
create function ops_private.record_freshness()
returns trigger
language plpgsql
as $$
declare
    v_now    timestamptz := ops_private.now();
    v_text   text;
    v_time   timestamptz;
    v_cursor text;
    v_names  text[];
    v_job    uuid;
begin
    if pg_catalog.jsonb_typeof(new.payload -> 'data_time') is distinct from 'string' then
        if new.payload ? 'data_time' and new.payload -> 'data_time' <> 'null'::jsonb then
            perform ops_private.fail(400, 'invalid_argument',
                'a FRESHNESS event''s payload.data_time must be an ISO 8601 time with a zone',
                pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
        end if;
        return null;
    end if;
    v_text := new.payload ->> 'data_time';
    if v_text !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$' then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event''s payload.data_time must be an ISO 8601 time with a zone, got '
            || pg_catalog.left(v_text, 60),
            pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
    end if;
    begin
        v_time := v_text::timestamptz;
    exception when others then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event''s payload.data_time is not a valid time: ' || pg_catalog.left(v_text, 60),
            pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
    end;
    if v_time > v_now + interval '5 minutes' then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event''s payload.data_time is in the future (' || pg_catalog.left(v_text, 60)
            || '): a dataset cannot hold changes not made yet',
            pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
    end if;
    v_time := least(v_time, v_now);
    if new.payload ? 'source_cursor' and new.payload -> 'source_cursor' <> 'null'::jsonb then
        if pg_catalog.jsonb_typeof(new.payload -> 'source_cursor') not in ('string', 'number')
           or pg_catalog.length(new.payload ->> 'source_cursor') > 200 then
            perform ops_private.fail(400, 'invalid_argument',
                'a FRESHNESS event''s payload.source_cursor must be a string or number of at most 200 characters',
                pg_catalog.jsonb_build_object('argument', 'events.payload.source_cursor'));
        end if;
        v_cursor := new.payload ->> 'source_cursor';
    end if;
    if pg_catalog.jsonb_typeof(new.payload -> 'datasets') is distinct from 'array'
       or pg_catalog.jsonb_array_length(new.payload -> 'datasets') not between 1 and 1000
       or exists (select 1 from pg_catalog.jsonb_array_elements(new.payload -> 'datasets') e
                  where pg_catalog.jsonb_typeof(e) <> 'string'
                     or (e #>> '{}') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$') then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event with a data_time needs payload.datasets: 1-1000 dataset names (such as gold.odoo.revenue)',
            pg_catalog.jsonb_build_object('argument', 'events.payload.datasets'));
    end if;
    v_names := array(select e #>> '{}' from pg_catalog.jsonb_array_elements(new.payload -> 'datasets') e);
    select v.job_id into v_job
    from ops.runs r join ops.job_versions v on v.id = r.job_version_id
    where r.id = new.run_id;
    update ops.datasets d
       set data_time = v_time, source_cursor = v_cursor, data_time_run_id = new.run_id,
           data_time_job_id = v_job, data_time_recorded_at = v_now
     where d.workspace_id = new.workspace_id and d.name = any (v_names)
       and (d.data_time is null or d.data_time <= v_time);
    return null;
end
$$;

create trigger run_events_freshness after insert on ops.run_events
    for each row when (new.type = 'FRESHNESS')
    execute function ops_private.record_freshness();

-- ---------------------------------------------------------------------------------------------
-- a job's freshness, as the API shows it
-- ---------------------------------------------------------------------------------------------
-- `state` is computed now (unknown: no dataset of the job has a data time yet); `breached_since`
-- is when evaluate_slos last saw it turn breached (the alert's time).
create function ops_private.job_freshness_json(j ops.jobs)
returns jsonb
language plpgsql stable
as $$
declare
    v_now     timestamptz := ops_private.now();
    v_oldest  timestamptz;
    v_lag     double precision;
    v_sets    jsonb;
begin
    select min(d.data_time),
           coalesce(jsonb_agg(jsonb_build_object(
               'name', d.name, 'layer', d.layer, 'data_time', d.data_time,
               'source_cursor', d.source_cursor, 'run_id', d.data_time_run_id,
               'lag_seconds', round(extract(epoch from v_now - d.data_time)::numeric, 1))
               order by d.name), '[]'::jsonb)
      into v_oldest, v_sets
      from (select * from ops.datasets d where d.data_time_job_id = j.id
            order by d.name limit 200) d;
    v_lag := extract(epoch from v_now - v_oldest);
    return jsonb_build_object(
        'slo_seconds', j.freshness_slo_seconds,
        'state', case when v_oldest is null then 'unknown'
                      when v_lag > j.freshness_slo_seconds then 'breached' else 'ok' end,
        'lag_seconds', round(v_lag::numeric, 1),
        'data_time', v_oldest,
        'breached_since', case when j.slo_state = 'breached' then j.slo_breached_at end,
        'checked_at', j.slo_checked_at,
        'datasets', v_sets);
end
$$;

-- job_json (20261203010000_jobs.sql) with `freshness`; the rest as there.
create or replace function ops_private.job_json(j ops.jobs)
returns jsonb
language plpgsql stable
as $$
begin
    return pg_catalog.jsonb_build_object(
        'id', j.id, 'workspace_id', j.workspace_id, 'slug', j.slug, 'description', j.description,
        'owner', j.owner, 'tags', j.tags,
        'created_by', case when ops_private.sees_principals(j.workspace_id) then j.created_by end,
        'created_at', j.created_at, 'updated_at', j.updated_at, 'latest_version', j.latest_version,
        'freshness', ops_private.job_freshness_json(j));
end
$$;

-- ---------------------------------------------------------------------------------------------
-- set_job_slo: the freshness objective of a job (developer or admin)
-- ---------------------------------------------------------------------------------------------
create function ops.set_job_slo(workspace_id text, job text, freshness_seconds integer)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_job ops.jobs := ops_private.find_job(set_job_slo.workspace_id, set_job_slo.job,
                                           array['developer', 'admin'], true);
begin
    if set_job_slo.freshness_seconds is null or set_job_slo.freshness_seconds not between 60 and 31622400 then
        perform ops_private.fail(400, 'invalid_argument',
            'freshness_seconds must be between 60 (1 minute) and 31622400 (366 days), got '
            || coalesce(set_job_slo.freshness_seconds::text, 'nothing'),
            jsonb_build_object('argument', 'freshness_seconds'));
    end if;
    if v_job.freshness_slo_seconds <> set_job_slo.freshness_seconds then
        update ops.jobs j set freshness_slo_seconds = set_job_slo.freshness_seconds,
                              updated_at = ops_private.now()
        where j.id = v_job.id
        returning * into v_job;
        perform ops_private.audit('set_job_slo', v_job.workspace_id, 'job', v_job.id::text,
            jsonb_build_object('job', v_job.slug, 'freshness_seconds', set_job_slo.freshness_seconds));
    end if;
    return ops_private.job_json(v_job);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- evaluate_slos: breaches raise slo_breached once; recoveries reset
-- ---------------------------------------------------------------------------------------------
-- service_role: every workspace (or `workspace_id`'s); a developer or admin: `workspace_id`, or
-- without it every workspace where it is one (as run_due_schedules). Jobs are
-- claimed FOR UPDATE SKIP LOCKED, so two schedulers never raise one breach twice (and the
-- alert's dedupe key, the job and the breach's start, holds even if they did).
create function ops.evaluate_slos(workspace_id text default null, "limit" integer default 1000)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now       timestamptz := ops_private.now();
    v_ws        uuid := ops_private.uuid_arg('workspace_id', evaluate_slos.workspace_id, false);
    v_limit     integer := evaluate_slos."limit";
    v_wss       uuid[];      -- null: every workspace (service_role)
    v_j         ops.jobs;
    v_oldest    timestamptz;
    v_stalest   jsonb;
    v_lag       double precision;
    v_checked   integer := 0;
    v_breached  integer := 0;
    v_recovered integer := 0;
    v_alerts    integer := 0;
    v_changes   jsonb := '[]'::jsonb;
begin
    if v_limit is null or v_limit not between 1 and 10000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 10000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if v_ws is not null then
        perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
        v_wss := array[v_ws];
    elsif not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        v_wss := array(select m.workspace_id from ops.workspace_members m
                       where m.principal_id = ops_private.uid() and m.role in ('developer', 'admin'));
        if cardinality(v_wss) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'evaluate_slos needs a developer or admin of a workspace, or service_role');
        end if;
    end if;
    for v_j in
        select j.* from ops.jobs j
        where (v_wss is null or j.workspace_id = any (v_wss))
          and (j.slo_state <> 'unknown'
               or exists (select 1 from ops.datasets d where d.data_time_job_id = j.id))
        order by j.id
        limit v_limit
        for update skip locked
    loop
        v_checked := v_checked + 1;
        select min(d.data_time),
               coalesce(jsonb_agg(jsonb_build_object('name', d.name, 'data_time', d.data_time)
                                  order by d.data_time, d.name) filter (where d.rn <= 5), '[]'::jsonb)
          into v_oldest, v_stalest
          from (select d.name, d.data_time, row_number() over (order by d.data_time, d.name) as rn
                from ops.datasets d where d.data_time_job_id = v_j.id) d;
        v_lag := extract(epoch from v_now - v_oldest);
        if v_oldest is null then
            update ops.jobs j set slo_state = 'unknown', slo_breached_at = null, slo_checked_at = v_now
            where j.id = v_j.id;
        elsif v_lag > v_j.freshness_slo_seconds then
            if v_j.slo_state <> 'breached' then
                update ops.jobs j set slo_state = 'breached', slo_breached_at = v_now, slo_checked_at = v_now
                where j.id = v_j.id;
                v_breached := v_breached + 1;
                v_alerts := v_alerts + ops_private.raise_alerts(v_j.workspace_id, 'slo_breached',
                    jsonb_build_object('job', v_j.slug, 'breached_at', v_now),
                    jsonb_build_object(
                        'workspace', ops_private.workspace_slug(v_j.workspace_id), 'job', v_j.slug,
                        'message', pg_catalog.format('job %s is %s s behind its source (SLO %s s)',
                                                     v_j.slug, round(v_lag::numeric), v_j.freshness_slo_seconds),
                        'lag_seconds', round(v_lag::numeric, 1), 'slo_seconds', v_j.freshness_slo_seconds,
                        'data_time', v_oldest, 'stalest', v_stalest,
                        'links', jsonb_build_object('cli', 'control-room jobs show ' || v_j.slug)),
                    null, 'slo_breached:' || v_j.id::text || ':'
                          || pg_catalog.to_char(v_now at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
                    null);
                v_changes := v_changes || jsonb_build_object('job', v_j.slug, 'workspace_id', v_j.workspace_id,
                                                             'state', 'breached', 'lag_seconds', round(v_lag::numeric, 1));
            else
                update ops.jobs j set slo_checked_at = v_now where j.id = v_j.id;
            end if;
        else
            if v_j.slo_state <> 'ok' then
                if v_j.slo_state = 'breached' then
                    v_recovered := v_recovered + 1;
                    v_changes := v_changes || jsonb_build_object('job', v_j.slug, 'workspace_id', v_j.workspace_id,
                                                                 'state', 'ok', 'lag_seconds', round(v_lag::numeric, 1));
                end if;
                update ops.jobs j set slo_state = 'ok', slo_breached_at = null, slo_checked_at = v_now
                where j.id = v_j.id;
            else
                update ops.jobs j set slo_checked_at = v_now where j.id = v_j.id;
            end if;
        end if;
    end loop;
    return jsonb_build_object('checked', v_checked, 'breached', v_breached, 'recovered', v_recovered,
                              'alerts', v_alerts, 'changes', v_changes, 'at', v_now);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- grants
-- ---------------------------------------------------------------------------------------------
revoke execute on function ops_private.record_freshness(), ops_private.job_freshness_json(ops.jobs)
    from public, anon, authenticated, service_role;
revoke execute on function ops.set_job_slo(text, text, integer), ops.evaluate_slos(text, integer)
    from public, anon;
grant execute on function ops.set_job_slo(text, text, integer), ops.evaluate_slos(text, integer)
    to authenticated, service_role;
