-- "Only what changed" (issue 14, dbt Slim CI's idea): a run of a job version that reruns the
-- phases that changed since a base run of the same job, and everything downstream of them, and
-- reuses the base run's outputs for the rest (as a repair reuses its parent's: the phases are
-- created succeeded with the base phase's output_manifest and reused_from_phase_id, event
-- PHASE_REUSED). docs/github.md ("Only what changed").
--
-- Who decides what changed: the caller names the phases whose code changed (`changed`, phase ->
-- why; the CLI compares the git trees of the phases' code at the two commits), and the control
-- plane adds what it can see itself (changed_plan): a phase the base run does not have (or did
-- not succeed), another kind, params or depends_on than the base phase's, a run param the phase
-- uses (`${params.X}`) with another value than the base run's, `${run.git_sha}` at another
-- commit; then everything downstream. The run is not a child of the base (parent_run_id stays
-- null: the base is not repaired, and its repairs are not blocked); input_manifest.changed_since
-- records {base_run_id, base_git_sha, changed, rerun, reused}.
--
-- start_job_run gets the base as two more arguments (the 5-argument form, called by
-- create_job_run, the schedules and the sensors, is the 7-argument one without a base: the same
-- runs and the same idempotency digests as before). insert_run is that of
-- 20261203020600_fair_claims.sql with the PHASE_REUSED message of a run without a parent.

-- ---------------------------------------------------------------------------------------------
-- changed_plan: {"changed": {phase: why}, "rerun": [phases, ordinal order], "reused": [...]}
-- ---------------------------------------------------------------------------------------------
create function ops_private.changed_plan(p_phases jsonb, p_base ops.runs, p_changed jsonb, p_params jsonb,
                                         p_git_sha text)
returns jsonb
language plpgsql stable
as $$
declare
    v_why    jsonb := '{}'::jsonb;
    v_e      jsonb;
    v_name   text;
    v_old    ops.phases;
    v_text   text;
    v_reason text;
    v_k      text;
    v_rerun  jsonb;
    v_reused jsonb;
begin
    for v_e in select e from pg_catalog.jsonb_array_elements(p_phases) e order by (e ->> 'ordinal')::integer loop
        v_name := v_e ->> 'name';
        v_reason := null;
        select * into v_old from ops.phases p where p.run_id = p_base.id and p.name = v_name;
        v_text := (v_e -> 'params')::text;
        if p_changed ? v_name then
            v_reason := p_changed ->> v_name;
        elsif v_old.id is null then
            v_reason := 'new: the base run has no phase ' || v_name;
        elsif v_old.state <> 'succeeded' then
            v_reason := 'the base run''s phase is ' || v_old.state;
        elsif v_old.kind <> v_e ->> 'kind' then
            v_reason := 'kind changed: ' || v_old.kind || ' -> ' || (v_e ->> 'kind');
        elsif array(select d from pg_catalog.unnest(v_old.depends_on) d order by d)
              <> array(select d from pg_catalog.jsonb_array_elements_text(v_e -> 'depends_on') d order by d) then
            v_reason := 'depends_on changed';
        elsif v_old.params <> (v_e -> 'params') then
            v_reason := 'params changed';
        elsif p_git_sha <> p_base.git_sha and pg_catalog.strpos(v_text, '${run.git_sha}') > 0 then
            v_reason := 'uses ${run.git_sha}, which changed';
        else
            select k into v_k from pg_catalog.jsonb_object_keys(coalesce(p_params, '{}'::jsonb)) k
            where pg_catalog.strpos(v_text, '${params.' || k || '}') > 0
              and (p_params -> k) is distinct from (p_base.input_manifest -> 'params' -> k)
            order by k limit 1;
            if v_k is not null then
                v_reason := pg_catalog.format('param %s changed: %s -> %s', v_k,
                    pg_catalog.left(coalesce((p_base.input_manifest -> 'params' -> v_k)::text, 'none'), 60),
                    pg_catalog.left((p_params -> v_k)::text, 60));
            end if;
        end if;
        if v_reason is not null then
            v_why := v_why || pg_catalog.jsonb_build_object(v_name, v_reason);
        end if;
    end loop;
    with recursive closure(name) as (
        select k from pg_catalog.jsonb_object_keys(v_why) k
        union
        select e ->> 'name' from pg_catalog.jsonb_array_elements(p_phases) e
        join closure c on (e -> 'depends_on') ? c.name
    )
    select coalesce(pg_catalog.jsonb_agg(e ->> 'name' order by (e ->> 'ordinal')::integer)
                    filter (where e ->> 'name' in (select c.name from closure c)), '[]'::jsonb),
           coalesce(pg_catalog.jsonb_agg(e ->> 'name' order by (e ->> 'ordinal')::integer)
                    filter (where e ->> 'name' not in (select c.name from closure c)), '[]'::jsonb)
    into v_rerun, v_reused
    from pg_catalog.jsonb_array_elements(p_phases) e;
    return pg_catalog.jsonb_build_object('changed', v_why, 'rerun', v_rerun, 'reused', v_reused);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- start_job_run with a base (p_base null: exactly the run it made before)
-- ---------------------------------------------------------------------------------------------
create function ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text,
                                          p_labels jsonb, p_priority integer, p_base uuid, p_changed jsonb)
returns jsonb
language plpgsql
as $$
declare
    v_now      timestamptz := ops_private.now();
    v_ver      ops.job_versions;
    v_job      ops.jobs;
    v_declared jsonb;
    v_given    jsonb := coalesce(p_params, '{}'::jsonb);
    v_labels   jsonb := coalesce(p_labels, '{}'::jsonb);
    v_params   jsonb := '{}'::jsonb;
    v_p        record;
    v_key      text;
    v_problem  text;
    v_phases   jsonb;
    v_input    jsonb;
    v_digest   text;
    v_run      uuid;
    v_old      ops.runs;
    v_bad      text;
    v_base     ops.runs;
    v_plan     jsonb;
    v_reuse    jsonb := '{}'::jsonb;
begin
    select * into v_ver from ops.job_versions v where v.id = p_version_id;
    if v_ver.id is null then
        perform ops_private.fail(404, 'not_found', 'job version not found');
    end if;
    select * into v_job from ops.jobs j where j.id = v_ver.job_id;
    v_declared := coalesce(v_ver.spec -> 'params', '{}'::jsonb);

    perform ops_private.check_object('params', v_given);
    perform ops_private.check_size('params', v_given, 65536);
    if p_priority is null or p_priority not between -1000 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'priority must be between -1000 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'priority'));
    end if;
    if p_idempotency_key is not null and pg_catalog.length(p_idempotency_key) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'idempotency_key must be 1-200 characters',
                                 pg_catalog.jsonb_build_object('argument', 'idempotency_key'));
    end if;
    perform ops_private.check_object('labels', v_labels);
    perform ops_private.check_size('labels', v_labels, 16384);
    select l.key into v_bad from pg_catalog.jsonb_each(v_labels) l
    where pg_catalog.jsonb_typeof(l.value) <> 'string' or pg_catalog.length(l.key) > 64
       or pg_catalog.length(l.value #>> '{}') > 256 limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'labels must map keys of at most 64 characters to strings of at most 256; label '
            || pg_catalog.left(v_bad, 64) || ' does not',
            pg_catalog.jsonb_build_object('argument', 'labels.' || pg_catalog.left(v_bad, 64)));
    end if;

    -- params: only declared ones, each of its type; defaults for the rest; required ones given
    select k into v_key from pg_catalog.jsonb_object_keys(v_given) k where not (v_declared ? k) order by k limit 1;
    if v_key is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('unknown param %s for job %s version %s (params: %s)', pg_catalog.left(v_key, 64),
                              v_job.slug, v_ver.version,
                              coalesce((select pg_catalog.string_agg(k, ', ' order by k)
                                        from pg_catalog.jsonb_object_keys(v_declared) k), 'none declared')),
            pg_catalog.jsonb_build_object('argument', 'params.' || pg_catalog.left(v_key, 64),
                                          'param', pg_catalog.left(v_key, 64)));
    end if;
    for v_p in select e.key, e.value from pg_catalog.jsonb_each(v_declared) e order by e.key loop
        if v_given ? v_p.key then
            v_problem := ops_private.param_problem(v_p.value ->> 'type', v_given -> v_p.key);
            if v_problem is not null then
                perform ops_private.fail(400, 'invalid_argument',
                    pg_catalog.format('param %s %s', v_p.key, v_problem),
                    pg_catalog.jsonb_build_object('argument', 'params.' || v_p.key, 'param', v_p.key,
                                                  'type', v_p.value ->> 'type'));
            end if;
            v_params := v_params || pg_catalog.jsonb_build_object(v_p.key, v_given -> v_p.key);
        elsif coalesce(v_p.value -> 'default', 'null'::jsonb) = 'null'::jsonb then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('param %s is required (job %s version %s declares no default for it)',
                                  v_p.key, v_job.slug, v_ver.version),
                pg_catalog.jsonb_build_object('argument', 'params.' || v_p.key, 'param', v_p.key,
                                              'type', v_p.value ->> 'type'));
        else
            v_params := v_params || pg_catalog.jsonb_build_object(v_p.key, v_p.value -> 'default');
        end if;
    end loop;

    v_phases := ops_private.normalize_phases(v_ver.spec -> 'phases');
    v_input := pg_catalog.jsonb_build_object(
        'spec', pg_catalog.jsonb_build_object('slug', v_ver.spec -> 'slug', 'version', v_ver.spec -> 'version',
                                              'path', v_ver.spec -> 'source' -> 'path',
                                              'digest', v_ver.spec -> 'source' -> 'digest',
                                              'dirty', coalesce(v_ver.spec -> 'source' -> 'dirty', 'false'::jsonb)),
        'params', v_params,
        'job', pg_catalog.jsonb_build_object('slug', v_job.slug, 'version', v_ver.version));

    -- a run of what changed since p_base (a succeeded run of the same job, checked by the
    -- caller): the rerun set and the base's outputs kept for the rest
    if p_base is not null then
        select * into v_base from ops.runs r where r.id = p_base;
        v_plan := ops_private.changed_plan(v_phases, v_base, coalesce(p_changed, '{}'::jsonb), v_params,
                                           v_ver.git_sha);
        if pg_catalog.jsonb_array_length(v_plan -> 'rerun') = 0 then
            perform ops_private.fail(409, 'conflict',
                pg_catalog.format('nothing changed since run %s (%s): every phase would be reused; '
                                  'create_job_run runs them all', v_base.id, v_base.git_sha),
                pg_catalog.jsonb_build_object('run_id', v_base.id, 'reason', 'nothing_changed'));
        end if;
        select coalesce(pg_catalog.jsonb_object_agg(p.name, pg_catalog.jsonb_build_object(
                   'output_manifest', p.output_manifest,
                   'phase_id', coalesce(p.reused_from_phase_id, p.id))), '{}'::jsonb)
        into v_reuse
        from ops.phases p
        where p.run_id = v_base.id and p.state = 'succeeded'
          and p.name in (select x.value #>> '{}' from pg_catalog.jsonb_array_elements(v_plan -> 'reused') x);
        v_input := v_input || pg_catalog.jsonb_build_object('changed_since', pg_catalog.jsonb_build_object(
            'base_run_id', v_base.id, 'base_git_sha', v_base.git_sha, 'changed', v_plan -> 'changed',
            'rerun', v_plan -> 'rerun', 'reused', v_plan -> 'reused'));
    end if;

    v_digest := pg_catalog.md5(pg_catalog.jsonb_build_array(v_job.slug, v_ver.git_sha, v_phases, v_input, v_labels,
                                                             p_priority, v_ver.id)::text);
    if p_idempotency_key is not null then
        select * into v_old from ops.runs r
        where r.workspace_id = v_ver.workspace_id and r.idempotency_key = p_idempotency_key;
    end if;
    if v_old.id is null then
        v_run := ops_private.insert_run(v_ver.workspace_id, v_job.slug, v_ver.git_sha, v_phases, v_input,
                                        p_idempotency_key, v_labels, p_priority, null, v_reuse, v_digest, v_now);
        if v_run is null then
            select * into v_old from ops.runs r
            where r.workspace_id = v_ver.workspace_id and r.idempotency_key = p_idempotency_key;
        end if;
    end if;
    if v_old.id is not null then
        if v_old.request_digest <> v_digest then
            perform ops_private.fail(409, 'conflict',
                'idempotency_key ' || pg_catalog.left(p_idempotency_key, 200) || ' was used for a run with other arguments',
                pg_catalog.jsonb_build_object('run_id', v_old.id));
        end if;
        return ops_private.run_json(v_old.id) || pg_catalog.jsonb_build_object('created', false);
    end if;
    update ops.runs r set job_version_id = v_ver.id where r.id = v_run;
    return ops_private.run_json(v_run) || pg_catalog.jsonb_build_object('created', true);
end
$$;

create or replace function ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text,
                                                     p_labels jsonb, p_priority integer)
returns jsonb
language sql
as $$
    select ops_private.start_job_run(p_version_id, p_params, p_idempotency_key, p_labels, p_priority,
                                     null::uuid, null::jsonb)
$$;

-- insert_run: the PHASE_REUSED message of a run without a parent (a run of what changed)
create or replace function ops_private.insert_run(p_workspace uuid, p_spec_slug text, p_git_sha text, p_phases jsonb,
                                       p_input_manifest jsonb, p_idempotency_key text, p_labels jsonb,
                                       p_priority integer, p_parent uuid, p_reuse jsonb, p_digest text,
                                       p_now timestamptz)
returns uuid
language plpgsql
as $$
declare
    v_run  uuid;
    v_env  text;
    v_ph   record;
    v_base bigint := ops_private.fair_round_next(null, p_priority);   -- the current round
begin
    select w.env into v_env from ops.workspaces w where w.id = p_workspace;
    insert into ops.runs (workspace_id, env, spec_slug, git_sha, state, priority, labels, input_manifest,
                          idempotency_key, request_digest, parent_run_id, created_by, created_at, updated_at)
    values (p_workspace, v_env, p_spec_slug, p_git_sha, 'queued', p_priority, p_labels, p_input_manifest,
            p_idempotency_key, p_digest, p_parent, ops_private.uid(), p_now, p_now)
    on conflict (workspace_id, idempotency_key) do nothing
    returning id into v_run;
    if v_run is null then
        return null;   -- a concurrent call with the same idempotency key won
    end if;

    insert into ops.phases (run_id, workspace_id, name, ordinal, kind, params, depends_on, state, priority,
                            max_attempts, timeout_seconds, retry_backoff_seconds, retry_backoff_max_seconds,
                            queued_at, not_before, fair_round, output_manifest, finished_at,
                            reused_from_phase_id, updated_at)
    select v_run, p_workspace, x.e ->> 'name', x.ordinal, x.e ->> 'kind', x.e -> 'params',
           array(select pg_catalog.jsonb_array_elements_text(x.e -> 'depends_on')),
           x.state, p_priority, (x.e ->> 'max_attempts')::integer, (x.e ->> 'timeout_seconds')::integer,
           (x.e ->> 'retry_backoff_seconds')::numeric, (x.e ->> 'retry_backoff_max_seconds')::numeric,
           p_now, p_now,
           -- the run's k-th queued root (by ordinal) plays in round base + k - 1
           case when x.state = 'queued' then
               v_base + count(*) filter (where x.state = 'queued')
                            over (order by x.ordinal rows between unbounded preceding and current row) - 1
           end,
           p_reuse -> (x.e ->> 'name') -> 'output_manifest',
           case when p_reuse ? (x.e ->> 'name') then p_now end,
           (p_reuse -> (x.e ->> 'name') ->> 'phase_id')::uuid,
           p_now
    from (select e, (e ->> 'ordinal')::integer as ordinal,
                 case when p_reuse ? (e ->> 'name') then 'succeeded'
                      when not exists (select 1 from pg_catalog.jsonb_array_elements_text(e -> 'depends_on') d(name)
                                       where not coalesce(p_reuse ? d.name, false)) then 'queued'
                      else 'waiting' end as state
          from pg_catalog.jsonb_array_elements(p_phases) e) x;

    perform ops_private.emit(v_run, p_workspace, null, null, 'RUN_CREATED', 'info',
        'run created: ' || p_spec_slug || ' @ ' || p_git_sha,
        pg_catalog.jsonb_build_object('spec_slug', p_spec_slug, 'git_sha', p_git_sha, 'env', v_env,
                                      'parent_run_id', p_parent,
                                      'phases', pg_catalog.jsonb_array_length(p_phases)),
        p_now);
    perform ops_private.notify_queued(p_workspace, k.kind)
    from (select distinct p.kind from ops.phases p where p.run_id = v_run and p.state = 'queued') k;
    for v_ph in select p.name, p.state, p.reused_from_phase_id from ops.phases p
                where p.run_id = v_run and p.state in ('queued', 'succeeded') order by p.ordinal loop
        if v_ph.state = 'queued' then
            perform ops_private.emit(v_run, p_workspace, v_ph.name, 0, 'PHASE_QUEUED', 'info',
                                     'queued', '{}'::jsonb, p_now);
        else
            perform ops_private.emit(v_run, p_workspace, v_ph.name, 0, 'PHASE_REUSED', 'info',
                case when p_parent is null then 'reused: the output of phase ' || v_ph.reused_from_phase_id::text
                     else 'kept from the parent run' end,
                pg_catalog.jsonb_build_object('reused_from_phase_id', v_ph.reused_from_phase_id), p_now);
        end if;
    end loop;
    return v_run;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- create_changed_run: the RPC
-- ---------------------------------------------------------------------------------------------
create function ops.create_changed_run(workspace_id text, job text, base_run_id text, changed jsonb,
                                       version integer default null, params jsonb default '{}'::jsonb,
                                       idempotency_key text default null, labels jsonb default '{}'::jsonb,
                                       priority integer default 0)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_job   ops.jobs := ops_private.find_job(create_changed_run.workspace_id, create_changed_run.job,
                                             array['developer', 'admin'], false);
    v_ver   ops.job_versions;
    v_base  uuid;
    v_r     ops.runs;
    v_of    text;
    v_bad   text;
    v_out   jsonb;
begin
    if v_job.latest_version = 0 then
        perform ops_private.fail(404, 'not_found', 'job ' || v_job.slug || ' has no version');
    end if;
    if create_changed_run.version is not null
       and create_changed_run.version not between 1 and v_job.latest_version then
        perform ops_private.fail(404, 'not_found',
            pg_catalog.format('job %s has no version %s (versions 1..%s)', v_job.slug, create_changed_run.version,
                              v_job.latest_version),
            jsonb_build_object('argument', 'version'));
    end if;
    select * into v_ver from ops.job_versions v
    where v.job_id = v_job.id and v.version = coalesce(create_changed_run.version, v_job.latest_version);

    if create_changed_run.changed is null or jsonb_typeof(create_changed_run.changed) <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'changed must be a JSON object: phase name -> why it changed ({} when only the control plane''s own checks apply), got '
            || coalesce(jsonb_typeof(create_changed_run.changed), 'nothing'),
            jsonb_build_object('argument', 'changed'));
    end if;
    perform ops_private.check_size('changed', create_changed_run.changed, 262144);
    select c.key into v_bad from jsonb_each(create_changed_run.changed) c
    where not exists (select 1 from jsonb_array_elements(v_ver.spec -> 'phases') e where e ->> 'name' = c.key)
    order by c.key limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('changed: %s is not a phase of job %s version %s', pg_catalog.left(v_bad, 200),
                              v_job.slug, v_ver.version),
            jsonb_build_object('argument', 'changed', 'phase', pg_catalog.left(v_bad, 200)));
    end if;
    select c.key into v_bad from jsonb_each(create_changed_run.changed) c
    where jsonb_typeof(c.value) <> 'string' or length(c.value #>> '{}') not between 1 and 500
    order by c.key limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'changed.' || v_bad || ' must be a string of 1-500 characters: why the phase changed',
            jsonb_build_object('argument', 'changed.' || v_bad));
    end if;

    v_base := ops_private.uuid_arg('base_run_id', create_changed_run.base_run_id, true);
    select * into v_r from ops.runs r where r.id = v_base and r.workspace_id = v_job.workspace_id;
    if v_r.id is null then
        perform ops_private.fail(404, 'not_found', 'base run ' || v_base::text || ' not found in this workspace',
                                 jsonb_build_object('argument', 'base_run_id'));
    end if;
    if v_r.job_version_id is null
       or not exists (select 1 from ops.job_versions v where v.id = v_r.job_version_id and v.job_id = v_job.id) then
        select 'job ' || j.slug into v_of from ops.job_versions v join ops.jobs j on j.id = v.job_id
        where v.id = v_r.job_version_id;
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('base run %s is a run of %s, not of job %s: only a run of the same job is reused',
                              v_r.id, coalesce(v_of, 'the spec ' || v_r.spec_slug), v_job.slug),
            jsonb_build_object('argument', 'base_run_id', 'reason', 'other_job'));
    end if;
    if v_r.state <> 'succeeded' then
        perform ops_private.fail(409, 'conflict',
            pg_catalog.format('base run %s is %s: only a succeeded run''s outputs are reused', v_r.id, v_r.state),
            jsonb_build_object('run_id', v_r.id, 'reason', 'base_not_succeeded'));
    end if;

    v_out := ops_private.start_job_run(v_ver.id, create_changed_run.params, create_changed_run.idempotency_key,
                                       create_changed_run.labels, create_changed_run.priority, v_r.id,
                                       create_changed_run.changed);
    if (v_out ->> 'created')::boolean then
        perform ops_private.audit('create_changed_run', v_job.workspace_id, 'run', v_out ->> 'id',
            jsonb_build_object('job', v_job.slug, 'version', v_ver.version, 'base_run_id', v_r.id,
                               'rerun_phases', v_out -> 'input_manifest' -> 'changed_since' -> 'rerun',
                               'reused_phases', v_out -> 'input_manifest' -> 'changed_since' -> 'reused',
                               'idempotency_key', create_changed_run.idempotency_key));
    end if;
    return v_out || jsonb_build_object('changed_since', v_out -> 'input_manifest' -> 'changed_since');
end
$$;

-- ---------------------------------------------------------------------------------------------
-- grants: the RPC to the API roles; the helpers stay private
-- ---------------------------------------------------------------------------------------------
revoke execute on function ops.create_changed_run(text, text, text, jsonb, integer, jsonb, text, jsonb, integer),
                           ops_private.changed_plan(jsonb, ops.runs, jsonb, jsonb, text),
                           ops_private.start_job_run(uuid, jsonb, text, jsonb, integer, uuid, jsonb)
    from public, anon, authenticated, service_role;
grant execute on function ops.create_changed_run(text, text, text, jsonb, integer, jsonb, text, jsonb, integer)
    to authenticated, service_role;
