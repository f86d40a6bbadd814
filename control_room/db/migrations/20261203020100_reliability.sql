-- Reliability (issue 17): retries picked up when they fall due, and a claim plan that holds
-- without statistics.
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
