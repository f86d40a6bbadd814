-- Fair claims (issue 17, item 2): runs of equal priority take turns instead of queueing behind
-- each other. Claims went by priority, then queued_at: four one-phase runs submitted behind a
-- 40-phase run waited for 36 of its phases.
--
-- Start-time fair queueing over runs. Every phase queued to run now gets a fair round when it is
-- queued: a run's next phase plays in the round after its last queued one, and never before the
-- current round (the lowest round still queued at its priority):
--     fair_round = greatest(current round, the run's highest queued round + 1)
-- so a run has at most one phase in each round, a 1,000-phase run spreads over 1,000 rounds, and
-- a run that arrives joins the current round. Claims go by priority, then fair round, then
-- queued_at (first come first served within a round): a new run's first phase waits for at most
-- one phase of each run queued before it in that round, however long those runs are.
-- The round is fixed when the phase is queued (insert_run, move_phase), so the claim still walks
-- one partial index in its order and stops at the first live, unlocked row.
--
-- Retries whose backoff has not ended are queued without a round (fair_round null): a round fixed
-- now would sit at the head of the index until the retry falls due, and every claim would walk
-- past it. They wait in phases_retry_idx (not_before order); once due, the oldest goes first at
-- its priority (it already had its turn when it failed), before phases of the same or lower
-- priority.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

alter table ops.phases add column fair_round bigint;

-- phases queued before this migration: one round each per run, by age (retries still waiting
-- out their backoff keep none)
update ops.phases p set fair_round = r.k
from (select q.id, pg_catalog.row_number() over (partition by q.run_id order by q.queued_at, q.ordinal, q.id) - 1 as k
      from ops.phases q where q.state = 'queued' and q.not_before <= pg_catalog.now()) r
where p.id = r.id;

-- the claim path's indexes, the fair round after the priority (same names, same predicates)
drop index ops.phases_claimable_idx;
create index phases_claimable_idx on ops.phases (priority desc, fair_round, queued_at, ordinal, id)
    where state = 'queued';
drop index ops.phases_run_claimable_idx;
create index phases_run_claimable_idx on ops.phases (run_id, priority desc, fair_round, queued_at, ordinal, id)
    where state = 'queued';
-- retries waiting out their backoff, and the due ones first
create index phases_retry_idx on ops.phases (not_before) where state = 'queued' and fair_round is null;

-- The fair round of a phase of run p_run (null: a new run's first) queued now at p_priority:
-- the current round, or the round after the run's highest queued one if that is later. The
-- current round is the lowest queued at that priority, or the highest being run at it if that is
-- later (a phase nobody claims, of a kind no worker runs, must not hold the current round back:
-- new runs would then join a round long past and go ahead of everyone), 0 when there is
-- neither. Descents of phases_claimable_idx and phases_run_claimable_idx and a walk of the
-- running phases (phases_lease_expiry_idx: as many as there are busy slots); planner settings as
-- the claim's candidates (no statistics needed).
create function ops_private.fair_round_next(p_run uuid, p_priority integer)
returns bigint
language plpgsql volatile
set enable_seqscan = off
set enable_sort = off
set enable_bitmapscan = off
as $$
declare
    v_head bigint;
    v_run  bigint;
    v_last bigint;
begin
    select p.fair_round into v_head from ops.phases p
    where p.state = 'queued' and p.priority = p_priority and p.fair_round is not null
    order by p.priority desc, p.fair_round
    limit 1;
    select max(p.fair_round) into v_run from ops.phases p
    where p.state = 'running' and p.priority = p_priority and p.fair_round is not null;
    if p_run is not null then
        select p.fair_round into v_last from ops.phases p
        where p.run_id = p_run and p.state = 'queued' and p.priority = p_priority and p.fair_round is not null
        order by p.run_id desc, p.priority, p.fair_round desc
        limit 1;
    end if;
    return greatest(coalesce(v_head, 0), coalesce(v_run, 0), coalesce(v_last + 1, 0));
end
$$;

revoke execute on function ops_private.fair_round_next(uuid, integer)
    from public, anon, authenticated, service_role;

-- move_phase as in 20261201000000_ops_baseline.sql, a phase queued to run now given its round
create or replace function ops_private.move_phase(p_phase uuid, p_to text, p_now timestamptz,
                                       p_lease text default null, p_error jsonb default null,
                                       p_output_manifest jsonb default null,
                                       p_not_before timestamptz default null,
                                       p_lease_seconds integer default null,
                                       p_claim_id uuid default null, p_claimed_by uuid default null)
returns ops.phases
language plpgsql
as $$
declare
    v_lease text := coalesce(p_lease, case when p_to in ('skipped', 'cancelled') then 'revoke' else 'end' end);
    v_p     ops.phases;
    v_round bigint;     -- the phase's fair round when it is queued to run now; null for later
begin
    if v_lease not in ('end', 'revoke', 'keep') or (p_to = 'running' and p_lease_seconds is null) then
        raise exception 'move_phase(%, %): p_lease must be end, revoke or keep (got %) and a claim needs p_lease_seconds',
                        p_phase, p_to, v_lease using errcode = '22023';
    end if;
    if p_to = 'queued' and coalesce(p_not_before, p_now) <= p_now then
        select ops_private.fair_round_next(p.run_id, p.priority) into v_round
        from ops.phases p where p.id = p_phase;
    end if;
    update ops.phases p
    set state = p_to,
        attempt = case when p_to = 'running' then p.attempt + 1 else p.attempt end,
        lease_token = case when p_to = 'running' then gen_random_uuid()
                           when v_lease = 'revoke' then null
                           else p.lease_token end,
        lease_seconds = case when p_to = 'running' then p_lease_seconds else p.lease_seconds end,
        lease_expires_at = case when p_to = 'running' then p_now + pg_catalog.make_interval(secs => p_lease_seconds)
                                when v_lease = 'keep' then p.lease_expires_at end,
        claim_id = case when p_to = 'running' then p_claim_id else p.claim_id end,
        claimed_by = case when p_to = 'running' then p_claimed_by else p.claimed_by end,
        started_at = case when p_to = 'running' then p_now else p.started_at end,
        progress = case when p_to = 'running' then null else p.progress end,
        queued_at = case when p_to = 'queued' then coalesce(p_not_before, p_now) else p.queued_at end,
        fair_round = case when p_to = 'queued' then v_round else p.fair_round end,
        not_before = case when p_to = 'queued' then coalesce(p_not_before, p_now) end,
        finished_at = case when p_to in ('running', 'queued') then null
                           when v_lease = 'keep' then p.finished_at
                           else p_now end,
        output_manifest = case when p_to = 'succeeded' then coalesce(p_output_manifest, '{}'::jsonb)
                               when p_to = 'cancelled' and v_lease = 'end' then p_output_manifest
                               else p.output_manifest end,
        error = case when p_to = 'succeeded' then null
                     when p_to = 'cancelled' and v_lease = 'end' then p_error
                     else coalesce(p_error, p.error) end,
        updated_at = p_now
    where p.id = p_phase
    returning * into v_p;
    return v_p;
end
$$;

-- insert_run as in 20261201000000_ops_baseline.sql, the queued roots given their rounds
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
                'kept from the parent run',
                pg_catalog.jsonb_build_object('reused_from_phase_id', v_ph.reused_from_phase_id), p_now);
        end if;
    end loop;
    return v_run;
end
$$;

-- The best queued phase that is due, locked; null if none. First the oldest retry whose backoff
-- has ended (phases_retry_idx), then the best phase in fair order (phases_claimable_idx or,
-- within one run, phases_run_claimable_idx): priority, fair round, age. The retry goes first
-- unless a phase of higher priority is queued (the retry then stays locked by this transaction
-- until it ends, and other claims skip it meanwhile).
create or replace function ops_private.claim_queued_candidate(p_now timestamptz, p_kinds text[], p_ws uuid[],
                                                              p_run uuid, p_skip uuid[], p_busy uuid[])
returns ops.phases
language plpgsql volatile
set enable_seqscan = off
set enable_sort = off
set enable_bitmapscan = off
as $$
declare
    v_r ops.phases;
    v_p ops.phases;
begin
    select * into v_r from ops.phases p
    where p.state = 'queued' and p.fair_round is null and p.not_before <= p_now
      and (p_kinds is null or p.kind = any (p_kinds))
      and (p_ws is null or p.workspace_id = any (p_ws))
      and (p_run is null or p.run_id = p_run)
      and p.id <> all (p_skip) and p.run_id <> all (p_busy)
    order by p.not_before
    limit 1
    for update skip locked;
    if v_r.id is null then
        select * into v_p from ops.phases p
        where p.state = 'queued' and p.fair_round is not null and p.not_before <= p_now
          and (p_kinds is null or p.kind = any (p_kinds))
          and (p_ws is null or p.workspace_id = any (p_ws))
          and (p_run is null or p.run_id = p_run)
          and p.id <> all (p_skip) and p.run_id <> all (p_busy)
        order by p.priority desc, p.fair_round, p.queued_at, p.ordinal, p.id
        limit 1
        for update skip locked;
        return v_p;
    end if;
    select * into v_p from ops.phases p
    where p.state = 'queued' and p.fair_round is not null and p.priority > v_r.priority
      and p.not_before <= p_now
      and (p_kinds is null or p.kind = any (p_kinds))
      and (p_ws is null or p.workspace_id = any (p_ws))
      and (p_run is null or p.run_id = p_run)
      and p.id <> all (p_skip) and p.run_id <> all (p_busy)
    order by p.priority desc, p.fair_round, p.queued_at, p.ordinal, p.id
    limit 1
    for update skip locked;
    if v_p.id is not null then
        return v_p;
    end if;
    return v_r;
end
$$;

revoke execute on function ops_private.move_phase(uuid, text, timestamptz, text, jsonb, jsonb, timestamptz, integer, uuid, uuid),
                           ops_private.insert_run(uuid, text, text, jsonb, jsonb, text, jsonb, integer, uuid, jsonb, text, timestamptz),
                           ops_private.claim_queued_candidate(timestamptz, text[], uuid[], uuid, uuid[], uuid[])
    from public, anon;

-- the round is readable like the phase's other scheduling columns (the baseline grants them by
-- column: lease_token and claim_id stay hidden)
grant select (fair_round) on ops.phases to authenticated, service_role;
