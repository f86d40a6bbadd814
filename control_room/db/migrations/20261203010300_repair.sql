-- Repair runs and dead letters (issue 11).
--
-- repair_run(run_id, phases, idempotency_key): a child run of a finished run that reruns the
-- named phases, every phase that did not succeed, and everything downstream of them; every
-- other phase keeps its succeeded output (reused_from_phase_id, PHASE_REUSED), as retry_run.
-- At most one active (queued or running) child per run: the parent's row is locked while a
-- child is made, so two concurrent repairs (or a repair and a retry) give exactly one child.
--
-- list_dead_letters / requeue_dead_letters: a dead letter is a failed phase (failed for good:
-- out of attempts, or not retryable) that no child run of its run has rerun to an end
-- (succeeded: it is fixed; failed: that child's phase is the dead letter now). Requeueing
-- makes one repair per run through the same internals.

-- list_dead_letters reads failed phases of one workspace, newest first: their own small index
-- (failed phases are few beside the history; the child lookup uses runs_parent_idx)
create index phases_failed_idx on ops.phases (workspace_id, finished_at desc, id desc) where state = 'failed';

-- ---------------------------------------------------------------------------------------------
-- the internals shared by repair_run, retry_run and requeue_dead_letters
-- ---------------------------------------------------------------------------------------------
-- The phases a repair of p_parent reruns: p_named (null: none beyond the default), every phase
-- that did not succeed, and every phase downstream of those, in ordinal order.
create function ops_private.repair_set(p_parent uuid, p_named text[])
returns text[]
language sql stable
as $$
    with recursive seed as (
        select p.name from ops.phases p
        where p.run_id = p_parent and (p.state <> 'succeeded' or p.name = any (coalesce(p_named, '{}')))
    ), closure(name) as (
        select s.name from seed s
        union
        select q.name from ops.phases q join closure c on c.name = any (q.depends_on)
        where q.run_id = p_parent
    )
    select coalesce(pg_catalog.array_agg(p.name order by p.ordinal), '{}')
    from ops.phases p where p.run_id = p_parent and p.name in (select c.name from closure c)
$$;

-- The active (queued or running) child of a run, if any.
create function ops_private.active_child(p_parent uuid)
returns uuid
language sql stable
as $$
    select r.id from ops.runs r
    where r.parent_run_id = p_parent and r.state in ('queued', 'running')
    order by r.created_at, r.id limit 1
$$;

-- Make a child of p_parent that reruns p_rerun and reuses the rest. The caller has checked the
-- role and holds the parent's row lock. p_on_active: 'fail' (409 naming the active child) or
-- 'return' (answer the active child, created false). Returns the child's run_json with
-- `created` and `rerun_phases`; the caller audits a created child.
create function ops_private.make_repair(p_r ops.runs, p_rerun text[], p_key text, p_digest text,
                                        p_on_active text, p_now timestamptz)
returns jsonb
language plpgsql
as $$
declare
    v_child  uuid;
    v_phases jsonb;
    v_reuse  jsonb;
begin
    if p_key is not null then
        select r.id into v_child from ops.runs r
        where r.workspace_id = p_r.workspace_id and r.idempotency_key = p_key;
        if v_child is not null then
            if not exists (select 1 from ops.runs r where r.id = v_child and r.request_digest = p_digest) then
                perform ops_private.fail(409, 'conflict',
                    'idempotency_key ' || p_key || ' belongs to a run that is not this repair of this run',
                    pg_catalog.jsonb_build_object('run_id', v_child));
            end if;
            return ops_private.run_json(v_child)
                   || pg_catalog.jsonb_build_object('created', false, 'rerun_phases', pg_catalog.to_jsonb(p_rerun));
        end if;
    end if;
    v_child := ops_private.active_child(p_r.id);
    if v_child is not null then
        if p_on_active = 'return' then
            return ops_private.run_json(v_child)
                   || pg_catalog.jsonb_build_object('created', false, 'rerun_phases', (
                          select coalesce(pg_catalog.jsonb_agg(p.name order by p.ordinal), '[]'::jsonb)
                          from ops.phases p where p.run_id = v_child and p.reused_from_phase_id is null));
        end if;
        perform ops_private.fail(409, 'conflict',
            'run ' || p_r.id::text || ' already has an active repair: ' || v_child::text,
            pg_catalog.jsonb_build_object('run_id', v_child));
    end if;
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'name', p.name, 'kind', p.kind, 'params', p.params, 'depends_on', pg_catalog.to_jsonb(p.depends_on),
               'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
               'retry_backoff_seconds', p.retry_backoff_seconds,
               'retry_backoff_max_seconds', p.retry_backoff_max_seconds, 'ordinal', p.ordinal)
               order by p.ordinal),
           coalesce(pg_catalog.jsonb_object_agg(p.name, pg_catalog.jsonb_build_object(
               'output_manifest', p.output_manifest,
               'phase_id', coalesce(p.reused_from_phase_id, p.id)))
               filter (where p.state = 'succeeded' and not p.name = any (p_rerun)), '{}'::jsonb)
    into v_phases, v_reuse
    from ops.phases p where p.run_id = p_r.id;
    v_child := ops_private.insert_run(p_r.workspace_id, p_r.spec_slug, p_r.git_sha, v_phases, p_r.input_manifest,
                                      p_key, p_r.labels, p_r.priority, p_r.id, v_reuse, p_digest, p_now);
    if v_child is null then
        -- unreachable while the parent's row is locked and the key was looked up above; kept
        -- so that a key taken by a run of no parent is still a clean refusal
        perform ops_private.fail(409, 'conflict', 'idempotency_key ' || p_key || ' is taken');
    end if;
    -- a repair of a job's run is a run of the same job version: the trigger
    -- runs_inherit_job_version (20261203010000_jobs.sql) sets it on insert
    return ops_private.run_json(v_child)
           || pg_catalog.jsonb_build_object('created', true, 'rerun_phases', pg_catalog.to_jsonb(p_rerun));
end
$$;

-- ---------------------------------------------------------------------------------------------
-- repair_run
-- ---------------------------------------------------------------------------------------------
create function ops.repair_run(run_id text, phases text[] default null, idempotency_key text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_parent uuid := ops_private.uuid_arg('run_id', repair_run.run_id, true);
    v_r      ops.runs;
    v_named  text[];
    v_bad    text;
    v_rerun  text[];
    v_out    jsonb;
begin
    if repair_run.idempotency_key is not null and length(repair_run.idempotency_key) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'idempotency_key must be 1-200 characters',
                                 jsonb_build_object('argument', 'idempotency_key'));
    end if;
    if repair_run.phases is not null then
        if cardinality(repair_run.phases) = 0 then
            perform ops_private.fail(400, 'invalid_argument',
                'phases must name at least one phase (or be null: every phase that did not succeed)',
                jsonb_build_object('argument', 'phases'));
        end if;
        if cardinality(repair_run.phases) > 1000 or array_ndims(repair_run.phases) <> 1 then
            perform ops_private.fail(400, 'invalid_argument', 'phases must be a list of at most 1000 names',
                                     jsonb_build_object('argument', 'phases'));
        end if;
        if array_position(repair_run.phases, null) is not null then
            perform ops_private.fail(400, 'invalid_argument', 'phases must not contain null',
                                     jsonb_build_object('argument', 'phases'));
        end if;
        select array_agg(distinct n order by n) into v_named from unnest(repair_run.phases) n;
    end if;
    select * into v_r from ops.runs r where r.id = v_parent;
    if v_r.id is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    perform ops_private.require_role(v_r.workspace_id, array['developer', 'admin'], true, 'run');
    select n into v_bad from unnest(v_named) n
    where not exists (select 1 from ops.phases p where p.run_id = v_parent and p.name = n)
    order by n limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'phase ' || left(v_bad, 200) || ' is not a phase of this run',
            jsonb_build_object('argument', 'phases', 'phase', left(v_bad, 200)));
    end if;
    -- the lock that makes "at most one active repair per run" race-safe
    select * into v_r from ops.runs r where r.id = v_parent for update;
    if v_r.state not in ('succeeded', 'failed', 'cancelled') then
        perform ops_private.fail(409, 'conflict',
            'only a finished run can be repaired; this one is ' || v_r.state);
    end if;
    v_rerun := ops_private.repair_set(v_parent, v_named);
    if cardinality(v_rerun) = 0 then
        perform ops_private.fail(409, 'conflict',
            'every phase of this run succeeded: name the phases to rerun');
    end if;
    v_out := ops_private.make_repair(v_r, v_rerun, repair_run.idempotency_key,
        md5(jsonb_build_array('repair', v_parent, v_rerun)::text), 'fail', v_now);
    if (v_out ->> 'created')::boolean then
        perform ops_private.audit('repair_run', v_r.workspace_id, 'run', v_out ->> 'id',
                                  jsonb_build_object('parent_run_id', v_parent, 'rerun_phases', to_jsonb(v_rerun)));
    end if;
    return v_out;
end
$$;

-- retry_run: repair_run with its defaults, the key `retry-of:<run>` and the states it always
-- took (failed or cancelled). Its behaviour is unchanged but for the guard it now shares: the
-- parent's row is locked and an active child of another key is a 409.
create or replace function ops.retry_run(run_id text, idempotency_key text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_parent uuid := ops_private.uuid_arg('run_id', retry_run.run_id, true);
    v_r      ops.runs;
    v_out    jsonb;
begin
    if retry_run.idempotency_key is not null and length(retry_run.idempotency_key) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'idempotency_key must be 1-200 characters');
    end if;
    select * into v_r from ops.runs r where r.id = v_parent;
    if v_r.id is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    perform ops_private.require_role(v_r.workspace_id, array['developer', 'admin'], true, 'run');
    select * into v_r from ops.runs r where r.id = v_parent for update;
    if v_r.state not in ('failed', 'cancelled') then
        perform ops_private.fail(409, 'conflict',
            'only a failed or cancelled run can be retried; this one is ' || v_r.state);
    end if;
    v_out := ops_private.make_repair(v_r, ops_private.repair_set(v_parent, null),
        coalesce(retry_run.idempotency_key, 'retry-of:' || v_parent::text),
        md5(jsonb_build_array('retry', v_parent)::text), 'fail', v_now);
    if (v_out ->> 'created')::boolean then
        perform ops_private.audit('retry_run', v_r.workspace_id, 'run', v_out ->> 'id',
                                  jsonb_build_object('parent_run_id', v_parent));
    end if;
    return v_out - 'rerun_phases';
end
$$;

-- ---------------------------------------------------------------------------------------------
-- get_run: the run with its lineage
-- ---------------------------------------------------------------------------------------------
create function ops_private.lineage_json(p_run uuid)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'repairs', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                        'id', c.id, 'state', c.state, 'created_at', c.created_at)
                        order by c.created_at, c.id), '[]'::jsonb)
                    from ops.runs c where c.parent_run_id = p_run),
        'root_run_id', (with recursive up(id, parent, depth) as (
                            select r.id, r.parent_run_id, 0 from ops.runs r where r.id = p_run
                            union all
                            select r.id, r.parent_run_id, u.depth + 1 from ops.runs r join up u on r.id = u.parent
                            where u.depth < 10000)
                        select u.id from up u order by u.depth desc limit 1))
$$;

create or replace function ops.get_run(run_id text)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run uuid := ops_private.uuid_arg('run_id', get_run.run_id, true);
    v_out jsonb;
begin
    v_out := ops_private.run_json(v_run);
    if v_out is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    return v_out || ops_private.lineage_json(v_run);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- dead letters
-- ---------------------------------------------------------------------------------------------
-- Has a child of the run (a repair or a retry) rerun this phase to an end? (Then a failed phase
-- of the run is no dead letter: the child's copy succeeded, or it failed and is one itself.)
-- Whole phase rows are never selected: lease_token and claim_id are not readable.
create function ops_private.rerun_to_an_end(p_run uuid, p_name text)
returns boolean
language sql stable
as $$
    select exists (
        select 1 from ops.runs c join ops.phases cp on cp.run_id = c.id
        where c.parent_run_id = p_run and cp.name = p_name
          and cp.reused_from_phase_id is null and cp.state in ('succeeded', 'failed'))
$$;

-- The dead letters of a workspace, newest failure first (a phase in state failed of no
-- rerun_to_an_end), one page after the cursor's (finished_at, id).
create function ops_private.dead_letters(p_ws uuid, p_spec text, p_since timestamptz, p_at timestamptz,
                                         p_id uuid, p_limit integer)
returns table (phase_id uuid, failed_at timestamptz, item jsonb)
language sql stable
as $$
    select p.id, p.finished_at, pg_catalog.jsonb_build_object(
        'phase_id', p.id, 'run_id', p.run_id, 'workspace_id', p.workspace_id, 'spec_slug', r.spec_slug,
        'phase', p.name, 'kind', p.kind, 'attempts', p.attempt, 'max_attempts', p.max_attempts,
        'run_state', r.state, 'failed_at', p.finished_at,
        'error', pg_catalog.jsonb_build_object(
            'message', pg_catalog.left(coalesce(p.error ->> 'message', ''), 500),
            'type', p.error ->> 'type', 'reason', p.error ->> 'reason'),
        'active_repair_id', ops_private.active_child(p.run_id))
    from ops.phases p join ops.runs r on r.id = p.run_id
    where p.workspace_id = p_ws and p.state = 'failed'
      and (p_spec is null or r.spec_slug = p_spec)
      and (p_since is null or p.finished_at >= p_since)
      and (p_at is null or (p.finished_at, p.id) < (p_at, p_id))
      and not ops_private.rerun_to_an_end(p.run_id, p.name)
    order by p.finished_at desc, p.id desc
    limit p_limit
$$;

create function ops.list_dead_letters(workspace_id text, spec_slug text default null, since text default null,
                                      "limit" integer default 100, cursor text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws    uuid := ops_private.uuid_arg('workspace_id', list_dead_letters.workspace_id, true);
    v_since timestamptz;
    v_at    timestamptz;
    v_id    uuid;
    v_rows  jsonb := '[]';
    v_n     integer := 0;
    v_last_at timestamptz;
    v_last_id uuid;
    v_x     record;
begin
    if list_dead_letters."limit" is null or list_dead_letters."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if list_dead_letters.spec_slug is not null and length(list_dead_letters.spec_slug) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'spec_slug must be at most 200 characters',
                                 jsonb_build_object('argument', 'spec_slug'));
    end if;
    if list_dead_letters.since is not null then
        if list_dead_letters.since !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$' then
            perform ops_private.fail(400, 'invalid_argument', 'since must be an ISO 8601 time',
                                     jsonb_build_object('argument', 'since'));
        end if;
        begin
            v_since := list_dead_letters.since::timestamptz;
        exception when others then
            perform ops_private.fail(400, 'invalid_argument', 'since must be an ISO 8601 time',
                                     jsonb_build_object('argument', 'since'));
        end;
    end if;
    if list_dead_letters.cursor is not null then
        if list_dead_letters.cursor !~ '^\d{1,16}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
            perform ops_private.fail(400, 'invalid_argument', 'cursor is not one this function returned',
                                     jsonb_build_object('argument', 'cursor'));
        end if;
        v_at := to_timestamp(split_part(list_dead_letters.cursor, ':', 1)::numeric / 1000000);
        v_id := split_part(list_dead_letters.cursor, ':', 2)::uuid;
    end if;
    -- a workspace the caller is no member of reads as no dead letters (row level security)
    for v_x in
        select d.phase_id, d.failed_at, d.item
        from ops_private.dead_letters(v_ws, list_dead_letters.spec_slug, v_since, v_at, v_id,
                                      list_dead_letters."limit") d
    loop
        v_rows := v_rows || jsonb_build_array(v_x.item);
        v_n := v_n + 1;
        v_last_at := v_x.failed_at;
        v_last_id := v_x.phase_id;
    end loop;
    return jsonb_build_object('dead_letters', v_rows,
        'next_cursor', case when v_n = list_dead_letters."limit" then
            (extract(epoch from v_last_at) * 1000000)::bigint::text || ':' || v_last_id::text end);
end
$$;

create function ops.requeue_dead_letters(workspace_id text, phase_ids text[])
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_ws    uuid := ops_private.uuid_arg('workspace_id', requeue_dead_letters.workspace_id, true);
    v_ids   uuid[] := '{}';
    v_i     integer;
    v_p     ops.phases;
    v_r     ops.runs;
    v_run   uuid;
    v_named text[];
    v_out   jsonb := '[]';
    v_child jsonb;
begin
    if requeue_dead_letters.phase_ids is null or cardinality(requeue_dead_letters.phase_ids) = 0 then
        perform ops_private.fail(400, 'invalid_argument', 'phase_ids must name at least one phase',
                                 jsonb_build_object('argument', 'phase_ids'));
    end if;
    if cardinality(requeue_dead_letters.phase_ids) > 1000 or array_ndims(requeue_dead_letters.phase_ids) <> 1 then
        perform ops_private.fail(400, 'invalid_argument', 'phase_ids must be a list of at most 1000 ids',
                                 jsonb_build_object('argument', 'phase_ids'));
    end if;
    for v_i in 1 .. cardinality(requeue_dead_letters.phase_ids) loop
        v_ids := v_ids || ops_private.uuid_arg(format('phase_ids[%s]', v_i - 1),
                                                requeue_dead_letters.phase_ids[v_i], true);
    end loop;
    perform ops_private.require_role(v_ws, array['developer', 'admin'], true);
    -- every id must be a dead letter of this workspace
    for v_i in 1 .. cardinality(v_ids) loop
        select * into v_p from ops.phases p where p.id = v_ids[v_i] and p.workspace_id = v_ws;
        if v_p.id is null then
            perform ops_private.fail(404, 'not_found',
                format('phase_ids[%s] (%s) is not a phase of this workspace', v_i - 1, v_ids[v_i]),
                jsonb_build_object('argument', format('phase_ids[%s]', v_i - 1)));
        end if;
        if v_p.state <> 'failed' or ops_private.rerun_to_an_end(v_p.run_id, v_p.name) then
            perform ops_private.fail(409, 'conflict',
                format('phase_ids[%s] (%s, phase %s) is not a dead letter: it is %s', v_i - 1, v_ids[v_i],
                       v_p.name, case when v_p.state = 'failed' then 'failed and already repaired' else v_p.state end),
                jsonb_build_object('argument', format('phase_ids[%s]', v_i - 1)));
        end if;
    end loop;
    -- one repair per run, the runs locked in id order (two bulk requeues never deadlock)
    for v_run in select distinct p.run_id from ops.phases p where p.id = any (v_ids) order by p.run_id loop
        select * into v_r from ops.runs r where r.id = v_run for update;
        if v_r.state not in ('succeeded', 'failed', 'cancelled') then
            perform ops_private.fail(409, 'conflict',
                'run ' || v_run::text || ' is still ' || v_r.state || '; its dead letters can be requeued once it ends',
                jsonb_build_object('run_id', v_run));
        end if;
        select array_agg(p.name order by p.ordinal) into v_named
        from ops.phases p where p.run_id = v_run and p.id = any (v_ids);
        v_child := ops_private.make_repair(v_r, ops_private.repair_set(v_run, v_named), null,
            md5(jsonb_build_array('repair', v_run, ops_private.repair_set(v_run, v_named))::text),
            'return', v_now);
        if (v_child ->> 'created')::boolean then
            perform ops_private.audit('requeue_dead_letters', v_ws, 'run', v_child ->> 'id',
                jsonb_build_object('parent_run_id', v_run, 'phases', to_jsonb(v_named),
                                   'rerun_phases', v_child -> 'rerun_phases'));
        end if;
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'run_id', v_run, 'repair_run_id', v_child ->> 'id', 'created', v_child -> 'created',
            'state', v_child ->> 'state', 'phases', to_jsonb(v_named), 'rerun_phases', v_child -> 'rerun_phases'));
    end loop;
    return jsonb_build_object('requeued', v_out);
end
$$;

revoke execute on function ops.repair_run(text, text[], text), ops.list_dead_letters(text, text, text, integer, text),
                           ops.requeue_dead_letters(text, text[]) from public, anon;
grant execute on function ops.repair_run(text, text[], text), ops.list_dead_letters(text, text, text, integer, text),
                          ops.requeue_dead_letters(text, text[]) to authenticated, service_role;
revoke execute on function ops_private.repair_set(uuid, text[]), ops_private.active_child(uuid),
                           ops_private.make_repair(ops.runs, text[], text, text, text, timestamptz),
                           ops_private.lineage_json(uuid), ops_private.rerun_to_an_end(uuid, text),
                           ops_private.dead_letters(uuid, text, timestamptz, timestamptz, uuid, integer)
    from public, anon;
grant execute on function ops_private.lineage_json(uuid), ops_private.rerun_to_an_end(uuid, text),
                          ops_private.dead_letters(uuid, text, timestamptz, timestamptz, uuid, integer),
                          ops_private.active_child(uuid)
    to authenticated, service_role;
