-- ops: the executor contract. Every state change of the control plane is one of these functions;
-- contract/openapi.yaml describes them and a test keeps the two in step.
-- Mutating functions are SECURITY DEFINER with an empty search_path and check the caller
-- themselves; read functions are SECURITY INVOKER so row level security decides what they see.

-- ---------------------------------------------------------------------------------------------
-- workspaces and members
-- ---------------------------------------------------------------------------------------------
create function ops.create_workspace(slug text, name text, env text default 'dev')
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_uid uuid := ops_private.principal();
    v_ws  ops.workspaces;
begin
    if not ops_private.is_privileged() and v_uid is null then
        perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
    end if;
    if create_workspace.slug is null or create_workspace.slug !~ '^[a-z0-9][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'slug must be 1-63 lower-case letters, digits, _ or -, got ' || coalesce(create_workspace.slug, 'nothing'));
    end if;
    if create_workspace.name is null or length(create_workspace.name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-200 characters');
    end if;
    if create_workspace.env is null or create_workspace.env not in ('dev', 'stage', 'prod') then
        perform ops_private.fail(400, 'invalid_argument',
            'env must be one of dev, stage, prod, got ' || coalesce(create_workspace.env, 'nothing'));
    end if;
    insert into ops.workspaces (slug, name, env, created_by, created_at)
    values (create_workspace.slug, create_workspace.name, create_workspace.env, v_uid, ops_private.now())
    on conflict (slug) do nothing
    returning * into v_ws;
    if v_ws.id is null then
        perform ops_private.fail(409, 'conflict', 'a workspace with slug ' || create_workspace.slug || ' exists');
    end if;
    if v_uid is not null then
        insert into ops.workspace_members (workspace_id, principal_id, role, created_at)
        values (v_ws.id, v_uid, 'admin', ops_private.now());
    end if;
    perform ops_private.audit('create_workspace', v_ws.id, 'workspace', v_ws.id::text,
                              jsonb_build_object('slug', v_ws.slug, 'env', v_ws.env));
    return to_jsonb(v_ws);
end
$$;

create function ops.add_member(workspace_id text, principal_id text, role text, name text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', add_member.workspace_id, true);
    v_pr  uuid := ops_private.uuid_arg('principal_id', add_member.principal_id, true);
    v_row ops.workspace_members;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    if add_member.role is null or add_member.role not in ('viewer', 'developer', 'admin', 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'role must be one of viewer, developer, admin, executor, got ' || coalesce(add_member.role, 'nothing'));
    end if;
    if add_member.name is not null and length(add_member.name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be at most 200 characters');
    end if;
    -- lock the workspace's admins so concurrent changes cannot leave it without one
    perform 1 from ops.workspace_members m where m.workspace_id = v_ws and m.role = 'admin' for update;
    if add_member.role <> 'admin'
       and exists (select 1 from ops.workspace_members m
                   where m.workspace_id = v_ws and m.principal_id = v_pr and m.role = 'admin')
       and (select count(*) from ops.workspace_members m
            where m.workspace_id = v_ws and m.role = 'admin') = 1 then
        perform ops_private.fail(409, 'conflict', 'cannot demote the last admin of a workspace');
    end if;
    insert into ops.workspace_members as m (workspace_id, principal_id, role, name, created_at)
    values (v_ws, v_pr, add_member.role, add_member.name, ops_private.now())
    on conflict (workspace_id, principal_id)
        do update set role = excluded.role, name = coalesce(excluded.name, m.name)
    returning * into v_row;
    perform ops_private.audit('add_member', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_row.role));
    return to_jsonb(v_row);
end
$$;

create function ops.remove_member(workspace_id text, principal_id text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws   uuid := ops_private.uuid_arg('workspace_id', remove_member.workspace_id, true);
    v_pr   uuid := ops_private.uuid_arg('principal_id', remove_member.principal_id, true);
    v_role text;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    -- lock the workspace's admin rows so two concurrent removals cannot remove the last two admins
    perform 1 from ops.workspace_members m where m.workspace_id = v_ws and m.role = 'admin' for update;
    select m.role into v_role from ops.workspace_members m
    where m.workspace_id = v_ws and m.principal_id = v_pr;
    if v_role is null then
        perform ops_private.fail(404, 'not_found', 'principal is not a member of this workspace');
    end if;
    if v_role = 'admin' and (select count(*) from ops.workspace_members m
                             where m.workspace_id = v_ws and m.role = 'admin') = 1 then
        perform ops_private.fail(409, 'conflict', 'cannot remove the last admin of a workspace');
    end if;
    delete from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_pr;
    perform ops_private.audit('remove_member', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_role));
    return jsonb_build_object('workspace_id', v_ws, 'principal_id', v_pr, 'removed', true);
end
$$;

-- Principals hold tokens that operators mint with the JWT secret (`control-room token create`);
-- only privileged callers create them. Revocation refuses the principal's tokens at once.
create function ops.create_principal(name text, kind text default 'executor')
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_row ops.principals;
begin
    if not ops_private.is_privileged() then
        perform ops_private.fail(403, 'forbidden', 'only service_role may create principals');
    end if;
    if create_principal.name is null or length(create_principal.name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-200 characters',
                                 jsonb_build_object('argument', 'name'));
    end if;
    if create_principal.kind is null or create_principal.kind not in ('user', 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'kind must be user or executor, got ' || coalesce(create_principal.kind, 'nothing'),
            jsonb_build_object('argument', 'kind'));
    end if;
    insert into ops.principals (kind, name, created_by, created_at)
    values (create_principal.kind, create_principal.name, ops_private.uid(), ops_private.now())
    returning * into v_row;
    perform ops_private.audit('create_principal', null, 'principal', v_row.id::text,
                              jsonb_build_object('name', v_row.name, 'kind', v_row.kind));
    return to_jsonb(v_row);
end
$$;

create function ops.revoke_principal(principal_id text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_id  uuid := ops_private.uuid_arg('principal_id', revoke_principal.principal_id, true);
    v_row ops.principals;
begin
    select * into v_row from ops.principals p where p.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'principal not found');
    end if;
    if not ops_private.is_privileged() then
        -- an admin may revoke the principals of its workspaces
        perform ops_private.principal();
        if not exists (select 1 from ops.workspace_members m
                       where m.principal_id = v_id
                         and m.workspace_id in (select ops_private.admin_workspaces())) then
            perform ops_private.fail(404, 'not_found', 'principal not found');
        end if;
    end if;
    if v_row.revoked_at is null then
        update ops.principals p set revoked_at = ops_private.now(), revoked_by = ops_private.uid()
        where p.id = v_id
        returning * into v_row;
        perform ops_private.audit('revoke_principal', m.workspace_id, 'principal', v_id::text, '{}'::jsonb)
        from ops.workspace_members m where m.principal_id = v_id;
        if not found then
            perform ops_private.audit('revoke_principal', null, 'principal', v_id::text, '{}'::jsonb);
        end if;
    end if;
    return to_jsonb(v_row);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- create_run
-- ---------------------------------------------------------------------------------------------
create function ops.create_run(workspace_id text, spec_slug text, git_sha text, phases jsonb,
                               input_manifest jsonb default '{}'::jsonb, idempotency_key text default null,
                               labels jsonb default '{}'::jsonb, priority integer default 0)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_ws     uuid := ops_private.uuid_arg('workspace_id', create_run.workspace_id, true);
    v_phases jsonb;
    v_labels jsonb := coalesce(create_run.labels, '{}'::jsonb);
    v_input  jsonb := coalesce(create_run.input_manifest, '{}'::jsonb);
    v_digest text;
    v_run    uuid;
    v_old    ops.runs;
    v_bad    text;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['developer', 'admin'], true, 'workspace');
    if create_run.spec_slug is null or create_run.spec_slug !~ '^[a-z0-9][a-z0-9_.-]{0,127}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'spec_slug must be 1-128 lower-case letters, digits, _ . -, got ' || coalesce(create_run.spec_slug, 'nothing'),
            jsonb_build_object('argument', 'spec_slug'));
    end if;
    if create_run.git_sha is null or create_run.git_sha !~ '^[0-9a-f]{7,64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'git_sha must be 7-64 lower-case hex digits, got ' || coalesce(left(create_run.git_sha, 80), 'nothing'),
            jsonb_build_object('argument', 'git_sha'));
    end if;
    if create_run.priority is null or create_run.priority not between -1000 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'priority must be between -1000 and 1000',
                                 jsonb_build_object('argument', 'priority'));
    end if;
    if create_run.idempotency_key is not null and length(create_run.idempotency_key) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'idempotency_key must be 1-200 characters',
                                 jsonb_build_object('argument', 'idempotency_key'));
    end if;
    perform ops_private.check_object('input_manifest', v_input);
    perform ops_private.check_size('input_manifest', v_input, 1048576);
    perform ops_private.check_object('labels', v_labels);
    perform ops_private.check_size('labels', v_labels, 16384);
    select l.key into v_bad from jsonb_each(v_labels) l
    where jsonb_typeof(l.value) <> 'string' or length(l.key) > 64 or length(l.value #>> '{}') > 256 limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'labels must map keys of at most 64 characters to strings of at most 256; label ' || v_bad || ' does not',
            jsonb_build_object('argument', 'labels.' || v_bad));
    end if;
    perform ops_private.check_size('phases', create_run.phases, 4194304);
    v_phases := ops_private.normalize_phases(create_run.phases);

    v_digest := md5(jsonb_build_array(create_run.spec_slug, create_run.git_sha, v_phases, v_input, v_labels,
                                      create_run.priority)::text);
    if create_run.idempotency_key is not null then
        select * into v_old from ops.runs r where r.workspace_id = v_ws and r.idempotency_key = create_run.idempotency_key;
    end if;
    if v_old.id is null then
        v_run := ops_private.insert_run(v_ws, create_run.spec_slug, create_run.git_sha, v_phases, v_input,
                                        create_run.idempotency_key, v_labels, create_run.priority, null,
                                        '{}'::jsonb, v_digest, v_now);
        if v_run is null then
            select * into v_old from ops.runs r where r.workspace_id = v_ws and r.idempotency_key = create_run.idempotency_key;
        end if;
    end if;
    if v_old.id is not null then
        if v_old.request_digest <> v_digest then
            perform ops_private.fail(409, 'conflict',
                'idempotency_key ' || create_run.idempotency_key || ' was used for a run with other arguments',
                jsonb_build_object('run_id', v_old.id));
        end if;
        return ops_private.run_json(v_old.id) || jsonb_build_object('created', false);
    end if;
    perform ops_private.audit('create_run', v_ws, 'run', v_run::text,
                              jsonb_build_object('spec_slug', create_run.spec_slug, 'git_sha', create_run.git_sha,
                                                 'idempotency_key', create_run.idempotency_key));
    return ops_private.run_json(v_run) || jsonb_build_object('created', true);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- claim_phase
-- ---------------------------------------------------------------------------------------------
create function ops_private.claim_json(p ops.phases, r ops.runs)
returns jsonb
language plpgsql stable
as $$
begin
    return jsonb_build_object(
        'phase_id', p.id, 'run_id', p.run_id, 'workspace_id', p.workspace_id, 'name', p.name,
        'kind', p.kind, 'params', p.params, 'depends_on', to_jsonb(p.depends_on),
        'attempt', p.attempt, 'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
        'lease_token', p.lease_token, 'lease_seconds', p.lease_seconds,
        'lease_expires_at', p.lease_expires_at, 'claim_id', p.claim_id,
        'inputs', (select coalesce(jsonb_object_agg(d.name, d.output_manifest), '{}'::jsonb)
                   from ops.phases d where d.run_id = p.run_id and d.name = any (p.depends_on)),
        'run', jsonb_build_object('spec_slug', r.spec_slug, 'git_sha', r.git_sha, 'env', r.env,
                                  'input_manifest', r.input_manifest, 'labels', r.labels,
                                  'priority', r.priority, 'parent_run_id', r.parent_run_id));
end
$$;

-- Fail a phase for good: the phase fails, the run fails, its not-started phases are skipped
-- (those this transaction can lock; their holders settle the rest). Caller holds the run lock.
create function ops_private.fail_phase_final(p_phase uuid, p_run ops.runs, p_error jsonb, p_retryable boolean,
                                             p_now timestamptz)
returns ops.runs
language plpgsql
as $$
#variable_conflict use_column
declare
    v_p ops.phases;
    v_r ops.runs := p_run;
begin
    update ops.phases p
    set state = 'failed', error = p_error, finished_at = p_now, updated_at = p_now,
        lease_expires_at = null, not_before = null
    where p.id = p_phase
    returning * into v_p;
    perform ops_private.emit(v_p.run_id, v_p.workspace_id, v_p.name, v_p.attempt, 'PHASE_FAILED', 'error',
        coalesce(p_error ->> 'message', 'failed'),
        jsonb_build_object('attempt', v_p.attempt, 'max_attempts', v_p.max_attempts, 'error', p_error,
                           'retryable', p_retryable, 'final', true), p_now);
    if v_r.state in ('queued', 'running') then
        update ops.runs r
        set state = 'failed', finished_at = p_now, updated_at = p_now,
            error = jsonb_build_object('phase', v_p.name, 'error', p_error)
        where r.id = v_r.id
        returning * into v_r;
        perform ops_private.emit(v_r.id, v_r.workspace_id, null, null, 'RUN_FAILED', 'error',
            'run failed: phase ' || v_p.name || ' failed',
            jsonb_build_object('phase', v_p.name, 'error', p_error), p_now);
    end if;
    perform ops_private.settle_run(v_r, p_now);
    return v_r;
end
$$;

create function ops.claim_phase(kinds text[] default null, lease_seconds integer default 60,
                                claim_id text default null, run_id text default null,
                                workspace_id text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
-- Bitmap scans never mark dead index entries, so with them every claim would revisit each
-- phase claimed since the last vacuum; ordered index scans stop at the first live entry.
set enable_bitmapscan = off
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_uid      uuid := ops_private.principal();
    v_claim    uuid := ops_private.uuid_arg('claim_id', claim_phase.claim_id);
    v_run      uuid := ops_private.uuid_arg('run_id', claim_phase.run_id);
    v_wsid     uuid := ops_private.uuid_arg('workspace_id', claim_phase.workspace_id);
    v_kinds    text[] := claim_phase.kinds;
    v_ws       uuid[];          -- workspaces the caller may claim in; null means any
    v_p        ops.phases;
    v_r        ops.runs;
    v_expired  boolean;
    v_held_run boolean := false; -- this transaction holds a run lock: take further ones with SKIP LOCKED
    v_skip     uuid[] := '{}';   -- phases tried (and locked) by this call
    v_busy     uuid[] := '{}';   -- runs whose row another transaction holds: look elsewhere first
    v_fallback ops.phases;       -- a phase of a busy run, claimed by waiting if nothing else is free
    v_fallback_expired boolean;
    v_i        integer := 0;
begin
    if claim_phase.lease_seconds is null or claim_phase.lease_seconds not between 1 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 1 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    if v_kinds is not null then
        if cardinality(v_kinds) = 0 or cardinality(v_kinds) > 100
           or exists (select 1 from unnest(v_kinds) k where k is null or k !~ '^[a-z][a-z0-9_]{0,63}$') then
            perform ops_private.fail(400, 'invalid_argument',
                'kinds must be a non-empty list of at most 100 kind names such as python or sql',
                jsonb_build_object('argument', 'kinds'));
        end if;
    end if;

    if ops_private.is_privileged() then
        if v_wsid is not null then
            v_ws := array[v_wsid];
        end if;
    else
        if v_uid is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        v_ws := array(select m.workspace_id from ops.workspace_members m
                      where m.principal_id = v_uid and m.role = 'executor');
        if v_wsid is not null then
            if not (v_wsid = any (v_ws)) then
                perform ops_private.fail(403, 'forbidden', 'caller is not an executor in workspace ' || v_wsid::text);
            end if;
            v_ws := array[v_wsid];
        end if;
        if cardinality(v_ws) = 0 then
            perform ops_private.fail(403, 'forbidden', 'caller is not an executor in any workspace');
        end if;
    end if;
    if v_run is not null and not exists (select 1 from ops.runs r where r.id = v_run
                                         and (v_ws is null or r.workspace_id = any (v_ws))) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;

    -- a repeated call with the same claim_id gets the same phase and lease back; concurrent
    -- calls with one claim_id queue on it (this lock is taken before any row lock)
    if v_claim is not null then
        perform pg_advisory_xact_lock(
            ('x' || left(replace(v_claim::text, '-', ''), 16))::bit(64)::bigint);
        select * into v_p from ops.phases p where p.claim_id = v_claim and p.state = 'running';
        if v_p.id is not null then
            if v_p.claimed_by is distinct from v_uid and not ops_private.is_privileged() then
                perform ops_private.fail(409, 'conflict', 'claim_id is in use by another principal');
            end if;
            select * into v_r from ops.runs r where r.id = v_p.run_id;
            return ops_private.claim_json(v_p, v_r);
        end if;
    end if;

    -- Claims of one run serialize on its row (its events are numbered under it), so a claim
    -- first looks for work in runs nobody else holds, and waits for a busy run only when
    -- there is nothing else.
    loop
        v_i := v_i + 1;
        v_p := null;
        if v_i <= 20 then
            -- 1. a running phase whose lease expired (its holder is presumed dead)
            select * into v_p from ops.phases p
            where p.state = 'running' and p.lease_expires_at <= v_now
              and (v_kinds is null or p.kind = any (v_kinds))
              and (v_ws is null or p.workspace_id = any (v_ws))
              and (v_run is null or p.run_id = v_run)
              and p.id <> all (v_skip) and p.run_id <> all (v_busy)
            order by p.lease_expires_at
            limit 1
            for update skip locked;
            v_expired := v_p.id is not null;
            -- 2. else the best queued phase: priority, then age
            if not v_expired then
                select * into v_p from ops.phases p
                where p.state = 'queued' and p.not_before <= v_now
                  and (v_kinds is null or p.kind = any (v_kinds))
                  and (v_ws is null or p.workspace_id = any (v_ws))
                  and (v_run is null or p.run_id = v_run)
                  and p.id <> all (v_skip) and p.run_id <> all (v_busy)
                order by p.priority desc, p.queued_at, p.ordinal, p.id
                limit 1
                for update skip locked;
            end if;
        end if;

        if v_p.id is null then
            if v_fallback.id is null or v_held_run then
                return null;
            end if;
            v_p := v_fallback;
            v_expired := v_fallback_expired;
            v_fallback := null;
            select * into v_r from ops.runs r where r.id = v_p.run_id for update;
        else
            v_skip := v_skip || v_p.id;
            select * into v_r from ops.runs r where r.id = v_p.run_id for update skip locked;
            if v_r.id is null then
                if not v_held_run then
                    v_busy := v_busy || v_p.run_id;
                    if v_fallback.id is null then
                        v_fallback := v_p;
                        v_fallback_expired := v_expired;
                    end if;
                end if;
                continue;
            end if;
        end if;
        v_held_run := true;

        if v_r.state not in ('queued', 'running') then
            -- the run finished while this phase was locked by us: settle it (protocol rule 3)
            if v_p.state = 'running' and v_r.state = 'cancelled' then
                update ops.phases p set state = 'cancelled', finished_at = v_now, updated_at = v_now,
                                        lease_expires_at = null, lease_token = null
                where p.id = v_p.id;
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CANCELLED',
                                         'info', 'cancelled with the run (its lease had expired)', '{}'::jsonb, v_now);
            elsif v_p.state = 'running' then
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED',
                    'warning', 'lease expired after the run had finished',
                    jsonb_build_object('attempt', v_p.attempt, 'lease_expires_at', v_p.lease_expires_at), v_now);
                -- the dead holder's token must not pass for a completion replay
                update ops.phases p set lease_token = null where p.id = v_p.id;
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired', 'reason', 'lease_expired'), true, v_now);
            else
                perform ops_private.settle_run(v_r, v_now);
            end if;
            continue;
        end if;

        if v_expired then
            perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED', 'warning',
                'lease expired: attempt ' || v_p.attempt || ' counted as failed',
                jsonb_build_object('attempt', v_p.attempt, 'max_attempts', v_p.max_attempts,
                                   'lease_expires_at', v_p.lease_expires_at, 'claimed_by', v_p.claimed_by),
                v_now);
            if v_p.attempt >= v_p.max_attempts then
                update ops.phases p set lease_token = null where p.id = v_p.id;
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired on the last attempt', 'reason', 'lease_expired'),
                    true, v_now);
                continue;
            end if;
        end if;

        update ops.phases p
        set state = 'running', attempt = p.attempt + 1, lease_token = gen_random_uuid(),
            lease_seconds = claim_phase.lease_seconds,
            lease_expires_at = v_now + make_interval(secs => claim_phase.lease_seconds),
            claim_id = v_claim, claimed_by = v_uid, started_at = v_now, finished_at = null,
            progress = null, not_before = null, updated_at = v_now
        where p.id = v_p.id
        returning * into v_p;
        if v_r.state = 'queued' then
            update ops.runs r set state = 'running', started_at = v_now, updated_at = v_now
            where r.id = v_r.id
            returning * into v_r;
        end if;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CLAIMED', 'info',
            'claimed, attempt ' || v_p.attempt || ' of ' || v_p.max_attempts,
            jsonb_build_object('attempt', v_p.attempt, 'claimed_by', v_uid,
                               'lease_expires_at', v_p.lease_expires_at, 'kind', v_p.kind), v_now);
        perform ops_private.audit('claim_phase', v_p.workspace_id, 'phase', v_p.id::text,
                                  jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'attempt', v_p.attempt));
        return ops_private.claim_json(v_p, v_r);
    end loop;
    return null;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- calls on a leased phase: heartbeat, append_events, register_artifact, complete_phase
-- ---------------------------------------------------------------------------------------------
-- A lease is live while its phase runs; a phase cancelled while running keeps its lease until it
-- expires, so its executor can learn of the cancel, flush its logs and stop.
create function ops.heartbeat(lease_token text, progress jsonb default null, lease_seconds integer default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_token uuid := ops_private.uuid_arg('lease_token', heartbeat.lease_token, true);
    v_p     ops.phases;
    v_run_state text;
begin
    if heartbeat.lease_seconds is not null and heartbeat.lease_seconds not between 1 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 1 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    perform ops_private.check_object('progress', heartbeat.progress);
    perform ops_private.check_size('progress', heartbeat.progress, 16384);
    update ops.phases p
    set lease_expires_at = case when p.state = 'running'
                                then v_now + make_interval(secs => coalesce(heartbeat.lease_seconds, p.lease_seconds))
                                else p.lease_expires_at end,
        lease_seconds = case when p.state = 'running' then coalesce(heartbeat.lease_seconds, p.lease_seconds)
                             else p.lease_seconds end,
        progress = coalesce(heartbeat.progress, p.progress),
        updated_at = v_now
    where p.lease_token = v_token
      and (p.state = 'running' or (p.state = 'cancelled' and p.lease_expires_at > v_now))
    returning * into v_p;
    if v_p.id is null then
        perform ops_private.fail(409, 'lease_lost', 'lease token is not live: the phase was reclaimed or finished');
    end if;
    perform ops_private.require_role(v_p.workspace_id, array['executor'], true, 'phase');
    select r.state into v_run_state from ops.runs r where r.id = v_p.run_id;
    return jsonb_build_object('phase_id', v_p.id, 'lease_expires_at', v_p.lease_expires_at,
                              'cancel_requested', v_p.state = 'cancelled' or v_run_state = 'cancelled',
                              'phase_state', v_p.state, 'run_state', v_run_state);
end
$$;

create function ops.append_events(run_id text, events jsonb, lease_token text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_run      uuid := ops_private.uuid_arg('run_id', append_events.run_id, true);
    v_token    uuid := ops_private.uuid_arg('lease_token', append_events.lease_token);
    v_reserved constant text[] := array['RUN_CREATED', 'RUN_SUCCEEDED', 'RUN_FAILED', 'RUN_CANCELLED',
                                        'RUN_FINALIZED', 'PHASE_QUEUED', 'PHASE_CLAIMED', 'LEASE_EXPIRED',
                                        'PHASE_SUCCEEDED', 'PHASE_FAILED', 'PHASE_RETRY_SCHEDULED',
                                        'PHASE_SKIPPED', 'PHASE_CANCELLED', 'PHASE_REUSED', 'PHASE_STOPPED',
                                        'ARTIFACT_REGISTERED'];
    v_allowed  constant text[] := array['event_id', 'phase', 'ts', 'level', 'type', 'message', 'payload'];
    v_ws       uuid;
    v_n        integer;
    v_i        integer;
    v_e        jsonb;
    v_path     text;
    v_key      text;
    v_phase    text;
    v_p        ops.phases;
    v_rows     jsonb := '[]'::jsonb;
    v_ids      uuid[] := '{}';
    v_id       uuid;
    v_base     bigint;
    v_new      integer;
begin
    select r.workspace_id into v_ws from ops.runs r where r.id = v_run;
    if v_ws is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    perform ops_private.require_role(v_ws, array['executor', 'developer', 'admin'], true, 'run');
    if append_events.events is null or jsonb_typeof(append_events.events) <> 'array' then
        perform ops_private.fail(400, 'invalid_argument', 'events must be a JSON array of events',
                                 jsonb_build_object('argument', 'events'));
    end if;
    v_n := jsonb_array_length(append_events.events);
    if v_n > 1000 then
        perform ops_private.fail(413, 'payload_too_large',
            format('at most 1000 events per call, got %s', v_n), jsonb_build_object('argument', 'events'));
    end if;
    perform ops_private.check_size('events', append_events.events, 1048576);

    for v_i in 0 .. v_n - 1 loop
        v_e := append_events.events -> v_i;
        v_path := format('events[%s]', v_i);
        if jsonb_typeof(v_e) <> 'object' then
            perform ops_private.fail(400, 'invalid_argument', v_path || ' must be a JSON object');
        end if;
        for v_key in select jsonb_object_keys(v_e) loop
            if not (v_key = any (v_allowed)) then
                perform ops_private.fail(400, 'invalid_argument',
                    format('%s has an unknown field %s (known: %s)', v_path, v_key, array_to_string(v_allowed, ', ')),
                    jsonb_build_object('argument', v_path || '.' || v_key));
            end if;
        end loop;
        if jsonb_typeof(v_e -> 'event_id') is distinct from 'string' then
            perform ops_private.fail(400, 'invalid_argument', v_path || '.event_id is required (a client-made UUID)',
                                     jsonb_build_object('argument', v_path || '.event_id'));
        end if;
        v_id := ops_private.uuid_arg(v_path || '.event_id', v_e ->> 'event_id');
        if jsonb_typeof(v_e -> 'type') is distinct from 'string' or (v_e ->> 'type') !~ '^[A-Z][A-Z0-9_]{0,63}$' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.type must be an upper-case name such as PHASE_STARTED or LOG, got '
                || coalesce((v_e -> 'type')::text, 'nothing'), jsonb_build_object('argument', v_path || '.type'));
        end if;
        if (v_e ->> 'type') = any (v_reserved) then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.type ' || (v_e ->> 'type') || ' is a lifecycle event that only the control plane writes',
                jsonb_build_object('argument', v_path || '.type'));
        end if;
        if v_e ? 'level' and (v_e ->> 'level') is distinct from null
           and (v_e ->> 'level') not in ('debug', 'info', 'warning', 'error') then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.level must be one of debug, info, warning, error', jsonb_build_object('argument', v_path || '.level'));
        end if;
        if v_e -> 'message' is not null and v_e -> 'message' <> 'null'::jsonb
           and (jsonb_typeof(v_e -> 'message') <> 'string' or length(v_e ->> 'message') > 16384) then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.message must be a string of at most 16384 characters', jsonb_build_object('argument', v_path || '.message'));
        end if;
        if v_e -> 'payload' is not null and v_e -> 'payload' <> 'null'::jsonb then
            perform ops_private.check_object(v_path || '.payload', v_e -> 'payload');
            perform ops_private.check_size(v_path || '.payload', v_e -> 'payload', 65536);
        end if;
        if v_e -> 'ts' is not null and v_e -> 'ts' <> 'null'::jsonb
           and (jsonb_typeof(v_e -> 'ts') <> 'string' or not ops_private.is_timestamptz(v_e ->> 'ts')) then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.ts must be an ISO 8601 timestamp with a time zone, got ' || (v_e -> 'ts')::text,
                jsonb_build_object('argument', v_path || '.ts'));
        end if;
        if v_e -> 'phase' is not null and v_e -> 'phase' <> 'null'::jsonb then
            if jsonb_typeof(v_e -> 'phase') <> 'string' then
                perform ops_private.fail(400, 'invalid_argument', v_path || '.phase must be a phase name',
                                         jsonb_build_object('argument', v_path || '.phase'));
            end if;
            if v_phase is not null and v_phase <> (v_e ->> 'phase') then
                perform ops_private.fail(400, 'invalid_argument',
                    'one call may carry events of one phase only (its lease token proves that phase)',
                    jsonb_build_object('argument', v_path || '.phase'));
            end if;
            v_phase := v_e ->> 'phase';
        end if;
        if not (v_id = any (v_ids)) then   -- the first of duplicate event_ids in one batch wins
            v_ids := v_ids || v_id;
            v_rows := v_rows || jsonb_build_array(v_e || jsonb_build_object('event_id', v_id));
        end if;
    end loop;

    if v_phase is not null and v_token is null then
        perform ops_private.fail(400, 'invalid_argument',
            'events naming a phase need that phase''s lease_token', jsonb_build_object('argument', 'lease_token'));
    end if;

    -- all of a run's events are written under its row lock, which also fences the lease check:
    -- a lease token changes only under this lock (claim_phase, complete_phase)
    perform 1 from ops.runs r where r.id = v_run for update;
    if v_token is not null then
        select * into v_p from ops.phases p
        where p.lease_token = v_token and p.run_id = v_run
          and (p.state = 'running' or (p.state = 'cancelled' and p.lease_expires_at > v_now));
        if v_p.id is null then
            perform ops_private.fail(409, 'lease_lost', 'lease token is not live for a phase of this run');
        end if;
        perform ops_private.require_role(v_ws, array['executor'], true, 'run');
        if v_phase is not null and v_phase <> v_p.name then
            perform ops_private.fail(409, 'lease_lost',
                format('the lease token belongs to phase %s, not %s', v_p.name, v_phase));
        end if;
    end if;

    -- drop events already stored (a retried call), then allocate consecutive sequence numbers
    select coalesce(jsonb_agg(e order by o), '[]'::jsonb) into v_rows
    from jsonb_array_elements(v_rows) with ordinality as t(e, o)
    where not exists (select 1 from ops.run_events x where x.run_id = v_run and x.event_id = (e ->> 'event_id')::uuid);
    v_new := jsonb_array_length(v_rows);
    if v_new > 0 then
        update ops.runs r set last_event_seq = r.last_event_seq + v_new where r.id = v_run
        returning r.last_event_seq - v_new into v_base;
        insert into ops.run_events (run_id, seq, event_id, workspace_id, phase, attempt, ts, recorded_at,
                                    level, type, message, payload, principal_id)
        select v_run, v_base + o, (e ->> 'event_id')::uuid, v_ws, nullif(e ->> 'phase', ''),
               case when e ->> 'phase' is not null then v_p.attempt end,
               coalesce((e ->> 'ts')::timestamptz, v_now), v_now, coalesce(e ->> 'level', 'info'), e ->> 'type',
               coalesce(e ->> 'message', ''), coalesce(nullif(e -> 'payload', 'null'::jsonb), '{}'::jsonb), ops_private.uid()
        from jsonb_array_elements(v_rows) with ordinality as t(e, o);
    end if;
    return jsonb_build_object('appended', v_new, 'duplicates', v_n - v_new,
                              'last_seq', (select r.last_event_seq from ops.runs r where r.id = v_run));
end
$$;

create function ops.register_artifact(lease_token text, digest text, uri text, size_bytes bigint,
                                      media_type text default 'application/octet-stream', kind text default 'blob',
                                      name text default null, role text default 'output',
                                      metadata jsonb default '{}'::jsonb)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_token   uuid := ops_private.uuid_arg('lease_token', register_artifact.lease_token, true);
    v_p       ops.phases;
    v_a       ops.artifacts;
    v_name    text := coalesce(register_artifact.name, register_artifact.digest);
    v_created boolean := false;
    v_linked  boolean := false;
    v_link    bigint;
begin
    if register_artifact.digest is null or register_artifact.digest !~ '^blake3:[0-9a-f]{64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'digest must be blake3: followed by 64 lower-case hex digits, got ' || coalesce(left(register_artifact.digest, 80), 'nothing'),
            jsonb_build_object('argument', 'digest'));
    end if;
    if register_artifact.uri is null or length(register_artifact.uri) not between 1 and 2048 then
        perform ops_private.fail(400, 'invalid_argument', 'uri must be 1-2048 characters', jsonb_build_object('argument', 'uri'));
    end if;
    if register_artifact.size_bytes is null or register_artifact.size_bytes < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'size_bytes must be a non-negative integer',
                                 jsonb_build_object('argument', 'size_bytes'));
    end if;
    if register_artifact.media_type is null or register_artifact.media_type !~ '^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(;.{0,200})?$' then
        perform ops_private.fail(400, 'invalid_argument', 'media_type must be a MIME type such as application/json',
                                 jsonb_build_object('argument', 'media_type'));
    end if;
    if register_artifact.kind is null or register_artifact.kind !~ '^[a-z][a-z0-9_]{0,63}$' then
        perform ops_private.fail(400, 'invalid_argument', 'kind must be a lower-case identifier such as blob, table or sql_output',
                                 jsonb_build_object('argument', 'kind'));
    end if;
    if length(v_name) not between 1 and 512 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-512 characters', jsonb_build_object('argument', 'name'));
    end if;
    if register_artifact.role is null or register_artifact.role not in ('output', 'input', 'log', 'report') then
        perform ops_private.fail(400, 'invalid_argument', 'role must be one of output, input, log, report',
                                 jsonb_build_object('argument', 'role'));
    end if;
    perform ops_private.check_object('metadata', register_artifact.metadata);
    perform ops_private.check_size('metadata', register_artifact.metadata, 65536);

    select * into v_p from ops.phases p where p.lease_token = v_token;
    if v_p.id is null then
        perform ops_private.fail(409, 'lease_lost', 'lease token is not live: the phase was reclaimed or finished');
    end if;
    perform ops_private.require_role(v_p.workspace_id, array['executor'], true, 'phase');
    perform 1 from ops.runs r where r.id = v_p.run_id for update;
    select * into v_p from ops.phases p
    where p.lease_token = v_token
      and (p.state = 'running' or (p.state = 'cancelled' and p.lease_expires_at > v_now));
    if v_p.id is null then
        perform ops_private.fail(409, 'lease_lost', 'lease token is not live: the phase was reclaimed or finished');
    end if;

    insert into ops.artifacts (workspace_id, digest, size_bytes, media_type, kind, uri, metadata, first_run_id,
                               created_by, created_at)
    values (v_p.workspace_id, register_artifact.digest, register_artifact.size_bytes, register_artifact.media_type,
            register_artifact.kind, register_artifact.uri, coalesce(register_artifact.metadata, '{}'::jsonb),
            v_p.run_id, ops_private.uid(), v_now)
    on conflict (workspace_id, digest) do nothing
    returning * into v_a;
    v_created := v_a.digest is not null;
    if not v_created then
        select * into v_a from ops.artifacts a where a.workspace_id = v_p.workspace_id and a.digest = register_artifact.digest;
        if v_a.size_bytes <> register_artifact.size_bytes then
            perform ops_private.fail(409, 'conflict',
                format('%s is registered with size %s, not %s: same digest, different content?',
                       register_artifact.digest, v_a.size_bytes, register_artifact.size_bytes),
                jsonb_build_object('digest', register_artifact.digest, 'size_bytes', v_a.size_bytes));
        end if;
    end if;
    insert into ops.run_artifacts (run_id, workspace_id, phase_id, phase, digest, role, name, attempt, created_at)
    values (v_p.run_id, v_p.workspace_id, v_p.id, v_p.name, register_artifact.digest, register_artifact.role,
            v_name, v_p.attempt, v_now)
    on conflict do nothing
    returning id into v_link;
    v_linked := v_link is not null;
    if v_linked then
        perform ops_private.emit(v_p.run_id, v_p.workspace_id, v_p.name, v_p.attempt, 'ARTIFACT_REGISTERED', 'info',
            v_name || ' ' || register_artifact.digest,
            jsonb_build_object('digest', register_artifact.digest, 'name', v_name, 'role', register_artifact.role,
                               'kind', v_a.kind, 'size_bytes', v_a.size_bytes, 'uri', v_a.uri), v_now);
        perform ops_private.audit('register_artifact', v_p.workspace_id, 'artifact', register_artifact.digest,
                                  jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'name', v_name));
    end if;
    return to_jsonb(v_a) || jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'name', v_name,
                                               'role', register_artifact.role, 'created', v_created,
                                               'linked', v_linked);
end
$$;

create function ops.complete_phase(lease_token text, outcome text, output_manifest jsonb default null,
                                   error jsonb default null, retryable boolean default true)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_token    uuid := ops_private.uuid_arg('lease_token', complete_phase.lease_token, true);
    v_error    jsonb;
    v_p        ops.phases;
    v_r        ops.runs;
    v_final    boolean;
    v_delay    numeric;
    v_released text[] := '{}';
    v_d        record;
begin
    if complete_phase.outcome is null or complete_phase.outcome not in ('succeeded', 'failed') then
        perform ops_private.fail(400, 'invalid_argument',
            'outcome must be succeeded or failed, got ' || coalesce(complete_phase.outcome, 'nothing'),
            jsonb_build_object('argument', 'outcome'));
    end if;
    perform ops_private.check_object('output_manifest', complete_phase.output_manifest);
    perform ops_private.check_size('output_manifest', complete_phase.output_manifest, 1048576);
    perform ops_private.check_size('error', complete_phase.error, 65536);
    v_error := case
        when complete_phase.error is null or complete_phase.error = 'null'::jsonb then
            case when complete_phase.outcome = 'failed' then jsonb_build_object('message', 'failed') end
        when jsonb_typeof(complete_phase.error) = 'object' then complete_phase.error
        else jsonb_build_object('message', complete_phase.error #>> '{}') end;
    if complete_phase.retryable is null then
        perform ops_private.fail(400, 'invalid_argument', 'retryable must be true or false',
                                 jsonb_build_object('argument', 'retryable'));
    end if;

    select * into v_p from ops.phases p where p.lease_token = v_token;
    if v_p.id is null then
        perform ops_private.fail(409, 'lease_lost', 'lease token is not live: the phase was reclaimed or finished');
    end if;
    perform ops_private.require_role(v_p.workspace_id, array['executor'], true, 'phase');

    -- lock the phases this completion may change, in id order, then the run (protocol rules 1-2)
    v_final := complete_phase.outcome = 'failed'
               and (not complete_phase.retryable or v_p.attempt >= v_p.max_attempts);
    if complete_phase.outcome = 'succeeded' then
        perform 1 from ops.phases p
        where p.run_id = v_p.run_id
          and (p.id = v_p.id or (p.state = 'waiting' and v_p.name = any (p.depends_on)))
        order by p.id for update;
    elsif v_final then
        perform 1 from ops.phases p
        where p.run_id = v_p.run_id
          and (p.id = v_p.id or p.state in ('waiting', 'queued'))
        order by p.id for update;
    else
        perform 1 from ops.phases p where p.id = v_p.id for update;
    end if;
    select * into v_r from ops.runs r where r.id = v_p.run_id for update;
    select * into v_p from ops.phases p where p.id = v_p.id;
    -- a retry is pointless once another branch has failed the run
    v_final := v_final or (complete_phase.outcome = 'failed' and v_r.state = 'failed');

    if v_p.lease_token is distinct from v_token then
        perform ops_private.fail(409, 'lease_lost', 'lease token is not live: the phase was reclaimed');
    end if;
    if v_p.state not in ('running', 'cancelled') or (v_p.state = 'cancelled' and v_p.lease_expires_at is null) then
        -- this attempt was completed already: a retried call gets the same answer
        return jsonb_build_object('phase_id', v_p.id, 'phase', v_p.name, 'phase_state', v_p.state,
                                  'attempt', v_p.attempt, 'run_id', v_r.id, 'run_state', v_r.state,
                                  'not_before', v_p.not_before, 'released', '[]'::jsonb, 'replayed', true);
    end if;

    if v_p.state = 'cancelled' or v_r.state = 'cancelled' then
        -- the run was cancelled while this phase ran: record what the executor reports, stop
        update ops.phases p
        set state = 'cancelled', finished_at = v_now, updated_at = v_now, lease_expires_at = null,
            output_manifest = complete_phase.output_manifest, error = v_error
        where p.id = v_p.id
        returning * into v_p;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_STOPPED', 'info',
            'stopped after the run was cancelled; the executor reported ' || complete_phase.outcome,
            jsonb_build_object('attempt', v_p.attempt, 'outcome', complete_phase.outcome, 'error', v_error), v_now);
        perform ops_private.settle_run(v_r, v_now);
    elsif complete_phase.outcome = 'succeeded' then
        update ops.phases p
        set state = 'succeeded', finished_at = v_now, updated_at = v_now, lease_expires_at = null,
            output_manifest = coalesce(complete_phase.output_manifest, '{}'::jsonb), error = null
        where p.id = v_p.id
        returning * into v_p;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_SUCCEEDED', 'info',
            'succeeded on attempt ' || v_p.attempt,
            jsonb_build_object('attempt', v_p.attempt, 'output_manifest', v_p.output_manifest,
                               'duration_seconds', extract(epoch from v_now - v_p.started_at)), v_now);
        if v_r.state = 'failed' then
            perform ops_private.settle_run(v_r, v_now);   -- another branch failed the run meanwhile
        else
            for v_d in
                update ops.phases p
                set state = 'queued', queued_at = v_now, not_before = v_now, updated_at = v_now
                where p.run_id = v_r.id and p.state = 'waiting' and v_p.name = any (p.depends_on)
                  and not exists (select 1 from ops.phases d
                                  where d.run_id = p.run_id and d.name = any (p.depends_on) and d.state <> 'succeeded')
                returning p.name, p.kind
            loop
                v_released := v_released || v_d.name;
                perform ops_private.notify_queued(v_r.workspace_id, v_d.kind);
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_d.name, 0, 'PHASE_QUEUED', 'info',
                    'queued: its dependencies succeeded', jsonb_build_object('released_by', v_p.name), v_now);
            end loop;
            if not exists (select 1 from ops.phases p where p.run_id = v_r.id and p.state <> 'succeeded') then
                update ops.runs r
                set state = 'succeeded', finished_at = v_now, updated_at = v_now,
                    output_manifest = (select coalesce(jsonb_object_agg(p.name, p.output_manifest order by p.ordinal), '{}'::jsonb)
                                       from ops.phases p where p.run_id = r.id)
                where r.id = v_r.id
                returning * into v_r;
                perform ops_private.emit(v_r.id, v_r.workspace_id, null, null, 'RUN_SUCCEEDED', 'info',
                    'run succeeded', jsonb_build_object('duration_seconds', extract(epoch from v_now - v_r.started_at)),
                    v_now);
            end if;
        end if;
    elsif v_final then
        v_r := ops_private.fail_phase_final(v_p.id, v_r, v_error, complete_phase.retryable, v_now);
        select * into v_p from ops.phases p where p.id = v_p.id;
    else
        v_delay := ops_private.backoff_seconds(v_p.attempt, v_p.retry_backoff_seconds, v_p.retry_backoff_max_seconds);
        update ops.phases p
        set state = 'queued', error = v_error, updated_at = v_now, lease_expires_at = null,
            not_before = v_now + make_interval(secs => v_delay::double precision),
            queued_at = v_now + make_interval(secs => v_delay::double precision)
        where p.id = v_p.id
        returning * into v_p;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_FAILED', 'warning',
            coalesce(v_error ->> 'message', 'failed'),
            jsonb_build_object('attempt', v_p.attempt, 'max_attempts', v_p.max_attempts, 'error', v_error,
                               'retryable', true, 'final', false), v_now);
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_RETRY_SCHEDULED', 'info',
            format('attempt %s of %s in %s s', v_p.attempt + 1, v_p.max_attempts, round(v_delay, 3)),
            jsonb_build_object('next_attempt', v_p.attempt + 1, 'not_before', v_p.not_before,
                               'delay_seconds', round(v_delay, 3)), v_now);
        perform ops_private.notify_queued(v_p.workspace_id, v_p.kind);
    end if;

    perform ops_private.audit('complete_phase', v_p.workspace_id, 'phase', v_p.id::text,
                              jsonb_build_object('run_id', v_r.id, 'phase', v_p.name, 'attempt', v_p.attempt,
                                                 'outcome', complete_phase.outcome));
    return jsonb_build_object('phase_id', v_p.id, 'phase', v_p.name, 'phase_state', v_p.state,
                              'attempt', v_p.attempt, 'run_id', v_r.id, 'run_state', v_r.state,
                              'not_before', v_p.not_before, 'released', to_jsonb(v_released), 'replayed', false);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- run-level calls: complete_run, cancel_run, retry_run
-- ---------------------------------------------------------------------------------------------
create function ops.complete_run(run_id text, output_manifest jsonb default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_run uuid := ops_private.uuid_arg('run_id', complete_run.run_id, true);
    v_r   ops.runs;
    v_pending text;
begin
    perform ops_private.check_object('output_manifest', complete_run.output_manifest);
    perform ops_private.check_size('output_manifest', complete_run.output_manifest, 1048576);
    select * into v_r from ops.runs r where r.id = v_run;
    if v_r.id is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    perform ops_private.require_role(v_r.workspace_id, array['executor', 'developer', 'admin'], true, 'run');
    select * into v_r from ops.runs r where r.id = v_run for update;
    if v_r.state in ('failed', 'cancelled') then
        perform ops_private.fail(409, 'conflict', 'run is ' || v_r.state || '; only a succeeded run can be finalized');
    end if;
    if v_r.state <> 'succeeded' then
        select string_agg(p.name || ' (' || p.state || ')', ', ' order by p.ordinal) into v_pending
        from ops.phases p where p.run_id = v_run and p.state <> 'succeeded';
        perform ops_private.fail(409, 'conflict', 'run has unfinished phases: ' || v_pending);
    end if;
    if v_r.finalized_at is null then
        update ops.runs r
        set finalized_at = v_now, updated_at = v_now,
            output_manifest = coalesce(complete_run.output_manifest, r.output_manifest)
        where r.id = v_run
        returning * into v_r;
        perform ops_private.emit(v_r.id, v_r.workspace_id, null, null, 'RUN_FINALIZED', 'info',
            'output manifest finalized', jsonb_build_object('output_manifest', v_r.output_manifest), v_now);
        perform ops_private.audit('complete_run', v_r.workspace_id, 'run', v_r.id::text, '{}'::jsonb);
    elsif complete_run.output_manifest is not null and complete_run.output_manifest <> v_r.output_manifest then
        perform ops_private.fail(409, 'conflict', 'run was finalized with another output manifest');
    end if;
    return ops_private.run_json(v_run);
end
$$;

create function ops.cancel_run(run_id text, reason text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_run uuid := ops_private.uuid_arg('run_id', cancel_run.run_id, true);
    v_r   ops.runs;
    v_p   record;
begin
    if cancel_run.reason is not null and length(cancel_run.reason) > 2000 then
        perform ops_private.fail(400, 'invalid_argument', 'reason must be at most 2000 characters');
    end if;
    select * into v_r from ops.runs r where r.id = v_run;
    if v_r.id is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    perform ops_private.require_role(v_r.workspace_id, array['developer', 'admin'], true, 'run');
    perform 1 from ops.phases p
    where p.run_id = v_run and p.state in ('waiting', 'queued', 'running')
    order by p.id for update;
    select * into v_r from ops.runs r where r.id = v_run for update;
    if v_r.state = 'cancelled' then
        return ops_private.run_json(v_run);
    end if;
    if v_r.state in ('succeeded', 'failed') then
        perform ops_private.fail(409, 'conflict', 'run already ' || v_r.state || '; nothing to cancel');
    end if;
    update ops.runs r
    set state = 'cancelled', cancel_reason = cancel_run.reason, finished_at = v_now, updated_at = v_now
    where r.id = v_run
    returning * into v_r;
    for v_p in
        update ops.phases p
        set state = 'cancelled', updated_at = v_now,
            -- a running phase keeps its lease so its executor learns of the cancel from heartbeat
            finished_at = case when p.state = 'running' then null else v_now end,
            lease_expires_at = case when p.state = 'running' then p.lease_expires_at end,
            lease_token = case when p.state = 'running' then p.lease_token end,
            not_before = null
        from (select q.id, q.state as old_state from ops.phases q
              where q.run_id = v_run and q.state in ('waiting', 'queued', 'running')) o
        where p.id = o.id
        returning p.name, p.attempt, o.old_state
    loop
        perform ops_private.emit(v_run, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CANCELLED', 'info',
            case when v_p.old_state = 'running' then 'cancel requested; the executor stops at its next heartbeat'
                 else 'cancelled with the run' end,
            jsonb_build_object('was', v_p.old_state), v_now);
    end loop;
    perform ops_private.emit(v_run, v_r.workspace_id, null, null, 'RUN_CANCELLED', 'warning',
        'run cancelled' || coalesce(': ' || cancel_run.reason, ''),
        jsonb_build_object('reason', cancel_run.reason), v_now);
    perform ops_private.audit('cancel_run', v_r.workspace_id, 'run', v_run::text,
                              jsonb_build_object('reason', cancel_run.reason));
    return ops_private.run_json(v_run);
end
$$;

create function ops.retry_run(run_id text, idempotency_key text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_parent uuid := ops_private.uuid_arg('run_id', retry_run.run_id, true);
    v_r      ops.runs;
    v_key    text;
    v_phases jsonb;
    v_reuse  jsonb;
    v_child  uuid;
    v_digest text;
begin
    if retry_run.idempotency_key is not null and length(retry_run.idempotency_key) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'idempotency_key must be 1-200 characters');
    end if;
    select * into v_r from ops.runs r where r.id = v_parent;
    if v_r.id is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    perform ops_private.require_role(v_r.workspace_id, array['developer', 'admin'], true, 'run');
    if v_r.state not in ('failed', 'cancelled') then
        perform ops_private.fail(409, 'conflict',
            'only a failed or cancelled run can be retried; this one is ' || v_r.state);
    end if;
    v_key := coalesce(retry_run.idempotency_key, 'retry-of:' || v_parent::text);
    v_digest := md5(jsonb_build_array('retry', v_parent)::text);
    select r.id into v_child from ops.runs r
    where r.workspace_id = v_r.workspace_id and r.idempotency_key = v_key;
    if v_child is not null and not exists (select 1 from ops.runs r
                                           where r.id = v_child and r.request_digest = v_digest) then
        perform ops_private.fail(409, 'conflict',
            'idempotency_key ' || v_key || ' belongs to a run that is not a retry of this one',
            jsonb_build_object('run_id', v_child));
    end if;
    if v_child is null then
        select jsonb_agg(jsonb_build_object(
                   'name', p.name, 'kind', p.kind, 'params', p.params, 'depends_on', to_jsonb(p.depends_on),
                   'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
                   'retry_backoff_seconds', p.retry_backoff_seconds,
                   'retry_backoff_max_seconds', p.retry_backoff_max_seconds, 'ordinal', p.ordinal)
                   order by p.ordinal),
               coalesce(jsonb_object_agg(p.name, jsonb_build_object(
                   'output_manifest', p.output_manifest,
                   'phase_id', coalesce(p.reused_from_phase_id, p.id))) filter (where p.state = 'succeeded'),
                   '{}'::jsonb)
        into v_phases, v_reuse
        from ops.phases p where p.run_id = v_parent;
        v_child := ops_private.insert_run(v_r.workspace_id, v_r.spec_slug, v_r.git_sha, v_phases, v_r.input_manifest,
                                          v_key, v_r.labels, v_r.priority, v_parent, v_reuse,
                                          v_digest, v_now);
        if v_child is null then   -- a concurrent call with the same key won
            select r.id into v_child from ops.runs r
            where r.workspace_id = v_r.workspace_id and r.idempotency_key = v_key and r.request_digest = v_digest;
            if v_child is null then
                perform ops_private.fail(409, 'conflict',
                    'idempotency_key ' || v_key || ' belongs to a run that is not a retry of this one');
            end if;
            return ops_private.run_json(v_child) || jsonb_build_object('created', false);
        end if;
        perform ops_private.audit('retry_run', v_r.workspace_id, 'run', v_child::text,
                                  jsonb_build_object('parent_run_id', v_parent));
        return ops_private.run_json(v_child) || jsonb_build_object('created', true);
    end if;
    return ops_private.run_json(v_child) || jsonb_build_object('created', false);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- reads: SECURITY INVOKER, so they see exactly what row level security lets the caller see
-- ---------------------------------------------------------------------------------------------
create function ops.get_run(run_id text)
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
    return v_out;
end
$$;

create function ops.list_runs(workspace_id text default null, state text default null, spec_slug text default null,
                              labels jsonb default null, parent_run_id text default null,
                              "limit" integer default 50, cursor text default null)
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
    v_rows   jsonb;
    v_n      integer;
begin
    if list_runs."limit" is null or list_runs."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500');
    end if;
    if list_runs.state is not null and list_runs.state not in ('queued', 'running', 'succeeded', 'failed', 'cancelled') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of queued, running, succeeded, failed, cancelled');
    end if;
    perform ops_private.check_object('labels', list_runs.labels);
    if list_runs.cursor is not null then
        if list_runs.cursor !~ '^\d{1,16}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
            perform ops_private.fail(400, 'invalid_argument', 'cursor is not one this function returned');
        end if;
        v_at := to_timestamp(split_part(list_runs.cursor, ':', 1)::numeric / 1000000);
        v_id := split_part(list_runs.cursor, ':', 2)::uuid;
    end if;
    select coalesce(jsonb_agg(ops_private.run_json(x.id, false) order by x.created_at desc, x.id desc), '[]'::jsonb),
           count(*)
    into v_rows, v_n
    from (select r.id, r.created_at from ops.runs r
          where (v_ws is null or r.workspace_id = v_ws)
            and (list_runs.state is null or r.state = list_runs.state)
            and (list_runs.spec_slug is null or r.spec_slug = list_runs.spec_slug)
            and (list_runs.labels is null or r.labels @> list_runs.labels)
            and (v_parent is null or r.parent_run_id = v_parent)
            and (v_at is null or (r.created_at, r.id) < (v_at, v_id))
          order by r.created_at desc, r.id desc
          limit list_runs."limit") x;
    return jsonb_build_object('runs', v_rows,
        'next_cursor', case when v_n = list_runs."limit" then
            (extract(epoch from (v_rows -> (v_n - 1) ->> 'created_at')::timestamptz) * 1000000)::bigint::text
            || ':' || (v_rows -> (v_n - 1) ->> 'id') end);
end
$$;

create function ops.list_events(run_id text, after bigint default 0, "limit" integer default 100,
                                phase text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run    uuid := ops_private.uuid_arg('run_id', list_events.run_id, true);
    v_events jsonb;
begin
    if list_events."limit" is null or list_events."limit" not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000');
    end if;
    if list_events.after is null or list_events.after < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'after must be a sequence number >= 0');
    end if;
    if not exists (select 1 from ops.runs r where r.id = v_run) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    select coalesce(jsonb_agg(jsonb_build_object(
               'seq', e.seq, 'event_id', e.event_id, 'run_id', e.run_id, 'phase', e.phase, 'attempt', e.attempt,
               'ts', e.ts, 'recorded_at', e.recorded_at, 'level', e.level, 'type', e.type,
               'message', e.message, 'payload', e.payload, 'principal_id', e.principal_id) order by e.seq),
           '[]'::jsonb)
    into v_events
    from (select * from ops.run_events e
          where e.run_id = v_run and e.seq > list_events.after
            and (list_events.phase is null or e.phase = list_events.phase)
          order by e.seq
          limit list_events."limit") e;
    return jsonb_build_object('events', v_events,
        'next_after', coalesce((v_events -> -1 ->> 'seq')::bigint, list_events.after));
end
$$;

create function ops.list_artifacts(run_id text default null, workspace_id text default null,
                                   digest text default null, "limit" integer default 100,
                                   after bigint default 0)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run   uuid := ops_private.uuid_arg('run_id', list_artifacts.run_id);
    v_ws    uuid := ops_private.uuid_arg('workspace_id', list_artifacts.workspace_id);
    v_items jsonb;
begin
    if list_artifacts."limit" is null or list_artifacts."limit" not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000');
    end if;
    if list_artifacts.after is null or list_artifacts.after < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'after must be a cursor >= 0');
    end if;
    if list_artifacts.digest is not null and list_artifacts.digest !~ '^blake3:[0-9a-f]{64}$' then
        perform ops_private.fail(400, 'invalid_argument', 'digest must be blake3: followed by 64 lower-case hex digits');
    end if;
    if v_run is not null and not exists (select 1 from ops.runs r where r.id = v_run) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', x.id, 'run_id', x.run_id, 'workspace_id', x.workspace_id, 'phase', x.phase,
               'role', x.role, 'name', x.name, 'attempt', x.attempt, 'linked_at', x.created_at,
               'digest', a.digest, 'size_bytes', a.size_bytes, 'media_type', a.media_type, 'kind', a.kind,
               'uri', a.uri, 'metadata', a.metadata, 'first_run_id', a.first_run_id) order by x.id), '[]'::jsonb)
    into v_items
    from (select * from ops.run_artifacts ra
          where (v_run is null or ra.run_id = v_run)
            and (v_ws is null or ra.workspace_id = v_ws)
            and (list_artifacts.digest is null or ra.digest = list_artifacts.digest)
            and ra.id > list_artifacts.after
          order by ra.id
          limit list_artifacts."limit") x
    join ops.artifacts a on a.workspace_id = x.workspace_id and a.digest = x.digest;
    return jsonb_build_object('artifacts', v_items,
        'next_after', coalesce((v_items -> -1 ->> 'id')::bigint, list_artifacts.after));
end
$$;

create function ops.list_workspaces()
returns jsonb
language sql stable security invoker
set search_path = ''
as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', w.id, 'slug', w.slug, 'name', w.name, 'env', w.env, 'created_at', w.created_at,
               'role', (select m.role from ops.workspace_members m
                        where m.workspace_id = w.id and m.principal_id = ops_private.uid()))
               order by w.slug), '[]'::jsonb)
    from ops.workspaces w
$$;

-- ---------------------------------------------------------------------------------------------
-- grants: the API roles call the contract; anon calls nothing
-- ---------------------------------------------------------------------------------------------
revoke execute on all functions in schema ops from public, anon;
revoke execute on all functions in schema ops_private from public, anon;
grant execute on all functions in schema ops to authenticated, service_role;
grant execute on function ops_private.phases_json(uuid), ops_private.run_json(uuid, boolean)
    to authenticated, service_role;
