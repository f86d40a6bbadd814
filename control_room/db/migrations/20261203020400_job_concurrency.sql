-- Job-level concurrency (issue 11): `ops.jobs.max_concurrent_runs`, the most runs of a job queued
-- or running at once that its automatic triggers may start (Databricks Jobs' "maximum
-- concurrent runs"). A pipeline whose runs must not overlap (the Odoo medallion: two runs
-- appending to one bronze at once) sets it to 1; null (the default) is no limit.
--   - a schedule tick of a job at its limit is `skipped`, reason `job busy: ...`, before the
--     schedule's own overlap policy (which counts only that schedule's runs);
--   - a sensor whose value moved while its job is at its limit starts no run and keeps its
--     cursor (its answer's `waiting` says why), so the first evaluation after a run ends
--     starts one;
--   - create_job_run (a person, CI, an agent) is not limited.
-- fire_tick and record_sensor_value are those of 20261203010100_schedules.sql and
-- 20261203010400_sensors.sql with that check added. docs/jobs.md ("Concurrency").

alter table ops.jobs add column max_concurrent_runs integer check (max_concurrent_runs between 1 and 1000);
comment on column ops.jobs.max_concurrent_runs is
    'At most this many runs queued or running that schedules and sensors start (null: no limit).';

-- Why a job's automatic triggers may not start a run now (null: they may). A job with a limit
-- is locked (FOR UPDATE, until the caller's transaction ends) before its runs are counted: a
-- scheduler's tick and a sensor's evaluation racing on one job take turns, and the second
-- counts the run the first made (READ COMMITTED: the count runs after the lock is granted).
create function ops_private.job_busy(p_job uuid)
returns text
language plpgsql volatile
as $$
declare
    v_job   ops.jobs;
    v_count integer;
begin
    select * into v_job from ops.jobs j where j.id = p_job;
    if v_job.max_concurrent_runs is null then
        return null;
    end if;
    perform 1 from ops.jobs j where j.id = p_job for update;
    select count(*) into v_count
    from ops.runs r
    where r.job_version_id in (select v.id from ops.job_versions v where v.job_id = p_job)
      and r.state in ('queued', 'running');
    if v_count < v_job.max_concurrent_runs then
        return null;
    end if;
    return pg_catalog.format('job %s has %s run(s) queued or running (max_concurrent_runs %s)',
                             v_job.slug, v_count, v_job.max_concurrent_runs);
end
$$;

-- job_json with max_concurrent_runs (20261203020000_freshness.sql's, that field aside).
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
        'max_concurrent_runs', j.max_concurrent_runs,
        'freshness', ops_private.job_freshness_json(j));
end
$$;

-- set_job_concurrency: the limit (developer or admin); null removes it. Audited when it changes.
create function ops.set_job_concurrency(workspace_id text, job text, max_concurrent_runs integer default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_job ops.jobs := ops_private.find_job(set_job_concurrency.workspace_id, set_job_concurrency.job,
                                           array['developer', 'admin'], true);
begin
    if set_job_concurrency.max_concurrent_runs is not null
       and set_job_concurrency.max_concurrent_runs not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument',
            'max_concurrent_runs must be between 1 and 1000 (null: no limit), got '
            || set_job_concurrency.max_concurrent_runs::text,
            jsonb_build_object('argument', 'max_concurrent_runs'));
    end if;
    if v_job.max_concurrent_runs is distinct from set_job_concurrency.max_concurrent_runs then
        update ops.jobs j set max_concurrent_runs = set_job_concurrency.max_concurrent_runs,
                              updated_at = ops_private.now()
        where j.id = v_job.id
        returning * into v_job;
        perform ops_private.audit('set_job_concurrency', v_job.workspace_id, 'job', v_job.id::text,
            jsonb_build_object('job', v_job.slug, 'max_concurrent_runs', set_job_concurrency.max_concurrent_runs));
    end if;
    return ops_private.job_json(v_job);
end
$$;

-- fire_tick
create or replace function ops_private.fire_tick(s ops.schedules, p_for timestamptz, p_state text, p_reason text,
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
    v_busy    text;
begin
    insert into ops.schedule_ticks (schedule_id, workspace_id, scheduled_for, state, reason, created_at)
    values (s.id, s.workspace_id, p_for, p_state, p_reason, p_now)
    on conflict (schedule_id, scheduled_for) do nothing
    returning * into v_tick;
    if v_tick.id is null or p_state <> 'created' then
        return v_tick;
    end if;
    begin
        -- the job's own limit first (any trigger's runs count), then the schedule's overlap
        v_busy := ops_private.job_busy(s.job_id);
        if v_busy is not null then
            update ops.schedule_ticks t set state = 'skipped', reason = 'job busy: ' || v_busy
            where t.id = v_tick.id returning * into v_tick;
            return v_tick;
        end if;
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

-- record_sensor_value
create or replace function ops.record_sensor_value(sensor_id text, value text default null, error text default null)
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
    v_busy    text;
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
                                  'error', v_msg, 'waiting', null);
    end if;
    if v_row.cursor is not distinct from record_sensor_value.value then
        update ops.sensors s set last_error = null, last_evaluated_at = v_now, evaluations = s.evaluations + 1
        where s.id = v_row.id returning * into v_row;
        return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', false, 'run', null,
                                  'error', null, 'waiting', null);
    end if;
    v_busy := ops_private.job_busy(v_row.job_id);
    if v_busy is not null then
        -- the job is at its max_concurrent_runs: no run, the cursor stays, so the first
        -- evaluation after a run ends starts one
        update ops.sensors s set last_error = null, last_evaluated_at = v_now, evaluations = s.evaluations + 1
        where s.id = v_row.id returning * into v_row;
        return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', false, 'run', null,
                                  'error', null, 'waiting', v_busy);
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
                                  'error', v_msg, 'waiting', null);
    end if;
    update ops.sensors s
    set cursor = record_sensor_value.value, moves = s.moves + 1, last_error = null, last_evaluated_at = v_now,
        last_moved_at = v_now, last_run_id = (v_run ->> 'id')::uuid, evaluations = s.evaluations + 1
    where s.id = v_row.id returning * into v_row;
    return jsonb_build_object('sensor', ops_private.sensor_json(v_row), 'moved', true, 'run', v_run,
                              'error', null, 'waiting', null);
end
$$;

revoke execute on function ops_private.job_busy(uuid) from public, anon, authenticated, service_role;
revoke execute on function ops.set_job_concurrency(text, text, integer) from public, anon;
grant execute on function ops.set_job_concurrency(text, text, integer) to authenticated, service_role;
