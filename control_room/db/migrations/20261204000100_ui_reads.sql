-- Reads for the web UI (issue 13), and the change feed it listens to. docs/ui.md ("Server side").
--
--   ops.list_runs        + job_slug, git_sha (a prefix of >= 4 hex digits), env, created_after,
--                          created_before (one overload: the old one is dropped, its argument names
--                          keep working)
--   ops.list_events      + before (the page just before a seq, ascending), types, levels, text (a
--                          case-insensitive substring of the message); answers prev_before too
--   ops.get_run_timeline   each phase's attempts (claimed, ended, outcome) from lifecycle events
--   ops.get_run_grid       the runs x phases grid of a job's (or spec's) recent runs
--   ops.get_run_lineage    inputs -> phase -> outputs, from what the run recorded
--   ops.get_health         queue, lease expiries, outcomes and durations over time, freshness,
--                          alerts and dead letters of a workspace
--
-- Every one is SECURITY INVOKER: row level security decides what the caller sees; a run or a
-- workspace the caller cannot see is a 404, a bad argument a 400 invalid_argument naming it.
--
-- The change feed: a statement-level trigger on ops.run_events notifies `ops_run_changes` with
-- '<workspace id> <run id> <highest seq>' once per run per statement; the gateway LISTENs on one
-- connection and serves /feed/v1/changes (control_room/gateway/feed.py). On Supabase, Realtime's
-- postgres_changes on ops.run_events does the same job.
--
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

-- -------------------------------------------------------------------------------------------
-- indexes (figures: docs/ui.md, "Server side")

-- the lifecycle events of a run (the timeline reads only these, however many events it has)
create index run_events_lifecycle_idx on ops.run_events (run_id, seq)
    where type in ('PHASE_CLAIMED', 'PHASE_STARTED', 'PHASE_SUCCEEDED', 'PHASE_FAILED', 'LEASE_EXPIRED',
                   'PHASE_CANCELLED', 'PHASE_STOPPED');
-- the event log filtered by phase, or by type, stays an index range in seq order
create index run_events_phase_idx on ops.run_events (run_id, phase, seq) where phase is not null;
create index run_events_run_type_idx on ops.run_events (run_id, type, seq);
-- the few warnings and errors of a big run
create index run_events_problems_idx on ops.run_events (run_id, seq) where level in ('warning', 'error');
-- finished phases over time (get_health)
create index phases_finished_idx on ops.phases (workspace_id, finished_at)
    where state in ('succeeded', 'failed');

-- -------------------------------------------------------------------------------------------
-- helpers

-- a workspace the caller may read (service role: any that exists); else a 404
create function ops_private.readable_workspace(p_workspace uuid)
returns void
language plpgsql stable
as $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found',
                                 pg_catalog.jsonb_build_object('argument', 'workspace_id'));
    end if;
end
$$;

-- an ISO 8601 time argument (text, as list_dead_letters takes `since`), or a 400 naming it
create function ops_private.time_arg(p_name text, p_value text)
returns timestamptz
language plpgsql stable
as $$
declare
    v_t timestamptz;
begin
    if p_value is null then
        return null;
    end if;
    if p_value !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$' then
        perform ops_private.fail(400, 'invalid_argument', p_name || ' must be an ISO 8601 time',
                                 pg_catalog.jsonb_build_object('argument', p_name));
    end if;
    begin
        v_t := p_value::timestamptz;
    exception when others then
        perform ops_private.fail(400, 'invalid_argument', p_name || ' must be an ISO 8601 time',
                                 pg_catalog.jsonb_build_object('argument', p_name));
    end;
    return v_t;
end
$$;

-- a limit argument between 1 and p_max
create function ops_private.limit_arg(p_name text, p_value integer, p_max integer)
returns void
language plpgsql immutable
as $$
begin
    if p_value is null or p_value not between 1 and p_max then
        perform ops_private.fail(400, 'invalid_argument', p_name || ' must be between 1 and ' || p_max,
                                 pg_catalog.jsonb_build_object('argument', p_name));
    end if;
end
$$;

-- -------------------------------------------------------------------------------------------
-- list_runs: one overload, more filters

drop function ops.list_runs(text, text, text, jsonb, text, integer, text);

create function ops.list_runs(workspace_id text default null, state text default null, spec_slug text default null,
                              labels jsonb default null, parent_run_id text default null,
                              "limit" integer default 50, cursor text default null,
                              job_slug text default null, git_sha text default null, env text default null,
                              created_after text default null, created_before text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws     uuid := ops_private.uuid_arg('workspace_id', list_runs.workspace_id);
    v_parent uuid := ops_private.uuid_arg('parent_run_id', list_runs.parent_run_id);
    v_at     timestamptz;
    v_id     uuid;
    v_rows   jsonb[] := '{}';
    v_item   jsonb;
    v_bytes  bigint := 0;
    v_more   boolean := false;
    v_last_at timestamptz;
    v_last_id uuid;
    v_x      record;
    v_jobs   uuid[];
    v_sha    text;
    v_after  timestamptz := ops_private.time_arg('created_after', list_runs.created_after);
    v_before timestamptz := ops_private.time_arg('created_before', list_runs.created_before);
    v_admin  uuid[] := case when ops_private.is_privileged() then null
                            else array(select ops_private.admin_workspaces()) end;
begin
    perform ops_private.limit_arg('limit', list_runs."limit", 500);
    if list_runs.state is not null and list_runs.state not in ('queued', 'running', 'succeeded', 'failed', 'cancelled') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of queued, running, succeeded, failed, cancelled',
            jsonb_build_object('argument', 'state'));
    end if;
    perform ops_private.check_object('labels', list_runs.labels);
    if list_runs.cursor is not null then
        if list_runs.cursor !~ '^\d{1,16}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
            perform ops_private.fail(400, 'invalid_argument', 'cursor is not one this function returned',
                                     jsonb_build_object('argument', 'cursor'));
        end if;
        v_at := to_timestamp(split_part(list_runs.cursor, ':', 1)::numeric / 1000000);
        v_id := split_part(list_runs.cursor, ':', 2)::uuid;
    end if;
    if list_runs.job_slug is not null then
        if length(list_runs.job_slug) > 200 then
            perform ops_private.fail(400, 'invalid_argument', 'job_slug must be at most 200 characters',
                                     jsonb_build_object('argument', 'job_slug'));
        end if;
        v_jobs := array(select v.id from ops.job_versions v join ops.jobs j on j.id = v.job_id
                        where j.slug = list_runs.job_slug and (v_ws is null or j.workspace_id = v_ws));
    end if;
    if list_runs.git_sha is not null then
        if list_runs.git_sha !~ '^[0-9A-Fa-f]{4,64}$' then
            perform ops_private.fail(400, 'invalid_argument',
                'git_sha must be a prefix of at least 4 hexadecimal digits',
                jsonb_build_object('argument', 'git_sha'));
        end if;
        v_sha := lower(list_runs.git_sha);
    end if;
    if list_runs.env is not null and length(list_runs.env) > 64 then
        perform ops_private.fail(400, 'invalid_argument', 'env must be at most 64 characters',
                                 jsonb_build_object('argument', 'env'));
    end if;
    if v_after is not null and v_before is not null and v_after >= v_before then
        perform ops_private.fail(400, 'invalid_argument', 'created_after must be before created_before',
                                 jsonb_build_object('argument', 'created_after'));
    end if;
    -- a page holds at most `limit` runs and about 1 MiB: the run that passes the byte budget
    -- ends the page (it comes first on the next one)
    for v_x in
        select r.id, r.created_at, r.workspace_id from ops.runs r
        where (v_ws is null or r.workspace_id = v_ws)
          and (list_runs.state is null or r.state = list_runs.state)
          and (list_runs.spec_slug is null or r.spec_slug = list_runs.spec_slug)
          and (list_runs.labels is null or r.labels @> list_runs.labels)
          and (v_parent is null or r.parent_run_id = v_parent)
          and (v_jobs is null or r.job_version_id = any (v_jobs))
          and (v_sha is null or left(r.git_sha, length(v_sha)) = v_sha)
          and (list_runs.env is null or r.env = list_runs.env)
          and (v_after is null or r.created_at >= v_after)
          and (v_before is null or r.created_at < v_before)
          and (v_at is null or (r.created_at, r.id) < (v_at, v_id))
        order by r.created_at desc, r.id desc
        limit list_runs."limit"
    loop
        v_item := ops_private.run_summary_json(v_x.id, v_admin is null or v_x.workspace_id = any (v_admin));
        v_bytes := v_bytes + pg_catalog.octet_length(v_item::text);
        if v_bytes > 1048576 and cardinality(v_rows) > 0 then
            v_more := true;
            exit;
        end if;
        v_rows := v_rows || v_item;
        v_last_at := v_x.created_at;
        v_last_id := v_x.id;
    end loop;
    return jsonb_build_object('runs', pg_catalog.to_jsonb(v_rows),
        'next_cursor', case when v_more or cardinality(v_rows) = list_runs."limit" then
            (extract(epoch from v_last_at) * 1000000)::bigint::text || ':' || v_last_id::text end);
end
$$;

-- -------------------------------------------------------------------------------------------
-- list_events: pages both ways, filters

drop function ops.list_events(text, bigint, integer, text);

create function ops.list_events(run_id text, after bigint default 0, "limit" integer default 100,
                                phase text default null, before bigint default null,
                                types text[] default null, levels text[] default null,
                                text text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run    uuid := ops_private.uuid_arg('run_id', list_events.run_id, true);
    v_ws     uuid;
    v_sees   boolean;
    v_pat    text;
    v_events jsonb;
begin
    perform ops_private.limit_arg('limit', list_events."limit", 1000);
    if list_events.after is null or list_events.after < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'after must be a sequence number >= 0',
                                 jsonb_build_object('argument', 'after'));
    end if;
    if list_events.before is not null and list_events.before < 1 then
        perform ops_private.fail(400, 'invalid_argument', 'before must be a sequence number >= 1',
                                 jsonb_build_object('argument', 'before'));
    end if;
    if list_events.types is not null and (cardinality(list_events.types) not between 1 and 50
            or exists (select 1 from unnest(list_events.types) t where t is null or t !~ '^[A-Z][A-Z0-9_]{0,63}$')) then
        perform ops_private.fail(400, 'invalid_argument',
            'types must be 1 to 50 event types (upper case, such as PHASE_FAILED)',
            jsonb_build_object('argument', 'types'));
    end if;
    if list_events.levels is not null and (cardinality(list_events.levels) not between 1 and 4
            or exists (select 1 from unnest(list_events.levels) l
                       where l is null or l not in ('debug', 'info', 'warning', 'error'))) then
        perform ops_private.fail(400, 'invalid_argument', 'levels must be some of debug, info, warning, error',
                                 jsonb_build_object('argument', 'levels'));
    end if;
    if list_events.text is not null then
        if length(list_events.text) not between 1 and 200 then
            perform ops_private.fail(400, 'invalid_argument', 'text must be 1 to 200 characters',
                                     jsonb_build_object('argument', 'text'));
        end if;
        v_pat := '%' || replace(replace(replace(list_events.text, '\', '\\'), '%', '\%'), '_', '\_') || '%';
    end if;
    if list_events.phase is not null and length(list_events.phase) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'phase must be at most 200 characters',
                                 jsonb_build_object('argument', 'phase'));
    end if;
    select r.workspace_id into v_ws from ops.runs r where r.id = v_run;
    if v_ws is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    v_sees := ops_private.sees_principals(v_ws);
    -- two statements rather than one with an order picked at run time: each is an index range
    -- in seq order (the primary key, or run_events_phase_idx / _run_type_idx / _problems_idx)
    if list_events.before is null then
        select coalesce(jsonb_agg(ops_private.event_json(e, v_sees) order by e.seq), '[]'::jsonb)
        into v_events
        from (select * from ops.run_events e
              where e.run_id = v_run and e.seq > list_events.after
                and (list_events.phase is null or e.phase = list_events.phase)
                and (list_events.types is null or e.type = any (list_events.types))
                and (list_events.levels is null or e.level = any (list_events.levels))
                and (v_pat is null or e.message ilike v_pat)
              order by e.seq
              limit list_events."limit") e;
    else
        select coalesce(jsonb_agg(ops_private.event_json(e, v_sees) order by e.seq), '[]'::jsonb)
        into v_events
        from (select * from ops.run_events e
              where e.run_id = v_run and e.seq > list_events.after and e.seq < list_events.before
                and (list_events.phase is null or e.phase = list_events.phase)
                and (list_events.types is null or e.type = any (list_events.types))
                and (list_events.levels is null or e.level = any (list_events.levels))
                and (v_pat is null or e.message ilike v_pat)
              order by e.seq desc
              limit list_events."limit") e;
    end if;
    return jsonb_build_object('events', v_events,
        'next_after', coalesce((v_events -> -1 ->> 'seq')::bigint, list_events.after),
        'prev_before', (v_events -> 0 ->> 'seq')::bigint);
end
$$;

-- one event as the API shows it (who claimed a phase only to those who see principals)
create function ops_private.event_json(e ops.run_events, p_sees boolean)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'seq', e.seq, 'event_id', e.event_id, 'run_id', e.run_id, 'phase', e.phase, 'attempt', e.attempt,
        'ts', e.ts, 'recorded_at', e.recorded_at, 'level', e.level, 'type', e.type,
        'message', e.message,
        -- events written before names replaced ids in claimed_by keep an id: hidden too
        'payload', case when not p_sees and e.type in ('PHASE_CLAIMED', 'LEASE_EXPIRED')
                             and e.payload ->> 'claimed_by' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                        then e.payload || '{"claimed_by": null}'::jsonb else e.payload end,
        'principal_id', case when p_sees then e.principal_id end)
$$;

-- -------------------------------------------------------------------------------------------
-- get_run_timeline

create function ops.get_run_timeline(run_id text)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run uuid := ops_private.uuid_arg('run_id', get_run_timeline.run_id, true);
    v_out jsonb;
begin
    if not exists (select 1 from ops.runs r where r.id = v_run) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    -- each claim opens an attempt (started: the worker's PHASE_STARTED, else the claim); the
    -- first end event of that phase and attempt after it closes it (a lease expiry is recorded
    -- before the failure it leads to, so it wins)
    with ev as (
        select e.phase, e.attempt, e.type, e.ts, e.seq,
               count(*) filter (where e.type = 'PHASE_CLAIMED')
                   over (partition by e.phase, e.attempt order by e.seq) as claim_no
        from ops.run_events e
        where e.run_id = v_run and e.phase is not null
          and e.type in ('PHASE_CLAIMED', 'PHASE_STARTED', 'PHASE_SUCCEEDED', 'PHASE_FAILED', 'LEASE_EXPIRED',
                         'PHASE_CANCELLED', 'PHASE_STOPPED')
    ), att as (
        select ev.phase, ev.attempt, ev.claim_no,
               min(ev.ts) filter (where ev.type = 'PHASE_CLAIMED') as claimed_at,
               min(ev.ts) filter (where ev.type = 'PHASE_STARTED') as started_at,
               (array_agg(ev.type order by ev.seq) filter (where ev.type not in ('PHASE_CLAIMED', 'PHASE_STARTED')))[1] as end_type,
               (array_agg(ev.ts order by ev.seq) filter (where ev.type not in ('PHASE_CLAIMED', 'PHASE_STARTED')))[1] as ended_at,
               min(ev.seq) as first_seq
        from ev where ev.claim_no > 0
        group by ev.phase, ev.attempt, ev.claim_no
    )
    select jsonb_build_object('run_id', v_run, 'phases', coalesce(jsonb_agg(jsonb_build_object(
               'name', p.name, 'kind', p.kind, 'state', p.state,
               'attempts', coalesce((
                   select jsonb_agg(jsonb_build_object(
                              'attempt', a.attempt, 'claimed_at', a.claimed_at,
                              'started_at', coalesce(a.started_at, a.claimed_at),
                              'ended_at', a.ended_at,
                              'outcome', case a.end_type
                                  when 'PHASE_SUCCEEDED' then 'succeeded'
                                  when 'PHASE_FAILED' then 'failed'
                                  when 'LEASE_EXPIRED' then 'lease_expired'
                                  when 'PHASE_CANCELLED' then 'cancelled'
                                  when 'PHASE_STOPPED' then 'cancelled'
                                  else case when p.state = 'running' and a.attempt = p.attempt then 'running'
                                            when p.state in ('succeeded', 'failed', 'cancelled') and a.attempt = p.attempt
                                                then p.state
                                            else 'failed' end
                                  end) order by a.first_seq)
                   from att a where a.phase = p.name), '[]'::jsonb))
               order by p.ordinal), '[]'::jsonb))
    into v_out
    from ops.phases p where p.run_id = v_run;
    return v_out;
end
$$;

-- -------------------------------------------------------------------------------------------
-- get_run_grid

create function ops.get_run_grid(workspace_id text, job_slug text default null, spec_slug text default null,
                                 "limit" integer default 25)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws   uuid := ops_private.uuid_arg('workspace_id', get_run_grid.workspace_id, true);
    v_jobs uuid[];
    v_runs uuid[];
begin
    perform ops_private.limit_arg('limit', get_run_grid."limit", 100);
    if get_run_grid.job_slug is not null and get_run_grid.spec_slug is not null then
        perform ops_private.fail(400, 'invalid_argument', 'give job_slug or spec_slug, not both',
                                 jsonb_build_object('argument', 'spec_slug'));
    end if;
    if length(get_run_grid.job_slug) > 200 or length(get_run_grid.spec_slug) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'a slug is at most 200 characters',
            jsonb_build_object('argument', case when length(get_run_grid.job_slug) > 200 then 'job_slug' else 'spec_slug' end));
    end if;
    perform ops_private.readable_workspace(v_ws);
    if get_run_grid.job_slug is not null then
        v_jobs := array(select v.id from ops.job_versions v join ops.jobs j on j.id = v.job_id
                        where j.workspace_id = v_ws and j.slug = get_run_grid.job_slug);
        if cardinality(v_jobs) = 0 then
            perform ops_private.fail(404, 'not_found', 'job not found',
                                     jsonb_build_object('argument', 'job_slug'));
        end if;
    end if;
    v_runs := array(select r.id from ops.runs r
                    where r.workspace_id = v_ws
                      and (v_jobs is null or r.job_version_id = any (v_jobs))
                      and (get_run_grid.spec_slug is null or r.spec_slug = get_run_grid.spec_slug)
                    order by r.created_at desc, r.id desc
                    limit get_run_grid."limit");
    return jsonb_build_object(
        'phase_names', (select coalesce(jsonb_agg(n.name order by n.ordinal, n.name), '[]'::jsonb)
                        from (select p.name, min(p.ordinal) as ordinal from ops.phases p
                              where p.run_id = any (v_runs) group by p.name) n),
        'runs', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', r.id, 'state', r.state, 'created_at', r.created_at, 'finished_at', r.finished_at,
                     'git_sha', r.git_sha,
                     'phases', (select coalesce(jsonb_object_agg(p.name, jsonb_build_object(
                                    'state', p.state, 'attempt', p.attempt, 'started_at', p.started_at,
                                    'finished_at', p.finished_at)), '{}'::jsonb)
                                from ops.phases p where p.run_id = r.id))
                     order by r.created_at desc, r.id desc), '[]'::jsonb)
                 from ops.runs r where r.id = any (v_runs)));
end
$$;

-- -------------------------------------------------------------------------------------------
-- get_run_lineage

-- the table names a manifest says a phase wrote: `tables[].name`, else a legacy `table.name`
create function ops_private.manifest_tables(p_manifest jsonb)
returns setof jsonb
language sql immutable
as $$
    select t from pg_catalog.jsonb_array_elements(
        case when pg_catalog.jsonb_typeof(p_manifest -> 'tables') = 'array' then p_manifest -> 'tables'
             when pg_catalog.jsonb_typeof(p_manifest -> 'table') = 'object' then pg_catalog.jsonb_build_array(p_manifest -> 'table')
             else '[]'::jsonb end) t
    where pg_catalog.jsonb_typeof(t) = 'object' and pg_catalog.jsonb_typeof(t -> 'name') = 'string'
$$;

create function ops.get_run_lineage(run_id text)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run   uuid := ops_private.uuid_arg('run_id', get_run_lineage.run_id, true);
    v_ws    uuid;
    v_edges jsonb;
    v_nodes jsonb;
begin
    select r.workspace_id into v_ws from ops.runs r where r.id = v_run;
    if v_ws is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    with phase_rows as (
        select p.name, p.depends_on, p.output_manifest from ops.phases p where p.run_id = v_run
    ), outputs as (          -- phase -> dataset: the tables its manifest names, the versions it recorded
        select pr.name as phase, t ->> 'name' as dataset, t ->> 'layer' as layer
        from phase_rows pr, ops_private.manifest_tables(pr.output_manifest) t
        union
        select v.phase, d.name, d.layer
        from ops.dataset_versions v join ops.datasets d on d.id = v.dataset_id
        where v.run_id = v_run and v.phase is not null
    ), inputs as (           -- dataset -> phase: what it said it read, what its dependencies wrote
        select e.phase, x #>> '{}' as dataset
        from ops.run_events e, pg_catalog.jsonb_array_elements(
                 case when pg_catalog.jsonb_typeof(e.payload -> 'datasets') = 'array' then e.payload -> 'datasets'
                      else '[]'::jsonb end) x
        where e.run_id = v_run and e.type = 'DATASET_LINEAGE' and e.phase is not null
        union
        select e.phase, 'source:' || (x #>> '{}')
        from ops.run_events e, pg_catalog.jsonb_array_elements(
                 case when pg_catalog.jsonb_typeof(e.payload -> 'sources') = 'array' then e.payload -> 'sources'
                      else '[]'::jsonb end) x
        where e.run_id = v_run and e.type = 'DATASET_LINEAGE' and e.phase is not null
        union
        select pr.name, o.dataset
        from phase_rows pr join outputs o on o.phase = any (pr.depends_on)
    ), edges as (
        select 'phase:' || o.phase as src, 'dataset:' || o.dataset as dst from outputs o
        union
        select 'dataset:' || i.dataset, 'phase:' || i.phase from inputs i
        where not exists (select 1 from outputs o where o.phase = i.phase and o.dataset = i.dataset)
    ), names as (
        select o.dataset, o.layer from outputs o
        union
        select i.dataset, null from inputs i
    ), datasets as (
        select n.dataset, coalesce(max(n.layer), max(d.layer),
                                   case when n.dataset like 'source:%' then 'source' end) as layer
        from names n left join ops.datasets d on d.workspace_id = v_ws and d.name = n.dataset
        group by n.dataset
    )
    select (select coalesce(jsonb_agg(jsonb_build_object('from', e.src, 'to', e.dst) order by e.src, e.dst), '[]'::jsonb)
            from edges e),
           (select coalesce(jsonb_agg(n.node order by n.node ->> 'id'), '[]'::jsonb) from (
                select jsonb_build_object('id', 'dataset:' || d.dataset, 'type', 'dataset', 'label', d.dataset,
                                          'layer', d.layer) as node
                from datasets d
                union all
                select jsonb_build_object('id', 'phase:' || pr.name, 'type', 'phase', 'label', pr.name)
                from phase_rows pr
                where exists (select 1 from outputs o where o.phase = pr.name)
                   or exists (select 1 from inputs i where i.phase = pr.name)) n)
    into v_edges, v_nodes;
    return jsonb_build_object('nodes', v_nodes, 'edges', v_edges);
end
$$;

-- -------------------------------------------------------------------------------------------
-- get_health

create function ops.get_health(workspace_id text, since text default null, bucket_seconds integer default 3600)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws     uuid := ops_private.uuid_arg('workspace_id', get_health.workspace_id, true);
    v_now    timestamptz := ops_private.now();
    v_since  timestamptz := coalesce(ops_private.time_arg('since', get_health.since),
                                     ops_private.now() - interval '24 hours');
    v_start  timestamptz;
    v_b      interval;
    v_out    jsonb;
begin
    if get_health.bucket_seconds is null or get_health.bucket_seconds not between 60 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'bucket_seconds must be between 60 and 86400',
                                 jsonb_build_object('argument', 'bucket_seconds'));
    end if;
    if v_since > v_now or v_since < v_now - interval '31 days' then
        perform ops_private.fail(400, 'invalid_argument', 'since must be within the last 31 days',
                                 jsonb_build_object('argument', 'since'));
    end if;
    v_b := make_interval(secs => get_health.bucket_seconds);
    v_start := to_timestamp(floor(extract(epoch from v_since) / get_health.bucket_seconds) * get_health.bucket_seconds);
    if extract(epoch from v_now - v_start) / get_health.bucket_seconds > 500 then
        perform ops_private.fail(400, 'invalid_argument',
            'at most 500 buckets: make bucket_seconds larger or since later',
            jsonb_build_object('argument', 'bucket_seconds'));
    end if;
    perform ops_private.readable_workspace(v_ws);

    with done as (
        select p.name, p.kind, p.state,
               floor(extract(epoch from p.finished_at - v_start) / get_health.bucket_seconds)::integer as bucket,
               extract(epoch from p.finished_at - p.started_at)::double precision as secs
        from ops.phases p
        where p.workspace_id = v_ws and p.state in ('succeeded', 'failed')
          and p.finished_at >= v_start and p.finished_at <= v_now
    ), expiries as (
        select floor(extract(epoch from e.recorded_at - v_start) / get_health.bucket_seconds)::integer as bucket
        from ops.run_events e
        where e.workspace_id = v_ws and e.type = 'LEASE_EXPIRED' and e.recorded_at >= v_start
          and e.recorded_at <= v_now
    ), buckets as (
        select n from pg_catalog.generate_series(0, floor(extract(epoch from v_now - v_start)
                                                          / get_health.bucket_seconds)::integer) n
    )
    select jsonb_build_object(
        'now', v_now,
        'since', v_start,
        'bucket_seconds', get_health.bucket_seconds,
        'queue_depth', (select count(*) from ops.phases p where p.workspace_id = v_ws and p.state = 'queued'),
        'running', (select count(*) from ops.phases p where p.workspace_id = v_ws and p.state = 'running'),
        'lease_expiries_last_hour', (select count(*) from ops.run_events e
                                     where e.workspace_id = v_ws and e.type = 'LEASE_EXPIRED'
                                       and e.recorded_at > v_now - interval '1 hour'),
        'series', (select coalesce(jsonb_agg(jsonb_build_object(
                       'bucket', v_start + b.n * v_b,
                       'succeeded', coalesce(s.ok, 0), 'failed', coalesce(s.bad, 0),
                       'lease_expiries', coalesce(x.n, 0), 'p50_s', s.p50, 'p95_s', s.p95)
                       order by b.n), '[]'::jsonb)
                   from buckets b
                   left join (select d.bucket, count(*) filter (where d.state = 'succeeded') as ok,
                                     count(*) filter (where d.state = 'failed') as bad,
                                     round(percentile_cont(0.5) within group (order by d.secs)::numeric, 3) as p50,
                                     round(percentile_cont(0.95) within group (order by d.secs)::numeric, 3) as p95
                              from done d group by d.bucket) s on s.bucket = b.n
                   left join (select x.bucket, count(*) as n from expiries x group by x.bucket) x
                          on x.bucket = b.n),
        'by_kind', (select coalesce(jsonb_agg(jsonb_build_object(
                        'kind', k.kind, 'succeeded', k.ok, 'failed', k.bad,
                        'success_rate', round(k.ok::numeric / nullif(k.ok + k.bad, 0), 4),
                        'p50_s', k.p50, 'p95_s', k.p95) order by k.kind), '[]'::jsonb)
                    from (select d.kind, count(*) filter (where d.state = 'succeeded') as ok,
                                 count(*) filter (where d.state = 'failed') as bad,
                                 round(percentile_cont(0.5) within group (order by d.secs)::numeric, 3) as p50,
                                 round(percentile_cont(0.95) within group (order by d.secs)::numeric, 3) as p95
                          from done d group by d.kind) k),
        'by_phase', (select coalesce(jsonb_agg(jsonb_build_object(
                         'name', k.name, 'kind', k.kind, 'succeeded', k.ok, 'failed', k.bad,
                         'success_rate', round(k.ok::numeric / nullif(k.ok + k.bad, 0), 4),
                         'p50_s', k.p50, 'p95_s', k.p95) order by k.ok + k.bad desc, k.name, k.kind), '[]'::jsonb)
                     from (select d.name, d.kind, count(*) filter (where d.state = 'succeeded') as ok,
                                  count(*) filter (where d.state = 'failed') as bad,
                                  round(percentile_cont(0.5) within group (order by d.secs)::numeric, 3) as p50,
                                  round(percentile_cont(0.95) within group (order by d.secs)::numeric, 3) as p95
                           from done d group by d.name, d.kind
                           order by count(*) desc, d.name, d.kind limit 50) k),
        'freshness', (select coalesce(jsonb_agg(jsonb_build_object(
                          'dataset', f.name, 'layer', f.layer, 'data_time', f.data_time,
                          'lag_s', round(extract(epoch from v_now - f.data_time)::numeric, 1),
                          'slo_s', f.slo) order by f.layer = 'gold' desc, f.name), '[]'::jsonb)
                      from (select d.name, d.layer, d.data_time, j.freshness_slo_seconds as slo
                            from ops.datasets d left join ops.jobs j on j.id = d.data_time_job_id
                            where d.workspace_id = v_ws and d.data_time is not null
                            order by d.layer = 'gold' desc, d.name limit 100) f),
        'alerts', jsonb_build_object(
            'open', (select count(*) from ops.alerts a
                     where a.workspace_id = v_ws and a.state in ('pending', 'delivering', 'failed')),
            'recent', (select coalesce(jsonb_agg(jsonb_build_object(
                           'id', a.id, 'rule', a.rule_name, 'event', a.event, 'subject', a.subject,
                           'state', a.state, 'created_at', a.created_at) order by a.created_at desc, a.id desc), '[]'::jsonb)
                       from (select * from ops.alerts a where a.workspace_id = v_ws and a.created_at >= v_start
                             order by a.created_at desc, a.id desc limit 10) a)),
        'dead_letters', (select count(*) from ops_private.dead_letters(v_ws, null, null, null, null, 1000)))
    into v_out;
    return v_out;
end
$$;

-- -------------------------------------------------------------------------------------------
-- the change feed

create function ops_private.notify_run_changes()
returns trigger
language plpgsql
as $$
declare
    v_x record;
begin
    for v_x in
        select n.workspace_id, n.run_id, max(n.seq) as seq from new_events n
        group by n.workspace_id, n.run_id
    loop
        perform pg_catalog.pg_notify('ops_run_changes',
                                     v_x.workspace_id::text || ' ' || v_x.run_id::text || ' ' || v_x.seq::text);
    end loop;
    return null;
end
$$;

create trigger run_events_notify_changes after insert on ops.run_events
    referencing new table as new_events
    for each statement execute function ops_private.notify_run_changes();

-- -------------------------------------------------------------------------------------------
-- grants

revoke execute on function ops.list_runs(text, text, text, jsonb, text, integer, text, text, text, text, text, text),
                           ops.list_events(text, bigint, integer, text, bigint, text[], text[], text),
                           ops.get_run_timeline(text),
                           ops.get_run_grid(text, text, text, integer),
                           ops.get_run_lineage(text),
                           ops.get_health(text, text, integer)
    from public, anon;
grant execute on function ops.list_runs(text, text, text, jsonb, text, integer, text, text, text, text, text, text),
                          ops.list_events(text, bigint, integer, text, bigint, text[], text[], text),
                          ops.get_run_timeline(text),
                          ops.get_run_grid(text, text, text, integer),
                          ops.get_run_lineage(text),
                          ops.get_health(text, text, integer)
    to authenticated, service_role;
revoke execute on function ops_private.readable_workspace(uuid), ops_private.limit_arg(text, integer, integer),
                           ops_private.time_arg(text, text),
                           ops_private.event_json(ops.run_events, boolean), ops_private.manifest_tables(jsonb),
                           ops_private.notify_run_changes()
    from public, anon;
grant execute on function ops_private.readable_workspace(uuid), ops_private.limit_arg(text, integer, integer),
                          ops_private.time_arg(text, text),
                          ops_private.event_json(ops.run_events, boolean), ops_private.manifest_tables(jsonb)
    to authenticated, service_role;
revoke execute on function ops_private.notify_run_changes() from authenticated, service_role;
