-- Reliability (issue 17): retries picked up when they fall due (1), and a claim plan that holds
-- without statistics (2).
--
-- 1. When claims wait for work (the gateway's `Prefer: wait`), work that becomes runnable
--    without a notification (a retry's backoff ending, a lease expiring) used to be found only
--    by the next poll (once a second). ops_private.claim_due_at answers when the soonest such
--    work falls due, so a waiting claim sleeps until exactly then. `phases_due_idx` keeps that
--    question to one index descent: only phases queued for later are past `not_before > now`
--    (dead entries of claimed phases lie before now and are never visited).
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

-- queued_at = not_before for every queued phase (ops_private.move_phase): a retry's entry sits
-- at its due time
create index phases_due_idx on ops.phases (not_before) where state = 'queued';

-- When the soonest work among these kinds and workspaces (null: any) falls due after p_now:
-- a queued phase's not_before or a running phase's lease expiry; null when none is pending.
-- A hint for the gateway's waiting claims (control_room/gateway/app.py), never an authority:
-- the claim itself decides, under its own checks. Called by the gateway's own login, not
-- through the contract.
create function ops_private.claim_due_at(p_kinds text[], p_workspaces uuid[], p_now timestamptz)
returns timestamptz
language sql stable
set search_path = ''
set enable_bitmapscan = off
as $$
    select least(
        (select p.not_before from ops.phases p
         where p.state = 'queued' and p.not_before > p_now
           and (p_kinds is null or p.kind = any (p_kinds))
           and (p_workspaces is null or p.workspace_id = any (p_workspaces))
         order by p.not_before limit 1),
        (select p.lease_expires_at from ops.phases p
         where p.state = 'running' and p.lease_expires_at > p_now
           and (p_kinds is null or p.kind = any (p_kinds))
           and (p_workspaces is null or p.workspace_id = any (p_workspaces))
         order by p.lease_expires_at limit 1))
$$;

revoke execute on function ops_private.claim_due_at(text[], uuid[], timestamptz)
    from public, anon, authenticated;

-- 2. The claim's plan without statistics. With autovacuum off (or before its first ANALYZE) the
--    planner knows ops.phases only by its size: after ~27k finished phases it estimated that
--    few rows match and chose to fetch every queued phase and sort them (~11 ms, 434-689 buffers
--    a claim) instead of walking phases_claimable_idx in order (0.02-0.06 ms, 5-6 buffers). The
--    two candidate statements now run in functions of their own whose planner settings allow
--    only what the claim path is built for: an ordered scan of its partial index, stopping at
--    the first live, unlocked row (no seq scan, no sort, no bitmap scan: bitmap scans never mark
--    dead index entries, so with them every claim would revisit each phase claimed since the
--    last vacuum). The settings hold for these statements only, not for the rest of the claim;
--    like the other private helpers they inherit the caller's search_path.
--    tests/contract/test_claim_plan.py pins the plan on a table that was never analyzed.

-- The running phase whose lease expired first (its holder is presumed dead), locked; null if
-- none. Reads phases_lease_expiry_idx in lease_expires_at order.
create function ops_private.claim_expired_candidate(p_now timestamptz, p_kinds text[], p_ws uuid[],
                                                    p_run uuid, p_skip uuid[], p_busy uuid[])
returns ops.phases
language plpgsql volatile
set enable_seqscan = off
set enable_sort = off
set enable_bitmapscan = off
as $$
declare
    v_p ops.phases;
begin
    select * into v_p from ops.phases p
    where p.state = 'running' and p.lease_expires_at <= p_now
      and (p_kinds is null or p.kind = any (p_kinds))
      and (p_ws is null or p.workspace_id = any (p_ws))
      and (p_run is null or p.run_id = p_run)
      and p.id <> all (p_skip) and p.run_id <> all (p_busy)
    order by p.lease_expires_at
    limit 1
    for update skip locked;
    return v_p;
end
$$;

-- The best queued phase that is due (priority, then age), locked; null if none. Reads
-- phases_claimable_idx (or, within one run, phases_run_claimable_idx) in its order.
create function ops_private.claim_queued_candidate(p_now timestamptz, p_kinds text[], p_ws uuid[],
                                                   p_run uuid, p_skip uuid[], p_busy uuid[])
returns ops.phases
language plpgsql volatile
set enable_seqscan = off
set enable_sort = off
set enable_bitmapscan = off
as $$
declare
    v_p ops.phases;
begin
    select * into v_p from ops.phases p
    where p.state = 'queued' and p.not_before <= p_now
      and (p_kinds is null or p.kind = any (p_kinds))
      and (p_ws is null or p.workspace_id = any (p_ws))
      and (p_run is null or p.run_id = p_run)
      and p.id <> all (p_skip) and p.run_id <> all (p_busy)
    order by p.priority desc, p.queued_at, p.ordinal, p.id
    limit 1
    for update skip locked;
    return v_p;
end
$$;

revoke execute on function ops_private.claim_expired_candidate(timestamptz, text[], uuid[], uuid, uuid[], uuid[]),
                           ops_private.claim_queued_candidate(timestamptz, text[], uuid[], uuid, uuid[], uuid[])
    from public, anon, authenticated, service_role;

-- claim_phase as in 20261203000000_tenancy.sql, its two candidate statements moved into the
-- functions above
create or replace function ops.claim_phase(kinds text[] default null, lease_seconds integer default 60,
                                claim_id text default null, run_id text default null,
                                workspace_id text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
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
    v_pins     uuid[];          -- the workspaces the caller's token is pinned to
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
        -- an executor token is pinned to its workspaces when minted: claims never leave them,
        -- whatever memberships appear later
        v_pins := ops_private.token_pins();
        if v_pins is null then
            perform ops_private.fail(403, 'forbidden',
                'this token is not pinned to workspaces (JWT claim workspaces): mint an executor token with '
                || 'control-room token create --role executor --workspace <slug>',
                jsonb_build_object('reason', 'token_not_pinned'));
        end if;
        if v_wsid is not null and not (v_wsid = any (v_pins)) then
            perform ops_private.fail(403, 'forbidden',
                'workspace ' || v_wsid::text || ' is not one this token is pinned to',
                jsonb_build_object('argument', 'workspace_id', 'reason', 'workspace_not_pinned'));
        end if;
        v_ws := array(select m.workspace_id from ops.workspace_members m
                      where m.principal_id = v_uid and m.role = 'executor' and m.workspace_id = any (v_pins));
        if v_wsid is not null then
            if not (v_wsid = any (v_ws)) then
                perform ops_private.fail(403, 'forbidden', 'caller is not an executor in workspace ' || v_wsid::text);
            end if;
            v_ws := array[v_wsid];
        end if;
        if cardinality(v_ws) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'caller is not an executor in any workspace its token is pinned to');
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
            v_p := ops_private.claim_expired_candidate(v_now, v_kinds, v_ws, v_run, v_skip, v_busy);
            v_expired := v_p.id is not null;
            -- 2. else the best queued phase: priority, then age
            if not v_expired then
                v_p := ops_private.claim_queued_candidate(v_now, v_kinds, v_ws, v_run, v_skip, v_busy);
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
                perform ops_private.move_phase(v_p.id, 'cancelled', v_now, 'revoke');
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CANCELLED',
                                         'info', 'cancelled with the run (its lease had expired)', '{}'::jsonb, v_now);
            elsif v_p.state = 'running' then
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED',
                    'warning', 'lease expired after the run had finished',
                    jsonb_build_object('attempt', v_p.attempt, 'lease_expires_at', v_p.lease_expires_at), v_now);
                -- the dead holder's token must not pass for a completion replay
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired', 'reason', 'lease_expired'), true, v_now,
                    'revoke');
            else
                perform ops_private.settle_run(v_r, v_now);
            end if;
            continue;
        end if;

        if v_expired then
            perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED', 'warning',
                'lease expired: attempt ' || v_p.attempt || ' counted as failed',
                jsonb_build_object('attempt', v_p.attempt, 'max_attempts', v_p.max_attempts,
                                   'lease_expires_at', v_p.lease_expires_at,
                                   'claimed_by', ops_private.principal_name(v_p.workspace_id, v_p.claimed_by)),
                v_now);
            if v_p.attempt >= v_p.max_attempts then
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired on the last attempt', 'reason', 'lease_expired'),
                    true, v_now, 'revoke');
                continue;
            end if;
        end if;

        v_p := ops_private.move_phase(v_p.id, 'running', v_now, p_lease_seconds => claim_phase.lease_seconds,
                                      p_claim_id => v_claim, p_claimed_by => v_uid);
        if v_r.state = 'queued' then
            update ops.runs r set state = 'running', started_at = v_now, updated_at = v_now
            where r.id = v_r.id
            returning * into v_r;
        end if;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CLAIMED', 'info',
            'claimed, attempt ' || v_p.attempt || ' of ' || v_p.max_attempts,
            jsonb_build_object('attempt', v_p.attempt,
                               'claimed_by', ops_private.principal_name(v_p.workspace_id, v_uid),
                               'lease_expires_at', v_p.lease_expires_at, 'kind', v_p.kind), v_now);
        perform ops_private.audit('claim_phase', v_p.workspace_id, 'phase', v_p.id::text,
                                  jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'attempt', v_p.attempt));
        return ops_private.claim_json(v_p, v_r);
    end loop;
    return null;
end
$$;

