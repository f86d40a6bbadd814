-- Schedules (issue 11): cron (5 fields, in an IANA time zone) or interval schedules of a job,
-- with catch-up and overlap policies, and their ticks.
--   ops.schedules       one row per (workspace, name): the job, when, the params, the policies,
--                       next_tick_at (the next instant it is due);
--   ops.schedule_ticks  one row per (schedule, scheduled_for): created (with its run) /
--                       skipped (why) / failed (the error). The UNIQUE key is what makes any
--                       number of schedulers safe: a tick is recorded once, its run created once.
-- ops.run_due_schedules is the one entry point that fires ticks: `control-room scheduler`
-- calls it through the contract; on Supabase pg_cron can call it once a minute
-- (docs/schedules.md). Cron is evaluated here, in SQL, with the time of ops_private.now().
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

-- =============================================================================================
-- tables, row level security, grants
-- =============================================================================================
create table ops.schedules (
    id               uuid primary key default gen_random_uuid(),
    workspace_id     uuid not null references ops.workspaces (id),
    job_id           uuid not null references ops.jobs (id) on delete cascade,
    name             text not null check (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    description      text check (length(description) <= 1000),
    cron             text check (length(cron) <= 200),
    timezone         text not null default 'UTC' check (length(timezone) <= 64),
    -- the cron fields parsed once, at create time (ops_private.cron_parse)
    cron_minutes     integer[],
    cron_hours       integer[],
    cron_days        integer[],
    cron_months      integer[],
    cron_weekdays    integer[],
    cron_days_star   boolean,
    cron_weekdays_star boolean,
    interval_seconds integer check (interval_seconds between 1 and 31622400),
    params           jsonb not null default '{}' check (jsonb_typeof(params) = 'object'),
    enabled          boolean not null default true,
    catchup          text not null default 'latest' check (catchup in ('skip', 'latest', 'all')),
    catchup_max      integer not null default 10 check (catchup_max between 1 and 1000),
    max_concurrent   integer not null default 1 check (max_concurrent between 1 and 100),
    overlap          text not null default 'skip' check (overlap in ('skip', 'queue', 'cancel_previous')),
    priority         integer not null default 0 check (priority between -1000 and 1000),
    anchor_at        timestamptz not null default now(),
    next_tick_at     timestamptz,
    last_tick_at     timestamptz,
    created_by       uuid,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    check ((cron is null) <> (interval_seconds is null)),
    unique (workspace_id, name),
    unique (id, workspace_id)
);
create index schedules_due_idx on ops.schedules (next_tick_at) where enabled and next_tick_at is not null;
create index schedules_job_idx on ops.schedules (job_id);
comment on table ops.schedules is
    'Cron or interval schedules of a job: params, catch-up and overlap policies, the next tick.';

create table ops.schedule_ticks (
    id            uuid primary key default gen_random_uuid(),
    schedule_id   uuid not null,
    workspace_id  uuid not null,
    scheduled_for timestamptz not null,
    state         text not null check (state in ('created', 'skipped', 'failed')),
    reason        text check (length(reason) <= 1000),
    run_id        uuid references ops.runs (id) on delete set null,
    created_at    timestamptz not null default now(),
    unique (schedule_id, scheduled_for),
    foreign key (schedule_id, workspace_id) references ops.schedules (id, workspace_id) on delete cascade
);
create index schedule_ticks_workspace_idx on ops.schedule_ticks (workspace_id);
create index schedule_ticks_run_idx on ops.schedule_ticks (run_id) where run_id is not null;
comment on table ops.schedule_ticks is
    'One row per fire time of a schedule: created (its run), skipped (why) or failed (the error).';

alter table ops.schedules      enable row level security;
alter table ops.schedule_ticks enable row level security;
create policy schedules_read on ops.schedules for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy schedule_ticks_read on ops.schedule_ticks for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));

revoke all on ops.schedules, ops.schedule_ticks from public, anon, authenticated, service_role;
grant select on ops.schedules, ops.schedule_ticks to authenticated, service_role;

-- =============================================================================================
-- cron: parsing and the next fire times
-- =============================================================================================

-- One cron field as the sorted set of its values. p_names maps names (MON, JAN) to numbers.
-- A bad field is a 400 naming it.
create function ops_private.cron_field(p_text text, p_field text, p_min integer, p_max integer,
                                       p_names text[] default null, p_names_from integer default 0)
returns integer[]
language plpgsql immutable
as $$
declare
    v_item  text;
    v_m     text[];
    v_lo    integer;
    v_hi    integer;
    v_step  integer;
    v_out   integer[] := '{}';
    v_text  text := pg_catalog.upper(p_text);
    i       integer;
begin
    if p_names is not null then
        for i in 1 .. pg_catalog.array_length(p_names, 1) loop
            v_text := pg_catalog.regexp_replace(v_text, '\m' || p_names[i] || '\M',
                                                (p_names_from + i - 1)::text, 'g');
        end loop;
    end if;
    foreach v_item in array pg_catalog.string_to_array(v_text, ',') loop
        v_m := pg_catalog.regexp_match(v_item, '^(\*|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,2}))?$');
        if v_m is null then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('cron field %s: %s is not a number, a range a-b, * or one of them with /step',
                                  p_field, pg_catalog.quote_literal(pg_catalog.left(p_text, 64))),
                pg_catalog.jsonb_build_object('argument', 'cron', 'field', p_field));
        end if;
        if v_m[1] = '*' then
            v_lo := p_min;
            v_hi := p_max;
        else
            v_lo := v_m[2]::integer;
            v_hi := case when v_m[3] is not null then v_m[3]::integer
                         when v_m[4] is not null then p_max else v_lo end;
        end if;
        v_step := coalesce(v_m[4]::integer, 1);
        if v_lo < p_min or v_hi > p_max or v_lo > v_hi or v_step < 1 then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('cron field %s: %s is out of range (%s-%s, a range low-high, a step of at least 1)',
                                  p_field, pg_catalog.quote_literal(pg_catalog.left(v_item, 64)), p_min, p_max),
                pg_catalog.jsonb_build_object('argument', 'cron', 'field', p_field));
        end if;
        v_out := v_out || array(select pg_catalog.generate_series(v_lo, v_hi, v_step));
    end loop;
    return array(select distinct x from pg_catalog.unnest(v_out) x order by x);
end
$$;

-- A cron expression (5 fields, or @hourly/@daily/@weekly/@monthly/@yearly) parsed into the
-- columns of ops.schedules: minutes, hours, days of month, months, weekdays (0 = Sunday; 7 is
-- read as 0), and whether the day fields are `*` (the standard dom/dow OR rule applies only
-- when both are restricted).
create function ops_private.cron_parse(p_cron text)
returns jsonb
language plpgsql immutable
as $$
declare
    v_cron   text := pg_catalog.btrim(pg_catalog.lower(p_cron));
    v_fields text[];
    v_dow    integer[];
begin
    v_cron := case v_cron when '@yearly' then '0 0 1 1 *' when '@annually' then '0 0 1 1 *'
                          when '@monthly' then '0 0 1 * *' when '@weekly' then '0 0 * * 0'
                          when '@daily' then '0 0 * * *' when '@midnight' then '0 0 * * *'
                          when '@hourly' then '0 * * * *' else v_cron end;
    v_fields := pg_catalog.regexp_split_to_array(v_cron, '\s+');
    if v_cron is null or v_cron = '' or pg_catalog.array_length(v_fields, 1) <> 5 then
        perform ops_private.fail(400, 'invalid_argument',
            'cron must have 5 fields (minute hour day-of-month month day-of-week), got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_cron, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'cron'));
    end if;
    v_dow := ops_private.cron_field(v_fields[5], 'day-of-week', 0, 7,
                                    array['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'], 0);
    v_dow := array(select distinct case when d = 7 then 0 else d end from pg_catalog.unnest(v_dow) d order by 1);
    return pg_catalog.jsonb_build_object(
        'minutes', to_jsonb(ops_private.cron_field(v_fields[1], 'minute', 0, 59)),
        'hours', to_jsonb(ops_private.cron_field(v_fields[2], 'hour', 0, 23)),
        'days', to_jsonb(ops_private.cron_field(v_fields[3], 'day-of-month', 1, 31)),
        'months', to_jsonb(ops_private.cron_field(v_fields[4], 'month', 1, 12,
                              array['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP',
                                    'OCT', 'NOV', 'DEC'], 1)),
        'weekdays', to_jsonb(v_dow),
        'days_star', pg_catalog.left(v_fields[3], 1) = '*',
        'weekdays_star', pg_catalog.left(v_fields[5], 1) = '*');
end
$$;

-- The fire times of a schedule in (p_after, p_until], oldest first, at most p_limit of them.
-- Cron: the local days of the schedule's time zone are walked one by one (at most ~5 years);
-- on a day whose month and day match, every hour x minute of the sets is turned into an
-- instant in the time zone. A local time that does not exist (spring forward) is the instant
-- PostgreSQL gives it, the same wall time shifted by the gap (02:30 -> 03:30); a repeated
-- local time (fall back) is one instant, the second (standard time) one: each fires once.
-- Interval: anchor_at + k * interval_seconds.
create function ops_private.schedule_times(s ops.schedules, p_after timestamptz, p_until timestamptz,
                                           p_limit integer)
returns setof timestamptz
language plpgsql stable
as $$
declare
    v_day   date;
    v_last  date;
    v_count integer := 0;
    v_t     timestamptz;
    v_k     bigint;
    v_dom   boolean;
    v_dow   boolean;
begin
    if p_limit <= 0 then
        return;
    end if;
    if s.interval_seconds is not null then
        v_k := greatest(0, pg_catalog.floor(extract(epoch from (p_after - s.anchor_at)) / s.interval_seconds)::bigint + 1);
        loop
            v_t := s.anchor_at + pg_catalog.make_interval(secs => (v_k * s.interval_seconds)::double precision);
            if v_t <= p_after then
                v_k := v_k + 1;
                continue;
            end if;
            exit when p_until is not null and v_t > p_until;
            return next v_t;
            v_count := v_count + 1;
            exit when v_count >= p_limit;
            v_k := v_k + 1;
        end loop;
        return;
    end if;
    v_day := (p_after at time zone s.timezone)::date - 1;
    v_last := least(coalesce((p_until at time zone s.timezone)::date + 1, v_day + 1830), v_day + 1830);
    while v_day <= v_last loop
        if extract(month from v_day)::integer = any (s.cron_months) then
            v_dom := extract(day from v_day)::integer = any (s.cron_days);
            v_dow := extract(dow from v_day)::integer = any (s.cron_weekdays);
            if (case when s.cron_days_star and s.cron_weekdays_star then true
                     when s.cron_days_star then v_dow
                     when s.cron_weekdays_star then v_dom
                     else v_dom or v_dow end) then
                for v_t in
                    select distinct ((v_day + pg_catalog.make_interval(hours => h, mins => m))
                                     at time zone s.timezone) as t
                    from pg_catalog.unnest(s.cron_hours) h cross join pg_catalog.unnest(s.cron_minutes) m
                    order by 1
                loop
                    continue when v_t <= p_after;
                    if p_until is not null and v_t > p_until then
                        return;
                    end if;
                    return next v_t;
                    v_count := v_count + 1;
                    if v_count >= p_limit then
                        return;
                    end if;
                end loop;
            end if;
        end if;
        v_day := v_day + 1;
    end loop;
end
$$;

-- The next fire time after t (null: none within ~5 years).
create function ops_private.schedule_next(s ops.schedules, p_after timestamptz)
returns timestamptz
language sql stable
as $$
    select t from ops_private.schedule_times(s, p_after, null, 1) t
$$;

-- =============================================================================================
-- ops_private: validation, lookups and the JSON shape
-- =============================================================================================

create function ops_private.schedule_json(s ops.schedules)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', s.id, 'workspace_id', s.workspace_id, 'name', s.name, 'description', s.description,
        'job_id', s.job_id, 'job', (select j.slug from ops.jobs j where j.id = s.job_id),
        'cron', s.cron, 'timezone', s.timezone, 'interval_seconds', s.interval_seconds,
        'params', s.params, 'enabled', s.enabled, 'catchup', s.catchup, 'catchup_max', s.catchup_max,
        'max_concurrent', s.max_concurrent, 'overlap', s.overlap, 'priority', s.priority,
        'next_tick_at', s.next_tick_at, 'last_tick_at', s.last_tick_at,
        'created_by', case when ops_private.sees_principals(s.workspace_id) then s.created_by end,
        'created_at', s.created_at, 'updated_at', s.updated_at)
$$;

create function ops_private.tick_json(t ops.schedule_ticks)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', t.id, 'schedule_id', t.schedule_id, 'workspace_id', t.workspace_id,
        'scheduled_for', t.scheduled_for, 'state', t.state, 'reason', t.reason, 'run_id', t.run_id,
        'created_at', t.created_at)
$$;

-- The caller's role in a workspace that must exist (404 for a non-member, as for a missing one).
create function ops_private.schedule_workspace(p_workspace uuid, p_roles text[])
returns text
language plpgsql stable
as $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return ops_private.require_role(p_workspace, p_roles, true);
end
$$;

create function ops_private.find_schedule(p_workspace uuid, p_name text, p_lock boolean)
returns ops.schedules
language plpgsql volatile
as $$
declare
    v_row ops.schedules;
begin
    if p_name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    if p_lock then
        select * into v_row from ops.schedules s
        where s.workspace_id = p_workspace and s.name = p_name for update;
    else
        select * into v_row from ops.schedules s where s.workspace_id = p_workspace and s.name = p_name;
    end if;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'schedule ' || pg_catalog.left(p_name, 64) || ' not found in this workspace',
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    return v_row;
end
$$;

-- Check and fill the "when" and policy columns of a schedule row (the cron fields parsed,
-- the time zone known to PostgreSQL, next_tick_at from p_now). 400 naming the argument.
create function ops_private.check_schedule(s ops.schedules, p_now timestamptz)
returns ops.schedules
language plpgsql stable
as $$
declare
    v_parsed jsonb;
begin
    if (s.cron is null) = (s.interval_seconds is null) then
        perform ops_private.fail(400, 'invalid_argument',
            'a schedule has either cron (with timezone) or interval_seconds, not both and not neither',
            pg_catalog.jsonb_build_object('argument', case when s.cron is null then 'cron' else 'interval_seconds' end));
    end if;
    if s.timezone is null
       or not exists (select 1 from pg_catalog.pg_timezone_names z where z.name = s.timezone) then
        perform ops_private.fail(400, 'invalid_argument',
            'timezone must be an IANA time zone name (for example Europe/Berlin or UTC), got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(s.timezone, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'timezone'));
    end if;
    if s.interval_seconds is not null and s.interval_seconds not between 1 and 31622400 then
        perform ops_private.fail(400, 'invalid_argument',
            'interval_seconds must be between 1 and 31622400 (366 days)',
            pg_catalog.jsonb_build_object('argument', 'interval_seconds'));
    end if;
    if s.catchup is null or s.catchup not in ('skip', 'latest', 'all') then
        perform ops_private.fail(400, 'invalid_argument',
            'catchup must be one of skip, latest, all, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(s.catchup, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'catchup'));
    end if;
    if s.catchup_max is null or s.catchup_max not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'catchup_max must be between 1 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'catchup_max'));
    end if;
    if s.max_concurrent is null or s.max_concurrent not between 1 and 100 then
        perform ops_private.fail(400, 'invalid_argument', 'max_concurrent must be between 1 and 100',
                                 pg_catalog.jsonb_build_object('argument', 'max_concurrent'));
    end if;
    if s.overlap is null or s.overlap not in ('skip', 'queue', 'cancel_previous') then
        perform ops_private.fail(400, 'invalid_argument',
            'overlap must be one of skip, queue, cancel_previous, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(s.overlap, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'overlap'));
    end if;
    if s.priority is null or s.priority not between -1000 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'priority must be between -1000 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'priority'));
    end if;
    if s.description is not null and pg_catalog.length(s.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 pg_catalog.jsonb_build_object('argument', 'description'));
    end if;
    perform ops_private.check_object('params', s.params);
    perform ops_private.check_size('params', s.params, 65536);
    if s.cron is not null then
        if pg_catalog.length(s.cron) > 200 then
            perform ops_private.fail(400, 'invalid_argument', 'cron must be at most 200 characters',
                                     pg_catalog.jsonb_build_object('argument', 'cron'));
        end if;
        v_parsed := ops_private.cron_parse(s.cron);
        s.cron := pg_catalog.regexp_replace(pg_catalog.btrim(s.cron), '\s+', ' ', 'g');
        s.cron_minutes := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'minutes')::integer);
        s.cron_hours := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'hours')::integer);
        s.cron_days := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'days')::integer);
        s.cron_months := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'months')::integer);
        s.cron_weekdays := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'weekdays')::integer);
        s.cron_days_star := (v_parsed ->> 'days_star')::boolean;
        s.cron_weekdays_star := (v_parsed ->> 'weekdays_star')::boolean;
    else
        s.cron_minutes := null; s.cron_hours := null; s.cron_days := null; s.cron_months := null;
        s.cron_weekdays := null; s.cron_days_star := null; s.cron_weekdays_star := null;
        s.anchor_at := p_now;
    end if;
    s.next_tick_at := case when s.enabled then ops_private.schedule_next(s, p_now) end;
    if s.cron is not null and ops_private.schedule_next(s, p_now) is null then
        perform ops_private.fail(400, 'invalid_argument',
            'cron ' || pg_catalog.quote_literal(s.cron) || ' never fires (no such day in the next 5 years)',
            pg_catalog.jsonb_build_object('argument', 'cron'));
    end if;
    return s;
end
$$;

-- =============================================================================================
-- ops: the schedule functions
-- =============================================================================================
create function ops.create_schedule(workspace_id text, name text, job text, cron text default null,
                                    timezone text default 'UTC', interval_seconds integer default null,
                                    params jsonb default '{}'::jsonb, enabled boolean default true,
                                    catchup text default 'latest', catchup_max integer default 10,
                                    max_concurrent integer default 1, overlap text default 'skip',
                                    priority integer default 0, description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_ws  uuid := ops_private.uuid_arg('workspace_id', create_schedule.workspace_id, true);
    v_job uuid;
    v_row ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
    if create_schedule.name is null or create_schedule.name !~ '^[a-z][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits, _ or -, starting with a letter, got '
            || coalesce(quote_literal(left(create_schedule.name, 64)), 'nothing'),
            jsonb_build_object('argument', 'name'));
    end if;
    if create_schedule.job is null then
        perform ops_private.fail(400, 'invalid_argument', 'job (the slug of a registered job) is required',
                                 jsonb_build_object('argument', 'job'));
    end if;
    select j.id into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = create_schedule.job;
    if v_job is null then
        perform ops_private.fail(404, 'not_found',
            'job ' || left(create_schedule.job, 128) || ' not found in this workspace: register it with'
            || ' `control-room jobs register`', jsonb_build_object('argument', 'job'));
    end if;
    v_row.id := gen_random_uuid();
    v_row.workspace_id := v_ws;
    v_row.job_id := v_job;
    v_row.name := create_schedule.name;
    v_row.description := nullif(create_schedule.description, '');
    v_row.cron := create_schedule.cron;
    v_row.timezone := coalesce(create_schedule.timezone, 'UTC');
    v_row.interval_seconds := create_schedule.interval_seconds;
    v_row.params := coalesce(create_schedule.params, '{}'::jsonb);
    v_row.enabled := coalesce(create_schedule.enabled, true);
    v_row.catchup := create_schedule.catchup;
    v_row.catchup_max := create_schedule.catchup_max;
    v_row.max_concurrent := create_schedule.max_concurrent;
    v_row.overlap := create_schedule.overlap;
    v_row.priority := create_schedule.priority;
    v_row.anchor_at := v_now;
    v_row := ops_private.check_schedule(v_row, v_now);
    v_row.created_by := ops_private.uid();
    v_row.created_at := v_now;
    v_row.updated_at := v_now;
    insert into ops.schedules select v_row.*
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'a schedule named ' || create_schedule.name || ' exists in this workspace; change it with update_schedule',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_schedule', v_ws, 'schedule', v_row.name,
        jsonb_build_object('id', v_row.id, 'job', create_schedule.job, 'cron', v_row.cron,
                           'timezone', v_row.timezone, 'interval_seconds', v_row.interval_seconds));
    return ops_private.schedule_json(v_row);
end
$$;

-- Change a schedule: only the arguments given change. A change of when it fires (cron,
-- timezone, interval_seconds) or enabling it computes next_tick_at from now: the ticks of a
-- disabled period are not caught up.
create function ops.update_schedule(workspace_id text, name text, cron text default null,
                                    timezone text default null, interval_seconds integer default null,
                                    params jsonb default null, enabled boolean default null,
                                    catchup text default null, catchup_max integer default null,
                                    max_concurrent integer default null, overlap text default null,
                                    priority integer default null, description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now  timestamptz := ops_private.now();
    v_ws   uuid := ops_private.uuid_arg('workspace_id', update_schedule.workspace_id, true);
    v_old  ops.schedules;
    v_row  ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
    v_old := ops_private.find_schedule(v_ws, update_schedule.name, true);
    v_row := v_old;
    if update_schedule.cron is not null then
        v_row.cron := update_schedule.cron;
        v_row.interval_seconds := null;
    elsif update_schedule.interval_seconds is not null then
        v_row.interval_seconds := update_schedule.interval_seconds;
        v_row.cron := null;
    end if;
    v_row.timezone := coalesce(update_schedule.timezone, v_row.timezone);
    v_row.params := coalesce(update_schedule.params, v_row.params);
    v_row.enabled := coalesce(update_schedule.enabled, v_row.enabled);
    v_row.catchup := coalesce(update_schedule.catchup, v_row.catchup);
    v_row.catchup_max := coalesce(update_schedule.catchup_max, v_row.catchup_max);
    v_row.max_concurrent := coalesce(update_schedule.max_concurrent, v_row.max_concurrent);
    v_row.overlap := coalesce(update_schedule.overlap, v_row.overlap);
    v_row.priority := coalesce(update_schedule.priority, v_row.priority);
    v_row.description := case when update_schedule.description is null then v_row.description
                              else nullif(update_schedule.description, '') end;
    if update_schedule.cron is not null and update_schedule.interval_seconds is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'a schedule has either cron (with timezone) or interval_seconds, not both',
            jsonb_build_object('argument', 'interval_seconds'));
    end if;
    v_row := ops_private.check_schedule(v_row, v_now);
    if v_row.cron is not distinct from v_old.cron and v_row.timezone is not distinct from v_old.timezone
       and v_row.interval_seconds is not distinct from v_old.interval_seconds
       and v_row.enabled and v_old.enabled then
        -- the policies or params only: the ticks stay where they were (missed ones are still caught up)
        v_row.anchor_at := v_old.anchor_at;
        v_row.next_tick_at := v_old.next_tick_at;
    end if;
    update ops.schedules s
    set cron = v_row.cron, timezone = v_row.timezone, cron_minutes = v_row.cron_minutes,
        cron_hours = v_row.cron_hours, cron_days = v_row.cron_days, cron_months = v_row.cron_months,
        cron_weekdays = v_row.cron_weekdays, cron_days_star = v_row.cron_days_star,
        cron_weekdays_star = v_row.cron_weekdays_star, interval_seconds = v_row.interval_seconds,
        params = v_row.params, enabled = v_row.enabled, catchup = v_row.catchup,
        catchup_max = v_row.catchup_max, max_concurrent = v_row.max_concurrent, overlap = v_row.overlap,
        priority = v_row.priority, description = v_row.description, anchor_at = v_row.anchor_at,
        next_tick_at = v_row.next_tick_at, updated_at = v_now
    where s.id = v_old.id
    returning * into v_row;
    perform ops_private.audit('update_schedule', v_ws, 'schedule', v_row.name,
        jsonb_build_object('id', v_row.id, 'enabled', v_row.enabled, 'cron', v_row.cron,
                           'timezone', v_row.timezone, 'interval_seconds', v_row.interval_seconds,
                           'catchup', v_row.catchup, 'overlap', v_row.overlap));
    return ops_private.schedule_json(v_row);
end
$$;

create function ops.delete_schedule(workspace_id text, name text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_schedule.workspace_id, true);
    v_row ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
    v_row := ops_private.find_schedule(v_ws, delete_schedule.name, true);
    delete from ops.schedules s where s.id = v_row.id;    -- its ticks go with it; runs stay
    perform ops_private.audit('delete_schedule', v_ws, 'schedule', v_row.name, jsonb_build_object('id', v_row.id));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

create function ops.list_schedules(workspace_id text, job text default null)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_schedules.workspace_id, true);
begin
    perform ops_private.schedule_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.schedule_json(s) order by s.name), '[]'::jsonb)
            from ops.schedules s
            where s.workspace_id = v_ws
              and (list_schedules.job is null
                   or s.job_id in (select j.id from ops.jobs j
                                   where j.workspace_id = v_ws and j.slug = list_schedules.job)));
end
$$;

create function ops.get_schedule(workspace_id text, name text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', get_schedule.workspace_id, true);
    v_row ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    v_row := ops_private.find_schedule(v_ws, get_schedule.name, false);
    return ops_private.schedule_json(v_row) || jsonb_build_object(
        'upcoming', (select coalesce(jsonb_agg(t order by t), '[]'::jsonb)
                     from ops_private.schedule_times(v_row, coalesce(v_row.next_tick_at, ops_private.now())
                                                            - interval '1 microsecond', null, 5) t
                     where v_row.enabled));
end
$$;

-- Ticks of a schedule, newest first; `before` (a scheduled_for of the previous page) pages on.
create function ops.list_schedule_ticks(workspace_id text, name text, state text default null,
                                        before text default null, "limit" integer default 100)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws    uuid := ops_private.uuid_arg('workspace_id', list_schedule_ticks.workspace_id, true);
    v_row   ops.schedules;
    v_limit integer := list_schedule_ticks."limit";
    v_ticks jsonb;
    v_count integer;
    v_before timestamptz;
begin
    perform ops_private.schedule_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    v_row := ops_private.find_schedule(v_ws, list_schedule_ticks.name, false);
    if list_schedule_ticks.before is not null then
        if not ops_private.is_timestamptz(list_schedule_ticks.before) then
            perform ops_private.fail(400, 'invalid_argument',
                'before must be an ISO 8601 time with a zone (a scheduled_for of the previous page), got '
                || quote_literal(left(list_schedule_ticks.before, 64)),
                jsonb_build_object('argument', 'before'));
        end if;
        v_before := list_schedule_ticks.before::timestamptz;
    end if;
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if list_schedule_ticks.state is not null and list_schedule_ticks.state not in ('created', 'skipped', 'failed') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of created, skipped, failed, got ' || quote_literal(left(list_schedule_ticks.state, 64)),
            jsonb_build_object('argument', 'state'));
    end if;
    select coalesce(jsonb_agg(ops_private.tick_json(x) order by x.scheduled_for desc), '[]'::jsonb), count(*)
    into v_ticks, v_count
    from (select * from ops.schedule_ticks t
          where t.schedule_id = v_row.id
            and (list_schedule_ticks.state is null or t.state = list_schedule_ticks.state)
            and (v_before is null or t.scheduled_for < v_before)
          order by t.scheduled_for desc
          limit v_limit) x;
    return jsonb_build_object(
        'ticks', v_ticks,
        'next_before', case when v_count = v_limit then v_ticks -> (v_count - 1) -> 'scheduled_for' end);
end
$$;

-- =============================================================================================
-- firing ticks
-- =============================================================================================

-- Record one tick (once: a tick already recorded, by another scheduler, is left alone and
-- null is answered) and, for a created one, make its run through ops_private.start_job_run.
-- A run that cannot be made is a failed tick with the error (capped); other ticks go on.
create function ops_private.fire_tick(s ops.schedules, p_for timestamptz, p_state text, p_reason text,
                                      p_now timestamptz)
returns ops.schedule_ticks
language plpgsql volatile
as $$
declare
    v_tick    ops.schedule_ticks;
    v_version uuid;
    v_run     jsonb;
    v_key     text := 'schedule:' || s.id::text || ':'
                      || pg_catalog.to_char(p_for at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
    v_active  record;
    v_count   integer;
begin
    insert into ops.schedule_ticks (schedule_id, workspace_id, scheduled_for, state, reason, created_at)
    values (s.id, s.workspace_id, p_for, p_state, p_reason, p_now)
    on conflict (schedule_id, scheduled_for) do nothing
    returning * into v_tick;
    if v_tick.id is null or p_state <> 'created' then
        return v_tick;
    end if;
    begin
        -- overlap: the schedule's runs still queued or running
        select count(*) into v_count
        from ops.schedule_ticks t join ops.runs r on r.id = t.run_id
        where t.schedule_id = s.id and t.state = 'created' and r.state in ('queued', 'running');
        if v_count >= s.max_concurrent then
            if s.overlap = 'skip' then
                update ops.schedule_ticks t set state = 'skipped',
                    reason = pg_catalog.format('overlap: %s run(s) of this schedule still queued or running'
                                               ' (max_concurrent %s)', v_count, s.max_concurrent)
                where t.id = v_tick.id returning * into v_tick;
                return v_tick;
            elsif s.overlap = 'cancel_previous' then
                for v_active in
                    select r.id from ops.schedule_ticks t join ops.runs r on r.id = t.run_id
                    where t.schedule_id = s.id and t.state = 'created' and r.state in ('queued', 'running')
                    order by r.created_at, r.id
                    limit v_count - s.max_concurrent + 1
                loop
                    perform ops.cancel_run(v_active.id::text,
                        'cancelled by schedule ' || s.name || ' (overlap cancel_previous) for its tick of '
                        || pg_catalog.to_char(p_for at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
                end loop;
            end if;
            -- queue: the run is created anyway and waits in the queue like any other
        end if;
        select v.id into v_version
        from ops.jobs j join ops.job_versions v on v.job_id = j.id and v.version = j.latest_version
        where j.id = s.job_id;
        if v_version is null then
            perform ops_private.fail(409, 'conflict', 'the job of schedule ' || s.name || ' has no version');
        end if;
        v_run := ops_private.start_job_run(v_version, s.params, v_key,
                                           pg_catalog.jsonb_build_object('schedule', s.name), s.priority);
        update ops.schedule_ticks t set run_id = (v_run ->> 'id')::uuid
        where t.id = v_tick.id returning * into v_tick;
    exception when others then
        update ops.schedule_ticks t set state = 'failed', run_id = null,
            reason = pg_catalog.left('run not created: ' || ops_private.redact_passwords(pg_catalog.left(sqlerrm, 2000)), 1000)
        where t.id = v_tick.id returning * into v_tick;
    end;
    return v_tick;
end
$$;

-- Fire what is due: the enabled schedules with next_tick_at <= now, claimed FOR UPDATE SKIP
-- LOCKED (a schedule another scheduler is firing is left to it). For each, its due ticks
-- (at most 1000 looked at per schedule and call, oldest first) are decided by its catch-up
-- policy:
--   skip   : only the newest due tick fires, and only if it is at most 2 minutes late; the
--            others are skipped ('missed');
--   latest : the newest due tick fires; the older ones are skipped ('catchup latest');
--   all    : the newest catchup_max due ticks fire, oldest first; older ones are skipped
--            ('catchup_max').
-- A tick that fires is subject to the overlap policy (ops_private.fire_tick). next_tick_at
-- moves past now. Callers: service_role (every workspace, or workspace_id), or a developer or
-- admin of workspace_id (that workspace; without workspace_id, the workspaces where it is one).
create function ops.run_due_schedules(workspace_id text default null, "limit" integer default 100)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', run_due_schedules.workspace_id, false);
    v_limit   integer := run_due_schedules."limit";
    v_all     boolean := ops_private.is_privileged();
    v_wss     uuid[];
    v_s       ops.schedules;
    v_times   timestamptz[];
    v_n       integer;
    v_fire    integer;
    v_i       integer;
    v_state   text;
    v_reason  text;
    v_tick    ops.schedule_ticks;
    v_ticks   jsonb := '[]'::jsonb;
    v_created integer := 0;
    v_skipped integer := 0;
    v_failed  integer := 0;
    v_done    integer := 0;
    v_more    boolean;
begin
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if v_ws is not null then
        perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
        v_wss := array[v_ws];
    elsif not v_all then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        v_wss := array(select m.workspace_id from ops.workspace_members m
                       where m.principal_id = ops_private.uid() and m.role in ('developer', 'admin'));
        if cardinality(v_wss) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'run_due_schedules needs a developer or admin of a workspace, or service_role');
        end if;
    end if;
    for v_s in
        select * from ops.schedules s
        where s.enabled and s.next_tick_at <= v_now
          and (v_wss is null or s.workspace_id = any (v_wss))
        order by s.next_tick_at, s.id
        limit v_limit
        for update skip locked
    loop
        v_done := v_done + 1;
        v_times := array(select t from ops_private.schedule_times(v_s, v_s.next_tick_at - interval '1 microsecond',
                                                                  v_now, 1001) t);
        v_more := cardinality(v_times) > 1000;
        if v_more then
            v_times := v_times[1:1000];
        end if;
        v_n := coalesce(cardinality(v_times), 0);
        -- how many of the newest fire: none when more are due than looked at
        v_fire := case when v_more then 0
                       when v_s.catchup = 'all' then least(v_n, v_s.catchup_max)
                       when v_s.catchup = 'latest' then least(v_n, 1)
                       when v_n > 0 and v_times[v_n] >= v_now - interval '2 minutes' then 1
                       else 0 end;
        for v_i in 1 .. v_n loop
            if v_i > v_n - v_fire then
                v_state := 'created';
                v_reason := null;
            else
                v_state := 'skipped';
                v_reason := case when v_more then 'catchup: more than 1000 ticks were due; older ticks are skipped'
                                 when v_s.catchup = 'all' then pg_catalog.format(
                                     'catchup all: only the newest %s missed ticks (catchup_max) run', v_s.catchup_max)
                                 when v_s.catchup = 'latest' then 'catchup latest: a newer tick was due'
                                 else 'catchup skip: missed (more than 2 minutes late)' end;
            end if;
            v_tick := ops_private.fire_tick(v_s, v_times[v_i], v_state, v_reason, v_now);
            continue when v_tick.id is null;        -- recorded already (by another scheduler)
            if v_tick.state = 'created' then
                v_created := v_created + 1;
            elsif v_tick.state = 'failed' then
                v_failed := v_failed + 1;
            else
                v_skipped := v_skipped + 1;
            end if;
            if jsonb_array_length(v_ticks) < 500 and (v_tick.state <> 'skipped' or v_i > v_n - 50) then
                v_ticks := v_ticks || (ops_private.tick_json(v_tick) || jsonb_build_object('schedule', v_s.name));
            end if;
        end loop;
        update ops.schedules s
        set next_tick_at = case when v_more then ops_private.schedule_next(v_s, v_times[v_n])
                                else ops_private.schedule_next(v_s, greatest(v_now, coalesce(v_times[v_n], v_now))) end,
            last_tick_at = coalesce(v_times[v_n], s.last_tick_at)
        where s.id = v_s.id;
    end loop;
    return jsonb_build_object('schedules', v_done, 'created', v_created, 'skipped', v_skipped,
                              'failed', v_failed, 'ticks', v_ticks, 'at', v_now);
end
$$;

-- =============================================================================================
-- grants: the API roles call the functions; anon calls nothing; the helpers are private
-- =============================================================================================
revoke execute on function ops.create_schedule(text, text, text, text, text, integer, jsonb, boolean, text,
                                               integer, integer, text, integer, text),
                           ops.update_schedule(text, text, text, text, integer, jsonb, boolean, text, integer,
                                               integer, text, integer, text),
                           ops.delete_schedule(text, text),
                           ops.list_schedules(text, text),
                           ops.get_schedule(text, text),
                           ops.list_schedule_ticks(text, text, text, text, integer),
                           ops.run_due_schedules(text, integer),
                           ops_private.cron_field(text, text, integer, integer, text[], integer),
                           ops_private.cron_parse(text),
                           ops_private.schedule_times(ops.schedules, timestamptz, timestamptz, integer),
                           ops_private.schedule_next(ops.schedules, timestamptz),
                           ops_private.schedule_json(ops.schedules),
                           ops_private.tick_json(ops.schedule_ticks),
                           ops_private.schedule_workspace(uuid, text[]),
                           ops_private.find_schedule(uuid, text, boolean),
                           ops_private.check_schedule(ops.schedules, timestamptz),
                           ops_private.fire_tick(ops.schedules, timestamptz, text, text, timestamptz)
    from public, anon, authenticated, service_role;
grant execute on function ops.create_schedule(text, text, text, text, text, integer, jsonb, boolean, text,
                                              integer, integer, text, integer, text),
                          ops.update_schedule(text, text, text, text, integer, jsonb, boolean, text, integer,
                                              integer, text, integer, text),
                          ops.delete_schedule(text, text),
                          ops.list_schedules(text, text),
                          ops.get_schedule(text, text),
                          ops.list_schedule_ticks(text, text, text, text, integer),
                          ops.run_due_schedules(text, integer)
    to authenticated, service_role;

-- =============================================================================================
-- list_jobs and get_job (20261203010000_jobs.sql) with next_run_at: the earliest next tick of the job's
-- enabled schedules (null: none). The body is the jobs migration's, that field aside.
-- =============================================================================================
create function ops_private.job_next_run_at(p_job uuid)
returns timestamptz
language sql stable
as $$
    select min(s.next_tick_at) from ops.schedules s where s.job_id = p_job and s.enabled
$$;

create or replace function ops.list_jobs(workspace_id text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_jobs.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.job_json(j)
                                      || jsonb_build_object('last_run', ops_private.job_last_run(j.id),
                                                            'next_run_at', ops_private.job_next_run_at(j.id))
                                      order by j.slug), '[]'::jsonb)
            from ops.jobs j where j.workspace_id = v_ws);
end
$$;

-- get_job likewise (the jobs migration's body, next_run_at aside).
create or replace function ops.get_job(workspace_id text, slug text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_job  ops.jobs := ops_private.find_job(get_job.workspace_id, get_job.slug,
                                            array['viewer', 'developer', 'admin', 'executor'], false);
    v_sees boolean := ops_private.sees_principals(v_job.workspace_id);
begin
    return ops_private.job_json(v_job) || jsonb_build_object(
        'versions', (select coalesce(jsonb_agg(ops_private.job_version_json(v, false)
                                               || jsonb_build_object('created_by_name',
                                                      ops_private.principal_name(v.workspace_id, v.created_by))
                                               order by v.version desc), '[]'::jsonb)
                     from (select * from ops.job_versions v where v.job_id = v_job.id
                           order by v.version desc limit 100) v),
        'latest', (select ops_private.job_version_json(v, true) from ops.job_versions v
                   where v.job_id = v_job.id and v.version = v_job.latest_version),
        'recent_runs', (select coalesce(jsonb_agg(ops_private.run_summary_json(x.id, v_sees)
                                                  order by x.created_at desc, x.id desc), '[]'::jsonb)
                        from (select r.id, r.created_at from ops.runs r
                              where r.job_version_id in (select v.id from ops.job_versions v where v.job_id = v_job.id)
                              order by r.created_at desc, r.id desc limit 20) x),
        'last_run', ops_private.job_last_run(v_job.id),
        'next_run_at', ops_private.job_next_run_at(v_job.id));
end
$$;

revoke execute on function ops_private.job_next_run_at(uuid) from public, anon, authenticated, service_role;
