-- claim_phases as in 20261208000200_claims_never_wait.sql, its replay in one statement: the
-- phases still running under the batch's claim_ids are read once (they were looked up three
-- times: whether any, whether another principal's, then their claims), and the i-th claim's
-- claim_id is taken from the same array instead of being hashed again. Same answers.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

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
    v_foreign boolean;
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
        select coalesce(jsonb_agg(ops_private.claim_json(p, r) order by array_position(v_ids, p.claim_id)),
                        '[]'::jsonb),
               coalesce(bool_or(p.claimed_by is distinct from v_uid), false)
        into v_out, v_foreign
        from ops.phases p join ops.runs r on r.id = p.run_id
        where p.claim_id = any (v_ids) and p.state = 'running';
        if v_foreign and not ops_private.is_privileged() then
            perform ops_private.fail(409, 'conflict', 'claim_id is in use by another principal');
        end if;
        if jsonb_array_length(v_out) > 0 then
            return v_out;
        end if;
    end if;
    for v_i in 1 .. claim_phases."limit" loop
        v_c := ops_private.claim_next(v_now, claim_phases.kinds, v_ws, v_run, v_uid, claim_phases.lease_seconds,
                                      v_ids[v_i],   -- null without a claim_id
                                      v_i > 1);
        exit when v_c is null;
        v_out := v_out || jsonb_build_array(v_c);
    end loop;
    return v_out;
end
$$;
