-- Claims that hold a lock never wait (issue 17): bench/peers.py found deadlocks of batches on
-- runs of 100 phases at 8 connections. claim_next (20261208000000_batch_claims.sql) takes its
-- candidates with FOR UPDATE SKIP LOCKED once it holds a run's row, but SKIP LOCKED still waits
-- when it follows a row's update chain to a version another transaction holds ("while locking
-- updated version of tuple"); when that transaction was a complete_phases waiting for the run
-- row the claim held, the two deadlocked. Now every candidate search made while this
-- transaction holds a lock (a run's row, or phases tried before) runs under a lock_timeout of
-- 1 ms in a block of its own: a candidate that would make it wait ends the claim (a batch
-- answers what it has). The first search, holding nothing, may still wait.
-- complete_phases now locks the phases of all its runs first (run by run in id order, each
-- run's in id order), then the runs' rows in id order: it no longer holds a run's row while it
-- waits for phases.
-- Each such block takes a subtransaction id when it locks a row: claim_phases' limit is now at
-- most 32, so that a batch stays under the 64 subtransactions a backend caches.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

create or replace function ops_private.claim_next(p_now timestamptz, p_kinds text[], p_ws uuid[], p_run uuid,
                                       p_uid uuid, p_lease_seconds integer, p_claim uuid, p_held boolean)
returns jsonb
language plpgsql
as $$
declare
    v_p        ops.phases;
    v_r        ops.runs;
    v_expired  boolean;
    v_held_run boolean := p_held; -- this transaction holds a run lock: take further ones with SKIP LOCKED
    v_skip     uuid[] := '{}';   -- phases tried (and locked) by this call
    v_busy     uuid[] := '{}';   -- runs whose row another transaction holds: look elsewhere first
    v_fallback ops.phases;       -- a phase of a busy run, claimed by waiting if nothing else is free
    v_fallback_expired boolean;
    v_i        integer := 0;
    v_locked   boolean := false; -- v_r is the candidate's run, locked (or not: busy) already
    v_timeout  text := pg_catalog.current_setting('lock_timeout');
begin
    loop
        v_i := v_i + 1;
        v_p := null;
        v_r := null;
        if v_i <= 20 and not v_held_run and v_i = 1 then
            -- holding no lock yet: the candidate statements may wait
            v_p := ops_private.claim_expired_candidate(p_now, p_kinds, p_ws, p_run, v_skip, v_busy);
            v_expired := v_p.id is not null;
            if not v_expired then
                v_p := ops_private.claim_queued_candidate(p_now, p_kinds, p_ws, p_run, v_skip, v_busy);
            end if;
        elsif v_i <= 20 then
            -- holding locks (a run's row, or phases tried before): never wait. FOR UPDATE SKIP
            -- LOCKED still waits when it follows a row's update chain to a version another
            -- transaction holds, and that transaction may be a completion waiting for a row we
            -- hold (a deadlock, seen with batches on runs of 100 phases): under a lock_timeout
            -- of 1 ms, a candidate that would make us wait ends this claim instead (the batch
            -- answers the claims it has; a single claim answers null and is asked again)
            begin
                perform pg_catalog.set_config('lock_timeout', '1ms', true);
                -- 1. a running phase whose lease expired (its holder is presumed dead)
                v_p := ops_private.claim_expired_candidate(p_now, p_kinds, p_ws, p_run, v_skip, v_busy);
                v_expired := v_p.id is not null;
                -- 2. else the best queued phase: priority, then age
                if not v_expired then
                    v_p := ops_private.claim_queued_candidate(p_now, p_kinds, p_ws, p_run, v_skip, v_busy);
                end if;
                if v_p.id is not null then
                    select * into v_r from ops.runs r where r.id = v_p.run_id for update skip locked;
                    v_locked := true;
                end if;
                perform pg_catalog.set_config('lock_timeout', v_timeout, true);
            exception when lock_not_available then
                return null;            -- (the setting is rolled back with the block)
            end;
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
            if not v_locked then
                select * into v_r from ops.runs r where r.id = v_p.run_id for update skip locked;
            end if;
            v_locked := false;
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
                perform ops_private.move_phase(v_p.id, 'cancelled', p_now, 'revoke');
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CANCELLED',
                                         'info', 'cancelled with the run (its lease had expired)', '{}'::jsonb, p_now);
            elsif v_p.state = 'running' then
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED',
                    'warning', 'lease expired after the run had finished',
                    jsonb_build_object('attempt', v_p.attempt, 'lease_expires_at', v_p.lease_expires_at), p_now);
                -- the dead holder's token must not pass for a completion replay
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired', 'reason', 'lease_expired'), true, p_now,
                    'revoke');
            else
                perform ops_private.settle_run(v_r, p_now);
            end if;
            continue;
        end if;

        if v_expired then
            perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED', 'warning',
                'lease expired: attempt ' || v_p.attempt || ' counted as failed',
                jsonb_build_object('attempt', v_p.attempt, 'max_attempts', v_p.max_attempts,
                                   'lease_expires_at', v_p.lease_expires_at,
                                   'claimed_by', ops_private.principal_name(v_p.workspace_id, v_p.claimed_by)),
                p_now);
            if v_p.attempt >= v_p.max_attempts then
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired on the last attempt', 'reason', 'lease_expired'),
                    true, p_now, 'revoke');
                continue;
            end if;
        end if;

        v_p := ops_private.move_phase(v_p.id, 'running', p_now, p_lease_seconds => p_lease_seconds,
                                      p_claim_id => p_claim, p_claimed_by => p_uid);
        if v_r.state = 'queued' then
            update ops.runs r set state = 'running', started_at = p_now, updated_at = p_now
            where r.id = v_r.id
            returning * into v_r;
        end if;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CLAIMED', 'info',
            'claimed, attempt ' || v_p.attempt || ' of ' || v_p.max_attempts,
            jsonb_build_object('attempt', v_p.attempt,
                               'claimed_by', ops_private.principal_name(v_p.workspace_id, p_uid),
                               'lease_expires_at', v_p.lease_expires_at, 'kind', v_p.kind), p_now);
        perform ops_private.audit('claim_phase', v_p.workspace_id, 'phase', v_p.id::text,
                                  jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'attempt', v_p.attempt));
        return ops_private.claim_json(v_p, v_r);
    end loop;
    return null;
end
$$;

-- claim_phases as in 20261208000000_batch_claims.sql, at most 32 phases per call
create or replace function ops.claim_phases(kinds text[] default null, lease_seconds integer default 60,
                                 "limit" integer default 10, claim_id text default null,
                                 run_id text default null, workspace_id text default null)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_uid    uuid := ops_private.principal();
    v_claim  uuid := ops_private.uuid_arg('claim_id', claim_phases.claim_id);
    v_run    uuid := ops_private.uuid_arg('run_id', claim_phases.run_id);
    v_wsid   uuid := ops_private.uuid_arg('workspace_id', claim_phases.workspace_id);
    v_ws     uuid[];
    v_ids    uuid[];
    v_out    jsonb := '[]'::jsonb;
    v_c      jsonb;
    v_i      integer;
begin
    if claim_phases."limit" is null or claim_phases."limit" not between 1 and 32 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 32',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    v_ws := ops_private.claim_scope(claim_phases.kinds, claim_phases.lease_seconds, v_wsid, v_run, v_uid);
    -- a repeated call with the same claim_id gets the same phases and leases back (those still
    -- running under it) and claims nothing more; concurrent calls with one claim_id queue on it
    if v_claim is not null then
        perform pg_advisory_xact_lock(
            ('x' || left(replace(v_claim::text, '-', ''), 16))::bit(64)::bigint);
        v_ids := array(select ops_private.batch_claim_id(v_claim, g) from generate_series(1, 32) g);
        if exists (select 1 from ops.phases p where p.claim_id = any (v_ids) and p.state = 'running') then
            if exists (select 1 from ops.phases p where p.claim_id = any (v_ids) and p.state = 'running'
                       and p.claimed_by is distinct from v_uid) and not ops_private.is_privileged() then
                perform ops_private.fail(409, 'conflict', 'claim_id is in use by another principal');
            end if;
            select coalesce(jsonb_agg(ops_private.claim_json(p, r) order by array_position(v_ids, p.claim_id)),
                            '[]'::jsonb)
            into v_out
            from ops.phases p join ops.runs r on r.id = p.run_id
            where p.claim_id = any (v_ids) and p.state = 'running';
            return v_out;
        end if;
    end if;
    for v_i in 1 .. claim_phases."limit" loop
        v_c := ops_private.claim_next(v_now, claim_phases.kinds, v_ws, v_run, v_uid, claim_phases.lease_seconds,
                                      case when v_claim is not null then ops_private.batch_claim_id(v_claim, v_i) end,
                                      v_i > 1);
        exit when v_c is null;
        v_out := v_out || jsonb_build_array(v_c);
    end loop;
    return v_out;
end
$$;

-- complete_phases as in 20261208000000_batch_claims.sql, all phases locked before any run row
create or replace function ops.complete_phases(completions jsonb)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_allowed constant text[] := array['lease_token', 'outcome', 'output_manifest', 'error', 'retryable'];
    v_n       integer;
    v_i       integer;
    v_e       jsonb;
    v_key     text;
    v_tokens  uuid[] := '{}';
    v_token   uuid;
    v_run     record;
    v_item    record;
    v_p       ops.phases;
    v_results jsonb[];
    v_runs    uuid[] := '{}';
begin
    if completions is null or jsonb_typeof(completions) <> 'array' then
        perform ops_private.fail(400, 'invalid_argument', 'completions must be a JSON array of completions',
                                 jsonb_build_object('argument', 'completions'));
    end if;
    v_n := jsonb_array_length(completions);
    if v_n = 0 or v_n > 100 then
        perform ops_private.fail(400, 'invalid_argument',
            format('completions must hold 1 to 100 completions, got %s', v_n),
            jsonb_build_object('argument', 'completions'));
    end if;
    perform ops_private.check_size('completions', completions, 4194304);
    for v_i in 0 .. v_n - 1 loop
        v_e := completions -> v_i;
        if jsonb_typeof(v_e) <> 'object' then
            perform ops_private.fail(400, 'invalid_argument', format('completions[%s] must be a JSON object', v_i),
                                     jsonb_build_object('argument', format('completions[%s]', v_i)));
        end if;
        for v_key in select jsonb_object_keys(v_e) loop
            if not (v_key = any (v_allowed)) then
                perform ops_private.fail(400, 'invalid_argument',
                    format('completions[%s] has an unknown field %s (known: %s)', v_i, v_key,
                           array_to_string(v_allowed, ', ')),
                    jsonb_build_object('argument', format('completions[%s].%s', v_i, v_key)));
            end if;
        end loop;
        if jsonb_typeof(v_e -> 'lease_token') is distinct from 'string' then
            perform ops_private.fail(400, 'invalid_argument', format('completions[%s].lease_token is required', v_i),
                                     jsonb_build_object('argument', format('completions[%s].lease_token', v_i)));
        end if;
        v_token := ops_private.uuid_arg(format('completions[%s].lease_token', v_i), v_e ->> 'lease_token', true);
        if v_token = any (v_tokens) then
            perform ops_private.fail(400, 'invalid_argument',
                format('completions[%s] repeats the lease token of an earlier completion', v_i),
                jsonb_build_object('argument', format('completions[%s].lease_token', v_i)));
        end if;
        v_tokens := v_tokens || v_token;
        if jsonb_typeof(v_e -> 'outcome') is distinct from 'string' then
            perform ops_private.fail(400, 'invalid_argument',
                format('completions[%s].outcome must be succeeded or failed', v_i),
                jsonb_build_object('argument', format('completions[%s].outcome', v_i)));
        end if;
        if v_e ? 'retryable' and jsonb_typeof(v_e -> 'retryable') not in ('boolean', 'null') then
            perform ops_private.fail(400, 'invalid_argument',
                format('completions[%s].retryable must be true or false', v_i),
                jsonb_build_object('argument', format('completions[%s].retryable', v_i)));
        end if;
    end loop;

    -- take the locks: every phase the completions may change, run by run in id order and
    -- each run's in id order, then the runs' rows in id order (no run row is held while a
    -- phase is waited for)
    for v_run in
        select p.run_id,
               array_agg(p.id) as ids, array_agg(p.name) filter (where c.e ->> 'outcome' = 'succeeded') as done,
               bool_or(c.e ->> 'outcome' = 'failed'
                       and (coalesce((c.e ->> 'retryable')::boolean, true) is false or p.attempt >= p.max_attempts))
                   as final
        from jsonb_array_elements(completions) c(e)
        join ops.phases p on p.lease_token = (c.e ->> 'lease_token')::uuid
        group by p.run_id
        order by p.run_id
    loop
        perform 1 from ops.phases p
        where p.run_id = v_run.run_id
          and (p.id = any (v_run.ids)
               or (p.state = 'waiting' and p.depends_on && coalesce(v_run.done, '{}'))
               or (v_run.final and p.state in ('waiting', 'queued')))
        order by p.id for update;
        v_runs := v_runs || v_run.run_id;
    end loop;
    perform 1 from ops.runs r where r.id = any (v_runs) order by r.id for update;

    v_results := array_fill(null::jsonb, array[v_n]);
    for v_item in
        select c.e, c.o, p.run_id, p.id from jsonb_array_elements(completions) with ordinality c(e, o)
        left join ops.phases p on p.lease_token = (c.e ->> 'lease_token')::uuid
        order by p.run_id nulls first, p.id, c.o
    loop
        if v_item.id is null then
            v_results[v_item.o] := jsonb_build_object('lease_token', v_item.e ->> 'lease_token',
                'error', jsonb_build_object('code', 'lease_lost',
                    'message', 'lease token is not live: the phase was reclaimed or finished'));
            continue;
        end if;
        v_results[v_item.o] := jsonb_build_object('lease_token', v_item.e ->> 'lease_token')
            || ops.complete_phase(v_item.e ->> 'lease_token', v_item.e ->> 'outcome',
                                  nullif(v_item.e -> 'output_manifest', 'null'::jsonb),
                                  nullif(v_item.e -> 'error', 'null'::jsonb),
                                  coalesce((v_item.e ->> 'retryable')::boolean, true));
    end loop;
    return to_jsonb(v_results);
end
$$;
