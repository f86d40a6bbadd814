-- Sensors (issue 11): "source changed" sensors of a job on a Postgres connection.
--   ops.sensors   one row per (workspace, name): the job, the connection (a registered
--                 `postgres` connection of the workspace, by name), a single SELECT whose first
--                 column of the first row is the cursor value, the params of the runs it starts,
--                 how often it is evaluated, the stored cursor and the last evaluation.
-- The evaluator (`control-room sensors evaluate`, control_room/scheduler/sensors.py) claims due
-- sensors with ops.claim_due_sensors, runs each query read-only against its source and reports
-- the value with ops.record_sensor_value, which starts a run of the job's latest version only
-- when the value differs from the stored cursor (docs/sensors.md). The control plane never
-- connects to a source itself.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

create table ops.sensors (
    id                 uuid primary key default gen_random_uuid(),
    workspace_id       uuid not null references ops.workspaces (id),
    job_id             uuid not null references ops.jobs (id) on delete cascade,
    name               text not null check (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    connection         text not null check (connection ~ '^[a-z][a-z0-9_]{0,62}$'),
    query              text not null check (length(query) between 1 and 4096),
    params             jsonb not null default '{}' check (jsonb_typeof(params) = 'object'),
    interval_seconds   integer not null default 60 check (interval_seconds between 10 and 86400),
    enabled            boolean not null default true,
    cursor             text check (length(cursor) <= 1000),
    moves              integer not null default 0 check (moves >= 0),
    evaluations        bigint not null default 0 check (evaluations >= 0),
    last_evaluated_at  timestamptz,
    last_moved_at      timestamptz,
    last_run_id        uuid references ops.runs (id) on delete set null,
    last_error         text check (length(last_error) <= 1000),
    next_evaluation_at timestamptz,
    created_by         uuid,
    created_at         timestamptz not null default now(),
    unique (workspace_id, name)
);
create index sensors_due_idx on ops.sensors (next_evaluation_at) where enabled;
create index sensors_job_idx on ops.sensors (job_id);
comment on table ops.sensors is
    'Source-changed sensors: a query on a postgres connection whose value, when it moves, starts a run of the job.';

alter table ops.sensors enable row level security;
create policy sensors_read on ops.sensors for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
revoke all on ops.sensors from public, anon, authenticated, service_role;
grant select on ops.sensors to authenticated, service_role;

-- =============================================================================================
-- ops_private
-- =============================================================================================
create function ops_private.sensor_json(s ops.sensors)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', s.id, 'workspace_id', s.workspace_id, 'name', s.name,
        'job_id', s.job_id, 'job', (select j.slug from ops.jobs j where j.id = s.job_id),
        'connection', s.connection, 'query', s.query, 'params', s.params,
        'interval_seconds', s.interval_seconds, 'enabled', s.enabled, 'cursor', s.cursor,
        'evaluations', s.evaluations, 'last_evaluated_at', s.last_evaluated_at,
        'last_moved_at', s.last_moved_at, 'last_run_id', s.last_run_id, 'last_error', s.last_error,
        'next_evaluation_at', s.next_evaluation_at,
        'created_by', case when ops_private.sees_principals(s.workspace_id) then s.created_by end,
        'created_at', s.created_at)
$$;

create function ops_private.find_sensor(p_workspace uuid, p_name text, p_lock boolean)
returns ops.sensors
language plpgsql volatile
as $$
declare
    v_row ops.sensors;
begin
    if p_name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    if p_lock then
        select * into v_row from ops.sensors s where s.workspace_id = p_workspace and s.name = p_name for update;
    else
        select * into v_row from ops.sensors s where s.workspace_id = p_workspace and s.name = p_name;
    end if;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'sensor ' || pg_catalog.left(p_name, 64) || ' not found in this workspace',
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    return v_row;
end
$$;

-- =============================================================================================
-- ops: the sensor functions
-- =============================================================================================
-- Create a sensor (developer or admin). The query must be one SELECT (or WITH ... SELECT), at
-- most 4096 characters, no `;` inside; the evaluator also runs it in a read-only transaction.
-- The first evaluation (no cursor yet) starts a run.
create function ops.create_sensor(workspace_id text, name text, job text, connection text, query text,
                                  params jsonb default '{}'::jsonb, interval_seconds integer default 60,
                                  enabled boolean default true)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_ws    uuid := ops_private.uuid_arg('workspace_id', create_sensor.workspace_id, true);
    v_job   uuid;
    v_type  text;
    v_query text := pg_catalog.btrim(create_sensor.query);
    v_row   ops.sensors;
begin
    perform ops_private.connection_workspace(v_ws, array['developer', 'admin']);
    if create_sensor.name is null or create_sensor.name !~ '^[a-z][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits, _ or -, starting with a letter, got '
            || coalesce(quote_literal(left(create_sensor.name, 64)), 'nothing'),
            jsonb_build_object('argument', 'name'));
    end if;
    if create_sensor.job is null then
        perform ops_private.fail(400, 'invalid_argument', 'job (the slug of a registered job) is required',
                                 jsonb_build_object('argument', 'job'));
    end if;
    if create_sensor.connection is null then
        perform ops_private.fail(400, 'invalid_argument', 'connection (the name of a postgres connection) is required',
                                 jsonb_build_object('argument', 'connection'));
    end if;
    v_query := pg_catalog.rtrim(v_query, '; ' || chr(9) || chr(10) || chr(13));
    if v_query is null or v_query = '' then
        perform ops_private.fail(400, 'invalid_argument', 'query (one SELECT returning the cursor value) is required',
                                 jsonb_build_object('argument', 'query'));
    end if;
    if length(create_sensor.query) > 4096 then
        perform ops_private.fail(400, 'invalid_argument', 'query must be at most 4096 characters',
                                 jsonb_build_object('argument', 'query'));
    end if;
    if v_query !~* '^(select|with)\s' or strpos(v_query, ';') > 0 then
        perform ops_private.fail(400, 'invalid_argument',
            'query must be a single SELECT (or WITH ... SELECT) statement without ;',
            jsonb_build_object('argument', 'query'));
    end if;
    if create_sensor.interval_seconds is null or create_sensor.interval_seconds not between 10 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'interval_seconds must be between 10 and 86400',
                                 jsonb_build_object('argument', 'interval_seconds'));
    end if;
    perform ops_private.check_object('params', coalesce(create_sensor.params, '{}'::jsonb));
    perform ops_private.check_size('params', create_sensor.params, 65536);
    select j.id into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = create_sensor.job;
    if v_job is null then
        perform ops_private.fail(404, 'not_found',
            'job ' || left(create_sensor.job, 128) || ' not found in this workspace: register it with'
            || ' `control-room jobs register`', jsonb_build_object('argument', 'job'));
    end if;
    select c.type into v_type from ops.connections c
    where c.workspace_id = v_ws and c.name = create_sensor.connection;
    if v_type is null then
        perform ops_private.fail(404, 'not_found',
            'connection ' || left(create_sensor.connection, 64) || ' not found in this workspace: register it with'
            || ' `control-room connections create`', jsonb_build_object('argument', 'connection'));
    end if;
    if v_type <> 'postgres' then
        perform ops_private.fail(400, 'invalid_argument',
            'connection ' || create_sensor.connection || ' is of type ' || v_type
            || '; a source-changed sensor needs a postgres connection',
            jsonb_build_object('argument', 'connection'));
    end if;
    insert into ops.sensors (workspace_id, job_id, name, connection, query, params, interval_seconds,
                             enabled, next_evaluation_at, created_by, created_at)
    values (v_ws, v_job, create_sensor.name, create_sensor.connection, v_query,
            coalesce(create_sensor.params, '{}'::jsonb), create_sensor.interval_seconds,
            coalesce(create_sensor.enabled, true), v_now, ops_private.uid(), v_now)
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'a sensor named ' || create_sensor.name || ' exists in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_sensor', v_ws, 'sensor', v_row.name,
        jsonb_build_object('id', v_row.id, 'job', create_sensor.job, 'connection', v_row.connection,
                           'interval_seconds', v_row.interval_seconds));
    return ops_private.sensor_json(v_row);
end
$$;

create function ops.delete_sensor(workspace_id text, name text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_sensor.workspace_id, true);
    v_row ops.sensors;
begin
    perform ops_private.connection_workspace(v_ws, array['developer', 'admin']);
    v_row := ops_private.find_sensor(v_ws, delete_sensor.name, true);
    delete from ops.sensors s where s.id = v_row.id;      -- the runs it started stay
    perform ops_private.audit('delete_sensor', v_ws, 'sensor', v_row.name, jsonb_build_object('id', v_row.id));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

create function ops.list_sensors(workspace_id text, job text default null)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_sensors.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.sensor_json(s) order by s.name), '[]'::jsonb)
            from ops.sensors s
            where s.workspace_id = v_ws
              and (list_sensors.job is null
                   or s.job_id in (select j.id from ops.jobs j
                                   where j.workspace_id = v_ws and j.slug = list_sensors.job)));
end
$$;

create function ops.get_sensor(workspace_id text, name text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', get_sensor.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return ops_private.sensor_json(ops_private.find_sensor(v_ws, get_sensor.name, false));
end
$$;

-- Claim the enabled sensors due now (next_evaluation_at <= now), FOR UPDATE SKIP LOCKED, and
-- push their next_evaluation_at by their interval: a sensor another evaluator claimed is not
-- claimed again before its interval passed. Callers: service_role (every workspace, or
-- workspace_id), or a developer or admin of workspace_id (that workspace; without it, the
-- workspaces where it is one).
create function ops.claim_due_sensors(workspace_id text default null, "limit" integer default 20)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_limit integer := claim_due_sensors."limit";
    v_ws    uuid := ops_private.uuid_arg('workspace_id', claim_due_sensors.workspace_id, false);
    v_wss   uuid[];
    v_out   jsonb;
begin
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if v_ws is not null then
        perform ops_private.connection_workspace(v_ws, array['developer', 'admin']);
        v_wss := array[v_ws];
    elsif not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        v_wss := array(select m.workspace_id from ops.workspace_members m
                       where m.principal_id = ops_private.uid() and m.role in ('developer', 'admin'));
        if cardinality(v_wss) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'claim_due_sensors needs a developer or admin of a workspace, or service_role');
        end if;
    end if;
    with due as (
        select s.id from ops.sensors s
        where s.enabled and s.next_evaluation_at <= v_now
          and (v_wss is null or s.workspace_id = any (v_wss))
        order by s.next_evaluation_at, s.id
        limit v_limit
        for update skip locked
    ), claimed as (
        update ops.sensors s
        set next_evaluation_at = v_now + make_interval(secs => s.interval_seconds)
        from due where s.id = due.id
        returning s.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', c.id, 'workspace_id', c.workspace_id, 'name', c.name, 'connection', c.connection,
               'query', c.query, 'cursor', c.cursor) order by c.name, c.id), '[]'::jsonb)
    into v_out from claimed c;
    return v_out;
end
$$;

-- Report one evaluation of a sensor (service_role, or a developer or admin of its workspace).
--   value null, error given : the error is recorded (passwords redacted, capped), no run;
--   value = the cursor       : {moved: false};
--   value <> the cursor (or no cursor yet): a run of the job's latest version starts with the
--                              sensor's params, idempotency key sensor:<id>:<move>:<md5(value)>
--                              and the label sensor=<name>; the cursor is stored; {moved: true,
--                              run}. A run that cannot be made is recorded as the error and the
--                              cursor is left as it was (the next evaluation tries again).
create function ops.record_sensor_value(sensor_id text, value text default null, error text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_id      uuid := ops_private.uuid_arg('sensor_id', record_sensor_value.sensor_id, true);
    v_row     ops.sensors;
    v_version uuid;
    v_run     jsonb;
    v_msg     text;
begin
    select * into v_row from ops.sensors s where s.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'sensor not found', jsonb_build_object('argument', 'sensor_id'));
    end if;
    perform ops_private.require_role(v_row.workspace_id, array['developer', 'admin'], true, 'sensor');
    if record_sensor_value.value is null and record_sensor_value.error is null then
        perform ops_private.fail(400, 'invalid_argument', 'value or error is required',
                                 jsonb_build_object('argument', 'value'));
    end if;
    if record_sensor_value.value is not null and length(record_sensor_value.value) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'value must be at most 1000 characters',
                                 jsonb_build_object('argument', 'value'));
    end if;
    if record_sensor_value.value is null then
        v_msg := left(ops_private.redact_passwords(left(record_sensor_value.error, 4000)), 1000);
        update ops.sensors s set last_error = v_msg, last_evaluated_at = v_now, evaluations = s.evaluations + 1
        where s.id = v_row.id returning * into v_row;
        return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', false, 'run', null,
                                  'error', v_msg);
    end if;
    if v_row.cursor is not distinct from record_sensor_value.value then
        update ops.sensors s set last_error = null, last_evaluated_at = v_now, evaluations = s.evaluations + 1
        where s.id = v_row.id returning * into v_row;
        return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', false, 'run', null,
                                  'error', null);
    end if;
    begin
        select v.id into v_version
        from ops.jobs j join ops.job_versions v on v.job_id = j.id and v.version = j.latest_version
        where j.id = v_row.job_id;
        if v_version is null then
            perform ops_private.fail(409, 'conflict', 'the job of sensor ' || v_row.name || ' has no version');
        end if;
        v_run := ops_private.start_job_run(v_version, v_row.params,
                     'sensor:' || v_row.id::text || ':' || (v_row.moves + 1)::text || ':'
                     || md5(record_sensor_value.value),
                     jsonb_build_object('sensor', v_row.name), 0);
    exception when others then
        v_msg := left('run not created: ' || ops_private.redact_passwords(left(sqlerrm, 2000)), 1000);
    end;
    if v_msg is not null then
        update ops.sensors s set last_error = v_msg, last_evaluated_at = v_now, evaluations = s.evaluations + 1
        where s.id = v_row.id returning * into v_row;
        return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', false, 'run', null,
                                  'error', v_msg);
    end if;
    update ops.sensors s
    set cursor = record_sensor_value.value, moves = s.moves + 1, last_error = null, last_evaluated_at = v_now,
        last_moved_at = v_now, last_run_id = (v_run ->> 'id')::uuid, evaluations = s.evaluations + 1
    where s.id = v_row.id returning * into v_row;
    return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', true, 'run', v_run,
                              'error', null);
end
$$;

-- =============================================================================================
-- grants
-- =============================================================================================
revoke execute on function ops.create_sensor(text, text, text, text, text, jsonb, integer, boolean),
                           ops.delete_sensor(text, text),
                           ops.list_sensors(text, text),
                           ops.get_sensor(text, text),
                           ops.claim_due_sensors(text, integer),
                           ops.record_sensor_value(text, text, text),
                           ops_private.sensor_json(ops.sensors),
                           ops_private.find_sensor(uuid, text, boolean)
    from public, anon, authenticated, service_role;
grant execute on function ops.create_sensor(text, text, text, text, text, jsonb, integer, boolean),
                          ops.delete_sensor(text, text),
                          ops.list_sensors(text, text),
                          ops.get_sensor(text, text),
                          ops.claim_due_sensors(text, integer),
                          ops.record_sensor_value(text, text, text)
    to authenticated, service_role;
