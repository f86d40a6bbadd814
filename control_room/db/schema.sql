-- The whole schema the migrations create (schemas ops, ops_private and the rows of
-- ops_private.reserved_event_types), as pg_dump writes it. Generated: do not edit.
-- Regenerate after adding a migration: python -m control_room.db.snapshot
-- Load it after the local Supabase shim (control_room/db/shim.sql); it is not a migration.

--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: ops; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA ops;

--
-- Name: SCHEMA ops; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON SCHEMA ops IS 'Lakehouse Control Room control plane: runs, phases, events, artifacts. Exposed over /rest/v1/rpc.';

--
-- Name: ops_private; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA ops_private;

--
-- Name: SCHEMA ops_private; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON SCHEMA ops_private IS 'Helpers of the ops functions. Never exposed.';

--
-- Name: accept_invitation(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.accept_invitation(workspace_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', accept_invitation.workspace_id, true);
    v_uid uuid := ops_private.principal();
    v_now timestamptz := ops_private.now();
    v_inv ops.invitations;
    v_row ops.workspace_members;
begin
    if ops_private.is_privileged() then
        perform ops_private.fail(403, 'forbidden', 'the invitee accepts its invitation itself, with its own token',
                                 jsonb_build_object('reason', 'invitee_only'));
    end if;
    if v_uid is null then
        perform ops_private.fail(401, 'unauthorized',
            'this call needs an authenticated principal (a JWT with sub): the invitee accepts itself');
    end if;
    if exists (select 1 from ops.principals p where p.id = v_uid and p.kind = 'executor')
       or ops_private.token_pins() is not null then
        perform ops_private.fail(403, 'forbidden', 'an executor cannot accept an invitation',
                                 jsonb_build_object('reason', 'executor'));
    end if;
    select * into v_inv from ops.invitations i
    where i.workspace_id = v_ws and i.principal_id = v_uid and i.accepted_at is null and i.expires_at > v_now
    for update;
    if v_inv.workspace_id is null then
        perform ops_private.fail(404, 'not_found', 'no pending invitation to this workspace');
    end if;
    insert into ops.workspace_members as m (workspace_id, principal_id, role, name, created_at)
    values (v_ws, v_uid, v_inv.role, v_inv.name, v_now)
    on conflict (workspace_id, principal_id) do nothing
    returning * into v_row;
    if v_row.workspace_id is null then
        select * into v_row from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_uid;
    end if;
    update ops.invitations i set accepted_at = v_now
    where i.workspace_id = v_ws and i.principal_id = v_uid;
    perform ops_private.audit('accept_invitation', v_ws, 'principal', v_uid::text,
                              jsonb_build_object('role', v_row.role, 'invited_by', v_inv.invited_by));
    return to_jsonb(v_row);
end
$$;

--
-- Name: add_member(text, text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.add_member(workspace_id text, principal_id text, role text, name text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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
            'role must be one of viewer, developer, admin, executor, got '
            || coalesce(pg_catalog.left(add_member.role, 64), 'nothing'));
    end if;
    if add_member.name is not null and length(add_member.name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be at most 200 characters');
    end if;
    -- an admin enrols only principals its workspace owns; members already here may change role.
    -- Anyone else joins by accepting an invitation (invite_member), or service_role adds it.
    if not ops_private.is_privileged()
       and not exists (select 1 from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_pr)
       and not exists (select 1 from ops.principals p
                       where p.id = v_pr and p.owner_workspace_id = v_ws and p.revoked_at is null) then
        perform ops_private.fail(403, 'forbidden',
            'this principal is not owned by the workspace: invite it (invite_member) and let it accept, '
            || 'or ask an operator (service_role) to add it',
            jsonb_build_object('argument', 'principal_id', 'reason', 'not_owned'));
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

--
-- Name: append_events(text, jsonb, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.append_events(run_id text, events jsonb, lease_token text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_run      uuid := ops_private.uuid_arg('run_id', append_events.run_id, true);
    v_token    uuid := ops_private.uuid_arg('lease_token', append_events.lease_token);
    v_ws       uuid;
    v_n        integer;
    v_ok       boolean;
    v_phases   integer;
    v_phase    text;
    v_p        ops.phases;
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

    -- every event checked in one pass; a batch with a problem is walked to name the first
    select coalesce(bool_and(coalesce(     -- a check that is null (a missing member) fails
               pg_catalog.jsonb_typeof(t.e) = 'object'
               and not exists (select 1 from pg_catalog.jsonb_object_keys(t.e) k
                               where k not in ('event_id', 'phase', 'ts', 'level', 'type', 'message', 'payload'))
               and pg_catalog.jsonb_typeof(t.e -> 'event_id') = 'string'
               and (t.e ->> 'event_id') ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
               and pg_catalog.jsonb_typeof(t.e -> 'type') = 'string'
               and (t.e ->> 'type') ~ '^[A-Z][A-Z0-9_]{0,63}$'
               and not exists (select 1 from ops_private.reserved_event_types r where r.type = (t.e ->> 'type'))
               and ((t.e ->> 'level') is null or (t.e ->> 'level') in ('debug', 'info', 'warning', 'error'))
               and (t.e -> 'message' is null or t.e -> 'message' = 'null'::jsonb
                    or (pg_catalog.jsonb_typeof(t.e -> 'message') = 'string' and pg_catalog.length(t.e ->> 'message') <= 16384))
               and (t.e -> 'payload' is null or t.e -> 'payload' = 'null'::jsonb
                    or (pg_catalog.jsonb_typeof(t.e -> 'payload') = 'object'
                        and pg_catalog.octet_length((t.e -> 'payload')::text) <= 65536))
               and (t.e -> 'ts' is null or t.e -> 'ts' = 'null'::jsonb
                    or (pg_catalog.jsonb_typeof(t.e -> 'ts') = 'string'
                        and (t.e ->> 'ts') ~ '^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-](0\d|1[0-5])(:?[0-5]\d)?)$'
                        and left(t.e ->> 'ts', 4) <> '0000'
                        and (substr(t.e ->> 'ts', 9, 2) <= '28' or ops_private.is_timestamptz(t.e ->> 'ts'))))
               and (t.e -> 'phase' is null or t.e -> 'phase' = 'null'::jsonb or pg_catalog.jsonb_typeof(t.e -> 'phase') = 'string'), false)), true),
           count(distinct t.e ->> 'phase'), max(t.e ->> 'phase')
    into v_ok, v_phases, v_phase
    from jsonb_array_elements(append_events.events) t(e);
    if not v_ok or v_phases > 1 then
        perform ops_private.append_events_problem(append_events.events, v_n);
    end if;

    if v_phase is not null and v_token is null then
        perform ops_private.fail(400, 'invalid_argument',
            'events naming a phase need that phase''s lease_token', jsonb_build_object('argument', 'lease_token'));
    end if;

    -- all of a run's events are written under its row lock, which also fences the lease check:
    -- a lease token changes only under this lock (claim_phase, complete_phase)
    select r.last_event_seq into v_base from ops.runs r where r.id = v_run for update;
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

    -- the first of duplicate event_ids in the batch wins; events already stored (a retried
    -- call) are dropped; the rest get consecutive sequence numbers in the order given
    insert into ops.run_events (run_id, seq, event_id, workspace_id, phase, attempt, ts, recorded_at,
                                level, type, message, payload, principal_id)
    select v_run, v_base + row_number() over (order by f.o), f.id, v_ws, nullif(f.e ->> 'phase', ''),
           case when f.e ->> 'phase' is not null then v_p.attempt end,
           coalesce((f.e ->> 'ts')::timestamptz, v_now), v_now, coalesce(f.e ->> 'level', 'info'), f.e ->> 'type',
           coalesce(f.e ->> 'message', ''), coalesce(nullif(f.e -> 'payload', 'null'::jsonb), '{}'::jsonb),
           ops_private.uid()
    from (select distinct on ((t.e ->> 'event_id')::uuid) (t.e ->> 'event_id')::uuid as id, t.e, t.o
          from jsonb_array_elements(append_events.events) with ordinality as t(e, o)
          order by (t.e ->> 'event_id')::uuid, t.o) f
    where not exists (select 1 from ops.run_events x where x.run_id = v_run and x.event_id = f.id)
    order by f.o;
    get diagnostics v_new = row_count;
    if v_new > 0 then
        update ops.runs r set last_event_seq = v_base + v_new where r.id = v_run;
    end if;
    return jsonb_build_object('appended', v_new, 'duplicates', v_n - v_new, 'last_seq', v_base + v_new);
end
$_$;

--
-- Name: cancel_run(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.cancel_run(run_id text, reason text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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
        select q.id, q.name, q.attempt, q.state as old_state from ops.phases q
        where q.run_id = v_run and q.state in ('waiting', 'queued', 'running')
        order by q.ordinal
    loop
        -- a running phase keeps its lease so its executor learns of the cancel from heartbeat
        perform ops_private.move_phase(v_p.id, 'cancelled', v_now,
                                       case when v_p.old_state = 'running' then 'keep' end);
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

--
-- Name: claim_alerts(integer, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.claim_alerts("limit" integer DEFAULT 20, lease_seconds integer DEFAULT 60) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_result jsonb;
begin
    perform ops_private.require_service_role('claim_alerts');
    if claim_alerts."limit" is null or claim_alerts."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if claim_alerts.lease_seconds is null or claim_alerts.lease_seconds not between 5 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 5 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    with due as (
        select a.id from ops.alerts a
        where (a.state = 'pending' and a.next_attempt_at <= v_now)
           or (a.state = 'delivering' and a.lease_expires_at <= v_now)
        order by a.next_attempt_at, a.id
        limit claim_alerts."limit"
        for update skip locked
    ), leased as (
        update ops.alerts a
        set state = 'delivering', lease_expires_at = v_now + make_interval(secs => claim_alerts.lease_seconds)
        from due where a.id = due.id
        returning a.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', l.id, 'workspace_id', l.workspace_id,
               'workspace', ops_private.workspace_slug(l.workspace_id),
               'rule', l.rule_name, 'event', l.event, 'subject', l.subject, 'payload', l.payload,
               'created_at', l.created_at, 'attempt', l.attempts + 1, 'max_attempts', l.max_attempts,
               'lease_expires_at', l.lease_expires_at,
               'destination', jsonb_build_object('name', d.name, 'type', d.type, 'url', d.url,
                                                 'headers', d.headers))
             order by l.next_attempt_at, l.id), '[]'::jsonb)
    into v_result
    from leased l join ops.alert_destinations d on d.id = l.destination_id;
    return v_result;
end
$$;

--
-- Name: claim_due_sensors(text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.claim_due_sensors(workspace_id text DEFAULT NULL::text, "limit" integer DEFAULT 20) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: claim_github_check_runs(integer, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.claim_github_check_runs("limit" integer DEFAULT 20, lease_seconds integer DEFAULT 60) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_result jsonb;
begin
    perform ops_private.require_github_deliverer('claim_github_check_runs');
    if claim_github_check_runs."limit" is null or claim_github_check_runs."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if claim_github_check_runs.lease_seconds is null
       or claim_github_check_runs.lease_seconds not between 5 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 5 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    with due as (
        select c.id from ops.github_check_runs c
        where (c.delivery = 'pending' and c.next_attempt_at <= v_now)
           or (c.delivery = 'delivering' and c.lease_expires_at <= v_now)
        order by c.next_attempt_at, c.seq
        limit claim_github_check_runs."limit"
        for update skip locked
    ), leased as (
        update ops.github_check_runs c
        set delivery = 'delivering', leased_version = c.version, claims = c.claims + 1,
            lease_expires_at = v_now + make_interval(secs => claim_github_check_runs.lease_seconds)
        from due where c.id = due.id
        returning c.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', l.id, 'workspace_id', l.workspace_id, 'run_id', l.run_id, 'repo', l.repo, 'sha', l.sha,
               'context', l.context, 'external_id', l.run_id::text, 'details_url', l.details_url,
               'run_state', l.run_state, 'status', l.status, 'conclusion', l.conclusion, 'title', l.title,
               'started_at', l.started_at, 'completed_at', l.completed_at, 'version', l.version,
               'check_run_id', l.check_run_id, 'html_url', l.html_url, 'claims', l.claims,
               'attempt', l.attempts + 1, 'max_attempts', l.max_attempts,
               'lease_expires_at', l.lease_expires_at)
             order by l.next_attempt_at, l.seq), '[]'::jsonb)
    into v_result from leased l;
    return v_result;
end
$$;

--
-- Name: claim_github_statuses(integer, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.claim_github_statuses("limit" integer DEFAULT 20, lease_seconds integer DEFAULT 60) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_result jsonb;
begin
    perform ops_private.require_github_deliverer('claim_github_statuses');
    if claim_github_statuses."limit" is null or claim_github_statuses."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if claim_github_statuses.lease_seconds is null or claim_github_statuses.lease_seconds not between 5 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 5 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    with due as (
        select s.id from ops.github_statuses s
        where ((s.delivery = 'pending' and s.next_attempt_at <= v_now)
               or (s.delivery = 'delivering' and s.lease_expires_at <= v_now))
          and not exists (select 1 from ops.github_statuses o
                          where o.run_id = s.run_id and o.id <> s.id and o.delivery = 'delivering'
                            and o.lease_expires_at > v_now)
        order by s.next_attempt_at, s.seq
        limit claim_github_statuses."limit"
        for update skip locked
    ), leased as (
        update ops.github_statuses s
        set delivery = 'delivering',
            lease_expires_at = v_now + make_interval(secs => claim_github_statuses.lease_seconds)
        from due where s.id = due.id
        returning s.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', l.id, 'workspace_id', l.workspace_id, 'run_id', l.run_id, 'repo', l.repo, 'sha', l.sha,
               'context', l.context, 'state', l.state, 'description', l.description, 'target_url', l.target_url,
               'created_at', l.created_at, 'attempt', l.attempts + 1, 'max_attempts', l.max_attempts,
               'lease_expires_at', l.lease_expires_at)
             order by l.next_attempt_at, l.seq), '[]'::jsonb)
    into v_result from leased l;
    return v_result;
end
$$;

--
-- Name: claim_phase(text[], integer, text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.claim_phase(kinds text[] DEFAULT NULL::text[], lease_seconds integer DEFAULT 60, claim_id text DEFAULT NULL::text, run_id text DEFAULT NULL::text, workspace_id text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_uid   uuid := ops_private.principal();
    v_claim uuid := ops_private.uuid_arg('claim_id', claim_phase.claim_id);
    v_run   uuid := ops_private.uuid_arg('run_id', claim_phase.run_id);
    v_wsid  uuid := ops_private.uuid_arg('workspace_id', claim_phase.workspace_id);
    v_ws    uuid[] := ops_private.claim_scope(claim_phase.kinds, claim_phase.lease_seconds, v_wsid, v_run, v_uid);
    v_p     ops.phases;
    v_r     ops.runs;
begin
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
    return ops_private.claim_next(v_now, claim_phase.kinds, v_ws, v_run, v_uid, claim_phase.lease_seconds,
                                  v_claim, false);
end
$$;

--
-- Name: claim_phases(text[], integer, integer, text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.claim_phases(kinds text[] DEFAULT NULL::text[], lease_seconds integer DEFAULT 60, "limit" integer DEFAULT 10, claim_id text DEFAULT NULL::text, run_id text DEFAULT NULL::text, workspace_id text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: complete_phase(text, text, jsonb, jsonb, boolean); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.complete_phase(lease_token text, outcome text, output_manifest jsonb DEFAULT NULL::jsonb, error jsonb DEFAULT NULL::jsonb, retryable boolean DEFAULT true) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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
        v_p := ops_private.move_phase(v_p.id, 'cancelled', v_now, 'end', v_error, complete_phase.output_manifest);
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_STOPPED', 'info',
            'stopped after the run was cancelled; the executor reported ' || complete_phase.outcome,
            jsonb_build_object('attempt', v_p.attempt, 'outcome', complete_phase.outcome, 'error', v_error), v_now);
        perform ops_private.settle_run(v_r, v_now);
    elsif complete_phase.outcome = 'succeeded' then
        v_p := ops_private.move_phase(v_p.id, 'succeeded', v_now,
                                      p_output_manifest => complete_phase.output_manifest);
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_SUCCEEDED', 'info',
            'succeeded on attempt ' || v_p.attempt,
            jsonb_build_object('attempt', v_p.attempt, 'output_manifest', v_p.output_manifest,
                               'duration_seconds', extract(epoch from v_now - v_p.started_at)), v_now);
        if v_r.state = 'failed' then
            perform ops_private.settle_run(v_r, v_now);   -- another branch failed the run meanwhile
        else
            for v_d in
                select p.id, p.name, p.kind from ops.phases p
                where p.run_id = v_r.id and p.state = 'waiting' and v_p.name = any (p.depends_on)
                  and not exists (select 1 from ops.phases d
                                  where d.run_id = p.run_id and d.name = any (p.depends_on) and d.state <> 'succeeded')
                order by p.ordinal
            loop
                perform ops_private.move_phase(v_d.id, 'queued', v_now);
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
        v_p := ops_private.move_phase(v_p.id, 'queued', v_now, p_error => v_error,
                                      p_not_before => v_now + make_interval(secs => v_delay::double precision));
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

--
-- Name: complete_phases(jsonb); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.complete_phases(completions jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: complete_run(text, jsonb); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.complete_run(run_id text, output_manifest jsonb DEFAULT NULL::jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: create_alert_destination(text, text, text, text, jsonb, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_alert_destination(workspace_id text, name text, type text, url text, headers jsonb DEFAULT '{}'::jsonb, description text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', create_alert_destination.workspace_id, true);
    v_row ops.alert_destinations;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    perform ops_private.check_alert_name('name', create_alert_destination.name);
    perform ops_private.check_alert_destination(create_alert_destination.type, create_alert_destination.url,
                                                coalesce(create_alert_destination.headers, '{}'::jsonb));
    if create_alert_destination.description is not null and length(create_alert_destination.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    insert into ops.alert_destinations (workspace_id, name, type, url, headers, description, created_by, created_at)
    values (v_ws, create_alert_destination.name, create_alert_destination.type, create_alert_destination.url,
            coalesce(create_alert_destination.headers, '{}'::jsonb),
            nullif(create_alert_destination.description, ''), ops_private.uid(), ops_private.now())
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'an alert destination named ' || create_alert_destination.name || ' exists in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_alert_destination', v_ws, 'alert_destination', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type,
                           'url_is_reference', ops_private.is_secret_reference(v_row.url),
                           'headers', (select coalesce(jsonb_agg(k order by k), '[]'::jsonb)
                                       from jsonb_object_keys(v_row.headers) k)));
    return ops_private.alert_destination_json(v_row);
end
$$;

--
-- Name: create_alert_rule(text, text, text, text, integer, jsonb, boolean, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_alert_rule(workspace_id text, name text, event text, destination text, threshold integer DEFAULT NULL::integer, filters jsonb DEFAULT '{}'::jsonb, enabled boolean DEFAULT true, description text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws      uuid := ops_private.uuid_arg('workspace_id', create_alert_rule.workspace_id, true);
    v_filters jsonb := coalesce(create_alert_rule.filters, '{}'::jsonb);
    v_dest    uuid;
    v_key     text;
    v_row     ops.alert_rules;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    perform ops_private.check_alert_name('name', create_alert_rule.name);
    if create_alert_rule.event is null or create_alert_rule.event not in
       ('run_failed', 'phase_dead_lettered', 'schedule_tick_failed', 'lease_expiries', 'slo_breached') then
        perform ops_private.fail(400, 'invalid_argument',
            'event must be one of run_failed, phase_dead_lettered, schedule_tick_failed, lease_expiries,'
            || ' slo_breached, got ' || coalesce(quote_literal(left(create_alert_rule.event, 64)), 'nothing'),
            jsonb_build_object('argument', 'event'));
    end if;
    if create_alert_rule.event = 'lease_expiries' then
        if create_alert_rule.threshold is null or create_alert_rule.threshold not between 1 and 1000000 then
            perform ops_private.fail(400, 'invalid_argument',
                'threshold is required for lease_expiries: the number of lease expiries in an hour (1-1000000)'
                || ' that raises the alert',
                jsonb_build_object('argument', 'threshold'));
        end if;
    elsif create_alert_rule.threshold is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'threshold is only for lease_expiries rules (the expiries per hour that raise the alert)',
            jsonb_build_object('argument', 'threshold'));
    end if;
    perform ops_private.check_object('filters', v_filters);
    perform ops_private.check_size('filters', v_filters, 4096);
    for v_key in select jsonb_object_keys(v_filters) loop
        if v_key not in ('spec_slug', 'job', 'labels') then
            perform ops_private.fail(400, 'invalid_argument',
                'filters.' || left(v_key, 64) || ' is not a filter: use spec_slug, job or labels',
                jsonb_build_object('argument', 'filters.' || left(v_key, 64)));
        end if;
    end loop;
    if (v_filters ? 'spec_slug' and jsonb_typeof(v_filters -> 'spec_slug') <> 'string')
       or (v_filters ? 'job' and jsonb_typeof(v_filters -> 'job') <> 'string') then
        perform ops_private.fail(400, 'invalid_argument', 'filters.spec_slug and filters.job are strings',
                                 jsonb_build_object('argument', 'filters'));
    end if;
    if v_filters ? 'labels' and jsonb_typeof(v_filters -> 'labels') <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'filters.labels must be an object of labels a run must carry', jsonb_build_object('argument', 'filters.labels'));
    end if;
    if v_filters <> '{}'::jsonb and create_alert_rule.event not in ('run_failed', 'phase_dead_lettered') then
        perform ops_private.fail(400, 'invalid_argument',
            'filters apply to run_failed and phase_dead_lettered rules only',
            jsonb_build_object('argument', 'filters'));
    end if;
    if create_alert_rule.description is not null and length(create_alert_rule.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    if create_alert_rule.destination is null then
        perform ops_private.fail(400, 'invalid_argument', 'destination is required (an alert destination''s name)',
                                 jsonb_build_object('argument', 'destination'));
    end if;
    select d.id into v_dest from ops.alert_destinations d
    where d.workspace_id = v_ws and d.name = create_alert_rule.destination;
    if v_dest is null then
        perform ops_private.fail(404, 'not_found',
            'alert destination ' || left(create_alert_rule.destination, 64) || ' not found in this workspace:'
            || ' create it with `control-room alerts destinations create`',
            jsonb_build_object('argument', 'destination'));
    end if;
    insert into ops.alert_rules (workspace_id, name, event, threshold, filters, destination_id, enabled,
                                 description, created_by, created_at)
    values (v_ws, create_alert_rule.name, create_alert_rule.event, create_alert_rule.threshold, v_filters,
            v_dest, coalesce(create_alert_rule.enabled, true), nullif(create_alert_rule.description, ''),
            ops_private.uid(), ops_private.now())
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'an alert rule named ' || create_alert_rule.name || ' exists in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_alert_rule', v_ws, 'alert_rule', v_row.name,
        jsonb_build_object('id', v_row.id, 'event', v_row.event, 'destination', create_alert_rule.destination,
                           'enabled', v_row.enabled));
    return ops_private.alert_rule_json(v_row);
end
$$;

--
-- Name: create_changed_run(text, text, text, jsonb, integer, jsonb, text, jsonb, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_changed_run(workspace_id text, job text, base_run_id text, changed jsonb, version integer DEFAULT NULL::integer, params jsonb DEFAULT '{}'::jsonb, idempotency_key text DEFAULT NULL::text, labels jsonb DEFAULT '{}'::jsonb, priority integer DEFAULT 0) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: create_connection(text, text, text, jsonb, jsonb, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_connection(workspace_id text, name text, type text, config jsonb DEFAULT '{}'::jsonb, secrets jsonb DEFAULT '{}'::jsonb, description text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', create_connection.workspace_id, true);
    v_config  jsonb := coalesce(create_connection.config, '{}'::jsonb);
    v_secrets jsonb := coalesce(create_connection.secrets, '{}'::jsonb);
    v_row     ops.connections;
begin
    perform ops_private.connection_workspace(v_ws, array['admin']);
    perform ops_private.check_connection_name(create_connection.name);
    if create_connection.type is null
       or create_connection.type not in ('postgres', 's3', 'trino', 'spark', 'http', 'dbt-profile') then
        perform ops_private.fail(400, 'invalid_argument',
            'type must be one of postgres, s3, trino, spark, http, dbt-profile, got '
            || coalesce(pg_catalog.quote_literal(left(create_connection.type, 64)), 'nothing'),
            jsonb_build_object('argument', 'type'));
    end if;
    if create_connection.description is not null and length(create_connection.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    perform ops_private.check_connection(v_config, v_secrets);
    insert into ops.connections (workspace_id, name, type, config, description, version,
                                 created_by, created_at, updated_by, updated_at)
    values (v_ws, create_connection.name, create_connection.type, v_config,
            nullif(create_connection.description, ''), 1, ops_private.uid(), v_now, ops_private.uid(), v_now)
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'a connection named ' || create_connection.name
            || ' exists in this workspace; change it with update_connection',
            jsonb_build_object('argument', 'name'));
    end if;
    insert into ops.secrets_refs (connection_id, workspace_id, field, reference, created_at)
    select v_row.id, v_ws, s.key, s.value #>> '{}', v_now from jsonb_each(v_secrets) s;
    perform ops_private.audit('create_connection', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type, 'version', v_row.version,
                           'config_keys', (select coalesce(jsonb_agg(k order by k), '[]'::jsonb)
                                           from jsonb_object_keys(v_config) k),
                           'secret_fields', (select coalesce(jsonb_agg(k order by k), '[]'::jsonb)
                                             from jsonb_object_keys(v_secrets) k)));
    return ops_private.connection_json(v_row);
end
$$;

--
-- Name: create_job_run(text, text, integer, jsonb, text, jsonb, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_job_run(workspace_id text, job text, version integer DEFAULT NULL::integer, params jsonb DEFAULT '{}'::jsonb, idempotency_key text DEFAULT NULL::text, labels jsonb DEFAULT '{}'::jsonb, priority integer DEFAULT 0) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_job ops.jobs := ops_private.find_job(create_job_run.workspace_id, create_job_run.job,
                                           array['developer', 'admin'], false);
    v_ver uuid;
    v_out jsonb;
begin
    if v_job.latest_version = 0 then
        perform ops_private.fail(404, 'not_found', 'job ' || v_job.slug || ' has no version');
    end if;
    if create_job_run.version is not null and create_job_run.version not between 1 and v_job.latest_version then
        perform ops_private.fail(404, 'not_found',
            pg_catalog.format('job %s has no version %s (versions 1..%s)', v_job.slug, create_job_run.version,
                              v_job.latest_version),
            jsonb_build_object('argument', 'version'));
    end if;
    select v.id into v_ver from ops.job_versions v
    where v.job_id = v_job.id and v.version = coalesce(create_job_run.version, v_job.latest_version);
    v_out := ops_private.start_job_run(v_ver, create_job_run.params, create_job_run.idempotency_key,
                                       create_job_run.labels, create_job_run.priority);
    if (v_out ->> 'created')::boolean then
        perform ops_private.audit('create_job_run', v_job.workspace_id, 'run', v_out ->> 'id',
            jsonb_build_object('job', v_job.slug, 'version', v_out -> 'job' -> 'version',
                               'idempotency_key', create_job_run.idempotency_key));
    end if;
    return v_out;
end
$$;

--
-- Name: create_principal(text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_principal(name text, kind text DEFAULT 'executor'::text, workspace_id text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', create_principal.workspace_id);
    v_row ops.principals;
begin
    if not ops_private.is_privileged() then
        if v_ws is null then
            perform ops_private.fail(403, 'forbidden',
                'only service_role may create a principal without a workspace; an admin passes workspace_id',
                jsonb_build_object('argument', 'workspace_id', 'reason', 'workspace_required'));
        end if;
        if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
            perform ops_private.fail(404, 'not_found', 'workspace not found');
        end if;
        perform ops_private.require_role(v_ws, array['admin'], true);
    elsif v_ws is not null and not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    if create_principal.name is null or length(create_principal.name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-200 characters',
                                 jsonb_build_object('argument', 'name'));
    end if;
    if create_principal.kind is null or create_principal.kind not in ('user', 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'kind must be user or executor, got ' || coalesce(pg_catalog.left(create_principal.kind, 64), 'nothing'),
            jsonb_build_object('argument', 'kind'));
    end if;
    insert into ops.principals (kind, name, created_by, created_at, owner_workspace_id)
    values (create_principal.kind, create_principal.name, ops_private.uid(), ops_private.now(), v_ws)
    returning * into v_row;
    perform ops_private.audit('create_principal', v_ws, 'principal', v_row.id::text,
                              jsonb_build_object('name', v_row.name, 'kind', v_row.kind));
    return to_jsonb(v_row);
end
$$;

--
-- Name: create_run(text, text, text, jsonb, jsonb, text, jsonb, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_run(workspace_id text, spec_slug text, git_sha text, phases jsonb, input_manifest jsonb DEFAULT '{}'::jsonb, idempotency_key text DEFAULT NULL::text, labels jsonb DEFAULT '{}'::jsonb, priority integer DEFAULT 0) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
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
$_$;

--
-- Name: create_schedule(text, text, text, text, text, integer, jsonb, boolean, text, integer, integer, text, integer, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_schedule(workspace_id text, name text, job text, cron text DEFAULT NULL::text, timezone text DEFAULT 'UTC'::text, interval_seconds integer DEFAULT NULL::integer, params jsonb DEFAULT '{}'::jsonb, enabled boolean DEFAULT true, catchup text DEFAULT 'latest'::text, catchup_max integer DEFAULT 10, max_concurrent integer DEFAULT 1, overlap text DEFAULT 'skip'::text, priority integer DEFAULT 0, description text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_ws  uuid := ops_private.uuid_arg('workspace_id', create_schedule.workspace_id, true);
    v_job uuid;
    v_row ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
    if create_schedule.name is null or create_schedule.name !~ '^[a-z][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits, _ or -, starting with a letter, got '
            || coalesce(quote_literal(left(create_schedule.name, 64)), 'nothing'),
            jsonb_build_object('argument', 'name'));
    end if;
    if create_schedule.job is null then
        perform ops_private.fail(400, 'invalid_argument', 'job (the slug of a registered job) is required',
                                 jsonb_build_object('argument', 'job'));
    end if;
    select j.id into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = create_schedule.job;
    if v_job is null then
        perform ops_private.fail(404, 'not_found',
            'job ' || left(create_schedule.job, 128) || ' not found in this workspace: register it with'
            || ' `control-room jobs register`', jsonb_build_object('argument', 'job'));
    end if;
    v_row.id := gen_random_uuid();
    v_row.workspace_id := v_ws;
    v_row.job_id := v_job;
    v_row.name := create_schedule.name;
    v_row.description := nullif(create_schedule.description, '');
    v_row.cron := create_schedule.cron;
    v_row.timezone := coalesce(create_schedule.timezone, 'UTC');
    v_row.interval_seconds := create_schedule.interval_seconds;
    v_row.params := coalesce(create_schedule.params, '{}'::jsonb);
    v_row.enabled := coalesce(create_schedule.enabled, true);
    v_row.catchup := create_schedule.catchup;
    v_row.catchup_max := create_schedule.catchup_max;
    v_row.max_concurrent := create_schedule.max_concurrent;
    v_row.overlap := create_schedule.overlap;
    v_row.priority := create_schedule.priority;
    v_row.anchor_at := v_now;
    v_row := ops_private.check_schedule(v_row, v_now);
    v_row.created_by := ops_private.uid();
    v_row.created_at := v_now;
    v_row.updated_at := v_now;
    insert into ops.schedules select v_row.*
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'a schedule named ' || create_schedule.name || ' exists in this workspace; change it with update_schedule',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_schedule', v_ws, 'schedule', v_row.name,
        jsonb_build_object('id', v_row.id, 'job', create_schedule.job, 'cron', v_row.cron,
                           'timezone', v_row.timezone, 'interval_seconds', v_row.interval_seconds));
    return ops_private.schedule_json(v_row);
end
$_$;

--
-- Name: create_sensor(text, text, text, text, text, jsonb, integer, boolean); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_sensor(workspace_id text, name text, job text, connection text, query text, params jsonb DEFAULT '{}'::jsonb, interval_seconds integer DEFAULT 60, enabled boolean DEFAULT true) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
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
$_$;

--
-- Name: create_workspace(text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.create_workspace(slug text, name text, env text DEFAULT 'dev'::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
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
$_$;

--
-- Name: delete_alert_destination(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.delete_alert_destination(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws    uuid := ops_private.uuid_arg('workspace_id', delete_alert_destination.workspace_id, true);
    v_row   ops.alert_destinations;
    v_rules text;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    if delete_alert_destination.name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required', jsonb_build_object('argument', 'name'));
    end if;
    select * into v_row from ops.alert_destinations d
    where d.workspace_id = v_ws and d.name = delete_alert_destination.name for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'alert destination ' || left(delete_alert_destination.name, 64) || ' not found in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    select string_agg(r.name, ', ' order by r.name) into v_rules
    from ops.alert_rules r where r.destination_id = v_row.id;
    if v_rules is not null then
        perform ops_private.fail(409, 'conflict',
            'alert destination ' || v_row.name || ' is used by rules ' || left(v_rules, 300)
            || ': delete them first (control-room alerts rules delete)',
            jsonb_build_object('argument', 'name'));
    end if;
    delete from ops.alert_destinations d where d.id = v_row.id;   -- its alerts go with it
    perform ops_private.audit('delete_alert_destination', v_ws, 'alert_destination', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

--
-- Name: delete_alert_rule(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.delete_alert_rule(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_alert_rule.workspace_id, true);
    v_row ops.alert_rules;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    if delete_alert_rule.name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required', jsonb_build_object('argument', 'name'));
    end if;
    delete from ops.alert_rules r where r.workspace_id = v_ws and r.name = delete_alert_rule.name
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'alert rule ' || left(delete_alert_rule.name, 64) || ' not found in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('delete_alert_rule', v_ws, 'alert_rule', v_row.name,
        jsonb_build_object('id', v_row.id, 'event', v_row.event));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

--
-- Name: delete_connection(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.delete_connection(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_connection.workspace_id, true);
    v_row ops.connections;
begin
    perform ops_private.connection_workspace(v_ws, array['admin']);
    v_row := ops_private.find_connection(v_ws, delete_connection.name, true);
    delete from ops.connections c where c.id = v_row.id;   -- its secrets_refs go with it
    perform ops_private.audit('delete_connection', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type, 'version', v_row.version));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

--
-- Name: delete_schedule(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.delete_schedule(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_schedule.workspace_id, true);
    v_row ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
    v_row := ops_private.find_schedule(v_ws, delete_schedule.name, true);
    delete from ops.schedules s where s.id = v_row.id;    -- its ticks go with it; runs stay
    perform ops_private.audit('delete_schedule', v_ws, 'schedule', v_row.name, jsonb_build_object('id', v_row.id));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

--
-- Name: delete_sensor(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.delete_sensor(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: evaluate_slos(text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.evaluate_slos(workspace_id text DEFAULT NULL::text, "limit" integer DEFAULT 1000) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now       timestamptz := ops_private.now();
    v_ws        uuid := ops_private.uuid_arg('workspace_id', evaluate_slos.workspace_id, false);
    v_limit     integer := evaluate_slos."limit";
    v_wss       uuid[];      -- null: every workspace (service_role)
    v_j         ops.jobs;
    v_oldest    timestamptz;
    v_stalest   jsonb;
    v_lag       double precision;
    v_checked   integer := 0;
    v_breached  integer := 0;
    v_recovered integer := 0;
    v_alerts    integer := 0;
    v_changes   jsonb := '[]'::jsonb;
begin
    if v_limit is null or v_limit not between 1 and 10000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 10000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if v_ws is not null then
        perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
        v_wss := array[v_ws];
    elsif not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        v_wss := array(select m.workspace_id from ops.workspace_members m
                       where m.principal_id = ops_private.uid() and m.role in ('developer', 'admin'));
        if cardinality(v_wss) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'evaluate_slos needs a developer or admin of a workspace, or service_role');
        end if;
    end if;
    for v_j in
        select j.* from ops.jobs j
        where (v_wss is null or j.workspace_id = any (v_wss))
          and (j.slo_state <> 'unknown'
               or exists (select 1 from ops.datasets d where d.data_time_job_id = j.id))
        order by j.id
        limit v_limit
        for update skip locked
    loop
        v_checked := v_checked + 1;
        select min(d.data_time),
               coalesce(jsonb_agg(jsonb_build_object('name', d.name, 'data_time', d.data_time)
                                  order by d.data_time, d.name) filter (where d.rn <= 5), '[]'::jsonb)
          into v_oldest, v_stalest
          from (select d.name, d.data_time, row_number() over (order by d.data_time, d.name) as rn
                from ops.datasets d where d.data_time_job_id = v_j.id) d;
        v_lag := extract(epoch from v_now - v_oldest);
        if v_oldest is null then
            update ops.jobs j set slo_state = 'unknown', slo_breached_at = null, slo_checked_at = v_now
            where j.id = v_j.id;
        elsif v_lag > v_j.freshness_slo_seconds then
            if v_j.slo_state <> 'breached' then
                update ops.jobs j set slo_state = 'breached', slo_breached_at = v_now, slo_checked_at = v_now
                where j.id = v_j.id;
                v_breached := v_breached + 1;
                v_alerts := v_alerts + ops_private.raise_alerts(v_j.workspace_id, 'slo_breached',
                    jsonb_build_object('job', v_j.slug, 'breached_at', v_now),
                    jsonb_build_object(
                        'workspace', ops_private.workspace_slug(v_j.workspace_id), 'job', v_j.slug,
                        'message', pg_catalog.format('job %s is %s s behind its source (SLO %s s)',
                                                     v_j.slug, round(v_lag::numeric), v_j.freshness_slo_seconds),
                        'lag_seconds', round(v_lag::numeric, 1), 'slo_seconds', v_j.freshness_slo_seconds,
                        'data_time', v_oldest, 'stalest', v_stalest,
                        'links', jsonb_build_object('cli', 'control-room jobs show ' || v_j.slug)),
                    null, 'slo_breached:' || v_j.id::text || ':'
                          || pg_catalog.to_char(v_now at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
                    null);
                v_changes := v_changes || jsonb_build_object('job', v_j.slug, 'workspace_id', v_j.workspace_id,
                                                             'state', 'breached', 'lag_seconds', round(v_lag::numeric, 1));
            else
                update ops.jobs j set slo_checked_at = v_now where j.id = v_j.id;
            end if;
        else
            if v_j.slo_state <> 'ok' then
                if v_j.slo_state = 'breached' then
                    v_recovered := v_recovered + 1;
                    v_changes := v_changes || jsonb_build_object('job', v_j.slug, 'workspace_id', v_j.workspace_id,
                                                                 'state', 'ok', 'lag_seconds', round(v_lag::numeric, 1));
                end if;
                update ops.jobs j set slo_state = 'ok', slo_breached_at = null, slo_checked_at = v_now
                where j.id = v_j.id;
            else
                update ops.jobs j set slo_checked_at = v_now where j.id = v_j.id;
            end if;
        end if;
    end loop;
    return jsonb_build_object('checked', v_checked, 'breached', v_breached, 'recovered', v_recovered,
                              'alerts', v_alerts, 'changes', v_changes, 'at', v_now);
end
$$;

--
-- Name: get_connection(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_connection(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', get_connection.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return ops_private.connection_json(ops_private.find_connection(v_ws, get_connection.name, false));
end
$$;

--
-- Name: get_dataset(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_dataset(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', get_dataset.workspace_id, true);
    v_out jsonb;
begin
    if get_dataset.name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required', jsonb_build_object('argument', 'name'));
    end if;
    select to_jsonb(d) || jsonb_build_object('versions', (
               select coalesce(jsonb_agg(to_jsonb(v) - 'dataset_id' - 'workspace_id' order by v.version desc),
                               '[]'::jsonb)
               from ops.dataset_versions v where v.dataset_id = d.id))
    into v_out
    from ops.datasets d
    where d.workspace_id = v_ws and d.name = get_dataset.name;
    if v_out is null then
        perform ops_private.fail(404, 'not_found', 'dataset ' || get_dataset.name || ' not found');
    end if;
    return v_out;
end
$$;

--
-- Name: get_health(text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_health(workspace_id text, since text DEFAULT NULL::text, bucket_seconds integer DEFAULT 3600) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws     uuid := ops_private.uuid_arg('workspace_id', get_health.workspace_id, true);
    v_now    timestamptz := ops_private.now();
    v_since  timestamptz := coalesce(ops_private.time_arg('since', get_health.since),
                                     ops_private.now() - interval '24 hours');
    v_start  timestamptz;
    v_b      interval;
    v_out    jsonb;
begin
    if get_health.bucket_seconds is null or get_health.bucket_seconds not between 60 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'bucket_seconds must be between 60 and 86400',
                                 jsonb_build_object('argument', 'bucket_seconds'));
    end if;
    if v_since > v_now or v_since < v_now - interval '31 days' then
        perform ops_private.fail(400, 'invalid_argument', 'since must be within the last 31 days',
                                 jsonb_build_object('argument', 'since'));
    end if;
    v_b := make_interval(secs => get_health.bucket_seconds);
    v_start := to_timestamp(floor(extract(epoch from v_since) / get_health.bucket_seconds) * get_health.bucket_seconds);
    if extract(epoch from v_now - v_start) / get_health.bucket_seconds > 500 then
        perform ops_private.fail(400, 'invalid_argument',
            'at most 500 buckets: make bucket_seconds larger or since later',
            jsonb_build_object('argument', 'bucket_seconds'));
    end if;
    perform ops_private.readable_workspace(v_ws);

    with done as (
        select p.name, p.kind, p.state,
               floor(extract(epoch from p.finished_at - v_start) / get_health.bucket_seconds)::integer as bucket,
               extract(epoch from p.finished_at - p.started_at)::double precision as secs
        from ops.phases p
        where p.workspace_id = v_ws and p.state in ('succeeded', 'failed')
          and p.finished_at >= v_start and p.finished_at <= v_now
    ), expiries as (
        select floor(extract(epoch from e.recorded_at - v_start) / get_health.bucket_seconds)::integer as bucket
        from ops.run_events e
        where e.workspace_id = v_ws and e.type = 'LEASE_EXPIRED' and e.recorded_at >= v_start
          and e.recorded_at <= v_now
    ), buckets as (
        select n from pg_catalog.generate_series(0, floor(extract(epoch from v_now - v_start)
                                                          / get_health.bucket_seconds)::integer) n
    )
    select jsonb_build_object(
        'now', v_now,
        'since', v_start,
        'bucket_seconds', get_health.bucket_seconds,
        'queue_depth', (select count(*) from ops.phases p where p.workspace_id = v_ws and p.state = 'queued'),
        'running', (select count(*) from ops.phases p where p.workspace_id = v_ws and p.state = 'running'),
        'lease_expiries_last_hour', (select count(*) from ops.run_events e
                                     where e.workspace_id = v_ws and e.type = 'LEASE_EXPIRED'
                                       and e.recorded_at > v_now - interval '1 hour'),
        'series', (select coalesce(jsonb_agg(jsonb_build_object(
                       'bucket', v_start + b.n * v_b,
                       'succeeded', coalesce(s.ok, 0), 'failed', coalesce(s.bad, 0),
                       'lease_expiries', coalesce(x.n, 0), 'p50_s', s.p50, 'p95_s', s.p95)
                       order by b.n), '[]'::jsonb)
                   from buckets b
                   left join (select d.bucket, count(*) filter (where d.state = 'succeeded') as ok,
                                     count(*) filter (where d.state = 'failed') as bad,
                                     round(percentile_cont(0.5) within group (order by d.secs)::numeric, 3) as p50,
                                     round(percentile_cont(0.95) within group (order by d.secs)::numeric, 3) as p95
                              from done d group by d.bucket) s on s.bucket = b.n
                   left join (select x.bucket, count(*) as n from expiries x group by x.bucket) x
                          on x.bucket = b.n),
        'by_kind', (select coalesce(jsonb_agg(jsonb_build_object(
                        'kind', k.kind, 'succeeded', k.ok, 'failed', k.bad,
                        'success_rate', round(k.ok::numeric / nullif(k.ok + k.bad, 0), 4),
                        'p50_s', k.p50, 'p95_s', k.p95) order by k.kind), '[]'::jsonb)
                    from (select d.kind, count(*) filter (where d.state = 'succeeded') as ok,
                                 count(*) filter (where d.state = 'failed') as bad,
                                 round(percentile_cont(0.5) within group (order by d.secs)::numeric, 3) as p50,
                                 round(percentile_cont(0.95) within group (order by d.secs)::numeric, 3) as p95
                          from done d group by d.kind) k),
        'by_phase', (select coalesce(jsonb_agg(jsonb_build_object(
                         'name', k.name, 'kind', k.kind, 'succeeded', k.ok, 'failed', k.bad,
                         'success_rate', round(k.ok::numeric / nullif(k.ok + k.bad, 0), 4),
                         'p50_s', k.p50, 'p95_s', k.p95) order by k.ok + k.bad desc, k.name, k.kind), '[]'::jsonb)
                     from (select d.name, d.kind, count(*) filter (where d.state = 'succeeded') as ok,
                                  count(*) filter (where d.state = 'failed') as bad,
                                  round(percentile_cont(0.5) within group (order by d.secs)::numeric, 3) as p50,
                                  round(percentile_cont(0.95) within group (order by d.secs)::numeric, 3) as p95
                           from done d group by d.name, d.kind
                           order by count(*) desc, d.name, d.kind limit 50) k),
        'freshness', (select coalesce(jsonb_agg(jsonb_build_object(
                          'dataset', f.name, 'layer', f.layer, 'data_time', f.data_time,
                          'lag_s', round(extract(epoch from v_now - f.data_time)::numeric, 1),
                          'slo_s', f.slo) order by f.layer = 'gold' desc, f.name), '[]'::jsonb)
                      from (select d.name, d.layer, d.data_time, j.freshness_slo_seconds as slo
                            from ops.datasets d left join ops.jobs j on j.id = d.data_time_job_id
                            where d.workspace_id = v_ws and d.data_time is not null
                            order by d.layer = 'gold' desc, d.name limit 100) f),
        'alerts', jsonb_build_object(
            'open', (select count(*) from ops.alerts a
                     where a.workspace_id = v_ws and a.state in ('pending', 'delivering', 'failed')),
            'recent', (select coalesce(jsonb_agg(jsonb_build_object(
                           'id', a.id, 'rule', a.rule_name, 'event', a.event, 'subject', a.subject,
                           'state', a.state, 'created_at', a.created_at) order by a.created_at desc, a.id desc), '[]'::jsonb)
                       from (select * from ops.alerts a where a.workspace_id = v_ws and a.created_at >= v_start
                             order by a.created_at desc, a.id desc limit 10) a)),
        'dead_letters', (select count(*) from ops_private.dead_letters(v_ws, null, null, null, null, 1000)))
    into v_out;
    return v_out;
end
$$;

--
-- Name: get_job(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_job(workspace_id text, slug text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_job  ops.jobs := ops_private.find_job(get_job.workspace_id, get_job.slug,
                                            array['viewer', 'developer', 'admin', 'executor'], false);
    v_sees boolean := ops_private.sees_principals(v_job.workspace_id);
begin
    return ops_private.job_json(v_job) || jsonb_build_object(
        'versions', (select coalesce(jsonb_agg(ops_private.job_version_json(v, false)
                                               || jsonb_build_object('created_by_name',
                                                      ops_private.principal_name(v.workspace_id, v.created_by))
                                               order by v.version desc), '[]'::jsonb)
                     from (select * from ops.job_versions v where v.job_id = v_job.id
                           order by v.version desc limit 100) v),
        'latest', (select ops_private.job_version_json(v, true) from ops.job_versions v
                   where v.job_id = v_job.id and v.version = v_job.latest_version),
        'recent_runs', (select coalesce(jsonb_agg(ops_private.run_summary_json(x.id, v_sees)
                                                  order by x.created_at desc, x.id desc), '[]'::jsonb)
                        from (select r.id, r.created_at from ops.runs r
                              where r.job_version_id in (select v.id from ops.job_versions v where v.job_id = v_job.id)
                              order by r.created_at desc, r.id desc limit 20) x),
        'last_run', ops_private.job_last_run(v_job.id),
        'next_run_at', ops_private.job_next_run_at(v_job.id));
end
$$;

--
-- Name: get_run(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_run(run_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
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

--
-- Name: get_run_grid(text, text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_run_grid(workspace_id text, job_slug text DEFAULT NULL::text, spec_slug text DEFAULT NULL::text, "limit" integer DEFAULT 25) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws   uuid := ops_private.uuid_arg('workspace_id', get_run_grid.workspace_id, true);
    v_jobs uuid[];
    v_runs uuid[];
begin
    perform ops_private.limit_arg('limit', get_run_grid."limit", 100);
    if get_run_grid.job_slug is not null and get_run_grid.spec_slug is not null then
        perform ops_private.fail(400, 'invalid_argument', 'give job_slug or spec_slug, not both',
                                 jsonb_build_object('argument', 'spec_slug'));
    end if;
    if length(get_run_grid.job_slug) > 200 or length(get_run_grid.spec_slug) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'a slug is at most 200 characters',
            jsonb_build_object('argument', case when length(get_run_grid.job_slug) > 200 then 'job_slug' else 'spec_slug' end));
    end if;
    perform ops_private.readable_workspace(v_ws);
    if get_run_grid.job_slug is not null then
        v_jobs := array(select v.id from ops.job_versions v join ops.jobs j on j.id = v.job_id
                        where j.workspace_id = v_ws and j.slug = get_run_grid.job_slug);
        if cardinality(v_jobs) = 0 then
            perform ops_private.fail(404, 'not_found', 'job not found',
                                     jsonb_build_object('argument', 'job_slug'));
        end if;
    end if;
    v_runs := array(select r.id from ops.runs r
                    where r.workspace_id = v_ws
                      and (v_jobs is null or r.job_version_id = any (v_jobs))
                      and (get_run_grid.spec_slug is null or r.spec_slug = get_run_grid.spec_slug)
                    order by r.created_at desc, r.id desc
                    limit get_run_grid."limit");
    return jsonb_build_object(
        'phase_names', (select coalesce(jsonb_agg(n.name order by n.ordinal, n.name), '[]'::jsonb)
                        from (select p.name, min(p.ordinal) as ordinal from ops.phases p
                              where p.run_id = any (v_runs) group by p.name) n),
        'runs', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', r.id, 'state', r.state, 'created_at', r.created_at, 'finished_at', r.finished_at,
                     'git_sha', r.git_sha,
                     'phases', (select coalesce(jsonb_object_agg(p.name, jsonb_build_object(
                                    'state', p.state, 'attempt', p.attempt, 'started_at', p.started_at,
                                    'finished_at', p.finished_at)), '{}'::jsonb)
                                from ops.phases p where p.run_id = r.id))
                     order by r.created_at desc, r.id desc), '[]'::jsonb)
                 from ops.runs r where r.id = any (v_runs)));
end
$$;

--
-- Name: get_run_lineage(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_run_lineage(run_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_run   uuid := ops_private.uuid_arg('run_id', get_run_lineage.run_id, true);
    v_ws    uuid;
    v_edges jsonb;
    v_nodes jsonb;
begin
    select r.workspace_id into v_ws from ops.runs r where r.id = v_run;
    if v_ws is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    with phase_rows as (
        select p.name, p.depends_on, p.output_manifest from ops.phases p where p.run_id = v_run
    ), outputs as (          -- phase -> dataset: the tables its manifest names, the versions it recorded
        select pr.name as phase, t ->> 'name' as dataset, t ->> 'layer' as layer
        from phase_rows pr, ops_private.manifest_tables(pr.output_manifest) t
        union
        select v.phase, d.name, d.layer
        from ops.dataset_versions v join ops.datasets d on d.id = v.dataset_id
        where v.run_id = v_run and v.phase is not null
    ), inputs as (           -- dataset -> phase: what it said it read, what its dependencies wrote
        select e.phase, x #>> '{}' as dataset
        from ops.run_events e, pg_catalog.jsonb_array_elements(
                 case when pg_catalog.jsonb_typeof(e.payload -> 'datasets') = 'array' then e.payload -> 'datasets'
                      else '[]'::jsonb end) x
        where e.run_id = v_run and e.type = 'DATASET_LINEAGE' and e.phase is not null
        union
        select e.phase, 'source:' || (x #>> '{}')
        from ops.run_events e, pg_catalog.jsonb_array_elements(
                 case when pg_catalog.jsonb_typeof(e.payload -> 'sources') = 'array' then e.payload -> 'sources'
                      else '[]'::jsonb end) x
        where e.run_id = v_run and e.type = 'DATASET_LINEAGE' and e.phase is not null
        union
        select pr.name, o.dataset
        from phase_rows pr join outputs o on o.phase = any (pr.depends_on)
    ), edges as (
        select 'phase:' || o.phase as src, 'dataset:' || o.dataset as dst from outputs o
        union
        select 'dataset:' || i.dataset, 'phase:' || i.phase from inputs i
        where not exists (select 1 from outputs o where o.phase = i.phase and o.dataset = i.dataset)
    ), names as (
        select o.dataset, o.layer from outputs o
        union
        select i.dataset, null from inputs i
    ), datasets as (
        select n.dataset, coalesce(max(n.layer), max(d.layer),
                                   case when n.dataset like 'source:%' then 'source' end) as layer
        from names n left join ops.datasets d on d.workspace_id = v_ws and d.name = n.dataset
        group by n.dataset
    )
    select (select coalesce(jsonb_agg(jsonb_build_object('from', e.src, 'to', e.dst) order by e.src, e.dst), '[]'::jsonb)
            from edges e),
           (select coalesce(jsonb_agg(n.node order by n.node ->> 'id'), '[]'::jsonb) from (
                select jsonb_build_object('id', 'dataset:' || d.dataset, 'type', 'dataset', 'label', d.dataset,
                                          'layer', d.layer) as node
                from datasets d
                union all
                select jsonb_build_object('id', 'phase:' || pr.name, 'type', 'phase', 'label', pr.name)
                from phase_rows pr
                where exists (select 1 from outputs o where o.phase = pr.name)
                   or exists (select 1 from inputs i where i.phase = pr.name)) n)
    into v_edges, v_nodes;
    return jsonb_build_object('nodes', v_nodes, 'edges', v_edges);
end
$$;

--
-- Name: get_run_timeline(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_run_timeline(run_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_run uuid := ops_private.uuid_arg('run_id', get_run_timeline.run_id, true);
    v_out jsonb;
begin
    if not exists (select 1 from ops.runs r where r.id = v_run) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    -- each claim opens an attempt (started: the worker's PHASE_STARTED, else the claim); the
    -- first end event of that phase and attempt after it closes it (a lease expiry is recorded
    -- before the failure it leads to, so it wins)
    with ev as (
        select e.phase, e.attempt, e.type, e.ts, e.seq,
               count(*) filter (where e.type = 'PHASE_CLAIMED')
                   over (partition by e.phase, e.attempt order by e.seq) as claim_no
        from ops.run_events e
        where e.run_id = v_run and e.phase is not null
          and e.type in ('PHASE_CLAIMED', 'PHASE_STARTED', 'PHASE_SUCCEEDED', 'PHASE_FAILED', 'LEASE_EXPIRED',
                         'PHASE_CANCELLED', 'PHASE_STOPPED')
    ), att as (
        select ev.phase, ev.attempt, ev.claim_no,
               min(ev.ts) filter (where ev.type = 'PHASE_CLAIMED') as claimed_at,
               min(ev.ts) filter (where ev.type = 'PHASE_STARTED') as started_at,
               (array_agg(ev.type order by ev.seq) filter (where ev.type not in ('PHASE_CLAIMED', 'PHASE_STARTED')))[1] as end_type,
               (array_agg(ev.ts order by ev.seq) filter (where ev.type not in ('PHASE_CLAIMED', 'PHASE_STARTED')))[1] as ended_at,
               min(ev.seq) as first_seq
        from ev where ev.claim_no > 0
        group by ev.phase, ev.attempt, ev.claim_no
    )
    select jsonb_build_object('run_id', v_run, 'phases', coalesce(jsonb_agg(jsonb_build_object(
               'name', p.name, 'kind', p.kind, 'state', p.state,
               'attempts', coalesce((
                   select jsonb_agg(jsonb_build_object(
                              'attempt', a.attempt, 'claimed_at', a.claimed_at,
                              'started_at', coalesce(a.started_at, a.claimed_at),
                              'ended_at', a.ended_at,
                              'outcome', case a.end_type
                                  when 'PHASE_SUCCEEDED' then 'succeeded'
                                  when 'PHASE_FAILED' then 'failed'
                                  when 'LEASE_EXPIRED' then 'lease_expired'
                                  when 'PHASE_CANCELLED' then 'cancelled'
                                  when 'PHASE_STOPPED' then 'cancelled'
                                  else case when p.state = 'running' and a.attempt = p.attempt then 'running'
                                            when p.state in ('succeeded', 'failed', 'cancelled') and a.attempt = p.attempt
                                                then p.state
                                            else 'failed' end
                                  end) order by a.first_seq)
                   from att a where a.phase = p.name), '[]'::jsonb))
               order by p.ordinal), '[]'::jsonb))
    into v_out
    from ops.phases p where p.run_id = v_run;
    return v_out;
end
$$;

--
-- Name: get_schedule(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_schedule(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', get_schedule.workspace_id, true);
    v_row ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    v_row := ops_private.find_schedule(v_ws, get_schedule.name, false);
    return ops_private.schedule_json(v_row) || jsonb_build_object(
        'upcoming', (select coalesce(jsonb_agg(t order by t), '[]'::jsonb)
                     from ops_private.schedule_times(v_row, coalesce(v_row.next_tick_at, ops_private.now())
                                                            - interval '1 microsecond', null, 5) t
                     where v_row.enabled));
end
$$;

--
-- Name: get_sensor(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.get_sensor(workspace_id text, name text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', get_sensor.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return ops_private.sensor_json(ops_private.find_sensor(v_ws, get_sensor.name, false));
end
$$;

--
-- Name: heartbeat(text, jsonb, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.heartbeat(lease_token text, progress jsonb DEFAULT NULL::jsonb, lease_seconds integer DEFAULT NULL::integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: invite_member(text, text, text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.invite_member(workspace_id text, principal_id text, role text, name text DEFAULT NULL::text, expires_in_seconds integer DEFAULT 604800) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', invite_member.workspace_id, true);
    v_pr  uuid := ops_private.uuid_arg('principal_id', invite_member.principal_id, true);
    v_now timestamptz := ops_private.now();
    v_row ops.invitations;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    if invite_member.role is null or invite_member.role not in ('viewer', 'developer', 'admin') then
        perform ops_private.fail(400, 'invalid_argument',
            'role must be one of viewer, developer, admin (executors are enrolled by their owner), got '
            || coalesce(pg_catalog.left(invite_member.role, 64), 'nothing'),
            jsonb_build_object('argument', 'role'));
    end if;
    if invite_member.name is not null and length(invite_member.name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be at most 200 characters',
                                 jsonb_build_object('argument', 'name'));
    end if;
    if invite_member.expires_in_seconds is null or invite_member.expires_in_seconds not between 60 and 2592000 then
        perform ops_private.fail(400, 'invalid_argument', 'expires_in_seconds must be between 60 and 2592000 (30 days)',
                                 jsonb_build_object('argument', 'expires_in_seconds'));
    end if;
    if exists (select 1 from ops.principals p where p.id = v_pr and p.kind = 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'an executor cannot accept an invitation: its owner workspace''s admin or service_role enrols it',
            jsonb_build_object('argument', 'principal_id', 'reason', 'executor'));
    end if;
    if exists (select 1 from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_pr) then
        perform ops_private.fail(409, 'conflict', 'the principal is already a member: change its role with add_member',
                                 jsonb_build_object('argument', 'principal_id'));
    end if;
    insert into ops.invitations as i (workspace_id, principal_id, role, name, invited_by, created_at, expires_at)
    values (v_ws, v_pr, invite_member.role, invite_member.name, ops_private.uid(), v_now,
            v_now + pg_catalog.make_interval(secs => invite_member.expires_in_seconds))
    on conflict (workspace_id, principal_id) do update
        set role = excluded.role, name = excluded.name, invited_by = excluded.invited_by,
            created_at = excluded.created_at, expires_at = excluded.expires_at, accepted_at = null
    returning * into v_row;
    perform ops_private.audit('invite_member', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_row.role, 'expires_at', v_row.expires_at));
    return ops_private.invitation_json(v_row, v_now);
end
$$;

--
-- Name: list_alert_destinations(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_alert_destinations(workspace_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_alert_destinations.workspace_id, true);
begin
    perform ops_private.alert_workspace(v_ws, array['developer', 'admin']);
    return (select coalesce(jsonb_agg(ops_private.alert_destination_json(d) order by d.name), '[]'::jsonb)
            from ops.alert_destinations d where d.workspace_id = v_ws);
end
$$;

--
-- Name: list_alert_rules(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_alert_rules(workspace_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_alert_rules.workspace_id, true);
begin
    perform ops_private.alert_workspace(v_ws, array['developer', 'admin']);
    return (select coalesce(jsonb_agg(ops_private.alert_rule_json(r) order by r.name), '[]'::jsonb)
            from ops.alert_rules r where r.workspace_id = v_ws);
end
$$;

--
-- Name: list_alerts(text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_alerts(workspace_id text, state text DEFAULT NULL::text, "limit" integer DEFAULT 50) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_alerts.workspace_id, true);
begin
    perform ops_private.alert_workspace(v_ws, array['viewer', 'developer', 'admin']);
    if list_alerts.state is not null and list_alerts.state not in ('pending', 'delivering', 'delivered', 'failed') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of pending, delivering, delivered, failed, got ' || quote_literal(left(list_alerts.state, 64)),
            jsonb_build_object('argument', 'state'));
    end if;
    if list_alerts."limit" is null or list_alerts."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    return (select coalesce(jsonb_agg(ops_private.alert_json(a) order by a.created_at desc, a.id desc), '[]'::jsonb)
            from (select * from ops.alerts a
                  where a.workspace_id = v_ws and (list_alerts.state is null or a.state = list_alerts.state)
                  order by a.created_at desc, a.id desc
                  limit list_alerts."limit") a);
end
$$;

--
-- Name: list_artifacts(text, text, text, integer, bigint); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_artifacts(run_id text DEFAULT NULL::text, workspace_id text DEFAULT NULL::text, digest text DEFAULT NULL::text, "limit" integer DEFAULT 100, after bigint DEFAULT 0) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
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
$_$;

--
-- Name: list_audit(text, bigint, integer, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_audit(workspace_id text, before bigint DEFAULT NULL::bigint, "limit" integer DEFAULT 100, function_name text DEFAULT NULL::text, principal_id text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws        uuid := ops_private.uuid_arg('workspace_id', list_audit.workspace_id, true);
    v_principal uuid := ops_private.uuid_arg('principal_id', list_audit.principal_id);
    v_limit     integer := list_audit."limit";
    v_entries   jsonb;
    v_count     integer;
    v_last      bigint;
begin
    if not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        if v_ws not in (select ops_private.admin_workspaces()) then
            perform ops_private.fail(403, 'forbidden', 'the audit log is for the workspace''s admins');
        end if;
    end if;
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'limit'));
    end if;
    if list_audit.function_name is not null and length(list_audit.function_name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'function_name is at most 200 characters',
                                 pg_catalog.jsonb_build_object('argument', 'function_name'));
    end if;
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', a.id, 'at', a.at,
               'actor', case when a.principal_id is null then null else pg_catalog.jsonb_build_object(
                   'id', a.principal_id,
                   'name', ops_private.principal_name(v_ws, a.principal_id),
                   'email', (select u.email from ops_private.auth_users u where u.principal_id = a.principal_id))
               end,
               'db_role', a.db_role, 'function_name', a.function_name, 'target_type', a.target_type,
               'target_id', a.target_id, 'details', a.details) order by a.id desc), '[]'::jsonb),
           pg_catalog.count(*), pg_catalog.min(a.id)
      into v_entries, v_count, v_last
      from (select * from ops.audit_log a
            where a.workspace_id = v_ws
              and (list_audit.before is null or a.id < list_audit.before)
              and (list_audit.function_name is null or a.function_name = list_audit.function_name)
              and (v_principal is null or a.principal_id = v_principal)
            order by a.id desc limit v_limit) a;
    return pg_catalog.jsonb_build_object('entries', v_entries,
                                         'next_before', case when v_count = v_limit then v_last end);
end
$$;

--
-- Name: list_connections(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_connections(workspace_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_connections.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.connection_json(c) order by c.name), '[]'::jsonb)
            from ops.connections c where c.workspace_id = v_ws);
end
$$;

--
-- Name: list_datasets(text, text, text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_datasets(workspace_id text DEFAULT NULL::text, layer text DEFAULT NULL::text, schema_state text DEFAULT NULL::text, name text DEFAULT NULL::text, "limit" integer DEFAULT 100) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_datasets.workspace_id);
begin
    if list_datasets."limit" is null or list_datasets."limit" not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if list_datasets.layer is not null and list_datasets.layer not in ('raw', 'bronze', 'silver', 'gold', 'other') then
        perform ops_private.fail(400, 'invalid_argument', 'layer must be one of raw, bronze, silver, gold, other',
                                 jsonb_build_object('argument', 'layer'));
    end if;
    if list_datasets.schema_state is not null and list_datasets.schema_state not in ('active', 'blocked', 'accepted') then
        perform ops_private.fail(400, 'invalid_argument', 'schema_state must be one of active, blocked, accepted',
                                 jsonb_build_object('argument', 'schema_state'));
    end if;
    return (
        select coalesce(jsonb_agg(to_jsonb(x) order by x.name, x.workspace_id), '[]'::jsonb)
        from (select * from ops.datasets d
              where (v_ws is null or d.workspace_id = v_ws)
                and (list_datasets.layer is null or d.layer = list_datasets.layer)
                and (list_datasets.schema_state is null or d.schema_state = list_datasets.schema_state)
                and (list_datasets.name is null
                     or left(d.name, length(list_datasets.name)) = list_datasets.name)
              order by d.name, d.workspace_id
              limit list_datasets."limit") x);
end
$$;

--
-- Name: list_dead_letters(text, text, text, integer, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_dead_letters(workspace_id text, spec_slug text DEFAULT NULL::text, since text DEFAULT NULL::text, "limit" integer DEFAULT 100, cursor text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
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
$_$;

--
-- Name: list_events(text, bigint, integer, text, bigint, text[], text[], text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_events(run_id text, after bigint DEFAULT 0, "limit" integer DEFAULT 100, phase text DEFAULT NULL::text, before bigint DEFAULT NULL::bigint, types text[] DEFAULT NULL::text[], levels text[] DEFAULT NULL::text[], text text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_run    uuid := ops_private.uuid_arg('run_id', list_events.run_id, true);
    v_ws     uuid;
    v_sees   boolean;
    v_pat    text;
    v_events jsonb;
begin
    perform ops_private.limit_arg('limit', list_events."limit", 1000);
    if list_events.after is null or list_events.after < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'after must be a sequence number >= 0',
                                 jsonb_build_object('argument', 'after'));
    end if;
    if list_events.before is not null and list_events.before < 1 then
        perform ops_private.fail(400, 'invalid_argument', 'before must be a sequence number >= 1',
                                 jsonb_build_object('argument', 'before'));
    end if;
    if list_events.types is not null and (cardinality(list_events.types) not between 1 and 50
            or exists (select 1 from unnest(list_events.types) t where t is null or t !~ '^[A-Z][A-Z0-9_]{0,63}$')) then
        perform ops_private.fail(400, 'invalid_argument',
            'types must be 1 to 50 event types (upper case, such as PHASE_FAILED)',
            jsonb_build_object('argument', 'types'));
    end if;
    if list_events.levels is not null and (cardinality(list_events.levels) not between 1 and 4
            or exists (select 1 from unnest(list_events.levels) l
                       where l is null or l not in ('debug', 'info', 'warning', 'error'))) then
        perform ops_private.fail(400, 'invalid_argument', 'levels must be some of debug, info, warning, error',
                                 jsonb_build_object('argument', 'levels'));
    end if;
    if list_events.text is not null then
        if length(list_events.text) not between 1 and 200 then
            perform ops_private.fail(400, 'invalid_argument', 'text must be 1 to 200 characters',
                                     jsonb_build_object('argument', 'text'));
        end if;
        v_pat := '%' || replace(replace(replace(list_events.text, '\', '\\'), '%', '\%'), '_', '\_') || '%';
    end if;
    if list_events.phase is not null and length(list_events.phase) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'phase must be at most 200 characters',
                                 jsonb_build_object('argument', 'phase'));
    end if;
    select r.workspace_id into v_ws from ops.runs r where r.id = v_run;
    if v_ws is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    v_sees := ops_private.sees_principals(v_ws);
    -- two statements rather than one with an order picked at run time: each is an index range
    -- in seq order (the primary key, or run_events_phase_idx / _run_type_idx / _problems_idx)
    if list_events.before is null then
        select coalesce(jsonb_agg(ops_private.event_json(e, v_sees) order by e.seq), '[]'::jsonb)
        into v_events
        from (select * from ops.run_events e
              where e.run_id = v_run and e.seq > list_events.after
                and (list_events.phase is null or e.phase = list_events.phase)
                and (list_events.types is null or e.type = any (list_events.types))
                and (list_events.levels is null or e.level = any (list_events.levels))
                and (v_pat is null or e.message ilike v_pat)
              order by e.seq
              limit list_events."limit") e;
    else
        select coalesce(jsonb_agg(ops_private.event_json(e, v_sees) order by e.seq), '[]'::jsonb)
        into v_events
        from (select * from ops.run_events e
              where e.run_id = v_run and e.seq > list_events.after and e.seq < list_events.before
                and (list_events.phase is null or e.phase = list_events.phase)
                and (list_events.types is null or e.type = any (list_events.types))
                and (list_events.levels is null or e.level = any (list_events.levels))
                and (v_pat is null or e.message ilike v_pat)
              order by e.seq desc
              limit list_events."limit") e;
    end if;
    return jsonb_build_object('events', v_events,
        'next_after', coalesce((v_events -> -1 ->> 'seq')::bigint, list_events.after),
        'prev_before', (v_events -> 0 ->> 'seq')::bigint);
end
$_$;

--
-- Name: list_github_check_runs(text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_github_check_runs(workspace_id text, run_id text DEFAULT NULL::text, "limit" integer DEFAULT 50) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', list_github_check_runs.workspace_id, true);
    v_run uuid := ops_private.uuid_arg('run_id', list_github_check_runs.run_id, false);
begin
    perform ops_private.alert_workspace(v_ws, array['viewer', 'developer', 'admin']);
    if list_github_check_runs."limit" is null or list_github_check_runs."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    return (select coalesce(jsonb_agg(ops_private.github_check_run_json(c) order by c.seq desc), '[]'::jsonb)
            from (select * from ops.github_check_runs c
                  where c.workspace_id = v_ws and (v_run is null or c.run_id = v_run)
                  order by c.seq desc
                  limit list_github_check_runs."limit") c);
end
$$;

--
-- Name: list_github_statuses(text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_github_statuses(workspace_id text, run_id text DEFAULT NULL::text, "limit" integer DEFAULT 50) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', list_github_statuses.workspace_id, true);
    v_run uuid := ops_private.uuid_arg('run_id', list_github_statuses.run_id, false);
begin
    perform ops_private.alert_workspace(v_ws, array['viewer', 'developer', 'admin']);
    if list_github_statuses."limit" is null or list_github_statuses."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    return (select coalesce(jsonb_agg(ops_private.github_status_json(s) order by s.seq desc), '[]'::jsonb)
            from (select * from ops.github_statuses s
                  where s.workspace_id = v_ws and (v_run is null or s.run_id = v_run)
                  order by s.seq desc
                  limit list_github_statuses."limit") s);
end
$$;

--
-- Name: list_invitations(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_invitations(workspace_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', list_invitations.workspace_id, true);
    v_now timestamptz := ops_private.now();
begin
    if not (ops_private.is_privileged() or v_ws in (select ops_private.admin_workspaces())) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return (select coalesce(pg_catalog.jsonb_agg(ops_private.invitation_json(i, v_now)
                                                 order by i.created_at desc, i.principal_id), '[]'::jsonb)
            from ops.invitations i where i.workspace_id = v_ws);
end
$$;

--
-- Name: list_jobs(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_jobs(workspace_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_jobs.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.job_json(j)
                                      || jsonb_build_object('last_run', ops_private.job_last_run(j.id),
                                                            'next_run_at', ops_private.job_next_run_at(j.id))
                                      order by j.slug), '[]'::jsonb)
            from ops.jobs j where j.workspace_id = v_ws);
end
$$;

--
-- Name: list_runs(text, text, text, jsonb, text, integer, text, text, text, text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_runs(workspace_id text DEFAULT NULL::text, state text DEFAULT NULL::text, spec_slug text DEFAULT NULL::text, labels jsonb DEFAULT NULL::jsonb, parent_run_id text DEFAULT NULL::text, "limit" integer DEFAULT 50, cursor text DEFAULT NULL::text, job_slug text DEFAULT NULL::text, git_sha text DEFAULT NULL::text, env text DEFAULT NULL::text, created_after text DEFAULT NULL::text, created_before text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_ws     uuid := ops_private.uuid_arg('workspace_id', list_runs.workspace_id);
    v_parent uuid := ops_private.uuid_arg('parent_run_id', list_runs.parent_run_id);
    v_at     timestamptz;
    v_id     uuid;
    v_rows   jsonb[] := '{}';
    v_item   jsonb;
    v_bytes  bigint := 0;
    v_more   boolean := false;
    v_last_at timestamptz;
    v_last_id uuid;
    v_x      record;
    v_jobs   uuid[];
    v_sha    text;
    v_after  timestamptz := ops_private.time_arg('created_after', list_runs.created_after);
    v_before timestamptz := ops_private.time_arg('created_before', list_runs.created_before);
    v_admin  uuid[] := case when ops_private.is_privileged() then null
                            else array(select ops_private.admin_workspaces()) end;
begin
    perform ops_private.limit_arg('limit', list_runs."limit", 500);
    if list_runs.state is not null and list_runs.state not in ('queued', 'running', 'succeeded', 'failed', 'cancelled') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of queued, running, succeeded, failed, cancelled',
            jsonb_build_object('argument', 'state'));
    end if;
    perform ops_private.check_object('labels', list_runs.labels);
    if list_runs.cursor is not null then
        if list_runs.cursor !~ '^\d{1,16}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
            perform ops_private.fail(400, 'invalid_argument', 'cursor is not one this function returned',
                                     jsonb_build_object('argument', 'cursor'));
        end if;
        v_at := to_timestamp(split_part(list_runs.cursor, ':', 1)::numeric / 1000000);
        v_id := split_part(list_runs.cursor, ':', 2)::uuid;
    end if;
    if list_runs.job_slug is not null then
        if length(list_runs.job_slug) > 200 then
            perform ops_private.fail(400, 'invalid_argument', 'job_slug must be at most 200 characters',
                                     jsonb_build_object('argument', 'job_slug'));
        end if;
        v_jobs := array(select v.id from ops.job_versions v join ops.jobs j on j.id = v.job_id
                        where j.slug = list_runs.job_slug and (v_ws is null or j.workspace_id = v_ws));
    end if;
    if list_runs.git_sha is not null then
        if list_runs.git_sha !~ '^[0-9A-Fa-f]{4,64}$' then
            perform ops_private.fail(400, 'invalid_argument',
                'git_sha must be a prefix of at least 4 hexadecimal digits',
                jsonb_build_object('argument', 'git_sha'));
        end if;
        v_sha := lower(list_runs.git_sha);
    end if;
    if list_runs.env is not null and length(list_runs.env) > 64 then
        perform ops_private.fail(400, 'invalid_argument', 'env must be at most 64 characters',
                                 jsonb_build_object('argument', 'env'));
    end if;
    if v_after is not null and v_before is not null and v_after >= v_before then
        perform ops_private.fail(400, 'invalid_argument', 'created_after must be before created_before',
                                 jsonb_build_object('argument', 'created_after'));
    end if;
    -- a page holds at most `limit` runs and about 1 MiB: the run that passes the byte budget
    -- ends the page (it comes first on the next one)
    for v_x in
        select r.id, r.created_at, r.workspace_id from ops.runs r
        where (v_ws is null or r.workspace_id = v_ws)
          and (list_runs.state is null or r.state = list_runs.state)
          and (list_runs.spec_slug is null or r.spec_slug = list_runs.spec_slug)
          and (list_runs.labels is null or r.labels @> list_runs.labels)
          and (v_parent is null or r.parent_run_id = v_parent)
          and (v_jobs is null or r.job_version_id = any (v_jobs))
          and (v_sha is null or left(r.git_sha, length(v_sha)) = v_sha)
          and (list_runs.env is null or r.env = list_runs.env)
          and (v_after is null or r.created_at >= v_after)
          and (v_before is null or r.created_at < v_before)
          and (v_at is null or (r.created_at, r.id) < (v_at, v_id))
        order by r.created_at desc, r.id desc
        limit list_runs."limit"
    loop
        v_item := ops_private.run_summary_json(v_x.id, v_admin is null or v_x.workspace_id = any (v_admin));
        v_bytes := v_bytes + pg_catalog.octet_length(v_item::text);
        if v_bytes > 1048576 and cardinality(v_rows) > 0 then
            v_more := true;
            exit;
        end if;
        v_rows := v_rows || v_item;
        v_last_at := v_x.created_at;
        v_last_id := v_x.id;
    end loop;
    return jsonb_build_object('runs', pg_catalog.to_jsonb(v_rows),
        'next_cursor', case when v_more or cardinality(v_rows) = list_runs."limit" then
            (extract(epoch from v_last_at) * 1000000)::bigint::text || ':' || v_last_id::text end);
end
$_$;

--
-- Name: list_schedule_ticks(text, text, text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_schedule_ticks(workspace_id text, name text, state text DEFAULT NULL::text, before text DEFAULT NULL::text, "limit" integer DEFAULT 100) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws    uuid := ops_private.uuid_arg('workspace_id', list_schedule_ticks.workspace_id, true);
    v_row   ops.schedules;
    v_limit integer := list_schedule_ticks."limit";
    v_ticks jsonb;
    v_count integer;
    v_before timestamptz;
begin
    perform ops_private.schedule_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    v_row := ops_private.find_schedule(v_ws, list_schedule_ticks.name, false);
    if list_schedule_ticks.before is not null then
        if not ops_private.is_timestamptz(list_schedule_ticks.before) then
            perform ops_private.fail(400, 'invalid_argument',
                'before must be an ISO 8601 time with a zone (a scheduled_for of the previous page), got '
                || quote_literal(left(list_schedule_ticks.before, 64)),
                jsonb_build_object('argument', 'before'));
        end if;
        v_before := list_schedule_ticks.before::timestamptz;
    end if;
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if list_schedule_ticks.state is not null and list_schedule_ticks.state not in ('created', 'skipped', 'failed') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of created, skipped, failed, got ' || quote_literal(left(list_schedule_ticks.state, 64)),
            jsonb_build_object('argument', 'state'));
    end if;
    select coalesce(jsonb_agg(ops_private.tick_json(x) order by x.scheduled_for desc), '[]'::jsonb), count(*)
    into v_ticks, v_count
    from (select * from ops.schedule_ticks t
          where t.schedule_id = v_row.id
            and (list_schedule_ticks.state is null or t.state = list_schedule_ticks.state)
            and (v_before is null or t.scheduled_for < v_before)
          order by t.scheduled_for desc
          limit v_limit) x;
    return jsonb_build_object(
        'ticks', v_ticks,
        'next_before', case when v_count = v_limit then v_ticks -> (v_count - 1) -> 'scheduled_for' end);
end
$$;

--
-- Name: list_schedules(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_schedules(workspace_id text, job text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_schedules.workspace_id, true);
begin
    perform ops_private.schedule_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.schedule_json(s) order by s.name), '[]'::jsonb)
            from ops.schedules s
            where s.workspace_id = v_ws
              and (list_schedules.job is null
                   or s.job_id in (select j.id from ops.jobs j
                                   where j.workspace_id = v_ws and j.slug = list_schedules.job)));
end
$$;

--
-- Name: list_sensors(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_sensors(workspace_id text, job text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: list_workspaces(); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.list_workspaces() RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO ''
    AS $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', w.id, 'slug', w.slug, 'name', w.name, 'env', w.env, 'created_at', w.created_at,
               'role', (select m.role from ops.workspace_members m
                        where m.workspace_id = w.id and m.principal_id = ops_private.uid()))
               order by w.slug), '[]'::jsonb)
    from ops.workspaces w
$$;

--
-- Name: record_alert_delivery(text, boolean, integer, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.record_alert_delivery(alert_id text, ok boolean, http_status integer DEFAULT NULL::integer, error text DEFAULT NULL::text, duration_ms integer DEFAULT NULL::integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_id  uuid;
    v_row ops.alerts;
    v_err text;
begin
    perform ops_private.require_service_role('record_alert_delivery');
    v_id := ops_private.uuid_arg('alert_id', record_alert_delivery.alert_id, true);
    if record_alert_delivery.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    if record_alert_delivery.http_status is not null and record_alert_delivery.http_status not between 100 and 599 then
        perform ops_private.fail(400, 'invalid_argument', 'http_status must be between 100 and 599',
                                 jsonb_build_object('argument', 'http_status'));
    end if;
    if record_alert_delivery.duration_ms is not null and record_alert_delivery.duration_ms < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'duration_ms must be at least 0',
                                 jsonb_build_object('argument', 'duration_ms'));
    end if;
    select * into v_row from ops.alerts a where a.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'alert ' || v_id::text || ' not found',
                                 jsonb_build_object('argument', 'alert_id'));
    end if;
    if v_row.state <> 'delivering' then
        perform ops_private.fail(409, 'conflict',
            'alert ' || v_id::text || ' is ' || v_row.state || ', not delivering: claim it with claim_alerts first',
            jsonb_build_object('argument', 'alert_id', 'state', v_row.state));
    end if;
    v_err := nullif(ops_private.alert_message(record_alert_delivery.error), '');
    insert into ops.alert_deliveries (alert_id, attempt, workspace_id, at, ok, http_status, error, duration_ms)
    values (v_row.id, v_row.attempts + 1, v_row.workspace_id, v_now, record_alert_delivery.ok,
            record_alert_delivery.http_status, v_err, record_alert_delivery.duration_ms);
    update ops.alerts a
    set attempts = a.attempts + 1,
        lease_expires_at = null,
        state = case when record_alert_delivery.ok then 'delivered'
                     when a.attempts + 1 >= a.max_attempts then 'failed'
                     else 'pending' end,
        delivered_at = case when record_alert_delivery.ok then v_now end,
        next_attempt_at = case when record_alert_delivery.ok or a.attempts + 1 >= a.max_attempts then a.next_attempt_at
                               else v_now + make_interval(secs => ops_private.alert_backoff_seconds(a.attempts + 1)) end,
        last_error = case when record_alert_delivery.ok then a.last_error
                          else coalesce(v_err, 'HTTP ' || record_alert_delivery.http_status::text, 'failed') end
    where a.id = v_row.id
    returning * into v_row;
    return ops_private.alert_json(v_row);
end
$$;

--
-- Name: record_connection_test(text, text, boolean, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.record_connection_test(workspace_id text, name text, ok boolean, message text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_ws  uuid := ops_private.uuid_arg('workspace_id', record_connection_test.workspace_id, true);
    v_row ops.connections;
    v_msg text;
begin
    perform ops_private.connection_workspace(v_ws, array['developer', 'admin']);
    v_row := ops_private.find_connection(v_ws, record_connection_test.name, true);
    if record_connection_test.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    -- a driver's error may quote a DSN: passwords in it are redacted, the text capped
    v_msg := nullif(left(ops_private.redact_passwords(left(record_connection_test.message, 4000)), 500), '');
    update ops.connections c
    set last_test_at = v_now, last_test_ok = record_connection_test.ok, last_test_message = v_msg
    where c.id = v_row.id
    returning * into v_row;
    perform ops_private.audit('record_connection_test', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'version', v_row.version, 'ok', record_connection_test.ok));
    return ops_private.connection_json(v_row);
end
$$;

--
-- Name: record_dataset(text, text, text, text, text, jsonb, text, jsonb, bigint, text, bigint, text, text[]); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.record_dataset(lease_token text, name text, location text, layer text DEFAULT NULL::text, format text DEFAULT 'delta'::text, schema jsonb DEFAULT NULL::jsonb, change text DEFAULT 'NONE'::text, changes jsonb DEFAULT '[]'::jsonb, table_version bigint DEFAULT NULL::bigint, digest text DEFAULT NULL::text, rows bigint DEFAULT NULL::bigint, owner text DEFAULT NULL::text, tags text[] DEFAULT NULL::text[]) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_token    uuid := ops_private.uuid_arg('lease_token', record_dataset.lease_token, true);
    v_change   text := record_dataset.change;
    v_changes  jsonb := coalesce(record_dataset.changes, '[]'::jsonb);
    v_prefix   text := split_part(record_dataset.name, '.', 1);
    v_layer    text;
    v_tags     text[];
    v_p        ops.phases;
    v_d        ops.datasets;
    v_found    ops.dataset_versions;
    v_created  boolean;
    v_version  integer;      -- the version this call recorded (or a replay found)
    v_applied  boolean;
    v_effective text;        -- the change as recorded: INITIAL, NON_BREAKING, BREAKING or NONE
begin
    if record_dataset.name is null or record_dataset.name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-200 letters, digits, _ . - starting with a letter or digit (such as bronze.sale_order), got '
            || coalesce(left(record_dataset.name, 80), 'nothing'),
            jsonb_build_object('argument', 'name'));
    end if;
    if record_dataset.location is null or length(record_dataset.location) not between 1 and 2048 then
        perform ops_private.fail(400, 'invalid_argument', 'location must be 1-2048 characters',
                                 jsonb_build_object('argument', 'location'));
    end if;
    if record_dataset.layer is not null and record_dataset.layer not in ('raw', 'bronze', 'silver', 'gold', 'other') then
        perform ops_private.fail(400, 'invalid_argument',
            'layer must be one of raw, bronze, silver, gold, other, got ' || left(record_dataset.layer, 80),
            jsonb_build_object('argument', 'layer'));
    end if;
    if record_dataset.format is null or record_dataset.format !~ '^[a-z][a-z0-9_]{0,63}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'format must be a lower-case identifier such as delta or parquet, got '
            || coalesce(left(record_dataset.format, 80), 'nothing'),
            jsonb_build_object('argument', 'format'));
    end if;
    if v_change is null or v_change not in ('INITIAL', 'NON_BREAKING', 'NONE', 'BREAKING') then
        perform ops_private.fail(400, 'invalid_argument',
            'change must be one of INITIAL, NON_BREAKING, NONE, BREAKING, got '
            || coalesce(left(record_dataset.change, 80), 'nothing'),
            jsonb_build_object('argument', 'change'));
    end if;
    if record_dataset.schema is not null and jsonb_typeof(record_dataset.schema) not in ('object', 'array') then
        perform ops_private.fail(400, 'invalid_argument',
            'schema must be a JSON object or array, got ' || jsonb_typeof(record_dataset.schema),
            jsonb_build_object('argument', 'schema'));
    end if;
    perform ops_private.check_size('schema', record_dataset.schema, 262144);
    if record_dataset.schema is null and v_change in ('INITIAL', 'NON_BREAKING') then
        perform ops_private.fail(400, 'invalid_argument',
            'schema is required with change ' || v_change || ': the version records the schema',
            jsonb_build_object('argument', 'schema'));
    end if;
    if jsonb_typeof(v_changes) <> 'array' then
        perform ops_private.fail(400, 'invalid_argument',
            'changes must be a JSON array, got ' || jsonb_typeof(v_changes),
            jsonb_build_object('argument', 'changes'));
    end if;
    perform ops_private.check_size('changes', v_changes, 65536);
    if record_dataset.table_version is not null and record_dataset.table_version < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'table_version must be a non-negative integer',
                                 jsonb_build_object('argument', 'table_version'));
    end if;
    if record_dataset.digest is not null and record_dataset.digest !~ '^blake3:[0-9a-f]{64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'digest must be blake3: followed by 64 lower-case hex digits, got ' || left(record_dataset.digest, 80),
            jsonb_build_object('argument', 'digest'));
    end if;
    if record_dataset."rows" is not null and record_dataset."rows" < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'rows must be a non-negative integer',
                                 jsonb_build_object('argument', 'rows'));
    end if;
    if record_dataset.owner is not null and length(record_dataset.owner) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'owner must be 1-200 characters',
                                 jsonb_build_object('argument', 'owner'));
    end if;
    if record_dataset.tags is not null then
        if cardinality(record_dataset.tags) > 32
           or exists (select 1 from unnest(record_dataset.tags) t
                      where t is null or t !~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$') then
            perform ops_private.fail(400, 'invalid_argument',
                'tags must be at most 32 tags of 1-64 letters, digits, _ . : / - starting with a letter or digit',
                jsonb_build_object('argument', 'tags'));
        end if;
        v_tags := array(select distinct t from unnest(record_dataset.tags) t order by 1);
    end if;
    v_layer := coalesce(record_dataset.layer,
                        case when v_prefix in ('raw', 'bronze', 'silver', 'gold') then v_prefix else 'other' end);

    -- the lease, as register_artifact checks it: found, the caller's, and live under the run lock
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

    insert into ops.datasets (workspace_id, name, layer, location, format, owner, tags, created_at, updated_at)
    values (v_p.workspace_id, record_dataset.name, v_layer, record_dataset.location, record_dataset.format,
            record_dataset.owner, coalesce(v_tags, '{}'), v_now, v_now)
    on conflict (workspace_id, name) do nothing
    returning * into v_d;
    v_created := v_d.id is not null;
    if not v_created then
        select * into v_d from ops.datasets d
        where d.workspace_id = v_p.workspace_id and d.name = record_dataset.name
        for update;
    end if;

    -- A retried call gets the same answer and writes nothing. This phase's write is recognized
    -- by its table_version or digest (one commit of the table), a refused breaking change by the
    -- schema this phase proposed.
    if not v_created then
        if v_change = 'BREAKING' then
            select * into v_found from ops.dataset_versions v
            where v.dataset_id = v_d.id and v.phase_id = v_p.id and v.change = 'BREAKING'
              and v.schema is not distinct from record_dataset.schema
              and v.table_version is not distinct from record_dataset.table_version
              and v.digest is not distinct from record_dataset.digest
            order by v.version desc limit 1;
        elsif record_dataset.table_version is not null or record_dataset.digest is not null then
            select * into v_found from ops.dataset_versions v
            where v.dataset_id = v_d.id and v.phase_id = v_p.id and v.change <> 'BREAKING'
              and v.schema is not distinct from record_dataset.schema
              and v.table_version is not distinct from record_dataset.table_version
              and v.digest is not distinct from record_dataset.digest
            order by v.version desc limit 1;
            if v_found.version is null and v_change = 'NONE' and v_d.last_phase_id = v_p.id
               and v_d.last_table_version is not distinct from record_dataset.table_version
               and v_d.last_digest is not distinct from record_dataset.digest then
                return ops_private.dataset_record_json(v_d, false, null, 'NONE');
            end if;
        end if;
        if v_found.version is not null then
            return ops_private.dataset_record_json(v_d, true, v_found.version, v_found.change);
        end if;
    end if;

    if v_d.schema_state = 'blocked' and v_change <> 'BREAKING' then
        perform ops_private.fail(409, 'conflict',
            format('dataset %s is blocked by a breaking schema change (version %s); an admin must accept or reject it (unblock_dataset) before it is written again',
                   v_d.name, v_d.blocked_change ->> 'version'),
            jsonb_build_object('dataset_id', v_d.id, 'name', v_d.name, 'schema_state', v_d.schema_state));
    end if;

    -- what this write records
    if v_change = 'BREAKING' then
        v_effective := 'BREAKING';
        v_applied := v_d.schema_state = 'accepted';
    elsif v_d.schema_version = 0 and record_dataset.schema is not null then
        v_effective := 'INITIAL';    -- the first schema the catalog sees, whatever the writer compared
        v_applied := true;
    elsif v_change = 'NONE' then
        v_effective := 'NONE';
        v_applied := true;
    else
        v_effective := v_change;
        v_applied := true;
    end if;
    if v_effective <> 'NONE' then
        select coalesce(max(v.version), 0) + 1 into v_version from ops.dataset_versions v where v.dataset_id = v_d.id;
        insert into ops.dataset_versions (dataset_id, version, workspace_id, change, applied, schema, changes,
                                          run_id, phase_id, phase, table_version, digest, recorded_at, recorded_by)
        values (v_d.id, v_version, v_d.workspace_id, v_effective, v_applied, record_dataset.schema, v_changes,
                v_p.run_id, v_p.id, v_p.name, record_dataset.table_version, record_dataset.digest, v_now,
                ops_private.uid());
    end if;

    update ops.datasets d
    set location = record_dataset.location,
        format = record_dataset.format,
        layer = coalesce(record_dataset.layer, d.layer),
        owner = coalesce(record_dataset.owner, d.owner),
        tags = coalesce(v_tags, d.tags),
        schema_version = case when v_version is not null and v_applied then v_version else d.schema_version end,
        schema_state = case when v_effective = 'BREAKING' and not v_applied then 'blocked'
                            when v_effective = 'BREAKING' then 'active'
                            else d.schema_state end,
        blocked_change = case when v_effective = 'BREAKING' and not v_applied then
                                  jsonb_build_object('version', v_version, 'schema_version', d.schema_version,
                                                     'changes', v_changes, 'run_id', v_p.run_id,
                                                     'phase_id', v_p.id, 'phase', v_p.name,
                                                     'table_version', record_dataset.table_version,
                                                     'digest', record_dataset.digest, 'recorded_at', v_now)
                              when v_effective = 'BREAKING' then null
                              else d.blocked_change end,
        blocked_at = case when v_effective = 'BREAKING' and not v_applied then coalesce(d.blocked_at, v_now)
                          when v_effective = 'BREAKING' then null
                          else d.blocked_at end,
        last_run_id = case when v_applied then v_p.run_id else d.last_run_id end,
        last_phase_id = case when v_applied then v_p.id else d.last_phase_id end,
        last_table_version = case when v_applied then record_dataset.table_version else d.last_table_version end,
        last_digest = case when v_applied then record_dataset.digest else d.last_digest end,
        last_rows = case when v_applied then record_dataset."rows" else d.last_rows end,
        last_written_at = case when v_applied then v_now else d.last_written_at end,
        updated_at = v_now
    where d.id = v_d.id
    returning * into v_d;

    if v_version is not null and v_applied then
        perform ops_private.emit(v_p.run_id, v_p.workspace_id, v_p.name, v_p.attempt, 'DATASET_SCHEMA_CHANGED', 'info',
            format('%s: schema version %s (%s)', v_d.name, v_version, v_effective),
            jsonb_build_object('dataset_id', v_d.id, 'name', v_d.name, 'layer', v_d.layer, 'change', v_effective,
                               'version', v_version, 'changes', v_changes,
                               'table_version', record_dataset.table_version, 'digest', record_dataset.digest),
            v_now);
    elsif v_version is not null then
        perform ops_private.emit(v_p.run_id, v_p.workspace_id, v_p.name, v_p.attempt, 'DATASET_BLOCKED', 'error',
            format('%s: breaking schema change refused (version %s); schema version %s stays in force until an admin accepts or rejects it',
                   v_d.name, v_version, v_d.schema_version),
            jsonb_build_object('dataset_id', v_d.id, 'name', v_d.name, 'layer', v_d.layer, 'version', v_version,
                               'schema_version', v_d.schema_version, 'changes', v_changes,
                               'table_version', record_dataset.table_version, 'digest', record_dataset.digest),
            v_now);
    end if;
    if v_created or v_version is not null then
        perform ops_private.audit('record_dataset', v_d.workspace_id, 'dataset', v_d.id::text,
            jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'name', v_d.name,
                               'change', v_effective, 'version', v_version, 'applied', v_applied));
    end if;
    return ops_private.dataset_record_json(v_d, v_version is not null, v_version, v_effective);
end
$_$;

--
-- Name: record_github_check_run_delivery(text, integer, boolean, bigint, text, integer, text, boolean, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.record_github_check_run_delivery(check_id text, version integer, ok boolean, check_run bigint DEFAULT NULL::bigint, html_url text DEFAULT NULL::text, http_status integer DEFAULT NULL::integer, error text DEFAULT NULL::text, retry boolean DEFAULT true, retry_after_seconds integer DEFAULT NULL::integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_id    uuid;
    v_row   ops.github_check_runs;
    v_err   text;
    v_newer boolean;
    v_final boolean;
    v_wait  integer := coalesce(record_github_check_run_delivery.retry_after_seconds, 0);
begin
    perform ops_private.require_github_deliverer('record_github_check_run_delivery');
    v_id := ops_private.uuid_arg('check_id', record_github_check_run_delivery.check_id, true);
    if record_github_check_run_delivery.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    if record_github_check_run_delivery.version is null or record_github_check_run_delivery.version < 1 then
        perform ops_private.fail(400, 'invalid_argument', 'version is required (the claimed version, at least 1)',
                                 jsonb_build_object('argument', 'version'));
    end if;
    if record_github_check_run_delivery.check_run is not null and record_github_check_run_delivery.check_run < 1 then
        perform ops_private.fail(400, 'invalid_argument', 'check_run must be a positive integer (GitHub''s check run id)',
                                 jsonb_build_object('argument', 'check_run'));
    end if;
    if record_github_check_run_delivery.html_url is not null
       and (record_github_check_run_delivery.html_url !~ '^https?://[^[:space:][:cntrl:]@]+$'
            or pg_catalog.length(record_github_check_run_delivery.html_url) > 2048) then
        perform ops_private.fail(400, 'invalid_argument', 'html_url must be an http(s) URL without user info (at most 2048 characters)',
                                 jsonb_build_object('argument', 'html_url'));
    end if;
    if record_github_check_run_delivery.http_status is not null
       and record_github_check_run_delivery.http_status not between 100 and 599 then
        perform ops_private.fail(400, 'invalid_argument', 'http_status must be between 100 and 599',
                                 jsonb_build_object('argument', 'http_status'));
    end if;
    if record_github_check_run_delivery.retry_after_seconds is not null
       and record_github_check_run_delivery.retry_after_seconds not between 0 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'retry_after_seconds must be between 0 and 86400',
                                 jsonb_build_object('argument', 'retry_after_seconds'));
    end if;
    select * into v_row from ops.github_check_runs c where c.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'github check run ' || v_id::text || ' not found',
                                 jsonb_build_object('argument', 'check_id'));
    end if;
    if v_row.delivery <> 'delivering' or v_row.leased_version is distinct from record_github_check_run_delivery.version then
        perform ops_private.fail(409, 'conflict',
            'github check run ' || v_id::text || ' is ' || v_row.delivery
            || case when v_row.delivery = 'delivering' then ' of version ' || v_row.leased_version::text else '' end
            || ', not delivering version ' || record_github_check_run_delivery.version::text
            || ': claim it with claim_github_check_runs first',
            jsonb_build_object('argument', 'check_id', 'delivery', v_row.delivery));
    end if;
    v_err := nullif(ops_private.alert_message(record_github_check_run_delivery.error), '');
    v_newer := v_row.version > v_row.leased_version;
    v_final := not coalesce(record_github_check_run_delivery.retry, true) or v_row.attempts + 1 >= v_row.max_attempts;
    update ops.github_check_runs c
    set attempts = case when v_newer then 0 else c.attempts + 1 end,
        lease_expires_at = null,
        leased_version = null,
        check_run_id = coalesce(record_github_check_run_delivery.check_run, c.check_run_id),
        html_url = coalesce(record_github_check_run_delivery.html_url, c.html_url),
        http_status = record_github_check_run_delivery.http_status,
        delivered_version = case when record_github_check_run_delivery.ok then v_row.leased_version
                                 else c.delivered_version end,
        delivery = case when v_newer then 'pending'
                        when record_github_check_run_delivery.ok then 'delivered'
                        when v_final then 'failed'
                        else 'pending' end,
        delivered_at = case when record_github_check_run_delivery.ok then v_now else c.delivered_at end,
        next_attempt_at = case when v_newer then v_now + make_interval(secs => v_wait)
                               when record_github_check_run_delivery.ok or v_final then c.next_attempt_at
                               else v_now + make_interval(secs => greatest(
                                   ops_private.alert_backoff_seconds(c.attempts + 1), v_wait)) end,
        last_error = case when record_github_check_run_delivery.ok then null
                          else coalesce(v_err, 'HTTP ' || record_github_check_run_delivery.http_status::text, 'failed') end
    where c.id = v_row.id
    returning * into v_row;
    return ops_private.github_check_run_json(v_row);
end
$_$;

--
-- Name: record_github_status_delivery(text, boolean, integer, text, boolean, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.record_github_status_delivery(status_id text, ok boolean, http_status integer DEFAULT NULL::integer, error text DEFAULT NULL::text, retry boolean DEFAULT true, retry_after_seconds integer DEFAULT NULL::integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now   timestamptz := ops_private.now();
    v_id    uuid;
    v_row   ops.github_statuses;
    v_err   text;
    v_newer boolean;
begin
    perform ops_private.require_github_deliverer('record_github_status_delivery');
    v_id := ops_private.uuid_arg('status_id', record_github_status_delivery.status_id, true);
    if record_github_status_delivery.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    if record_github_status_delivery.http_status is not null
       and record_github_status_delivery.http_status not between 100 and 599 then
        perform ops_private.fail(400, 'invalid_argument', 'http_status must be between 100 and 599',
                                 jsonb_build_object('argument', 'http_status'));
    end if;
    if record_github_status_delivery.retry_after_seconds is not null
       and record_github_status_delivery.retry_after_seconds not between 0 and 86400 then
        perform ops_private.fail(400, 'invalid_argument', 'retry_after_seconds must be between 0 and 86400',
                                 jsonb_build_object('argument', 'retry_after_seconds'));
    end if;
    select * into v_row from ops.github_statuses s where s.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'github status ' || v_id::text || ' not found',
                                 jsonb_build_object('argument', 'status_id'));
    end if;
    if v_row.delivery <> 'delivering' then
        perform ops_private.fail(409, 'conflict',
            'github status ' || v_id::text || ' is ' || v_row.delivery
            || ', not delivering: claim it with claim_github_statuses first',
            jsonb_build_object('argument', 'status_id', 'delivery', v_row.delivery));
    end if;
    v_err := nullif(ops_private.alert_message(record_github_status_delivery.error), '');
    v_newer := exists (select 1 from ops.github_statuses o
                       where o.run_id = v_row.run_id and o.seq > v_row.seq);
    update ops.github_statuses s
    set attempts = s.attempts + 1,
        lease_expires_at = null,
        http_status = record_github_status_delivery.http_status,
        delivery = case when record_github_status_delivery.ok then 'delivered'
                        when v_newer then 'superseded'
                        when not coalesce(record_github_status_delivery.retry, true)
                             or s.attempts + 1 >= s.max_attempts then 'failed'
                        else 'pending' end,
        delivered_at = case when record_github_status_delivery.ok then v_now end,
        next_attempt_at = case when record_github_status_delivery.ok or v_newer
                                    or not coalesce(record_github_status_delivery.retry, true)
                                    or s.attempts + 1 >= s.max_attempts then s.next_attempt_at
                               else v_now + make_interval(secs => greatest(
                                   ops_private.alert_backoff_seconds(s.attempts + 1),
                                   coalesce(record_github_status_delivery.retry_after_seconds, 0))) end,
        last_error = case when record_github_status_delivery.ok then s.last_error
                          else coalesce(v_err, 'HTTP ' || record_github_status_delivery.http_status::text, 'failed') end
    where s.id = v_row.id
    returning * into v_row;
    return ops_private.github_status_json(v_row);
end
$$;

--
-- Name: record_sensor_value(text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.record_sensor_value(sensor_id text, value text DEFAULT NULL::text, error text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: register_artifact(text, text, text, bigint, text, text, text, text, jsonb); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.register_artifact(lease_token text, digest text, uri text, size_bytes bigint, media_type text DEFAULT 'application/octet-stream'::text, kind text DEFAULT 'blob'::text, name text DEFAULT NULL::text, role text DEFAULT 'output'::text, metadata jsonb DEFAULT '{}'::jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
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
$_$;

--
-- Name: register_job(text, text, jsonb, text, text, text, text, jsonb); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.register_job(workspace_id text, slug text, spec jsonb, digest text, git_sha text, description text DEFAULT NULL::text, owner text DEFAULT NULL::text, tags jsonb DEFAULT '{}'::jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', register_job.workspace_id, true);
    v_tags    jsonb := coalesce(register_job.tags, '{}'::jsonb);
    v_spec    jsonb;
    v_job     ops.jobs;
    v_latest  ops.job_versions;
    v_ver     ops.job_versions;
    v_created boolean := false;
    v_bad     text;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['developer', 'admin'], true, 'workspace');
    if register_job.slug is null or register_job.slug !~ '^[a-z0-9][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'slug must be 1-63 lower-case letters, digits, _ or -, got ' || coalesce(left(register_job.slug, 80), 'nothing'),
            jsonb_build_object('argument', 'slug'));
    end if;
    if register_job.digest is null or register_job.digest !~ '^blake3:[0-9a-f]{64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'digest must be blake3: followed by 64 lower-case hex digits, got ' || coalesce(left(register_job.digest, 80), 'nothing'),
            jsonb_build_object('argument', 'digest'));
    end if;
    if register_job.git_sha is null or register_job.git_sha !~ '^[0-9a-f]{7,64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'git_sha must be 7-64 lower-case hex digits, got ' || coalesce(left(register_job.git_sha, 80), 'nothing'),
            jsonb_build_object('argument', 'git_sha'));
    end if;
    if register_job.description is not null and length(register_job.description) > 2000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 2000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    if register_job.owner is not null and length(register_job.owner) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'owner must be 1-200 characters (a name or an email)',
                                 jsonb_build_object('argument', 'owner'));
    end if;
    perform ops_private.check_object('tags', v_tags);
    perform ops_private.check_size('tags', v_tags, 16384);
    if (select count(*) from jsonb_object_keys(v_tags)) > 50 then
        perform ops_private.fail(400, 'invalid_argument', 'tags: at most 50 tags',
                                 jsonb_build_object('argument', 'tags'));
    end if;
    select t.key into v_bad from jsonb_each(v_tags) t
    where jsonb_typeof(t.value) <> 'string' or length(t.key) not between 1 and 64 or length(t.value #>> '{}') > 256 limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'tags must map keys of 1-64 characters to strings of at most 256; tag ' || left(v_bad, 64) || ' does not',
            jsonb_build_object('argument', 'tags.' || left(v_bad, 64)));
    end if;
    v_spec := ops_private.check_job_spec(register_job.slug, register_job.spec);

    insert into ops.jobs (workspace_id, slug, description, owner, tags, created_by, created_at, updated_at)
    values (v_ws, register_job.slug, coalesce(register_job.description, v_spec ->> 'description'),
            register_job.owner, v_tags, ops_private.uid(), v_now, v_now)
    on conflict (workspace_id, slug) do nothing;
    select * into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = register_job.slug for update;
    if (register_job.description is not null and register_job.description is distinct from v_job.description)
       or (register_job.owner is not null and register_job.owner is distinct from v_job.owner)
       or (v_tags <> '{}'::jsonb and v_tags <> v_job.tags) then
        update ops.jobs j set description = coalesce(register_job.description, j.description),
                              owner = coalesce(register_job.owner, j.owner),
                              tags = case when v_tags <> '{}'::jsonb then v_tags else j.tags end,
                              updated_at = v_now
        where j.id = v_job.id
        returning * into v_job;
    end if;
    select * into v_latest from ops.job_versions v where v.job_id = v_job.id and v.version = v_job.latest_version;
    if v_latest.id is null or v_latest.digest <> register_job.digest or v_latest.git_sha <> register_job.git_sha then
        insert into ops.job_versions (job_id, workspace_id, version, spec, digest, git_sha, created_by, created_at)
        values (v_job.id, v_ws, v_job.latest_version + 1, v_spec, register_job.digest, register_job.git_sha,
                ops_private.uid(), v_now)
        returning * into v_ver;
        update ops.jobs j set latest_version = v_ver.version, updated_at = v_now
        where j.id = v_job.id
        returning * into v_job;
        v_created := true;
        perform ops_private.audit('register_job', v_ws, 'job_version', v_ver.id::text,
            jsonb_build_object('job', v_job.slug, 'version', v_ver.version, 'digest', v_ver.digest,
                               'git_sha', v_ver.git_sha));
    else
        v_ver := v_latest;
    end if;
    return jsonb_build_object('job', ops_private.job_json(v_job),
                              'version', ops_private.job_version_json(v_ver, true),
                              'created', v_created);
end
$_$;

--
-- Name: remove_member(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.remove_member(workspace_id text, principal_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: repair_run(text, text[], text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.repair_run(run_id text, phases text[] DEFAULT NULL::text[], idempotency_key text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: requeue_dead_letters(text, text[]); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.requeue_dead_letters(workspace_id text, phase_ids text[]) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: retry_run(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.retry_run(run_id text, idempotency_key text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: revoke_invitation(text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.revoke_invitation(workspace_id text, principal_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', revoke_invitation.workspace_id, true);
    v_pr  uuid := ops_private.uuid_arg('principal_id', revoke_invitation.principal_id, true);
    v_row ops.invitations;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    delete from ops.invitations i
    where i.workspace_id = v_ws and i.principal_id = v_pr and i.accepted_at is null
    returning * into v_row;
    if v_row.workspace_id is null then
        perform ops_private.fail(404, 'not_found', 'no pending invitation for this principal');
    end if;
    perform ops_private.audit('revoke_invitation', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_row.role));
    return jsonb_build_object('workspace_id', v_ws, 'principal_id', v_pr, 'revoked', true);
end
$$;

--
-- Name: revoke_principal(text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.revoke_principal(principal_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_id  uuid := ops_private.uuid_arg('principal_id', revoke_principal.principal_id, true);
    v_row ops.principals;
begin
    if not ops_private.is_privileged() then
        perform ops_private.principal();
        if ops_private.uid() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
    end if;
    select * into v_row from ops.principals p where p.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'principal not found');
    end if;
    -- an admin revokes only the principals one of its workspaces owns (others: not found)
    if not ops_private.is_privileged()
       and (v_row.owner_workspace_id is null
            or v_row.owner_workspace_id not in (select ops_private.admin_workspaces())) then
        perform ops_private.fail(404, 'not_found', 'principal not found');
    end if;
    if v_row.revoked_at is null then
        update ops.principals p set revoked_at = ops_private.now(), revoked_by = ops_private.uid()
        where p.id = v_id
        returning * into v_row;
        perform ops_private.audit('revoke_principal', m.workspace_id, 'principal', v_id::text, '{}'::jsonb)
        from ops.workspace_members m where m.principal_id = v_id;
        if not found then
            perform ops_private.audit('revoke_principal', v_row.owner_workspace_id, 'principal', v_id::text,
                                      '{}'::jsonb);
        end if;
        -- its pending invitations go with it
        delete from ops.invitations i where i.principal_id = v_id and i.accepted_at is null;
    end if;
    return to_jsonb(v_row);
end
$$;

--
-- Name: run_due_schedules(text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.run_due_schedules(workspace_id text DEFAULT NULL::text, "limit" integer DEFAULT 100) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', run_due_schedules.workspace_id, false);
    v_limit   integer := run_due_schedules."limit";
    v_all     boolean := ops_private.is_privileged();
    v_wss     uuid[];
    v_s       ops.schedules;
    v_times   timestamptz[];
    v_n       integer;
    v_fire    integer;
    v_i       integer;
    v_state   text;
    v_reason  text;
    v_tick    ops.schedule_ticks;
    v_ticks   jsonb := '[]'::jsonb;
    v_created integer := 0;
    v_skipped integer := 0;
    v_failed  integer := 0;
    v_done    integer := 0;
    v_more    boolean;
begin
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if v_ws is not null then
        perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
        v_wss := array[v_ws];
    elsif not v_all then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        v_wss := array(select m.workspace_id from ops.workspace_members m
                       where m.principal_id = ops_private.uid() and m.role in ('developer', 'admin'));
        if cardinality(v_wss) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'run_due_schedules needs a developer or admin of a workspace, or service_role');
        end if;
    end if;
    for v_s in
        select * from ops.schedules s
        where s.enabled and s.next_tick_at <= v_now
          and (v_wss is null or s.workspace_id = any (v_wss))
        order by s.next_tick_at, s.id
        limit v_limit
        for update skip locked
    loop
        v_done := v_done + 1;
        v_times := array(select t from ops_private.schedule_times(v_s, v_s.next_tick_at - interval '1 microsecond',
                                                                  v_now, 1001) t);
        v_more := cardinality(v_times) > 1000;
        if v_more then
            v_times := v_times[1:1000];
        end if;
        v_n := coalesce(cardinality(v_times), 0);
        -- how many of the newest fire: none when more are due than looked at
        v_fire := case when v_more then 0
                       when v_s.catchup = 'all' then least(v_n, v_s.catchup_max)
                       when v_s.catchup = 'latest' then least(v_n, 1)
                       when v_n > 0 and v_times[v_n] >= v_now - interval '2 minutes' then 1
                       else 0 end;
        for v_i in 1 .. v_n loop
            if v_i > v_n - v_fire then
                v_state := 'created';
                v_reason := null;
            else
                v_state := 'skipped';
                v_reason := case when v_more then 'catchup: more than 1000 ticks were due; older ticks are skipped'
                                 when v_s.catchup = 'all' then pg_catalog.format(
                                     'catchup all: only the newest %s missed ticks (catchup_max) run', v_s.catchup_max)
                                 when v_s.catchup = 'latest' then 'catchup latest: a newer tick was due'
                                 else 'catchup skip: missed (more than 2 minutes late)' end;
            end if;
            v_tick := ops_private.fire_tick(v_s, v_times[v_i], v_state, v_reason, v_now);
            continue when v_tick.id is null;        -- recorded already (by another scheduler)
            if v_tick.state = 'created' then
                v_created := v_created + 1;
            elsif v_tick.state = 'failed' then
                v_failed := v_failed + 1;
            else
                v_skipped := v_skipped + 1;
            end if;
            if jsonb_array_length(v_ticks) < 500 and (v_tick.state <> 'skipped' or v_i > v_n - 50) then
                v_ticks := v_ticks || (ops_private.tick_json(v_tick) || jsonb_build_object('schedule', v_s.name));
            end if;
        end loop;
        update ops.schedules s
        set next_tick_at = case when v_more then ops_private.schedule_next(v_s, v_times[v_n])
                                else ops_private.schedule_next(v_s, greatest(v_now, coalesce(v_times[v_n], v_now))) end,
            last_tick_at = coalesce(v_times[v_n], s.last_tick_at)
        where s.id = v_s.id;
    end loop;
    return jsonb_build_object('schedules', v_done, 'created', v_created, 'skipped', v_skipped,
                              'failed', v_failed, 'ticks', v_ticks, 'at', v_now);
end
$$;

--
-- Name: set_job_concurrency(text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.set_job_concurrency(workspace_id text, job text, max_concurrent_runs integer DEFAULT NULL::integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
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

--
-- Name: set_job_slo(text, text, integer); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.set_job_slo(workspace_id text, job text, freshness_seconds integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_job ops.jobs := ops_private.find_job(set_job_slo.workspace_id, set_job_slo.job,
                                           array['developer', 'admin'], true);
begin
    if set_job_slo.freshness_seconds is null or set_job_slo.freshness_seconds not between 60 and 31622400 then
        perform ops_private.fail(400, 'invalid_argument',
            'freshness_seconds must be between 60 (1 minute) and 31622400 (366 days), got '
            || coalesce(set_job_slo.freshness_seconds::text, 'nothing'),
            jsonb_build_object('argument', 'freshness_seconds'));
    end if;
    if v_job.freshness_slo_seconds <> set_job_slo.freshness_seconds then
        update ops.jobs j set freshness_slo_seconds = set_job_slo.freshness_seconds,
                              updated_at = ops_private.now()
        where j.id = v_job.id
        returning * into v_job;
        perform ops_private.audit('set_job_slo', v_job.workspace_id, 'job', v_job.id::text,
            jsonb_build_object('job', v_job.slug, 'freshness_seconds', set_job_slo.freshness_seconds));
    end if;
    return ops_private.job_json(v_job);
end
$$;

--
-- Name: unblock_dataset(text, text, text, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.unblock_dataset(workspace_id text, name text, resolution text, note text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_ws  uuid := ops_private.uuid_arg('workspace_id', unblock_dataset.workspace_id, true);
    v_d   ops.datasets;
    v_was text;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    if unblock_dataset.name is null or length(unblock_dataset.name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be a dataset name (1-200 characters)',
                                 jsonb_build_object('argument', 'name'));
    end if;
    if unblock_dataset.resolution is null or unblock_dataset.resolution not in ('accept', 'reject') then
        perform ops_private.fail(400, 'invalid_argument',
            'resolution must be accept or reject, got ' || coalesce(left(unblock_dataset.resolution, 80), 'nothing'),
            jsonb_build_object('argument', 'resolution'));
    end if;
    if unblock_dataset.note is not null and length(unblock_dataset.note) > 2000 then
        perform ops_private.fail(400, 'invalid_argument', 'note must be at most 2000 characters',
                                 jsonb_build_object('argument', 'note'));
    end if;
    select * into v_d from ops.datasets d
    where d.workspace_id = v_ws and d.name = unblock_dataset.name
    for update;
    if v_d.id is null then
        perform ops_private.fail(404, 'not_found', 'dataset ' || unblock_dataset.name || ' not found');
    end if;
    v_was := v_d.schema_state;
    -- a retried call finds its work done: the dataset comes back unchanged
    if (unblock_dataset.resolution = 'accept' and v_was = 'accepted')
       or (unblock_dataset.resolution = 'reject' and v_was = 'active') then
        return to_jsonb(v_d);
    end if;
    if unblock_dataset.resolution = 'accept' and v_was = 'active' then
        perform ops_private.fail(409, 'conflict',
            'dataset ' || v_d.name || ' is active: there is no blocked schema change to accept');
    end if;
    if unblock_dataset.resolution = 'accept' then
        update ops.datasets d
        set schema_state = 'accepted', updated_at = v_now,
            blocked_change = d.blocked_change || jsonb_build_object('accepted_by', ops_private.uid(),
                                                                    'accepted_at', v_now,
                                                                    'note', unblock_dataset.note)
        where d.id = v_d.id
        returning * into v_d;
    else
        update ops.datasets d
        set schema_state = 'active', blocked_change = null, blocked_at = null, updated_at = v_now
        where d.id = v_d.id
        returning * into v_d;
    end if;
    perform ops_private.audit('unblock_dataset', v_ws, 'dataset', v_d.id::text,
        jsonb_build_object('name', v_d.name, 'resolution', unblock_dataset.resolution, 'note', unblock_dataset.note,
                           'was', v_was, 'schema_version', v_d.schema_version));
    return to_jsonb(v_d);
end
$$;

--
-- Name: update_connection(text, text, jsonb, jsonb, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.update_connection(workspace_id text, name text, config jsonb DEFAULT NULL::jsonb, secrets jsonb DEFAULT NULL::jsonb, description text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', update_connection.workspace_id, true);
    v_row     ops.connections;
    v_old     jsonb;
    v_config  jsonb;
    v_secrets jsonb;
    v_desc    text;
    v_changed text[] := '{}';
    v_rotated jsonb;
begin
    perform ops_private.connection_workspace(v_ws, array['admin']);
    v_row := ops_private.find_connection(v_ws, update_connection.name, true);
    if update_connection.description is not null and length(update_connection.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    v_old := ops_private.connection_secrets(v_row.id);
    v_config := coalesce(update_connection.config, v_row.config);
    v_secrets := coalesce(update_connection.secrets, v_old);
    v_desc := case when update_connection.description is null then v_row.description
                   else nullif(update_connection.description, '') end;
    perform ops_private.check_connection(v_config, v_secrets);
    if v_config <> v_row.config then
        v_changed := v_changed || 'config'::text;
    end if;
    if v_secrets <> v_old then
        v_changed := v_changed || 'secrets'::text;
    end if;
    if v_desc is distinct from v_row.description then
        v_changed := v_changed || 'description'::text;
    end if;
    if cardinality(v_changed) = 0 then
        return ops_private.connection_json(v_row);   -- nothing changed: no new version
    end if;
    update ops.connections c
    set config = v_config, description = v_desc, version = c.version + 1,
        updated_by = ops_private.uid(), updated_at = v_now
    where c.id = v_row.id
    returning * into v_row;
    if 'secrets' = any (v_changed) then
        select coalesce(jsonb_agg(f order by f), '[]'::jsonb) into v_rotated
        from (select s.key as f from jsonb_each(v_secrets) s where v_old -> s.key is distinct from s.value
              union
              select o.key from jsonb_each(v_old) o where not v_secrets ? o.key) x;
        delete from ops.secrets_refs s where s.connection_id = v_row.id and not v_secrets ? s.field;
        insert into ops.secrets_refs as s (connection_id, workspace_id, field, reference, created_at)
        select v_row.id, v_ws, n.key, n.value #>> '{}', v_now from jsonb_each(v_secrets) n
        on conflict (connection_id, field) do update
            set reference = excluded.reference, created_at = excluded.created_at
            where s.reference is distinct from excluded.reference;
    end if;
    perform ops_private.audit('update_connection', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'version', v_row.version, 'changed', to_jsonb(v_changed),
                           'secret_fields_changed', coalesce(v_rotated, '[]'::jsonb)));
    return ops_private.connection_json(v_row);
end
$$;

--
-- Name: update_schedule(text, text, text, text, integer, jsonb, boolean, text, integer, integer, text, integer, text); Type: FUNCTION; Schema: ops; Owner: -
--

CREATE FUNCTION ops.update_schedule(workspace_id text, name text, cron text DEFAULT NULL::text, timezone text DEFAULT NULL::text, interval_seconds integer DEFAULT NULL::integer, params jsonb DEFAULT NULL::jsonb, enabled boolean DEFAULT NULL::boolean, catchup text DEFAULT NULL::text, catchup_max integer DEFAULT NULL::integer, max_concurrent integer DEFAULT NULL::integer, overlap text DEFAULT NULL::text, priority integer DEFAULT NULL::integer, description text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
#variable_conflict use_column
declare
    v_now  timestamptz := ops_private.now();
    v_ws   uuid := ops_private.uuid_arg('workspace_id', update_schedule.workspace_id, true);
    v_old  ops.schedules;
    v_row  ops.schedules;
begin
    perform ops_private.schedule_workspace(v_ws, array['developer', 'admin']);
    v_old := ops_private.find_schedule(v_ws, update_schedule.name, true);
    v_row := v_old;
    if update_schedule.cron is not null then
        v_row.cron := update_schedule.cron;
        v_row.interval_seconds := null;
    elsif update_schedule.interval_seconds is not null then
        v_row.interval_seconds := update_schedule.interval_seconds;
        v_row.cron := null;
    end if;
    v_row.timezone := coalesce(update_schedule.timezone, v_row.timezone);
    v_row.params := coalesce(update_schedule.params, v_row.params);
    v_row.enabled := coalesce(update_schedule.enabled, v_row.enabled);
    v_row.catchup := coalesce(update_schedule.catchup, v_row.catchup);
    v_row.catchup_max := coalesce(update_schedule.catchup_max, v_row.catchup_max);
    v_row.max_concurrent := coalesce(update_schedule.max_concurrent, v_row.max_concurrent);
    v_row.overlap := coalesce(update_schedule.overlap, v_row.overlap);
    v_row.priority := coalesce(update_schedule.priority, v_row.priority);
    v_row.description := case when update_schedule.description is null then v_row.description
                              else nullif(update_schedule.description, '') end;
    if update_schedule.cron is not null and update_schedule.interval_seconds is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'a schedule has either cron (with timezone) or interval_seconds, not both',
            jsonb_build_object('argument', 'interval_seconds'));
    end if;
    v_row := ops_private.check_schedule(v_row, v_now);
    if v_row.cron is not distinct from v_old.cron and v_row.timezone is not distinct from v_old.timezone
       and v_row.interval_seconds is not distinct from v_old.interval_seconds
       and v_row.enabled and v_old.enabled then
        -- the policies or params only: the ticks stay where they were (missed ones are still caught up)
        v_row.anchor_at := v_old.anchor_at;
        v_row.next_tick_at := v_old.next_tick_at;
    end if;
    update ops.schedules s
    set cron = v_row.cron, timezone = v_row.timezone, cron_minutes = v_row.cron_minutes,
        cron_hours = v_row.cron_hours, cron_days = v_row.cron_days, cron_months = v_row.cron_months,
        cron_weekdays = v_row.cron_weekdays, cron_days_star = v_row.cron_days_star,
        cron_weekdays_star = v_row.cron_weekdays_star, interval_seconds = v_row.interval_seconds,
        params = v_row.params, enabled = v_row.enabled, catchup = v_row.catchup,
        catchup_max = v_row.catchup_max, max_concurrent = v_row.max_concurrent, overlap = v_row.overlap,
        priority = v_row.priority, description = v_row.description, anchor_at = v_row.anchor_at,
        next_tick_at = v_row.next_tick_at, updated_at = v_now
    where s.id = v_old.id
    returning * into v_row;
    perform ops_private.audit('update_schedule', v_ws, 'schedule', v_row.name,
        jsonb_build_object('id', v_row.id, 'enabled', v_row.enabled, 'cron', v_row.cron,
                           'timezone', v_row.timezone, 'interval_seconds', v_row.interval_seconds,
                           'catchup', v_row.catchup, 'overlap', v_row.overlap));
    return ops_private.schedule_json(v_row);
end
$$;

--
-- Name: active_child(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.active_child(p_parent uuid) RETURNS uuid
    LANGUAGE sql STABLE
    AS $$
    select r.id from ops.runs r
    where r.parent_run_id = p_parent and r.state in ('queued', 'running')
    order by r.created_at, r.id limit 1
$$;

--
-- Name: admin_workspaces(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.admin_workspaces() RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    select m.workspace_id from ops.workspace_members m
    where m.principal_id = (select auth.uid()) and m.role = 'admin'
      and not exists (select 1 from ops.principals p
                      where p.id = (select auth.uid()) and p.revoked_at is not null)
$$;

--
-- Name: alert_backoff_seconds(integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_backoff_seconds(p_attempt integer) RETURNS integer
    LANGUAGE sql IMMUTABLE
    AS $$
    select (array[5, 30, 120, 600, 1800, 3600])[least(greatest(p_attempt, 1), 6)]
$$;

SET default_table_access_method = heap;

--
-- Name: alert_destinations; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.alert_destinations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    url text NOT NULL,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    description text,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT alert_destinations_description_check CHECK ((length(description) <= 1000)),
    CONSTRAINT alert_destinations_headers_check CHECK ((jsonb_typeof(headers) = 'object'::text)),
    CONSTRAINT alert_destinations_name_check CHECK ((name ~ '^[a-z][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT alert_destinations_type_check CHECK ((type = ANY (ARRAY['webhook'::text, 'slack'::text]))),
    CONSTRAINT alert_destinations_url_check CHECK ((length(url) <= 2048))
);

--
-- Name: TABLE alert_destinations; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.alert_destinations IS 'Where alerts of a workspace go. url is a secret reference (env:NAME, file:/path) or, for a webhook, a literal URL without credentials; headers are references. Never a secret value.';

--
-- Name: alert_destination_json(ops.alert_destinations); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_destination_json(d ops.alert_destinations) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', d.id, 'workspace_id', d.workspace_id, 'name', d.name, 'type', d.type,
        'url', d.url, 'headers', d.headers, 'description', d.description, 'created_at', d.created_at)
$$;

--
-- Name: runs; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.runs (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    env text NOT NULL,
    spec_slug text NOT NULL,
    git_sha text NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    labels jsonb DEFAULT '{}'::jsonb NOT NULL,
    input_manifest jsonb DEFAULT '{}'::jsonb NOT NULL,
    output_manifest jsonb,
    idempotency_key text,
    request_digest text NOT NULL,
    parent_run_id uuid,
    error jsonb,
    cancel_reason text,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    finalized_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_event_seq bigint DEFAULT 0 NOT NULL,
    job_version_id uuid,
    CONSTRAINT runs_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])))
)
WITH (fillfactor='80', autovacuum_vacuum_scale_factor='0.02', autovacuum_vacuum_threshold='500');

--
-- Name: COLUMN runs.job_version_id; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.runs.job_version_id IS 'The job version this run was made from (null: a run of a spec file).';

--
-- Name: alert_filters_match(jsonb, ops.runs); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_filters_match(p_filters jsonb, p_run ops.runs) RETURNS boolean
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_job_id text;
    v_slug   text;
begin
    if p_filters = '{}'::jsonb then
        return true;
    end if;
    if p_filters ? 'spec_slug' and p_run.spec_slug is distinct from p_filters ->> 'spec_slug' then
        return false;
    end if;
    if p_filters ? 'labels' and not (p_run.labels @> (p_filters -> 'labels')) then
        return false;
    end if;
    if p_filters ? 'job' then
        -- ops.runs.job_version_id and ops.jobs come from the jobs migration (sorted before this one)
        v_job_id := pg_catalog.to_jsonb(p_run) ->> 'job_version_id';
        if v_job_id is null then
            return false;
        end if;
        select j.slug into v_slug
        from ops.job_versions v join ops.jobs j on j.id = v.job_id
        where v.id = v_job_id::uuid;
        if v_slug is distinct from p_filters ->> 'job' then
            return false;
        end if;
    end if;
    return true;
end
$$;

--
-- Name: alerts; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.alerts (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    rule_id uuid,
    rule_name text NOT NULL,
    destination_id uuid NOT NULL,
    event text NOT NULL,
    subject jsonb DEFAULT '{}'::jsonb NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    dedupe_key text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 8 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_expires_at timestamp with time zone,
    last_error text,
    delivered_at timestamp with time zone,
    CONSTRAINT alerts_last_error_check CHECK ((length(last_error) <= 500)),
    CONSTRAINT alerts_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'delivering'::text, 'delivered'::text, 'failed'::text])))
);

--
-- Name: alert_json(ops.alerts); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_json(a ops.alerts) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', a.id, 'workspace_id', a.workspace_id, 'rule', a.rule_name,
        'destination', (select d.name from ops.alert_destinations d where d.id = a.destination_id),
        'event', a.event, 'subject', a.subject, 'payload', a.payload, 'created_at', a.created_at,
        'state', a.state, 'attempts', a.attempts, 'max_attempts', a.max_attempts,
        'next_attempt_at', case when a.state in ('pending', 'delivering') then a.next_attempt_at end,
        'last_error', a.last_error, 'delivered_at', a.delivered_at,
        'deliveries', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'attempt', x.attempt, 'at', x.at, 'ok', x.ok, 'http_status', x.http_status,
                           'error', x.error, 'duration_ms', x.duration_ms) order by x.attempt), '[]'::jsonb)
                       from ops.alert_deliveries x where x.alert_id = a.id))
$$;

--
-- Name: alert_lease_expiries(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_lease_expiries() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    v_now   timestamptz := ops_private.now();
    v_count bigint;
begin
    if not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = new.workspace_id and r.event = 'lease_expiries' and r.enabled) then
        return null;
    end if;
    select count(*) into v_count from ops.run_events e
    where e.type = 'LEASE_EXPIRED' and e.recorded_at > v_now - interval '1 hour'
      and e.workspace_id = new.workspace_id;
    perform ops_private.raise_alerts(new.workspace_id, 'lease_expiries',
        pg_catalog.jsonb_build_object('window', pg_catalog.date_trunc('hour', v_now at time zone 'UTC')),
        pg_catalog.jsonb_build_object(
            'workspace', ops_private.workspace_slug(new.workspace_id), 'count', v_count,
            'window_minutes', 60, 'last_run_id', new.run_id, 'last_phase', new.phase,
            'links', pg_catalog.jsonb_build_object('cli', 'control-room runs show ' || new.run_id::text)),
        null, 'lease_expiries:' || pg_catalog.to_char(v_now at time zone 'UTC', 'YYYY-MM-DD"T"HH24'),
        v_count);
    return null;
end
$$;

--
-- Name: alert_message(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_message(p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select pg_catalog.left(ops_private.redact_passwords(pg_catalog.left(p_text, 4000)), 500)
$$;

--
-- Name: alert_phase_dead_lettered(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_phase_dead_lettered() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    v_run ops.runs;
begin
    if not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = new.workspace_id and r.event = 'phase_dead_lettered' and r.enabled) then
        return null;
    end if;
    select * into v_run from ops.runs r where r.id = new.run_id;
    perform ops_private.raise_alerts(new.workspace_id, 'phase_dead_lettered',
        pg_catalog.jsonb_build_object('run_id', new.run_id, 'phase', new.name, 'attempt', new.attempt),
        pg_catalog.jsonb_build_object(
            'run_id', new.run_id, 'workspace', ops_private.workspace_slug(new.workspace_id),
            'spec_slug', v_run.spec_slug, 'phase', new.name, 'kind', new.kind, 'state', new.state,
            'attempt', new.attempt, 'max_attempts', new.max_attempts,
            'error', ops_private.alert_message(new.error ->> 'message'),
            'links', pg_catalog.jsonb_build_object('cli', 'control-room runs show ' || new.run_id::text)),
        v_run);
    return null;
end
$$;

--
-- Name: alert_rules; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.alert_rules (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    event text NOT NULL,
    threshold integer,
    filters jsonb DEFAULT '{}'::jsonb NOT NULL,
    destination_id uuid NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    description text,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT alert_rules_description_check CHECK ((length(description) <= 1000)),
    CONSTRAINT alert_rules_event_check CHECK ((event = ANY (ARRAY['run_failed'::text, 'phase_dead_lettered'::text, 'schedule_tick_failed'::text, 'lease_expiries'::text, 'slo_breached'::text]))),
    CONSTRAINT alert_rules_filters_check CHECK ((jsonb_typeof(filters) = 'object'::text)),
    CONSTRAINT alert_rules_name_check CHECK ((name ~ '^[a-z][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT alert_rules_threshold_check CHECK (((threshold >= 1) AND (threshold <= 1000000)))
);

--
-- Name: alert_rule_json(ops.alert_rules); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_rule_json(r ops.alert_rules) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', r.id, 'workspace_id', r.workspace_id, 'name', r.name, 'event', r.event,
        'threshold', r.threshold, 'filters', r.filters,
        'destination', (select d.name from ops.alert_destinations d where d.id = r.destination_id),
        'enabled', r.enabled, 'description', r.description, 'created_at', r.created_at)
$$;

--
-- Name: alert_run_failed(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_run_failed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = new.workspace_id and r.event = 'run_failed' and r.enabled) then
        return null;
    end if;
    perform ops_private.raise_alerts(new.workspace_id, 'run_failed',
        pg_catalog.jsonb_build_object('run_id', new.id),
        pg_catalog.jsonb_build_object(
            'run_id', new.id, 'workspace', ops_private.workspace_slug(new.workspace_id),
            'spec_slug', new.spec_slug, 'state', new.state, 'labels', new.labels,
            'phase', new.error ->> 'phase',
            'error', ops_private.alert_message(coalesce(new.error #>> '{error,message}', new.error ->> 'message')),
            'links', pg_catalog.jsonb_build_object('cli', 'control-room runs show ' || new.id::text)),
        new);
    return null;
end
$$;

--
-- Name: alert_schedule_tick_failed(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_schedule_tick_failed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    v_tick jsonb := pg_catalog.to_jsonb(new);
    v_ws   uuid := (v_tick ->> 'workspace_id')::uuid;
    v_err  text;
begin
    if v_ws is null or not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = v_ws and r.event = 'schedule_tick_failed' and r.enabled) then
        return null;
    end if;
    v_err := coalesce(v_tick #>> '{error,message}', v_tick ->> 'error', v_tick ->> 'reason', v_tick ->> 'message');
    perform ops_private.raise_alerts(v_ws, 'schedule_tick_failed',
        pg_catalog.jsonb_build_object('tick_id', v_tick -> 'id', 'schedule_id', v_tick -> 'schedule_id',
                                      'scheduled_for', v_tick -> 'scheduled_for'),
        pg_catalog.jsonb_build_object(
            'workspace', ops_private.workspace_slug(v_ws), 'tick_id', v_tick -> 'id',
            'schedule_id', v_tick -> 'schedule_id', 'scheduled_for', v_tick -> 'scheduled_for',
            'state', v_tick ->> 'state', 'error', ops_private.alert_message(v_err)),
        null, 'tick:' || coalesce(v_tick ->> 'id', gen_random_uuid()::text));
    return null;
end
$$;

--
-- Name: alert_workspace(uuid, text[]); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.alert_workspace(p_workspace uuid, p_roles text[]) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return ops_private.require_role(p_workspace, p_roles, true);
end
$$;

--
-- Name: append_events_problem(jsonb, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.append_events_problem(p_events jsonb, p_n integer) RETURNS void
    LANGUAGE plpgsql
    AS $_$
declare
    v_allowed  constant text[] := array['event_id', 'phase', 'ts', 'level', 'type', 'message', 'payload'];
    v_i        integer;
    v_e        jsonb;
    v_path     text;
    v_key      text;
    v_phase    text;
    v_id       uuid;
begin
    for v_i in 0 .. p_n - 1 loop
        v_e := p_events -> v_i;
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
        if exists (select 1 from ops_private.reserved_event_types t where t.type = (v_e ->> 'type')) then
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
    end loop;
end
$_$;

--
-- Name: audit(text, uuid, text, text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.audit(p_function text, p_workspace uuid, p_target_type text, p_target_id text, p_details jsonb DEFAULT '{}'::jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
begin
    insert into ops.audit_log (at, principal_id, db_role, function_name, workspace_id, target_type,
                               target_id, details)
    values (ops_private.now(), ops_private.uid(),
            coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text),
            p_function, p_workspace, p_target_type, p_target_id, coalesce(p_details, '{}'::jsonb));
end
$$;

--
-- Name: auth_audit(uuid, uuid, text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_audit(p_actor uuid, p_subject uuid, p_function text, p_details jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
declare
    v_now  timestamptz := ops_private.now();
    v_role text := coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text);
begin
    insert into ops.audit_log (at, principal_id, db_role, function_name, workspace_id, target_type,
                               target_id, details)
    select v_now, p_actor, v_role, p_function, w.workspace_id, 'user', p_subject::text,
           coalesce(p_details, '{}'::jsonb)
    from (select m.workspace_id from ops.workspace_members m
          where p_subject is not null and m.principal_id = p_subject
          union all
          select null::uuid
          where p_subject is null
             or not exists (select 1 from ops.workspace_members m where m.principal_id = p_subject)) w;
end
$$;

--
-- Name: auth_create_user(text, text, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_create_user(p_email text, p_name text, p_password_hash text) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $_$
declare
    v_email text := ops_private.auth_email(p_email);
    v_id    uuid;
begin
    if v_email is null or length(v_email) not between 3 and 320 or v_email !~ '^[^@\s]+@[^@\s]+$' then
        perform ops_private.fail(400, 'invalid_argument', 'email must look like name@host',
                                 pg_catalog.jsonb_build_object('argument', 'email'));
    end if;
    if exists (select 1 from ops_private.auth_users u where u.email = v_email) then
        perform ops_private.fail(409, 'conflict', 'a user with email ' || v_email || ' already exists',
                                 pg_catalog.jsonb_build_object('argument', 'email'));
    end if;
    if p_name is null or length(p_name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-200 characters',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    insert into ops.principals (kind, name, created_by, created_at)
    values ('user', p_name, ops_private.uid(), ops_private.now())
    returning id into v_id;
    insert into ops_private.auth_users (principal_id, email, password_hash, created_at, updated_at,
                                        password_changed_at)
    values (v_id, v_email, p_password_hash, ops_private.now(), ops_private.now(), ops_private.now());
    perform ops_private.auth_audit(ops_private.uid(), v_id, 'auth.create_user',
                                   pg_catalog.jsonb_build_object('email', v_email, 'name', p_name));
    return v_id;
end
$_$;

--
-- Name: auth_disable_user(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_disable_user(p_email text) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_id uuid := ops_private.auth_user_id(p_email);
begin
    if v_id is null then
        perform ops_private.fail(404, 'not_found', 'no user with email ' || ops_private.auth_email(p_email));
    end if;
    update ops_private.auth_users u
       set disabled_at = coalesce(u.disabled_at, ops_private.now()), updated_at = ops_private.now()
     where u.principal_id = v_id;
    perform ops_private.auth_audit(ops_private.uid(), v_id, 'auth.disable_user', pg_catalog.jsonb_build_object(
        'email', ops_private.auth_email(p_email),
        'sessions_revoked', ops_private.auth_revoke_sessions(v_id, 'disabled')));
    return v_id;
end
$$;

--
-- Name: auth_email(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_email(p_email text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select pg_catalog.lower(pg_catalog.btrim(p_email))
$$;

--
-- Name: auth_get_user(uuid, uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_get_user(p_principal uuid, p_session uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_user jsonb;
begin
    if p_session is not null and exists (
            select 1 from ops_private.auth_sessions s where s.id = p_session
            and (s.revoked_at is not null or s.expires_at <= ops_private.now())) then
        return pg_catalog.jsonb_build_object('error', 'session_not_found');
    end if;
    v_user := ops_private.auth_user_json(p_principal);
    if v_user is null then
        return pg_catalog.jsonb_build_object('error', 'user_not_found');
    end if;
    return pg_catalog.jsonb_build_object('user', v_user);
end
$$;

--
-- Name: auth_list_users(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_list_users() RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', u.principal_id, 'email', u.email, 'name', p.name,
               'disabled', u.disabled_at is not null, 'revoked', p.revoked_at is not null,
               'created_at', u.created_at, 'last_sign_in_at', u.last_sign_in_at,
               'memberships', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                        'workspace_id', w.id, 'slug', w.slug, 'role', m.role)
                                        order by w.slug), '[]'::jsonb)
                               from ops.workspace_members m join ops.workspaces w on w.id = m.workspace_id
                               where m.principal_id = u.principal_id))
               order by u.email), '[]'::jsonb)
    from ops_private.auth_users u join ops.principals p on p.id = u.principal_id
$$;

--
-- Name: auth_logout(uuid, uuid, text, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_logout(p_principal uuid, p_session uuid, p_scope text, p_ip text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_count integer := 0;
begin
    if p_session is not null and not exists (
            select 1 from ops_private.auth_sessions s where s.id = p_session and s.principal_id = p_principal
            and s.revoked_at is null and s.expires_at > ops_private.now()) then
        return pg_catalog.jsonb_build_object('error', 'session_not_found');
    end if;
    if p_scope = 'global' then
        v_count := ops_private.auth_revoke_sessions(p_principal, 'logout_global');
    elsif p_scope = 'others' then
        v_count := ops_private.auth_revoke_sessions(p_principal, 'logout_others', p_session);
    elsif p_session is not null then
        update ops_private.auth_sessions s set revoked_at = ops_private.now(), revoked_reason = 'logout'
         where s.id = p_session;
        v_count := 1;
    end if;
    perform ops_private.auth_audit(p_principal, p_principal, 'auth.logout',
        pg_catalog.jsonb_build_object('scope', p_scope, 'session_id', p_session, 'ip', p_ip,
                                      'sessions_revoked', v_count));
    return pg_catalog.jsonb_build_object('sessions_revoked', v_count);
end
$$;

--
-- Name: auth_refresh(text, text, integer, integer, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_refresh(p_hash text, p_new_hash text, p_session_ttl_seconds integer, p_grace_seconds integer, p_ip text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_now     timestamptz := ops_private.now();
    v_token   ops_private.auth_refresh_tokens;
    v_session ops_private.auth_sessions;
begin
    select * into v_token from ops_private.auth_refresh_tokens t where t.token_hash = pg_catalog.decode(p_hash, 'hex') for update;
    if not found then
        return pg_catalog.jsonb_build_object('error', 'refresh_token_not_found');
    end if;
    select * into v_session from ops_private.auth_sessions s where s.id = v_token.session_id for update;
    if v_session.revoked_at is not null or v_session.expires_at <= v_now
       or exists (select 1 from ops_private.auth_users u where u.principal_id = v_session.principal_id
                  and u.disabled_at is not null)
       or exists (select 1 from ops.principals p where p.id = v_session.principal_id
                  and p.revoked_at is not null) then
        return pg_catalog.jsonb_build_object('error', 'refresh_token_not_found');
    end if;
    if v_token.used_at is not null and v_token.used_at < v_now - pg_catalog.make_interval(secs => p_grace_seconds) then
        update ops_private.auth_sessions s set revoked_at = v_now, revoked_reason = 'refresh_token_reuse'
         where s.id = v_session.id;
        perform ops_private.auth_audit(v_session.principal_id, v_session.principal_id, 'auth.refresh_token_reuse',
            pg_catalog.jsonb_build_object('session_id', v_session.id, 'ip', p_ip,
                                          'used_at', v_token.used_at));
        return pg_catalog.jsonb_build_object('error', 'refresh_token_already_used');
    end if;
    update ops_private.auth_refresh_tokens t set used_at = coalesce(t.used_at, v_now) where t.id = v_token.id;
    insert into ops_private.auth_refresh_tokens (token_hash, session_id, parent_id, created_at)
    values (pg_catalog.decode(p_new_hash, 'hex'), v_session.id, v_token.id, v_now);
    update ops_private.auth_sessions s
       set refreshed_at = v_now, expires_at = v_now + pg_catalog.make_interval(secs => p_session_ttl_seconds)
     where s.id = v_session.id;
    return pg_catalog.jsonb_build_object('session_id', v_session.id,
                                         'signed_in_at', extract(epoch from v_session.created_at)::bigint,
                                         'user', ops_private.auth_user_json(v_session.principal_id));
end
$$;

--
-- Name: auth_revoke_sessions(uuid, text, uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_revoke_sessions(p_principal uuid, p_reason text, p_except uuid DEFAULT NULL::uuid) RETURNS integer
    LANGUAGE plpgsql
    AS $$
declare
    v_count integer;
begin
    update ops_private.auth_sessions s set revoked_at = ops_private.now(), revoked_reason = p_reason
    where s.principal_id = p_principal and s.revoked_at is null
      and (p_except is null or s.id <> p_except);
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

--
-- Name: auth_set_password(text, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_set_password(p_email text, p_password_hash text) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_id uuid := ops_private.auth_user_id(p_email);
begin
    if v_id is null then
        perform ops_private.fail(404, 'not_found', 'no user with email ' || ops_private.auth_email(p_email));
    end if;
    update ops_private.auth_users u
       set password_hash = p_password_hash, password_changed_at = ops_private.now(),
           updated_at = ops_private.now()
     where u.principal_id = v_id;
    perform ops_private.auth_audit(ops_private.uid(), v_id, 'auth.password_change', pg_catalog.jsonb_build_object(
        'email', ops_private.auth_email(p_email),
        'sessions_revoked', ops_private.auth_revoke_sessions(v_id, 'password_change')));
    return v_id;
end
$$;

--
-- Name: auth_signin_failed(text, text, uuid, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_signin_failed(p_email text, p_ip text, p_principal uuid, p_reason text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_email text := pg_catalog.left(ops_private.auth_email(p_email), 320);
    v_now   timestamptz := ops_private.now();
begin
    delete from ops_private.auth_failures f where f.at < v_now - interval '1 day';
    insert into ops_private.auth_failures (at, email, ip) values (v_now, v_email, p_ip);
    perform ops_private.auth_audit(p_principal, p_principal, 'auth.signin_failed',
        pg_catalog.jsonb_build_object('email', v_email, 'ip', p_ip, 'reason', p_reason));
end
$$;

--
-- Name: auth_signin_lookup(text, text, integer, integer, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_signin_lookup(p_email text, p_ip text, p_window_seconds integer, p_max_per_email integer, p_max_per_ip integer) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_email text := ops_private.auth_email(p_email);
    v_now   timestamptz := ops_private.now();
    v_since timestamptz := v_now - pg_catalog.make_interval(secs => p_window_seconds);
    v_at    timestamptz;
    v_user  ops_private.auth_users;
begin
    -- the failure whose ageing out brings the count under the limit
    select f.at into v_at from ops_private.auth_failures f
    where f.email = v_email and f.at > v_since
    order by f.at desc offset greatest(p_max_per_email - 1, 0) limit 1;
    if v_at is null then
        select f.at into v_at from ops_private.auth_failures f
        where f.ip = p_ip and f.at > v_since
        order by f.at desc offset greatest(p_max_per_ip - 1, 0) limit 1;
    end if;
    if v_at is not null then
        perform ops_private.fail(429, 'over_request_rate_limit',
            'too many failed sign-ins: try again later',
            pg_catalog.jsonb_build_object('retry_after', greatest(1, pg_catalog.ceil(
                extract(epoch from (v_at + pg_catalog.make_interval(secs => p_window_seconds) - v_now)))::integer)));
    end if;
    select * into v_user from ops_private.auth_users u where u.email = v_email;
    if not found then
        return pg_catalog.jsonb_build_object('principal_id', null, 'password_hash', null, 'disabled', false);
    end if;
    return pg_catalog.jsonb_build_object(
        'principal_id', v_user.principal_id, 'password_hash', v_user.password_hash,
        'disabled', v_user.disabled_at is not null
                    or exists (select 1 from ops.principals p
                               where p.id = v_user.principal_id and p.revoked_at is not null));
end
$$;

--
-- Name: auth_signin_ok(uuid, text, text, text, integer, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_signin_ok(p_principal uuid, p_ip text, p_user_agent text, p_refresh_hash text, p_session_ttl_seconds integer, p_rehash text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO ''
    AS $$
declare
    v_now     timestamptz := ops_private.now();
    v_user    ops_private.auth_users;
    v_session uuid;
begin
    select * into v_user from ops_private.auth_users u where u.principal_id = p_principal for update;
    if not found or v_user.disabled_at is not null
       or exists (select 1 from ops.principals p where p.id = p_principal and p.revoked_at is not null) then
        perform ops_private.fail(400, 'invalid_credentials', 'Invalid login credentials');
    end if;
    update ops_private.auth_users u
       set last_sign_in_at = v_now,
           password_hash = coalesce(p_rehash, u.password_hash)
     where u.principal_id = p_principal;
    delete from ops_private.auth_failures f where f.email = v_user.email;
    insert into ops_private.auth_sessions (principal_id, created_at, refreshed_at, expires_at, ip, user_agent)
    values (p_principal, v_now, v_now, v_now + pg_catalog.make_interval(secs => p_session_ttl_seconds),
            p_ip, pg_catalog.left(p_user_agent, 512))
    returning id into v_session;
    insert into ops_private.auth_refresh_tokens (token_hash, session_id, created_at)
    values (pg_catalog.decode(p_refresh_hash, 'hex'), v_session, v_now);
    perform ops_private.auth_audit(p_principal, p_principal, 'auth.signin',
        pg_catalog.jsonb_build_object('email', v_user.email, 'ip', p_ip, 'session_id', v_session));
    return pg_catalog.jsonb_build_object('session_id', v_session, 'signed_in_at', extract(epoch from v_now)::bigint,
                                         'user', ops_private.auth_user_json(p_principal));
end
$$;

--
-- Name: auth_user_id(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_user_id(p_email text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    select u.principal_id from ops_private.auth_users u where u.email = ops_private.auth_email(p_email)
$$;

--
-- Name: auth_user_json(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.auth_user_json(p_principal uuid) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', u.principal_id, 'aud', 'authenticated', 'role', 'authenticated',
        'email', u.email, 'email_confirmed_at', u.created_at, 'phone', '',
        'created_at', u.created_at, 'updated_at', u.updated_at,
        'last_sign_in_at', u.last_sign_in_at,
        'app_metadata', pg_catalog.jsonb_build_object('provider', 'email', 'providers',
                                                      pg_catalog.jsonb_build_array('email')),
        'user_metadata', pg_catalog.jsonb_build_object('name', p.name),
        'identities', '[]'::jsonb, 'is_anonymous', false)
    from ops_private.auth_users u join ops.principals p on p.id = u.principal_id
    where u.principal_id = p_principal
$$;

--
-- Name: backoff_seconds(integer, numeric, numeric); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.backoff_seconds(p_attempt integer, p_base numeric, p_cap numeric) RETURNS numeric
    LANGUAGE plpgsql
    AS $$
declare
    d numeric := least(p_cap, p_base * power(2::numeric, greatest(p_attempt, 1) - 1));
begin
    return d / 2 + pg_catalog.random()::numeric * d / 2;
end
$$;

--
-- Name: batch_claim_id(uuid, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.batch_claim_id(p_claim uuid, p_i integer) RETURNS uuid
    LANGUAGE sql IMMUTABLE
    AS $$
    select pg_catalog.md5(p_claim::text || '#' || p_i::text)::uuid
$$;

--
-- Name: changed_plan(jsonb, ops.runs, jsonb, jsonb, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.changed_plan(p_phases jsonb, p_base ops.runs, p_changed jsonb, p_params jsonb, p_git_sha text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $_$
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
$_$;

--
-- Name: check_alert_destination(text, text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_alert_destination(p_type text, p_url text, p_headers jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
declare
    v_h record;
begin
    if p_type is null or p_type not in ('webhook', 'slack') then
        perform ops_private.fail(400, 'invalid_argument',
            'type must be webhook or slack, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_type, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'type'));
    end if;
    if p_url is null or p_url = '' then
        perform ops_private.fail(400, 'invalid_argument',
            'url is required: a secret reference (env:NAME or file:/absolute/path)',
            pg_catalog.jsonb_build_object('argument', 'url'));
    end if;
    if not ops_private.is_secret_reference(p_url) then
        if p_type = 'slack' then
            perform ops_private.fail(400, 'invalid_argument',
                'url of a slack destination must be a secret reference (env:NAME or file:/absolute/path): a'
                || ' Slack incoming-webhook URL is a credential and is never stored; put it in an environment'
                || ' variable or a file the deliverer may read (its CONTROL_ROOM_SECRET_ALLOW) and name that',
                pg_catalog.jsonb_build_object('argument', 'url'));
        end if;
        if p_url !~* '^https?://' then
            perform ops_private.fail(400, 'invalid_argument',
                'url must be a secret reference (env:NAME or file:/absolute/path) or a literal http(s):// URL'
                || ' without credentials',
                pg_catalog.jsonb_build_object('argument', 'url'));
        end if;
        if pg_catalog.length(p_url) > 2048 or p_url ~ '[[:space:][:cntrl:]]'
           or p_url !~* '^https?://[^/?#@[:space:]]+(/[^?#[:space:]]*)?$' then
            perform ops_private.fail(400, 'invalid_argument',
                'url: a literal webhook URL is http(s)://host[:port][/path], at most 2048 characters, with no'
                || ' user:password@, query string or fragment; a URL carrying a credential goes in a secret'
                || ' reference (env:NAME or file:/absolute/path)',
                pg_catalog.jsonb_build_object('argument', 'url'));
        end if;
    end if;
    perform ops_private.check_object('headers', p_headers);
    perform ops_private.check_size('headers', p_headers, 8192);
    for v_h in select h.key, h.value from pg_catalog.jsonb_each(coalesce(p_headers, '{}'::jsonb)) h order by h.key loop
        if v_h.key !~ '^[A-Za-z0-9-]{1,64}$' then
            perform ops_private.fail(400, 'invalid_argument',
                'headers: a header name is 1-64 letters, digits or -, got '
                || pg_catalog.quote_literal(pg_catalog.left(v_h.key, 64)),
                pg_catalog.jsonb_build_object('argument', 'headers'));
        end if;
        if pg_catalog.jsonb_typeof(v_h.value) <> 'string' or not ops_private.is_secret_reference(v_h.value #>> '{}') then
            perform ops_private.fail(400, 'invalid_argument',
                'headers.' || v_h.key || ' must be a secret reference (env:NAME or file:/absolute/path): header'
                || ' values (tokens) are never stored',
                pg_catalog.jsonb_build_object('argument', 'headers.' || v_h.key));
        end if;
    end loop;
end
$_$;

--
-- Name: check_alert_name(text, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_alert_name(p_what text, p_name text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
begin
    if p_name is null or p_name !~ '^[a-z][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits, _ or -, starting with a letter, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_name, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', p_what));
    end if;
end
$_$;

--
-- Name: check_connection(jsonb, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_connection(p_config jsonb, p_secrets jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
declare
    v_bad  record;
    v_ref  text;
    v_path text;
begin
    perform ops_private.check_object('config', p_config);
    perform ops_private.check_size('config', p_config, 16384);
    perform ops_private.check_object('secrets', p_secrets);
    perform ops_private.check_size('secrets', p_secrets, 16384);

    -- every key and value of config, at any depth, with its path
    for v_bad in
        with recursive node(path, parent, key, value, depth) as (
            select 'config'::text, null::text, null::text, p_config, 0
          union all
            select case when c.key is not null then n.path || '.' || c.key
                        else n.path || '[' || (c.idx - 1)::text || ']' end,
                   n.path, c.key, c.value, n.depth + 1
            from node n
            cross join lateral (
                select o.key, o.value, null::bigint as idx
                from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(n.value) = 'object'
                                                then n.value end) o
                union all
                select null::text, a.value, a.idx
                from pg_catalog.jsonb_array_elements(case when pg_catalog.jsonb_typeof(n.value) = 'array'
                                                          then n.value end) with ordinality a(value, idx)
            ) c
        )
        select n.path, n.parent, n.key,
               case when pg_catalog.jsonb_typeof(n.value) = 'string' then n.value #>> '{}' end as text_value
        from node n
        where n.depth > 0
        order by n.depth, n.path
    loop
        if v_bad.key is not null
           and pg_catalog.replace(pg_catalog.lower(v_bad.key), '-', '_') ~ ops_private.secret_key_pattern() then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s looks like a secret: config holds no secret values; put it in secrets'
                                  ' as a reference (for example {"secrets": {"password": "env:NAME"}} or'
                                  ' "file:/path"), and the worker resolves it', pg_catalog.left(v_bad.path, 200)),
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.path, 200)));
        end if;
        if v_bad.key is not null and ops_private.has_password(v_bad.key) then
            -- the key is not echoed: it holds the password
            perform ops_private.fail(400, 'invalid_argument',
                'a key of ' || pg_catalog.left(v_bad.parent, 200) || ' holds a password: config holds no secret'
                || ' values; put it in secrets as a reference',
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.parent, 200)));
        end if;
        if v_bad.text_value is not null and pg_catalog.lower(pg_catalog.left(v_bad.text_value, 7)) = 'secret:' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s is a secret reference (secret:...) in config: name the secret in secrets'
                                  ' instead, as env:NAME or file:/path (for example {"secrets": {"password":'
                                  ' "env:NAME"}})', pg_catalog.left(v_bad.path, 200)),
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.path, 200)));
        end if;
        if v_bad.text_value is not null and ops_private.has_password(v_bad.text_value) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s holds a password (scheme://user:password@host or password=): leave it out'
                                  ' of the URL or DSN and put it in secrets as a reference (for example'
                                  ' {"secrets": {"password": "env:PGPASSWORD"}})', pg_catalog.left(v_bad.path, 200)),
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.path, 200)));
        end if;
    end loop;

    -- secrets: field -> reference
    if (select count(*) from pg_catalog.jsonb_object_keys(p_secrets)) > 64 then
        perform ops_private.fail(400, 'invalid_argument', 'secrets may name at most 64 fields',
                                 pg_catalog.jsonb_build_object('argument', 'secrets'));
    end if;
    for v_bad in select s.key, s.value from pg_catalog.jsonb_each(p_secrets) s order by s.key loop
        v_path := 'secrets.' || pg_catalog.left(v_bad.key, 64);
        if v_bad.key !~ '^[a-z][a-z0-9_]{0,62}$' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ': a secrets field must be 1-63 lower-case letters, digits or _, starting with a letter',
                pg_catalog.jsonb_build_object('argument', v_path));
        end if;
        if p_config ? v_bad.key then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s is in config and in secrets: a field is one or the other', v_bad.key),
                pg_catalog.jsonb_build_object('argument', 'config.' || v_bad.key));
        end if;
        v_ref := case when pg_catalog.jsonb_typeof(v_bad.value) = 'string' then v_bad.value #>> '{}' end;
        if v_ref is not null and v_ref ~* '^secret:' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ' must be a reference without the secret: prefix (env:NAME or file:/absolute/path)',
                pg_catalog.jsonb_build_object('argument', v_path));
        end if;
        if v_ref is null
           or not (v_ref ~ '^env:[A-Za-z_][A-Za-z0-9_]{0,127}$'
                   or (v_ref ~ '^file:/' and pg_catalog.length(v_ref) <= 1029
                       and pg_catalog.substr(v_ref, 6) !~ '(^|/)\.\.(/|$)' and v_ref !~ '[[:cntrl:]]')) then
            -- the value is not echoed: it may be a secret pasted by mistake
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ' must be a secret reference, env:NAME (letters, digits, _; at most 128) or'
                || ' file:/absolute/path (at most 1024 characters, no .. segments); the value itself is'
                || ' never stored',
                pg_catalog.jsonb_build_object('argument', v_path));
        end if;
    end loop;
end
$_$;

--
-- Name: check_connection_name(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_connection_name(p_name text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
begin
    if p_name is null or p_name !~ '^[a-z][a-z0-9_]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits or _, starting with a letter, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_name, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
end
$_$;

--
-- Name: check_job_spec(text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_job_spec(p_slug text, p_spec jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
declare
    v_allowed constant text[] := array['slug', 'version', 'description', 'params', 'phases', 'source'];
    v_key     text;
    v_param   record;
    v_pkey    text;
    v_type    text;
    v_default jsonb;
    v_req     jsonb;
    v_desc    jsonb;
    v_source  jsonb;
    v_names   text[];
    v_ref     text;
begin
    if p_spec is null or pg_catalog.jsonb_typeof(p_spec) <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'spec must be a JSON object, got ' || coalesce(pg_catalog.jsonb_typeof(p_spec), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'spec'));
    end if;
    perform ops_private.check_size('spec', p_spec, 1048576);
    for v_key in select k from pg_catalog.jsonb_object_keys(p_spec) k loop
        if not (v_key = any (v_allowed)) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec: unknown field %s (allowed: %s)', pg_catalog.left(v_key, 64),
                                  pg_catalog.array_to_string(v_allowed, ', ')),
                pg_catalog.jsonb_build_object('argument', 'spec'));
        end if;
    end loop;
    if pg_catalog.jsonb_typeof(p_spec -> 'slug') is distinct from 'string' or p_spec ->> 'slug' <> p_slug then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('spec.slug must be the job''s slug %s, got %s', p_slug,
                              coalesce(pg_catalog.left((p_spec -> 'slug')::text, 64), 'nothing')),
            pg_catalog.jsonb_build_object('argument', 'spec.slug'));
    end if;
    if (case when pg_catalog.jsonb_typeof(p_spec -> 'version') = 'number'
             then (p_spec ->> 'version')::numeric <> pg_catalog.trunc((p_spec ->> 'version')::numeric)
                  or (p_spec ->> 'version')::numeric not between 1 and 1000
             else true end) then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.version (the spec format version) must be an integer from 1, got '
            || coalesce(pg_catalog.left((p_spec -> 'version')::text, 64), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'spec.version'));
    end if;
    if coalesce(pg_catalog.jsonb_typeof(p_spec -> 'description'), 'null') not in ('null', 'string')
       or pg_catalog.length(p_spec ->> 'description') > 2000 then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.description must be a string of at most 2000 characters, or null',
            pg_catalog.jsonb_build_object('argument', 'spec.description'));
    end if;

    -- params: {name: {type, default, required, description}}
    if coalesce(pg_catalog.jsonb_typeof(p_spec -> 'params'), 'object') <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.params must be an object of declared params, got ' || pg_catalog.jsonb_typeof(p_spec -> 'params'),
            pg_catalog.jsonb_build_object('argument', 'spec.params'));
    end if;
    if (select count(*) from pg_catalog.jsonb_object_keys(coalesce(p_spec -> 'params', '{}'::jsonb))) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'spec.params declares more than 200 params',
            pg_catalog.jsonb_build_object('argument', 'spec.params'));
    end if;
    for v_param in select e.key, e.value from pg_catalog.jsonb_each(coalesce(p_spec -> 'params', '{}'::jsonb)) e loop
        if v_param.key !~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params: invalid param name %s (1-64 letters, digits or _, not starting with a digit)',
                                  pg_catalog.left(v_param.key, 64)),
                pg_catalog.jsonb_build_object('argument', 'spec.params'));
        end if;
        if pg_catalog.jsonb_typeof(v_param.value) <> 'object' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s must be an object {type, default, required, description}', v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key));
        end if;
        for v_pkey in select k from pg_catalog.jsonb_object_keys(v_param.value) k loop
            if v_pkey not in ('type', 'default', 'required', 'description') then
                perform ops_private.fail(400, 'invalid_argument',
                    pg_catalog.format('spec.params.%s: unknown field %s (allowed: type, default, required, description)',
                                      v_param.key, pg_catalog.left(v_pkey, 64)),
                    pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key));
            end if;
        end loop;
        v_type := v_param.value ->> 'type';
        if pg_catalog.jsonb_typeof(v_param.value -> 'type') is distinct from 'string'
           or v_type not in ('string', 'path', 'integer', 'number', 'boolean') then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.type must be one of string, path, integer, number, boolean, got %s',
                                  v_param.key, coalesce(pg_catalog.left((v_param.value -> 'type')::text, 64), 'nothing')),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.type'));
        end if;
        v_req := v_param.value -> 'required';
        v_default := coalesce(v_param.value -> 'default', 'null'::jsonb);
        if v_req is null or pg_catalog.jsonb_typeof(v_req) <> 'boolean' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.required must be true or false', v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.required'));
        end if;
        if (v_req = 'true'::jsonb) <> (v_default = 'null'::jsonb) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s: a param is required exactly when it has no default', v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key));
        end if;
        if v_default <> 'null'::jsonb and ops_private.param_problem(v_type, v_default) is not null then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.default %s', v_param.key,
                                  ops_private.param_problem(v_type, v_default)),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.default'));
        end if;
        v_desc := v_param.value -> 'description';
        if coalesce(pg_catalog.jsonb_typeof(v_desc), 'null') not in ('null', 'string')
           or pg_catalog.length(v_desc #>> '{}') > 2000 then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.description must be a string of at most 2000 characters, or null',
                                  v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.description'));
        end if;
    end loop;

    -- phases: as create_run takes them, and every ${params.X} they use is declared
    if pg_catalog.jsonb_typeof(p_spec -> 'phases') is distinct from 'array'
       or pg_catalog.jsonb_array_length(p_spec -> 'phases') = 0 then
        perform ops_private.fail(400, 'invalid_argument', 'spec.phases must be a non-empty array of phases',
            pg_catalog.jsonb_build_object('argument', 'spec.phases'));
    end if;
    perform ops_private.normalize_phases(p_spec -> 'phases');
    select pg_catalog.array_agg(k) into v_names
    from pg_catalog.jsonb_object_keys(coalesce(p_spec -> 'params', '{}'::jsonb)) k;
    select m[1] into v_ref
    from pg_catalog.regexp_matches((p_spec -> 'phases')::text, '\$\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)', 'g') m
    where not (m[1] = any (coalesce(v_names, '{}'))) limit 1;
    if v_ref is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('spec.phases use ${params.%s}, which spec.params does not declare', v_ref),
            pg_catalog.jsonb_build_object('argument', 'spec.phases', 'param', v_ref));
    end if;

    -- source: {path, digest[, dirty]}
    v_source := p_spec -> 'source';
    if v_source is null or pg_catalog.jsonb_typeof(v_source) <> 'object'
       or pg_catalog.jsonb_typeof(v_source -> 'path') is distinct from 'string'
       or pg_catalog.length(v_source ->> 'path') not between 1 and 1000
       or pg_catalog.jsonb_typeof(v_source -> 'digest') is distinct from 'string'
       or v_source ->> 'digest' !~ '^blake3:[0-9a-f]{64}$'
       or coalesce(pg_catalog.jsonb_typeof(v_source -> 'dirty'), 'boolean') <> 'boolean'
       or exists (select 1 from pg_catalog.jsonb_object_keys(v_source) k where k not in ('path', 'digest', 'dirty')) then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.source must be {"path": the spec file (1-1000 characters), "digest": "blake3:<64 hex>"'
            || ' of its bytes, "dirty": optional boolean}',
            pg_catalog.jsonb_build_object('argument', 'spec.source'));
    end if;
    return pg_catalog.jsonb_build_object(
        'slug', p_spec -> 'slug', 'version', p_spec -> 'version',
        'description', coalesce(p_spec -> 'description', 'null'::jsonb),
        'params', coalesce(p_spec -> 'params', '{}'::jsonb),
        'phases', p_spec -> 'phases', 'source', v_source);
end
$_$;

--
-- Name: check_object(text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_object(p_name text, p_value jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $$
begin
    if p_value is not null and pg_catalog.jsonb_typeof(p_value) <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('%s must be a JSON object, got %s', p_name, pg_catalog.jsonb_typeof(p_value)),
            pg_catalog.jsonb_build_object('argument', p_name));
    end if;
end
$$;

--
-- Name: check_phase_connections(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_phase_connections() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
declare
    v_names jsonb := new.params -> 'connections';
    v_elem  jsonb;
    v_name  text;
    v_slug  text;
begin
    if v_names = 'null'::jsonb then
        return new;
    end if;
    if pg_catalog.jsonb_typeof(v_names) <> 'array' then
        perform ops_private.fail(400, 'invalid_argument',
            'phase ' || new.name || ': params.connections must be an array of connection names, got '
            || pg_catalog.jsonb_typeof(v_names),
            pg_catalog.jsonb_build_object('argument', 'phases', 'phase', new.name));
    end if;
    for v_elem in select pg_catalog.jsonb_array_elements(v_names) loop
        v_name := case when pg_catalog.jsonb_typeof(v_elem) = 'string' then v_elem #>> '{}' end;
        if v_name is null or v_name !~ '^[a-z][a-z0-9_]{0,62}$' then
            perform ops_private.fail(400, 'invalid_argument',
                'phase ' || new.name || ': params.connections must hold connection names (1-63 lower-case'
                || ' letters, digits or _), got ' || pg_catalog.left(v_elem::text, 64),
                pg_catalog.jsonb_build_object('argument', 'phases', 'phase', new.name));
        end if;
        if not exists (select 1 from ops.connections c
                       where c.workspace_id = new.workspace_id and c.name = v_name) then
            select w.slug into v_slug from ops.workspaces w where w.id = new.workspace_id;
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('phase %s names connection %s, which workspace %s does not have: register'
                                  ' it with `control-room connections create` (a spec only names connections;'
                                  ' the workspace holds them)', new.name, v_name, v_slug),
                pg_catalog.jsonb_build_object('argument', 'phases', 'phase', new.name, 'connection', v_name));
        end if;
    end loop;
    return new;
end
$_$;

--
-- Name: check_phase_transition(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_phase_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if tg_op = 'INSERT' then
        perform ops_private.fail(409, 'conflict',
            pg_catalog.format('a phase starts as waiting, queued or succeeded, not %s (docs/state_machine.md)',
                              new.state),
            pg_catalog.jsonb_build_object('phase_id', new.id, 'to', new.state));
    end if;
    if not (case old.state
                when 'waiting' then new.state in ('queued', 'skipped', 'cancelled')
                when 'queued' then new.state in ('running', 'skipped', 'cancelled')
                when 'running' then new.state in ('succeeded', 'queued', 'failed', 'cancelled')
                else false   -- succeeded, failed, skipped and cancelled are final
            end) then
        perform ops_private.fail(409, 'conflict',
            pg_catalog.format('illegal phase transition %s -> %s (docs/state_machine.md)', old.state, new.state),
            pg_catalog.jsonb_build_object('phase_id', old.id, 'from', old.state, 'to', new.state));
    end if;
    return new;
end
$$;

--
-- Name: check_run_transition(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_run_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if tg_op = 'INSERT' then
        perform ops_private.fail(409, 'conflict',
            pg_catalog.format('a run starts as queued, not %s (docs/state_machine.md)', new.state),
            pg_catalog.jsonb_build_object('run_id', new.id, 'to', new.state));
    end if;
    if not (case old.state
                when 'queued' then new.state in ('running', 'cancelled')
                when 'running' then new.state in ('succeeded', 'failed', 'cancelled')
                else false   -- succeeded, failed and cancelled are final
            end) then
        perform ops_private.fail(409, 'conflict',
            pg_catalog.format('illegal run transition %s -> %s (docs/state_machine.md)', old.state, new.state),
            pg_catalog.jsonb_build_object('run_id', old.id, 'from', old.state, 'to', new.state));
    end if;
    return new;
end
$$;

--
-- Name: schedules; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.schedules (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    job_id uuid NOT NULL,
    name text NOT NULL,
    description text,
    cron text,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    cron_minutes integer[],
    cron_hours integer[],
    cron_days integer[],
    cron_months integer[],
    cron_weekdays integer[],
    cron_days_star boolean,
    cron_weekdays_star boolean,
    interval_seconds integer,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    catchup text DEFAULT 'latest'::text NOT NULL,
    catchup_max integer DEFAULT 10 NOT NULL,
    max_concurrent integer DEFAULT 1 NOT NULL,
    overlap text DEFAULT 'skip'::text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    anchor_at timestamp with time zone DEFAULT now() NOT NULL,
    next_tick_at timestamp with time zone,
    last_tick_at timestamp with time zone,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schedules_catchup_check CHECK ((catchup = ANY (ARRAY['skip'::text, 'latest'::text, 'all'::text]))),
    CONSTRAINT schedules_catchup_max_check CHECK (((catchup_max >= 1) AND (catchup_max <= 1000))),
    CONSTRAINT schedules_check CHECK (((cron IS NULL) <> (interval_seconds IS NULL))),
    CONSTRAINT schedules_cron_check CHECK ((length(cron) <= 200)),
    CONSTRAINT schedules_description_check CHECK ((length(description) <= 1000)),
    CONSTRAINT schedules_interval_seconds_check CHECK (((interval_seconds >= 1) AND (interval_seconds <= 31622400))),
    CONSTRAINT schedules_max_concurrent_check CHECK (((max_concurrent >= 1) AND (max_concurrent <= 100))),
    CONSTRAINT schedules_name_check CHECK ((name ~ '^[a-z][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT schedules_overlap_check CHECK ((overlap = ANY (ARRAY['skip'::text, 'queue'::text, 'cancel_previous'::text]))),
    CONSTRAINT schedules_params_check CHECK ((jsonb_typeof(params) = 'object'::text)),
    CONSTRAINT schedules_priority_check CHECK (((priority >= '-1000'::integer) AND (priority <= 1000))),
    CONSTRAINT schedules_timezone_check CHECK ((length(timezone) <= 64))
);

--
-- Name: TABLE schedules; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.schedules IS 'Cron or interval schedules of a job: params, catch-up and overlap policies, the next tick.';

--
-- Name: check_schedule(ops.schedules, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_schedule(s ops.schedules, p_now timestamp with time zone) RETURNS ops.schedules
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_parsed jsonb;
begin
    if (s.cron is null) = (s.interval_seconds is null) then
        perform ops_private.fail(400, 'invalid_argument',
            'a schedule has either cron (with timezone) or interval_seconds, not both and not neither',
            pg_catalog.jsonb_build_object('argument', case when s.cron is null then 'cron' else 'interval_seconds' end));
    end if;
    if s.timezone is null
       or not exists (select 1 from pg_catalog.pg_timezone_names z where z.name = s.timezone) then
        perform ops_private.fail(400, 'invalid_argument',
            'timezone must be an IANA time zone name (for example Europe/Berlin or UTC), got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(s.timezone, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'timezone'));
    end if;
    if s.interval_seconds is not null and s.interval_seconds not between 1 and 31622400 then
        perform ops_private.fail(400, 'invalid_argument',
            'interval_seconds must be between 1 and 31622400 (366 days)',
            pg_catalog.jsonb_build_object('argument', 'interval_seconds'));
    end if;
    if s.catchup is null or s.catchup not in ('skip', 'latest', 'all') then
        perform ops_private.fail(400, 'invalid_argument',
            'catchup must be one of skip, latest, all, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(s.catchup, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'catchup'));
    end if;
    if s.catchup_max is null or s.catchup_max not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'catchup_max must be between 1 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'catchup_max'));
    end if;
    if s.max_concurrent is null or s.max_concurrent not between 1 and 100 then
        perform ops_private.fail(400, 'invalid_argument', 'max_concurrent must be between 1 and 100',
                                 pg_catalog.jsonb_build_object('argument', 'max_concurrent'));
    end if;
    if s.overlap is null or s.overlap not in ('skip', 'queue', 'cancel_previous') then
        perform ops_private.fail(400, 'invalid_argument',
            'overlap must be one of skip, queue, cancel_previous, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(s.overlap, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'overlap'));
    end if;
    if s.priority is null or s.priority not between -1000 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'priority must be between -1000 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'priority'));
    end if;
    if s.description is not null and pg_catalog.length(s.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 pg_catalog.jsonb_build_object('argument', 'description'));
    end if;
    perform ops_private.check_object('params', s.params);
    perform ops_private.check_size('params', s.params, 65536);
    if s.cron is not null then
        if pg_catalog.length(s.cron) > 200 then
            perform ops_private.fail(400, 'invalid_argument', 'cron must be at most 200 characters',
                                     pg_catalog.jsonb_build_object('argument', 'cron'));
        end if;
        v_parsed := ops_private.cron_parse(s.cron);
        s.cron := pg_catalog.regexp_replace(pg_catalog.btrim(s.cron), '\s+', ' ', 'g');
        s.cron_minutes := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'minutes')::integer);
        s.cron_hours := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'hours')::integer);
        s.cron_days := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'days')::integer);
        s.cron_months := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'months')::integer);
        s.cron_weekdays := array(select pg_catalog.jsonb_array_elements_text(v_parsed -> 'weekdays')::integer);
        s.cron_days_star := (v_parsed ->> 'days_star')::boolean;
        s.cron_weekdays_star := (v_parsed ->> 'weekdays_star')::boolean;
    else
        s.cron_minutes := null; s.cron_hours := null; s.cron_days := null; s.cron_months := null;
        s.cron_weekdays := null; s.cron_days_star := null; s.cron_weekdays_star := null;
        s.anchor_at := p_now;
    end if;
    s.next_tick_at := case when s.enabled then ops_private.schedule_next(s, p_now) end;
    if s.cron is not null and ops_private.schedule_next(s, p_now) is null then
        perform ops_private.fail(400, 'invalid_argument',
            'cron ' || pg_catalog.quote_literal(s.cron) || ' never fires (no such day in the next 5 years)',
            pg_catalog.jsonb_build_object('argument', 'cron'));
    end if;
    return s;
end
$$;

--
-- Name: check_size(text, jsonb, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.check_size(p_name text, p_value jsonb, p_max_bytes integer) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $$
declare
    v_size integer;
begin
    if p_value is null then
        return;
    end if;
    v_size := pg_catalog.octet_length(p_value::text);
    if v_size > p_max_bytes then
        perform ops_private.fail(413, 'payload_too_large',
            pg_catalog.format('%s is %s bytes; the limit is %s', p_name, v_size, p_max_bytes),
            pg_catalog.jsonb_build_object('argument', p_name, 'size', v_size, 'limit', p_max_bytes));
    end if;
end
$$;

--
-- Name: claim_connections(uuid, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_connections(p_workspace uuid, p_names jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (
        select coalesce(pg_catalog.jsonb_object_agg(c.name, pg_catalog.jsonb_build_object(
                   'type', c.type, 'config', c.config,
                   'secrets', (select coalesce(pg_catalog.jsonb_object_agg(s.field, s.reference), '{}'::jsonb)
                               from ops.secrets_refs s where s.connection_id = c.id),
                   'version', c.version)), '{}'::jsonb)
        from ops.connections c
        where c.workspace_id = p_workspace
          and c.name in (select pg_catalog.jsonb_array_elements_text(p_names)));
end
$$;

--
-- Name: claim_due_at(text[], uuid[], timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_due_at(p_kinds text[], p_workspaces uuid[], p_now timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    SET search_path TO ''
    SET enable_bitmapscan TO 'off'
    AS $$
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

--
-- Name: phases; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.phases (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    run_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    ordinal integer NOT NULL,
    kind text NOT NULL,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    depends_on text[] DEFAULT '{}'::text[] NOT NULL,
    state text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    max_attempts integer NOT NULL,
    timeout_seconds integer NOT NULL,
    retry_backoff_seconds numeric NOT NULL,
    retry_backoff_max_seconds numeric NOT NULL,
    queued_at timestamp with time zone,
    not_before timestamp with time zone,
    lease_token uuid,
    lease_seconds integer,
    lease_expires_at timestamp with time zone,
    claim_id uuid,
    claimed_by uuid,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    progress jsonb,
    output_manifest jsonb,
    error jsonb,
    reused_from_phase_id uuid,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    fair_round bigint,
    CONSTRAINT phases_state_check CHECK ((state = ANY (ARRAY['waiting'::text, 'queued'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'skipped'::text, 'cancelled'::text])))
)
WITH (fillfactor='80', autovacuum_vacuum_scale_factor='0.02', autovacuum_vacuum_threshold='500', autovacuum_analyze_scale_factor='0.02');

--
-- Name: claim_expired_candidate(timestamp with time zone, text[], uuid[], uuid, uuid[], uuid[]); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_expired_candidate(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_skip uuid[], p_busy uuid[]) RETURNS ops.phases
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    AS $$
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

--
-- Name: claim_json(ops.phases, ops.runs); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_json(p ops.phases, r ops.runs) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
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
                                  'priority', r.priority, 'parent_run_id', r.parent_run_id),
        'connections', case when jsonb_typeof(p.params -> 'connections') = 'array'
                            then ops_private.claim_connections(p.workspace_id, p.params -> 'connections')
                            else '{}'::jsonb end);
end
$$;

--
-- Name: claim_next(timestamp with time zone, text[], uuid[], uuid, uuid, integer, uuid, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_next(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_uid uuid, p_lease_seconds integer, p_claim uuid, p_held boolean) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: claim_queued_candidate(timestamp with time zone, text[], uuid[], uuid, uuid[], uuid[]); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_queued_candidate(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_skip uuid[], p_busy uuid[]) RETURNS ops.phases
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    AS $$
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

--
-- Name: claim_scope(text[], integer, uuid, uuid, uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.claim_scope(p_kinds text[], p_lease_seconds integer, p_wsid uuid, p_run uuid, p_uid uuid) RETURNS uuid[]
    LANGUAGE plpgsql
    AS $_$
declare
    v_ws   uuid[];
    v_pins uuid[];
begin
    if p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 1 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    if p_kinds is not null then
        if cardinality(p_kinds) = 0 or cardinality(p_kinds) > 100
           or exists (select 1 from unnest(p_kinds) k where k is null or k !~ '^[a-z][a-z0-9_]{0,63}$') then
            perform ops_private.fail(400, 'invalid_argument',
                'kinds must be a non-empty list of at most 100 kind names such as python or sql',
                jsonb_build_object('argument', 'kinds'));
        end if;
    end if;

    if ops_private.is_privileged() then
        if p_wsid is not null then
            v_ws := array[p_wsid];
        end if;
    else
        if p_uid is null then
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
        if p_wsid is not null and not (p_wsid = any (v_pins)) then
            perform ops_private.fail(403, 'forbidden',
                'workspace ' || p_wsid::text || ' is not one this token is pinned to',
                jsonb_build_object('argument', 'workspace_id', 'reason', 'workspace_not_pinned'));
        end if;
        v_ws := array(select m.workspace_id from ops.workspace_members m
                      where m.principal_id = p_uid and m.role = 'executor' and m.workspace_id = any (v_pins));
        if p_wsid is not null then
            if not (p_wsid = any (v_ws)) then
                perform ops_private.fail(403, 'forbidden', 'caller is not an executor in workspace ' || p_wsid::text);
            end if;
            v_ws := array[p_wsid];
        end if;
        if cardinality(v_ws) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'caller is not an executor in any workspace its token is pinned to');
        end if;
    end if;
    if p_run is not null and not exists (select 1 from ops.runs r where r.id = p_run
                                         and (v_ws is null or r.workspace_id = any (v_ws))) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    return v_ws;
end
$_$;

--
-- Name: connections; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.connections (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    config jsonb DEFAULT '{}'::jsonb NOT NULL,
    description text,
    version integer DEFAULT 1 NOT NULL,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_by uuid,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_test_at timestamp with time zone,
    last_test_ok boolean,
    last_test_message text,
    CONSTRAINT connections_config_check CHECK ((jsonb_typeof(config) = 'object'::text)),
    CONSTRAINT connections_description_check CHECK ((length(description) <= 1000)),
    CONSTRAINT connections_last_test_message_check CHECK ((length(last_test_message) <= 500)),
    CONSTRAINT connections_name_check CHECK ((name ~ '^[a-z][a-z0-9_]{0,62}$'::text)),
    CONSTRAINT connections_type_check CHECK ((type = ANY (ARRAY['postgres'::text, 's3'::text, 'trino'::text, 'spark'::text, 'http'::text, 'dbt-profile'::text]))),
    CONSTRAINT connections_version_check CHECK ((version >= 1))
);

--
-- Name: TABLE connections; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.connections IS 'Named connections of a workspace: type and non-secret config. Secrets are in ops.secrets_refs, by reference only.';

--
-- Name: connection_json(ops.connections); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.connection_json(c ops.connections) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', c.id, 'workspace_id', c.workspace_id, 'name', c.name, 'type', c.type,
        'config', c.config, 'secrets', ops_private.connection_secrets(c.id),
        'description', c.description, 'version', c.version,
        'created_at', c.created_at, 'updated_at', c.updated_at,
        'last_test', case when c.last_test_at is null then null
                          else pg_catalog.jsonb_build_object('at', c.last_test_at, 'ok', c.last_test_ok,
                                                             'message', c.last_test_message) end)
$$;

--
-- Name: connection_secrets(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.connection_secrets(p_connection uuid) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select coalesce(pg_catalog.jsonb_object_agg(s.field, s.reference), '{}'::jsonb)
    from ops.secrets_refs s where s.connection_id = p_connection
$$;

--
-- Name: connection_workspace(uuid, text[]); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.connection_workspace(p_workspace uuid, p_roles text[]) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return ops_private.require_role(p_workspace, p_roles, true);
end
$$;

--
-- Name: cron_field(text, text, integer, integer, text[], integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.cron_field(p_text text, p_field text, p_min integer, p_max integer, p_names text[] DEFAULT NULL::text[], p_names_from integer DEFAULT 0) RETURNS integer[]
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
declare
    v_item  text;
    v_m     text[];
    v_lo    integer;
    v_hi    integer;
    v_step  integer;
    v_out   integer[] := '{}';
    v_text  text := pg_catalog.upper(p_text);
    i       integer;
begin
    if p_names is not null then
        for i in 1 .. pg_catalog.array_length(p_names, 1) loop
            v_text := pg_catalog.regexp_replace(v_text, '\m' || p_names[i] || '\M',
                                                (p_names_from + i - 1)::text, 'g');
        end loop;
    end if;
    foreach v_item in array pg_catalog.string_to_array(v_text, ',') loop
        v_m := pg_catalog.regexp_match(v_item, '^(\*|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,2}))?$');
        if v_m is null then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('cron field %s: %s is not a number, a range a-b, * or one of them with /step',
                                  p_field, pg_catalog.quote_literal(pg_catalog.left(p_text, 64))),
                pg_catalog.jsonb_build_object('argument', 'cron', 'field', p_field));
        end if;
        if v_m[1] = '*' then
            v_lo := p_min;
            v_hi := p_max;
        else
            v_lo := v_m[2]::integer;
            v_hi := case when v_m[3] is not null then v_m[3]::integer
                         when v_m[4] is not null then p_max else v_lo end;
        end if;
        v_step := coalesce(v_m[4]::integer, 1);
        if v_lo < p_min or v_hi > p_max or v_lo > v_hi or v_step < 1 then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('cron field %s: %s is out of range (%s-%s, a range low-high, a step of at least 1)',
                                  p_field, pg_catalog.quote_literal(pg_catalog.left(v_item, 64)), p_min, p_max),
                pg_catalog.jsonb_build_object('argument', 'cron', 'field', p_field));
        end if;
        v_out := v_out || array(select pg_catalog.generate_series(v_lo, v_hi, v_step));
    end loop;
    return array(select distinct x from pg_catalog.unnest(v_out) x order by x);
end
$_$;

--
-- Name: cron_parse(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.cron_parse(p_cron text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $$
declare
    v_cron   text := pg_catalog.btrim(pg_catalog.lower(p_cron));
    v_fields text[];
    v_dow    integer[];
begin
    v_cron := case v_cron when '@yearly' then '0 0 1 1 *' when '@annually' then '0 0 1 1 *'
                          when '@monthly' then '0 0 1 * *' when '@weekly' then '0 0 * * 0'
                          when '@daily' then '0 0 * * *' when '@midnight' then '0 0 * * *'
                          when '@hourly' then '0 * * * *' else v_cron end;
    v_fields := pg_catalog.regexp_split_to_array(v_cron, '\s+');
    if v_cron is null or v_cron = '' or pg_catalog.array_length(v_fields, 1) <> 5 then
        perform ops_private.fail(400, 'invalid_argument',
            'cron must have 5 fields (minute hour day-of-month month day-of-week), got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_cron, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'cron'));
    end if;
    v_dow := ops_private.cron_field(v_fields[5], 'day-of-week', 0, 7,
                                    array['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'], 0);
    v_dow := array(select distinct case when d = 7 then 0 else d end from pg_catalog.unnest(v_dow) d order by 1);
    return pg_catalog.jsonb_build_object(
        'minutes', to_jsonb(ops_private.cron_field(v_fields[1], 'minute', 0, 59)),
        'hours', to_jsonb(ops_private.cron_field(v_fields[2], 'hour', 0, 23)),
        'days', to_jsonb(ops_private.cron_field(v_fields[3], 'day-of-month', 1, 31)),
        'months', to_jsonb(ops_private.cron_field(v_fields[4], 'month', 1, 12,
                              array['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP',
                                    'OCT', 'NOV', 'DEC'], 1)),
        'weekdays', to_jsonb(v_dow),
        'days_star', pg_catalog.left(v_fields[3], 1) = '*',
        'weekdays_star', pg_catalog.left(v_fields[5], 1) = '*');
end
$$;

--
-- Name: datasets; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.datasets (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    layer text NOT NULL,
    location text NOT NULL,
    format text NOT NULL,
    owner text,
    tags text[] DEFAULT '{}'::text[] NOT NULL,
    schema_state text DEFAULT 'active'::text NOT NULL,
    schema_version integer DEFAULT 0 NOT NULL,
    blocked_change jsonb,
    blocked_at timestamp with time zone,
    last_run_id uuid,
    last_phase_id uuid,
    last_table_version bigint,
    last_digest text,
    last_rows bigint,
    last_written_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    data_time timestamp with time zone,
    source_cursor text,
    data_time_run_id uuid,
    data_time_job_id uuid,
    data_time_recorded_at timestamp with time zone,
    upstream text[],
    CONSTRAINT datasets_format_check CHECK ((format ~ '^[a-z][a-z0-9_]{0,63}$'::text)),
    CONSTRAINT datasets_layer_check CHECK ((layer = ANY (ARRAY['raw'::text, 'bronze'::text, 'silver'::text, 'gold'::text, 'other'::text]))),
    CONSTRAINT datasets_location_check CHECK (((length(location) >= 1) AND (length(location) <= 2048))),
    CONSTRAINT datasets_name_check CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$'::text)),
    CONSTRAINT datasets_owner_check CHECK (((length(owner) >= 1) AND (length(owner) <= 200))),
    CONSTRAINT datasets_schema_state_check CHECK ((schema_state = ANY (ARRAY['active'::text, 'blocked'::text, 'accepted'::text]))),
    CONSTRAINT datasets_schema_version_check CHECK ((schema_version >= 0)),
    CONSTRAINT datasets_source_cursor_check CHECK ((length(source_cursor) <= 200))
);

--
-- Name: COLUMN datasets.data_time; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.datasets.data_time IS 'Every source change before this moment is in the dataset (FRESHNESS events move it forward).';

--
-- Name: COLUMN datasets.source_cursor; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.datasets.source_cursor IS 'The newest source change included, in the source''s terms (e.g. Odoo''s newest write_date).';

--
-- Name: COLUMN datasets.upstream; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.datasets.upstream IS 'What the dataset was built from (catalog names, and source:<name>), as its last writer said (DATASET_LINEAGE events).';

--
-- Name: dataset_record_json(ops.datasets, boolean, integer, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.dataset_record_json(p_d ops.datasets, p_recorded boolean, p_version integer, p_change text) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select jsonb_build_object('dataset_id', p_d.id, 'workspace_id', p_d.workspace_id, 'name', p_d.name,
                              'layer', p_d.layer, 'schema_state', p_d.schema_state,
                              'schema_version', p_d.schema_version, 'recorded', p_recorded,
                              'version', p_version, 'change', p_change)
$$;

--
-- Name: dead_letters(uuid, text, timestamp with time zone, timestamp with time zone, uuid, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.dead_letters(p_ws uuid, p_spec text, p_since timestamp with time zone, p_at timestamp with time zone, p_id uuid, p_limit integer) RETURNS TABLE(phase_id uuid, failed_at timestamp with time zone, item jsonb)
    LANGUAGE sql STABLE
    AS $$
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

--
-- Name: emit(uuid, uuid, text, integer, text, text, text, jsonb, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.emit(p_run uuid, p_workspace uuid, p_phase text, p_attempt integer, p_type text, p_level text, p_message text, p_payload jsonb, p_now timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
declare
    v_seq bigint;
begin
    update ops.runs r set last_event_seq = r.last_event_seq + 1
    where r.id = p_run
    returning r.last_event_seq into v_seq;
    insert into ops.run_events (run_id, seq, event_id, workspace_id, phase, attempt, ts, recorded_at,
                                level, type, message, payload, principal_id)
    values (p_run, v_seq, gen_random_uuid(), p_workspace, p_phase, p_attempt, p_now, p_now,
            p_level, p_type, coalesce(p_message, ''), coalesce(p_payload, '{}'::jsonb), ops_private.uid());
    return v_seq;
end
$$;

--
-- Name: run_events; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.run_events (
    run_id uuid NOT NULL,
    seq bigint NOT NULL,
    event_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    phase text,
    attempt integer,
    ts timestamp with time zone NOT NULL,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL,
    level text NOT NULL,
    type text NOT NULL,
    message text DEFAULT ''::text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    principal_id uuid,
    CONSTRAINT run_events_level_check CHECK ((level = ANY (ARRAY['debug'::text, 'info'::text, 'warning'::text, 'error'::text])))
);

--
-- Name: event_json(ops.run_events, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.event_json(e ops.run_events, p_sees boolean) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $_$
    select pg_catalog.jsonb_build_object(
        'seq', e.seq, 'event_id', e.event_id, 'run_id', e.run_id, 'phase', e.phase, 'attempt', e.attempt,
        'ts', e.ts, 'recorded_at', e.recorded_at, 'level', e.level, 'type', e.type,
        'message', e.message,
        -- events written before names replaced ids in claimed_by keep an id: hidden too
        'payload', case when not p_sees and e.type in ('PHASE_CLAIMED', 'LEASE_EXPIRED')
                             and e.payload ->> 'claimed_by' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                        then e.payload || '{"claimed_by": null}'::jsonb else e.payload end,
        'principal_id', case when p_sees then e.principal_id end)
$_$;

--
-- Name: fail(integer, text, text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.fail(p_status integer, p_code text, p_message text, p_details jsonb DEFAULT NULL::jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
declare
    v_message text := coalesce(p_message, '');
    v_details jsonb := p_details;
begin
    if pg_catalog.length(v_message) > 1000 then
        v_message := pg_catalog.left(v_message, 1000) || ' ... (truncated)';
    end if;
    if v_details is not null and pg_catalog.octet_length(v_details::text) > 2048 then
        -- keep the short members that say which argument and why; drop the rest
        v_details := coalesce((select pg_catalog.jsonb_object_agg(d.key, d.value)
                               from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(v_details) = 'object'
                                                               then v_details else '{}'::jsonb end) d
                               where pg_catalog.octet_length(d.value::text) <= 200), '{}'::jsonb)
                     || pg_catalog.jsonb_build_object('truncated', true);
    end if;
    if v_details is null then
        raise exception using errcode = 'PT' || p_status::text, message = v_message, hint = p_code;
    end if;
    raise exception using errcode = 'PT' || p_status::text, message = v_message, hint = p_code,
                          detail = v_details::text;
end
$$;

--
-- Name: fail_phase_final(uuid, ops.runs, jsonb, boolean, timestamp with time zone, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.fail_phase_final(p_phase uuid, p_run ops.runs, p_error jsonb, p_retryable boolean, p_now timestamp with time zone, p_lease text DEFAULT 'end'::text) RETURNS ops.runs
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
declare
    v_p ops.phases;
    v_r ops.runs := p_run;
begin
    v_p := ops_private.move_phase(p_phase, 'failed', p_now, p_lease, p_error);
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

--
-- Name: fair_round_next(uuid, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.fair_round_next(p_run uuid, p_priority integer) RETURNS bigint
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    AS $$
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

--
-- Name: find_connection(uuid, text, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.find_connection(p_workspace uuid, p_name text, p_lock boolean) RETURNS ops.connections
    LANGUAGE plpgsql
    AS $$
declare
    v_row ops.connections;
begin
    if p_name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    if p_lock then
        select * into v_row from ops.connections c
        where c.workspace_id = p_workspace and c.name = p_name for update;
    else
        select * into v_row from ops.connections c
        where c.workspace_id = p_workspace and c.name = p_name;
    end if;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'connection ' || pg_catalog.left(p_name, 64) || ' not found in this workspace',
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    return v_row;
end
$$;

--
-- Name: jobs; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.jobs (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    slug text NOT NULL,
    description text,
    owner text,
    tags jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    latest_version integer DEFAULT 0 NOT NULL,
    freshness_slo_seconds integer DEFAULT 900 NOT NULL,
    slo_state text DEFAULT 'unknown'::text NOT NULL,
    slo_breached_at timestamp with time zone,
    slo_checked_at timestamp with time zone,
    max_concurrent_runs integer,
    CONSTRAINT jobs_description_check CHECK ((length(description) <= 2000)),
    CONSTRAINT jobs_freshness_slo_seconds_check CHECK (((freshness_slo_seconds >= 60) AND (freshness_slo_seconds <= 31622400))),
    CONSTRAINT jobs_max_concurrent_runs_check CHECK (((max_concurrent_runs >= 1) AND (max_concurrent_runs <= 1000))),
    CONSTRAINT jobs_owner_check CHECK ((length(owner) <= 200)),
    CONSTRAINT jobs_slo_state_check CHECK ((slo_state = ANY (ARRAY['unknown'::text, 'ok'::text, 'breached'::text]))),
    CONSTRAINT jobs_slug_check CHECK ((slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT jobs_tags_check CHECK ((jsonb_typeof(tags) = 'object'::text))
);

--
-- Name: TABLE jobs; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.jobs IS 'Jobs: named, versioned pipelines of a workspace (docs/jobs.md).';

--
-- Name: COLUMN jobs.freshness_slo_seconds; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.jobs.freshness_slo_seconds IS 'The freshness objective: the job''s stalest dataset at most this many seconds behind its source.';

--
-- Name: COLUMN jobs.slo_state; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.jobs.slo_state IS 'What evaluate_slos last found: unknown (no dataset with a data time yet), ok, breached.';

--
-- Name: COLUMN jobs.max_concurrent_runs; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.jobs.max_concurrent_runs IS 'At most this many runs queued or running that schedules and sensors start (null: no limit).';

--
-- Name: find_job(text, text, text[], boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.find_job(p_workspace text, p_slug text, p_roles text[], p_lock boolean) RETURNS ops.jobs
    LANGUAGE plpgsql
    AS $_$
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', p_workspace, true);
    v_job ops.jobs;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, p_roles, true, 'workspace');
    if p_slug is null or p_slug !~ '^[a-z0-9][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'job must be a job slug: 1-63 lower-case letters, digits, _ or -, got '
            || coalesce(pg_catalog.left(p_slug, 80), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'job'));
    end if;
    if p_lock then
        select * into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = p_slug for update;
    else
        select * into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = p_slug;
    end if;
    if v_job.id is null then
        perform ops_private.fail(404, 'not_found', 'job ' || p_slug || ' not found in this workspace',
                                 pg_catalog.jsonb_build_object('argument', 'job'));
    end if;
    return v_job;
end
$_$;

--
-- Name: find_schedule(uuid, text, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.find_schedule(p_workspace uuid, p_name text, p_lock boolean) RETURNS ops.schedules
    LANGUAGE plpgsql
    AS $$
declare
    v_row ops.schedules;
begin
    if p_name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    if p_lock then
        select * into v_row from ops.schedules s
        where s.workspace_id = p_workspace and s.name = p_name for update;
    else
        select * into v_row from ops.schedules s where s.workspace_id = p_workspace and s.name = p_name;
    end if;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'schedule ' || pg_catalog.left(p_name, 64) || ' not found in this workspace',
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    return v_row;
end
$$;

--
-- Name: sensors; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.sensors (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid NOT NULL,
    job_id uuid NOT NULL,
    name text NOT NULL,
    connection text NOT NULL,
    query text NOT NULL,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    interval_seconds integer DEFAULT 60 NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    cursor text,
    moves integer DEFAULT 0 NOT NULL,
    evaluations bigint DEFAULT 0 NOT NULL,
    last_evaluated_at timestamp with time zone,
    last_moved_at timestamp with time zone,
    last_run_id uuid,
    last_error text,
    next_evaluation_at timestamp with time zone,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT sensors_connection_check CHECK ((connection ~ '^[a-z][a-z0-9_]{0,62}$'::text)),
    CONSTRAINT sensors_cursor_check CHECK ((length(cursor) <= 1000)),
    CONSTRAINT sensors_evaluations_check CHECK ((evaluations >= 0)),
    CONSTRAINT sensors_interval_seconds_check CHECK (((interval_seconds >= 10) AND (interval_seconds <= 86400))),
    CONSTRAINT sensors_last_error_check CHECK ((length(last_error) <= 1000)),
    CONSTRAINT sensors_moves_check CHECK ((moves >= 0)),
    CONSTRAINT sensors_name_check CHECK ((name ~ '^[a-z][a-z0-9_-]{0,62}$'::text)),
    CONSTRAINT sensors_params_check CHECK ((jsonb_typeof(params) = 'object'::text)),
    CONSTRAINT sensors_query_check CHECK (((length(query) >= 1) AND (length(query) <= 4096)))
);

--
-- Name: TABLE sensors; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.sensors IS 'Source-changed sensors: a query on a postgres connection whose value, when it moves, starts a run of the job.';

--
-- Name: find_sensor(uuid, text, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.find_sensor(p_workspace uuid, p_name text, p_lock boolean) RETURNS ops.sensors
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: schedule_ticks; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.schedule_ticks (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    schedule_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    scheduled_for timestamp with time zone NOT NULL,
    state text NOT NULL,
    reason text,
    run_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schedule_ticks_reason_check CHECK ((length(reason) <= 1000)),
    CONSTRAINT schedule_ticks_state_check CHECK ((state = ANY (ARRAY['created'::text, 'skipped'::text, 'failed'::text])))
);

--
-- Name: TABLE schedule_ticks; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.schedule_ticks IS 'One row per fire time of a schedule: created (its run), skipped (why) or failed (the error).';

--
-- Name: fire_tick(ops.schedules, timestamp with time zone, text, text, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.fire_tick(s ops.schedules, p_for timestamp with time zone, p_state text, p_reason text, p_now timestamp with time zone) RETURNS ops.schedule_ticks
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: github_check_runs; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.github_check_runs (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    seq bigint NOT NULL,
    workspace_id uuid NOT NULL,
    run_id uuid NOT NULL,
    repo text NOT NULL,
    sha text NOT NULL,
    context text NOT NULL,
    details_url text,
    run_state text NOT NULL,
    status text NOT NULL,
    conclusion text,
    title text NOT NULL,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    version integer DEFAULT 1 NOT NULL,
    delivered_version integer DEFAULT 0 NOT NULL,
    leased_version integer,
    check_run_id bigint,
    html_url text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    delivery text DEFAULT 'pending'::text NOT NULL,
    claims integer DEFAULT 0 NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 8 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_expires_at timestamp with time zone,
    http_status integer,
    last_error text,
    delivered_at timestamp with time zone,
    CONSTRAINT github_check_runs_check_run_id_check CHECK ((check_run_id > 0)),
    CONSTRAINT github_check_runs_conclusion_check CHECK ((conclusion = ANY (ARRAY['success'::text, 'failure'::text, 'cancelled'::text]))),
    CONSTRAINT github_check_runs_context_check CHECK (((length(context) >= 1) AND (length(context) <= 255))),
    CONSTRAINT github_check_runs_delivery_check CHECK ((delivery = ANY (ARRAY['pending'::text, 'delivering'::text, 'delivered'::text, 'failed'::text]))),
    CONSTRAINT github_check_runs_details_url_check CHECK ((length(details_url) <= 2048)),
    CONSTRAINT github_check_runs_html_url_check CHECK ((length(html_url) <= 2048)),
    CONSTRAINT github_check_runs_last_error_check CHECK ((length(last_error) <= 500)),
    CONSTRAINT github_check_runs_repo_check CHECK ((repo ~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$'::text)),
    CONSTRAINT github_check_runs_sha_check CHECK ((sha ~ '^[0-9a-f]{40}$'::text)),
    CONSTRAINT github_check_runs_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'in_progress'::text, 'completed'::text]))),
    CONSTRAINT github_check_runs_title_check CHECK ((length(title) <= 140))
);

--
-- Name: github_check_run_json(ops.github_check_runs); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.github_check_run_json(c ops.github_check_runs) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', c.id, 'workspace_id', c.workspace_id, 'run_id', c.run_id, 'repo', c.repo, 'sha', c.sha,
        'context', c.context, 'details_url', c.details_url, 'run_state', c.run_state, 'status', c.status,
        'conclusion', c.conclusion, 'title', c.title, 'started_at', c.started_at,
        'completed_at', c.completed_at, 'version', c.version, 'delivered_version', c.delivered_version,
        'check_run_id', c.check_run_id, 'html_url', c.html_url, 'created_at', c.created_at,
        'updated_at', c.updated_at, 'delivery', c.delivery, 'attempts', c.attempts,
        'max_attempts', c.max_attempts,
        'next_attempt_at', case when c.delivery in ('pending', 'delivering') then c.next_attempt_at end,
        'http_status', c.http_status, 'last_error', c.last_error, 'delivered_at', c.delivered_at)
$$;

--
-- Name: github_check_run_on_run(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.github_check_run_on_run() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
declare
    v_now        timestamptz := ops_private.now();
    v_repo       text := new.labels ->> 'github_repo';
    v_sha        text := pg_catalog.lower(new.labels ->> 'github_sha');
    v_url        text := new.labels ->> 'github_run_url';
    v_context    text := pg_catalog.left(coalesce(nullif(new.labels ->> 'github_context', ''),
                                                  'control-room/' || new.spec_slug), 255);
    v_status     text;
    v_conclusion text;
    v_title      text;
    v_secs       numeric;
begin
    if v_repo is null or v_sha is null
       or v_repo !~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$' or v_sha !~ '^[0-9a-f]{40}$' then
        return null;
    end if;
    if v_url is not null and (v_url !~ '^https://[^[:space:][:cntrl:]@?#]+$' or pg_catalog.length(v_url) > 2048) then
        v_url := null;
    end if;
    v_status := case when new.state in ('succeeded', 'failed', 'cancelled') then 'completed'
                     when new.state = 'running' then 'in_progress' else 'queued' end;
    v_conclusion := case new.state when 'succeeded' then 'success' when 'failed' then 'failure'
                                   when 'cancelled' then 'cancelled' end;
    v_secs := pg_catalog.round(extract(epoch from (coalesce(new.finished_at, v_now) - new.started_at))::numeric, 1);
    v_title := case new.state
        when 'queued' then 'Control Room run queued'
        when 'running' then 'Control Room run running'
        when 'succeeded' then 'Control Room run succeeded' || coalesce(' in ' || v_secs::text || ' s', '')
        when 'failed' then 'Control Room run failed' || coalesce(': phase ' || (new.error ->> 'phase'), '')
        when 'cancelled' then 'Control Room run cancelled'
        else 'Control Room run ' || new.state end;
    insert into ops.github_check_runs as c
        (workspace_id, run_id, repo, sha, context, details_url, run_state, status, conclusion, title,
         started_at, completed_at, created_at, updated_at, next_attempt_at)
    values (new.workspace_id, new.id, v_repo, v_sha, v_context, v_url, new.state, v_status, v_conclusion,
            pg_catalog.left(v_title, 140), coalesce(new.started_at, new.created_at, v_now),
            case when v_status = 'completed' then coalesce(new.finished_at, v_now) end, v_now, v_now, v_now)
    on conflict (run_id, context) do update
    set run_state = excluded.run_state, status = excluded.status, conclusion = excluded.conclusion,
        title = excluded.title, started_at = excluded.started_at, completed_at = excluded.completed_at,
        details_url = excluded.details_url, version = c.version + 1, updated_at = v_now,
        -- a leased row stays leased (its deliverer records the attempt, then the new version is
        -- due at once); otherwise the new state is due now with fresh attempts
        delivery = case when c.delivery = 'delivering' then 'delivering' else 'pending' end,
        attempts = case when c.delivery = 'delivering' then c.attempts else 0 end,
        next_attempt_at = case when c.delivery = 'delivering' then c.next_attempt_at else v_now end;
    return null;
end
$_$;

--
-- Name: github_state(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.github_state(p_run_state text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select case p_run_state when 'succeeded' then 'success' when 'failed' then 'failure'
                            when 'cancelled' then 'error' else 'pending' end
$$;

--
-- Name: github_statuses; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.github_statuses (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    seq bigint NOT NULL,
    workspace_id uuid NOT NULL,
    run_id uuid NOT NULL,
    repo text NOT NULL,
    sha text NOT NULL,
    context text NOT NULL,
    state text NOT NULL,
    run_state text NOT NULL,
    description text NOT NULL,
    target_url text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    delivery text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 8 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_expires_at timestamp with time zone,
    http_status integer,
    last_error text,
    delivered_at timestamp with time zone,
    CONSTRAINT github_statuses_context_check CHECK (((length(context) >= 1) AND (length(context) <= 255))),
    CONSTRAINT github_statuses_delivery_check CHECK ((delivery = ANY (ARRAY['pending'::text, 'delivering'::text, 'delivered'::text, 'failed'::text, 'superseded'::text]))),
    CONSTRAINT github_statuses_description_check CHECK ((length(description) <= 140)),
    CONSTRAINT github_statuses_last_error_check CHECK ((length(last_error) <= 500)),
    CONSTRAINT github_statuses_repo_check CHECK ((repo ~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$'::text)),
    CONSTRAINT github_statuses_sha_check CHECK ((sha ~ '^[0-9a-f]{40}$'::text)),
    CONSTRAINT github_statuses_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'success'::text, 'failure'::text, 'error'::text]))),
    CONSTRAINT github_statuses_target_url_check CHECK ((length(target_url) <= 2048))
);

--
-- Name: github_status_json(ops.github_statuses); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.github_status_json(s ops.github_statuses) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', s.id, 'workspace_id', s.workspace_id, 'run_id', s.run_id, 'repo', s.repo, 'sha', s.sha,
        'context', s.context, 'state', s.state, 'run_state', s.run_state, 'description', s.description,
        'target_url', s.target_url, 'created_at', s.created_at, 'delivery', s.delivery,
        'attempts', s.attempts, 'max_attempts', s.max_attempts,
        'next_attempt_at', case when s.delivery in ('pending', 'delivering') then s.next_attempt_at end,
        'http_status', s.http_status, 'last_error', s.last_error, 'delivered_at', s.delivered_at,
        'check_run_id', (select c.check_run_id from ops.github_check_runs c
                         where c.run_id = s.run_id and c.context = s.context),
        'check_run_url', (select c.html_url from ops.github_check_runs c
                          where c.run_id = s.run_id and c.context = s.context))
$$;

--
-- Name: github_status_on_run(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.github_status_on_run() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
declare
    v_now     timestamptz := ops_private.now();
    v_repo    text := new.labels ->> 'github_repo';
    v_sha     text := pg_catalog.lower(new.labels ->> 'github_sha');
    v_state   text := ops_private.github_state(new.state);
    v_last    text;
    v_desc    text;
    v_url     text := new.labels ->> 'github_run_url';
    v_context text := coalesce(nullif(new.labels ->> 'github_context', ''), 'control-room/' || new.spec_slug);
    v_secs    numeric;
begin
    if v_repo is null or v_sha is null
       or v_repo !~ '^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$' or v_sha !~ '^[0-9a-f]{40}$' then
        return null;
    end if;
    select s.state into v_last from ops.github_statuses s
    where s.run_id = new.id order by s.seq desc limit 1;
    if v_last is not distinct from v_state then
        return null;                -- queued -> running: still pending
    end if;
    if v_url is not null and (v_url !~ '^https://[^[:space:][:cntrl:]@?#]+$' or pg_catalog.length(v_url) > 2048) then
        v_url := null;
    end if;
    v_secs := pg_catalog.round(extract(epoch from (coalesce(new.finished_at, v_now) - new.started_at))::numeric, 1);
    v_desc := case new.state
        when 'queued' then 'Control Room run queued'
        when 'running' then 'Control Room run running'
        when 'succeeded' then 'Control Room run succeeded' || coalesce(' in ' || v_secs::text || ' s', '')
        when 'failed' then 'Control Room run failed' || coalesce(': phase ' || (new.error ->> 'phase'), '')
        when 'cancelled' then 'Control Room run cancelled'
        else 'Control Room run ' || new.state end;
    update ops.github_statuses s set delivery = 'superseded', next_attempt_at = v_now
    where s.run_id = new.id and s.delivery = 'pending';
    insert into ops.github_statuses (workspace_id, run_id, repo, sha, context, state, run_state, description,
                                     target_url, created_at, next_attempt_at)
    values (new.workspace_id, new.id, v_repo, v_sha, pg_catalog.left(v_context, 255), v_state, new.state,
            pg_catalog.left(v_desc, 140), v_url, v_now, v_now);
    return null;
end
$_$;

--
-- Name: has_password(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.has_password(p_text text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    select p_text ~* '[a-z][a-z0-9+.-]*://[^/?#@[:space:]]*:[^/?#@[:space:]]*@'
        or p_text ~* '(^|[[:space:]?&;])(password|passwd|pwd)[[:space:]]*='
$$;

--
-- Name: inherit_job_version(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.inherit_job_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    new.job_version_id := (select r.job_version_id from ops.runs r where r.id = new.parent_run_id);
    return new;
end
$$;

--
-- Name: insert_run(uuid, text, text, jsonb, jsonb, text, jsonb, integer, uuid, jsonb, text, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.insert_run(p_workspace uuid, p_spec_slug text, p_git_sha text, p_phases jsonb, p_input_manifest jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer, p_parent uuid, p_reuse jsonb, p_digest text, p_now timestamp with time zone) RETURNS uuid
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: int_field(jsonb, text, text, integer, integer, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.int_field(p_obj jsonb, p_key text, p_path text, p_default integer, p_min integer, p_max integer) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE
    AS $$
declare
    v jsonb := p_obj -> p_key;
begin
    if v is null or v = 'null'::jsonb then
        return p_default;
    end if;
    if pg_catalog.jsonb_typeof(v) <> 'number' or (v #>> '{}')::numeric <> pg_catalog.trunc((v #>> '{}')::numeric)
       or (v #>> '{}')::numeric not between p_min and p_max then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('%s must be an integer between %s and %s, got %s', p_path, p_min, p_max, v::text),
            pg_catalog.jsonb_build_object('argument', p_path));
    end if;
    return (v #>> '{}')::numeric::integer;
end
$$;

--
-- Name: invitations; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.invitations (
    workspace_id uuid NOT NULL,
    principal_id uuid NOT NULL,
    role text NOT NULL,
    name text,
    invited_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    accepted_at timestamp with time zone,
    CONSTRAINT invitations_name_check CHECK ((length(name) <= 200)),
    CONSTRAINT invitations_role_check CHECK ((role = ANY (ARRAY['viewer'::text, 'developer'::text, 'admin'::text])))
);

--
-- Name: invitation_json(ops.invitations, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.invitation_json(i ops.invitations, p_now timestamp with time zone) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'workspace_id', i.workspace_id, 'principal_id', i.principal_id, 'role', i.role, 'name', i.name,
        'invited_by', i.invited_by, 'created_at', i.created_at, 'expires_at', i.expires_at,
        'accepted_at', i.accepted_at,
        'state', case when i.accepted_at is not null then 'accepted'
                      when i.expires_at <= p_now then 'expired' else 'pending' end)
$$;

--
-- Name: is_privileged(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.is_privileged() RETURNS boolean
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_role text := coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text);
begin
    if v_role in ('authenticated', 'anon') then     -- the common cases, without a catalog lookup
        return false;
    end if;
    if v_role = 'service_role' then
        return true;
    end if;
    return coalesce((select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles r
                     where r.rolname = v_role), false);
end
$$;

--
-- Name: is_secret_reference(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.is_secret_reference(p_text text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $_$
    select p_text ~ '^env:[A-Za-z_][A-Za-z0-9_]{0,127}$'
        or (p_text ~ '^file:/' and pg_catalog.length(p_text) <= 1029
            and pg_catalog.substr(p_text, 6) !~ '(^|/)\.\.(/|$)' and p_text !~ '[[:cntrl:]]')
$_$;

--
-- Name: is_timestamptz(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.is_timestamptz(p_value text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
declare
    m text[] := pg_catalog.regexp_match(p_value,
        '^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,6})?)?(?:Z|[+-](\d{2})(?::?(\d{2}))?)$');
    y integer;
    mo integer;
begin
    if m is null then
        return false;
    end if;
    y := m[1]::integer;
    mo := m[2]::integer;
    return y between 1 and 9999 and mo between 1 and 12
       and m[3]::integer between 1 and extract(day from pg_catalog.make_date(y, mo, 1)
                                                     + interval '1 month' - interval '1 day')
       and m[4]::integer <= 23 and m[5]::integer <= 59 and coalesce(m[6]::integer, 0) <= 59
       and coalesce(m[7]::integer, 0) <= 15 and coalesce(m[8]::integer, 0) <= 59;
end
$_$;

--
-- Name: job_busy(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.job_busy(p_job uuid) RETURNS text
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: job_freshness_json(ops.jobs); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.job_freshness_json(j ops.jobs) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_now     timestamptz := ops_private.now();
    v_oldest  timestamptz;
    v_lag     double precision;
    v_sets    jsonb;
begin
    select min(d.data_time),
           coalesce(jsonb_agg(jsonb_build_object(
               'name', d.name, 'layer', d.layer, 'data_time', d.data_time,
               'source_cursor', d.source_cursor, 'run_id', d.data_time_run_id,
               'lag_seconds', round(extract(epoch from v_now - d.data_time)::numeric, 1))
               order by d.name), '[]'::jsonb)
      into v_oldest, v_sets
      from (select * from ops.datasets d where d.data_time_job_id = j.id
            order by d.name limit 200) d;
    v_lag := extract(epoch from v_now - v_oldest);
    return jsonb_build_object(
        'slo_seconds', j.freshness_slo_seconds,
        'state', case when v_oldest is null then 'unknown'
                      when v_lag > j.freshness_slo_seconds then 'breached' else 'ok' end,
        'lag_seconds', round(v_lag::numeric, 1),
        'data_time', v_oldest,
        'breached_since', case when j.slo_state = 'breached' then j.slo_breached_at end,
        'checked_at', j.slo_checked_at,
        'datasets', v_sets);
end
$$;

--
-- Name: job_json(ops.jobs); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.job_json(j ops.jobs) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
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

--
-- Name: job_last_run(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.job_last_run(p_job uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (select pg_catalog.jsonb_build_object('id', r.id, 'state', r.state, 'created_at', r.created_at)
            from ops.runs r
            where r.job_version_id in (select v.id from ops.job_versions v where v.job_id = p_job)
            order by r.created_at desc, r.id desc
            limit 1);
end
$$;

--
-- Name: job_next_run_at(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.job_next_run_at(p_job uuid) RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    AS $$
    select min(s.next_tick_at) from ops.schedules s where s.job_id = p_job and s.enabled
$$;

--
-- Name: job_versions; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.job_versions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    job_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    version integer NOT NULL,
    spec jsonb NOT NULL,
    digest text NOT NULL,
    git_sha text NOT NULL,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT job_versions_digest_check CHECK ((digest ~ '^blake3:[0-9a-f]{64}$'::text)),
    CONSTRAINT job_versions_git_sha_check CHECK ((git_sha ~ '^[0-9a-f]{7,64}$'::text)),
    CONSTRAINT job_versions_version_check CHECK ((version >= 1))
);

--
-- Name: TABLE job_versions; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.job_versions IS 'Versions of a job: the spec as validated JSON, its digest and git sha. Immutable.';

--
-- Name: job_version_json(ops.job_versions, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.job_version_json(v ops.job_versions, p_with_spec boolean) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return pg_catalog.jsonb_build_object(
        'id', v.id, 'job_id', v.job_id, 'version', v.version, 'digest', v.digest,
        'git_sha', v.git_sha, 'params', coalesce(v.spec -> 'params', '{}'::jsonb),
        'source', v.spec -> 'source',
        'created_by', case when ops_private.sees_principals(v.workspace_id) then v.created_by end,
        'created_at', v.created_at)
        || case when p_with_spec then pg_catalog.jsonb_build_object('spec', v.spec) else '{}'::jsonb end;
end
$$;

--
-- Name: limit_arg(text, integer, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.limit_arg(p_name text, p_value integer, p_max integer) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $$
begin
    if p_value is null or p_value not between 1 and p_max then
        perform ops_private.fail(400, 'invalid_argument', p_name || ' must be between 1 and ' || p_max,
                                 pg_catalog.jsonb_build_object('argument', p_name));
    end if;
end
$$;

--
-- Name: lineage_json(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.lineage_json(p_run uuid) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
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

--
-- Name: make_repair(ops.runs, text[], text, text, text, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.make_repair(p_r ops.runs, p_rerun text[], p_key text, p_digest text, p_on_active text, p_now timestamp with time zone) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: manifest_tables(jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.manifest_tables(p_manifest jsonb) RETURNS SETOF jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
    select t from pg_catalog.jsonb_array_elements(
        case when pg_catalog.jsonb_typeof(p_manifest -> 'tables') = 'array' then p_manifest -> 'tables'
             when pg_catalog.jsonb_typeof(p_manifest -> 'table') = 'object' then pg_catalog.jsonb_build_array(p_manifest -> 'table')
             else '[]'::jsonb end) t
    where pg_catalog.jsonb_typeof(t) = 'object' and pg_catalog.jsonb_typeof(t -> 'name') = 'string'
$$;

--
-- Name: member_workspaces(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.member_workspaces() RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $$
    select m.workspace_id from ops.workspace_members m
    where m.principal_id = (select auth.uid())
      and not exists (select 1 from ops.principals p
                      where p.id = (select auth.uid()) and p.revoked_at is not null)
$$;

--
-- Name: move_phase(uuid, text, timestamp with time zone, text, jsonb, jsonb, timestamp with time zone, integer, uuid, uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.move_phase(p_phase uuid, p_to text, p_now timestamp with time zone, p_lease text DEFAULT NULL::text, p_error jsonb DEFAULT NULL::jsonb, p_output_manifest jsonb DEFAULT NULL::jsonb, p_not_before timestamp with time zone DEFAULT NULL::timestamp with time zone, p_lease_seconds integer DEFAULT NULL::integer, p_claim_id uuid DEFAULT NULL::uuid, p_claimed_by uuid DEFAULT NULL::uuid) RETURNS ops.phases
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: normalize_phases(jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.normalize_phases(p_phases jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
declare
    v_allowed constant text[] := array['name', 'kind', 'params', 'depends_on', 'max_attempts',
                                       'timeout_seconds', 'retry_backoff_seconds',
                                       'retry_backoff_max_seconds'];
    v_n       integer;
    v_elem    jsonb;
    v_i       integer;
    v_path    text;
    v_key     text;
    v_name    text;
    v_deps    text[];
    v_dep     jsonb;
    v_edges   integer := 0;
    v_base    numeric;
    v_cap     numeric;
    v_names   text[] := '{}';
    v_norm    jsonb[] := '{}';
    v_bad     record;
    v_index   jsonb;            -- name -> index (1-based)
    v_next    jsonb;            -- name -> indexes of the phases that depend on it
    v_indeg   integer[];
    v_queue   integer[] := '{}';
    v_head    integer := 1;
    v_j       integer;
    v_order   jsonb := '[]'::jsonb;
    v_seen    integer[];
    v_path_ix integer[];
begin
    if p_phases is null then
        perform ops_private.fail(400, 'invalid_argument', 'phases is required');
    end if;
    if pg_catalog.jsonb_typeof(p_phases) <> 'array' then
        perform ops_private.fail(400, 'invalid_argument',
            'phases must be a JSON array, got ' || pg_catalog.jsonb_typeof(p_phases));
    end if;
    v_n := pg_catalog.jsonb_array_length(p_phases);
    if v_n = 0 then
        perform ops_private.fail(400, 'invalid_argument', 'phases must name at least one phase');
    end if;
    if v_n > 1000 then
        perform ops_private.fail(413, 'payload_too_large',
            pg_catalog.format('a run may have at most 1000 phases, got %s', v_n));
    end if;

    -- 1. each phase on its own
    for v_i in 0 .. v_n - 1 loop
        v_elem := p_phases -> v_i;
        v_path := pg_catalog.format('phases[%s]', v_i);
        if pg_catalog.jsonb_typeof(v_elem) <> 'object' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ' must be a JSON object, got ' || pg_catalog.jsonb_typeof(v_elem));
        end if;
        for v_key in select pg_catalog.jsonb_object_keys(v_elem) loop
            if not (v_key = any (v_allowed)) then
                perform ops_private.fail(400, 'invalid_argument',
                    pg_catalog.format('%s has an unknown field %s (known: %s)', v_path, v_key,
                                      pg_catalog.array_to_string(v_allowed, ', ')),
                    pg_catalog.jsonb_build_object('argument', v_path || '.' || v_key));
            end if;
        end loop;
        if pg_catalog.jsonb_typeof(v_elem -> 'name') is distinct from 'string'
           or (v_elem ->> 'name') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.name must be a string of 1-128 letters, digits, _ . - starting with a letter or digit, got '
                || coalesce((v_elem -> 'name')::text, 'nothing'),
                pg_catalog.jsonb_build_object('argument', v_path || '.name'));
        end if;
        v_name := v_elem ->> 'name';
        if pg_catalog.jsonb_typeof(v_elem -> 'kind') is distinct from 'string'
           or (v_elem ->> 'kind') !~ '^[a-z][a-z0-9_]{0,63}$' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || '.kind must be a lower-case identifier such as python or sql, got '
                || coalesce((v_elem -> 'kind')::text, 'nothing'),
                pg_catalog.jsonb_build_object('argument', v_path || '.kind'));
        end if;
        if v_elem ? 'params' and v_elem -> 'params' <> 'null'::jsonb then
            perform ops_private.check_object(v_path || '.params', v_elem -> 'params');
            perform ops_private.check_size(v_path || '.params', v_elem -> 'params', 262144);
        end if;
        v_deps := '{}';
        if v_elem ? 'depends_on' and v_elem -> 'depends_on' <> 'null'::jsonb then
            if pg_catalog.jsonb_typeof(v_elem -> 'depends_on') <> 'array' then
                perform ops_private.fail(400, 'invalid_argument',
                    v_path || '.depends_on must be an array of phase names',
                    pg_catalog.jsonb_build_object('argument', v_path || '.depends_on'));
            end if;
            for v_dep in select pg_catalog.jsonb_array_elements(v_elem -> 'depends_on') loop
                if pg_catalog.jsonb_typeof(v_dep) <> 'string' then
                    perform ops_private.fail(400, 'invalid_argument',
                        v_path || '.depends_on must hold phase names (strings), got ' || v_dep::text,
                        pg_catalog.jsonb_build_object('argument', v_path || '.depends_on'));
                end if;
                if (v_dep #>> '{}') = v_name then
                    perform ops_private.fail(400, 'invalid_argument',
                        pg_catalog.format('%s (%s) depends on itself', v_path, v_name),
                        pg_catalog.jsonb_build_object('argument', v_path || '.depends_on'));
                end if;
            end loop;
            select coalesce(pg_catalog.array_agg(d.name order by d.first), '{}') into v_deps
            from (select e.name, min(e.o) as first
                  from pg_catalog.jsonb_array_elements_text(v_elem -> 'depends_on') with ordinality e(name, o)
                  group by e.name) d;
        end if;
        v_edges := v_edges + pg_catalog.cardinality(v_deps);
        if v_edges > 20000 then
            perform ops_private.fail(413, 'payload_too_large',
                'phases may declare at most 20000 dependencies in all',
                pg_catalog.jsonb_build_object('argument', 'phases'));
        end if;
        v_base := ops_private.num_field(v_elem, 'retry_backoff_seconds', v_path || '.retry_backoff_seconds', 10, 0, 86400);
        v_cap := ops_private.num_field(v_elem, 'retry_backoff_max_seconds', v_path || '.retry_backoff_max_seconds',
                                       greatest(3600, v_base), v_base, 604800);
        v_names := v_names || v_name;
        v_norm := v_norm || pg_catalog.jsonb_build_object(
            'name', v_name,
            'kind', v_elem ->> 'kind',
            'params', coalesce(nullif(v_elem -> 'params', 'null'::jsonb), '{}'::jsonb),
            'depends_on', pg_catalog.to_jsonb(v_deps),
            'max_attempts', ops_private.int_field(v_elem, 'max_attempts', v_path || '.max_attempts', 3, 1, 100),
            'timeout_seconds', ops_private.int_field(v_elem, 'timeout_seconds', v_path || '.timeout_seconds', 3600, 1, 604800),
            'retry_backoff_seconds', v_base,
            'retry_backoff_max_seconds', v_cap);
    end loop;

    -- 2. names are unique, and every dependency names a phase of this run
    select t.name, min(t.i) - 1 as first, max(t.i) - 1 as again into v_bad
    from pg_catalog.unnest(v_names) with ordinality t(name, i)
    group by t.name having count(*) > 1
    order by 3 limit 1;
    if v_bad.name is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('phases[%s].name %s is used by phases[%s] too; phase names must be unique',
                              v_bad.again, v_bad.name, v_bad.first),
            pg_catalog.jsonb_build_object('argument', pg_catalog.format('phases[%s].name', v_bad.again)));
    end if;
    select pg_catalog.jsonb_object_agg(t.name, t.i) into v_index
    from pg_catalog.unnest(v_names) with ordinality t(name, i);
    select t.i - 1 as i, t.e ->> 'name' as name, d.dep into v_bad
    from pg_catalog.unnest(v_norm) with ordinality t(e, i),
         pg_catalog.jsonb_array_elements_text(t.e -> 'depends_on') d(dep)
    where not v_index ? d.dep
    order by t.i limit 1;
    if v_bad.name is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('phases[%s] (%s) depends on unknown phase %s', v_bad.i, v_bad.name, v_bad.dep),
            pg_catalog.jsonb_build_object('argument', pg_catalog.format('phases[%s].depends_on', v_bad.i)));
    end if;

    -- 3. Kahn's algorithm with in-degree counts: O(phases + dependencies)
    select pg_catalog.array_agg(pg_catalog.jsonb_array_length(t.e -> 'depends_on') order by t.i)
    into v_indeg
    from pg_catalog.unnest(v_norm) with ordinality t(e, i);
    select coalesce(pg_catalog.jsonb_object_agg(x.dep, x.dependents), '{}'::jsonb) into v_next
    from (select d.dep, pg_catalog.jsonb_agg(t.i order by t.i) as dependents
          from pg_catalog.unnest(v_norm) with ordinality t(e, i),
               pg_catalog.jsonb_array_elements_text(t.e -> 'depends_on') d(dep)
          group by d.dep) x;
    for v_i in 1 .. v_n loop
        if v_indeg[v_i] = 0 then
            v_queue := v_queue || v_i;
        end if;
    end loop;
    while v_head <= pg_catalog.cardinality(v_queue) loop
        v_i := v_queue[v_head];
        v_head := v_head + 1;
        v_order := v_order || (v_norm[v_i] || pg_catalog.jsonb_build_object('ordinal', v_head - 1));
        for v_j in select pg_catalog.jsonb_array_elements_text(coalesce(v_next -> v_names[v_i], '[]'::jsonb))::integer loop
            v_indeg[v_j] := v_indeg[v_j] - 1;
            if v_indeg[v_j] = 0 then
                v_queue := v_queue || v_j;
            end if;
        end loop;
    end loop;
    if pg_catalog.cardinality(v_queue) < v_n then
        -- name the cycle itself: from a phase left over, follow left-over dependencies until one
        -- repeats (phases that merely depend on the cycle are not in it)
        select min(t.i) into v_i from pg_catalog.unnest(v_indeg) with ordinality t(d, i) where t.d > 0;
        v_seen := array_fill(0, array[v_n]);
        v_path_ix := '{}';
        while v_seen[v_i] = 0 loop
            v_seen[v_i] := pg_catalog.cardinality(v_path_ix) + 1;
            v_path_ix := v_path_ix || v_i;
            select (v_index ->> d.dep)::integer into v_i
            from pg_catalog.jsonb_array_elements_text(v_norm[v_i] -> 'depends_on') with ordinality d(dep, o)
            where v_indeg[(v_index ->> d.dep)::integer] > 0
            order by d.o limit 1;
        end loop;
        perform ops_private.fail(400, 'invalid_argument',
            'phases depend on each other in a cycle: ' || (
                select pg_catalog.string_agg(v_names[x.ix], ' -> ' order by x.o)
                from pg_catalog.unnest(v_path_ix[v_seen[v_i]:] || v_i) with ordinality x(ix, o)),
            pg_catalog.jsonb_build_object('argument', 'phases'));
    end if;
    return v_order;
end
$_$;

--
-- Name: notify_queued(uuid, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.notify_queued(p_workspace uuid, p_kind text) RETURNS void
    LANGUAGE plpgsql
    AS $$
begin
    perform pg_catalog.pg_notify('ops_phase_queued', p_workspace::text || ' ' || p_kind);
end
$$;

--
-- Name: notify_run_changes(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.notify_run_changes() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    v_x record;
begin
    for v_x in
        select n.workspace_id, n.run_id, max(n.seq) as seq from new_events n
        group by n.workspace_id, n.run_id
    loop
        perform pg_catalog.pg_notify('ops_run_changes',
                                     v_x.workspace_id::text || ' ' || v_x.run_id::text || ' ' || v_x.seq::text);
    end loop;
    return null;
end
$$;

--
-- Name: now(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.now() RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    AS $$
    select coalesce(nullif(pg_catalog.current_setting('control_room.now', true), '')::timestamptz,
                    pg_catalog.now())
$$;

--
-- Name: num_field(jsonb, text, text, numeric, numeric, numeric); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.num_field(p_obj jsonb, p_key text, p_path text, p_default numeric, p_min numeric, p_max numeric) RETURNS numeric
    LANGUAGE plpgsql IMMUTABLE
    AS $$
declare
    v jsonb := p_obj -> p_key;
begin
    if v is null or v = 'null'::jsonb then
        return p_default;
    end if;
    if pg_catalog.jsonb_typeof(v) <> 'number' or (v #>> '{}')::numeric not between p_min and p_max then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('%s must be a number between %s and %s, got %s', p_path, p_min, p_max, v::text),
            pg_catalog.jsonb_build_object('argument', p_path));
    end if;
    return (v #>> '{}')::numeric;
end
$$;

--
-- Name: param_problem(text, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.param_problem(p_type text, p_value jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    AS $$
declare
    v_kind text := pg_catalog.jsonb_typeof(p_value);
    v_ok   boolean;
begin
    v_ok := case p_type
        when 'string'  then v_kind = 'string'
        when 'path'    then v_kind = 'string' and p_value #>> '{}' <> ''
        when 'integer' then case when v_kind = 'number'
                                 then (p_value #>> '{}')::numeric = pg_catalog.trunc((p_value #>> '{}')::numeric)
                                 else false end
        when 'number'  then v_kind = 'number'
        when 'boolean' then v_kind = 'boolean'
        else false end;
    if v_ok then
        return null;
    end if;
    return pg_catalog.format('must be %s%s, got %s %s', p_type,
                             case when p_type = 'path' then ' (a non-empty string)' else '' end,
                             v_kind, pg_catalog.left(p_value::text, 40)
                             || case when pg_catalog.length(p_value::text) > 40 then '...' else '' end);
end
$$;

--
-- Name: phases_json(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.phases_json(p_run uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_sees boolean := ops_private.sees_principals((select r.workspace_id from ops.runs r where r.id = p_run));
begin
    return (
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', p.id, 'name', p.name, 'ordinal', p.ordinal, 'kind', p.kind, 'params', p.params,
        'depends_on', pg_catalog.to_jsonb(p.depends_on), 'state', p.state, 'priority', p.priority,
        'attempt', p.attempt, 'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
        'retry_backoff_seconds', p.retry_backoff_seconds,
        'retry_backoff_max_seconds', p.retry_backoff_max_seconds,
        'queued_at', p.queued_at, 'not_before', p.not_before, 'lease_seconds', p.lease_seconds,
        'lease_expires_at', p.lease_expires_at,
        'claimed_by', case when v_sees then p.claimed_by end,
        'started_at', p.started_at, 'finished_at', p.finished_at, 'progress', p.progress,
        'output_manifest', p.output_manifest, 'error', p.error,
        'reused_from_phase_id', p.reused_from_phase_id) order by p.ordinal), '[]'::jsonb)
    from ops.phases p
    where p.run_id = p_run);
end
$$;

--
-- Name: pre_request(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.pre_request() RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO ''
    AS $_$
declare
    v_claims jsonb := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb;
    v_sub    text := coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                              v_claims ->> 'sub');
    v_sid    text := case when pg_catalog.jsonb_typeof(v_claims) = 'object' then v_claims ->> 'session_id' end;
begin
    if v_sub is not null
       and v_sub ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
       and exists (select 1 from ops.principals p where p.id = v_sub::uuid and p.revoked_at is not null) then
        perform ops_private.fail(401, 'unauthorized', 'principal ' || v_sub || ' has been revoked');
    end if;
    if v_sid is not null
       and v_sid ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
       and exists (select 1 from ops_private.auth_sessions s where s.id = v_sid::uuid
                   and (s.revoked_at is not null or s.expires_at <= ops_private.now())) then
        perform ops_private.fail(401, 'unauthorized', 'the session has ended (signed out or expired): sign in again');
    end if;
end
$_$;

--
-- Name: principal(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.principal() RETURNS uuid
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_uid uuid := ops_private.uid();
begin
    if v_uid is not null
       and exists (select 1 from ops.principals p where p.id = v_uid and p.revoked_at is not null) then
        perform ops_private.fail(401, 'unauthorized', 'principal ' || v_uid::text || ' has been revoked');
    end if;
    return v_uid;
end
$$;

--
-- Name: principal_name(uuid, uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.principal_name(p_workspace uuid, p_principal uuid) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if p_principal is null then
        return null;
    end if;
    return coalesce(
        (select m.name from ops.workspace_members m
         where m.workspace_id = p_workspace and m.principal_id = p_principal),
        (select p.name from ops.principals p where p.id = p_principal),
        case when p_principal = ops_private.uid()
             then nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'name' end,
        'unnamed');
end
$$;

--
-- Name: raise_alerts(uuid, text, jsonb, jsonb, ops.runs, text, bigint); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.raise_alerts(p_workspace uuid, p_event text, p_subject jsonb, p_payload jsonb, p_run ops.runs DEFAULT NULL::ops.runs, p_dedupe text DEFAULT NULL::text, p_count bigint DEFAULT NULL::bigint) RETURNS integer
    LANGUAGE plpgsql
    AS $$
declare
    v_now timestamptz := ops_private.now();
    v_n   integer;
begin
    insert into ops.alerts (workspace_id, rule_id, rule_name, destination_id, event, subject, payload,
                            dedupe_key, created_at, next_attempt_at)
    select p_workspace, r.id, r.name, r.destination_id, p_event, p_subject,
           p_payload || pg_catalog.jsonb_build_object('rule', r.name),
           p_dedupe, v_now, v_now
    from ops.alert_rules r
    where r.workspace_id = p_workspace and r.event = p_event and r.enabled
      and (p_run.id is null or ops_private.alert_filters_match(r.filters, p_run))
      and (p_count is null or p_count >= coalesce(r.threshold, 1))
    on conflict (rule_id, dedupe_key) do nothing;
    get diagnostics v_n = row_count;
    return v_n;
end
$$;

--
-- Name: readable_workspace(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.readable_workspace(p_workspace uuid) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found',
                                 pg_catalog.jsonb_build_object('argument', 'workspace_id'));
    end if;
end
$$;

--
-- Name: record_freshness(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.record_freshness() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
declare
    v_now    timestamptz := ops_private.now();
    v_text   text;
    v_time   timestamptz;
    v_cursor text;
    v_names  text[];
    v_job    uuid;
begin
    if pg_catalog.jsonb_typeof(new.payload -> 'data_time') is distinct from 'string' then
        if new.payload ? 'data_time' and new.payload -> 'data_time' <> 'null'::jsonb then
            perform ops_private.fail(400, 'invalid_argument',
                'a FRESHNESS event''s payload.data_time must be an ISO 8601 time with a zone',
                pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
        end if;
        return null;
    end if;
    v_text := new.payload ->> 'data_time';
    if v_text !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$' then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event''s payload.data_time must be an ISO 8601 time with a zone, got '
            || pg_catalog.left(v_text, 60),
            pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
    end if;
    begin
        v_time := v_text::timestamptz;
    exception when others then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event''s payload.data_time is not a valid time: ' || pg_catalog.left(v_text, 60),
            pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
    end;
    if v_time > v_now + interval '5 minutes' then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event''s payload.data_time is in the future (' || pg_catalog.left(v_text, 60)
            || '): a dataset cannot hold changes not made yet',
            pg_catalog.jsonb_build_object('argument', 'events.payload.data_time'));
    end if;
    v_time := least(v_time, v_now);
    if new.payload ? 'source_cursor' and new.payload -> 'source_cursor' <> 'null'::jsonb then
        if pg_catalog.jsonb_typeof(new.payload -> 'source_cursor') not in ('string', 'number')
           or pg_catalog.length(new.payload ->> 'source_cursor') > 200 then
            perform ops_private.fail(400, 'invalid_argument',
                'a FRESHNESS event''s payload.source_cursor must be a string or number of at most 200 characters',
                pg_catalog.jsonb_build_object('argument', 'events.payload.source_cursor'));
        end if;
        v_cursor := new.payload ->> 'source_cursor';
    end if;
    if pg_catalog.jsonb_typeof(new.payload -> 'datasets') is distinct from 'array'
       or pg_catalog.jsonb_array_length(new.payload -> 'datasets') not between 1 and 1000
       or exists (select 1 from pg_catalog.jsonb_array_elements(new.payload -> 'datasets') e
                  where pg_catalog.jsonb_typeof(e) <> 'string'
                     or (e #>> '{}') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$') then
        perform ops_private.fail(400, 'invalid_argument',
            'a FRESHNESS event with a data_time needs payload.datasets: 1-1000 dataset names (such as gold.odoo.revenue)',
            pg_catalog.jsonb_build_object('argument', 'events.payload.datasets'));
    end if;
    v_names := array(select e #>> '{}' from pg_catalog.jsonb_array_elements(new.payload -> 'datasets') e);
    select v.job_id into v_job
    from ops.runs r join ops.job_versions v on v.id = r.job_version_id
    where r.id = new.run_id;
    update ops.datasets d
       set data_time = v_time, source_cursor = v_cursor, data_time_run_id = new.run_id,
           data_time_job_id = v_job, data_time_recorded_at = v_now
     where d.workspace_id = new.workspace_id and d.name = any (v_names)
       and (d.data_time is null or d.data_time <= v_time);
    return null;
end
$_$;

--
-- Name: record_lineage(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.record_lineage() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
declare
    v_names text[];
    v_bad   text;
begin
    if pg_catalog.jsonb_typeof(new.payload -> 'dataset') is distinct from 'string'
       or (new.payload ->> 'dataset') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'a DATASET_LINEAGE event''s payload.dataset must be a dataset name (such as gold.odoo.revenue)',
            pg_catalog.jsonb_build_object('argument', 'events.payload.dataset'));
    end if;
    foreach v_bad in array array['datasets', 'sources'] loop
        if new.payload ? v_bad and (pg_catalog.jsonb_typeof(new.payload -> v_bad) is distinct from 'array'
               or pg_catalog.jsonb_array_length(new.payload -> v_bad) > 1000
               or exists (select 1 from pg_catalog.jsonb_array_elements(new.payload -> v_bad) e
                          where pg_catalog.jsonb_typeof(e) <> 'string'
                             or (e #>> '{}') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$')) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('a DATASET_LINEAGE event''s payload.%s must be at most 1000 names', v_bad),
                pg_catalog.jsonb_build_object('argument', 'events.payload.' || v_bad));
        end if;
    end loop;
    v_names := array(
        select distinct x from (
            select e #>> '{}' as x from pg_catalog.jsonb_array_elements(coalesce(new.payload -> 'datasets', '[]')) e
            union all
            select 'source:' || (e #>> '{}') from pg_catalog.jsonb_array_elements(coalesce(new.payload -> 'sources', '[]')) e
        ) u order by x);
    update ops.datasets d set upstream = v_names
     where d.workspace_id = new.workspace_id and d.name = new.payload ->> 'dataset';
    return null;
end
$_$;

--
-- Name: redact_passwords(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.redact_passwords(p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(p_text,
                   '([a-z][a-z0-9+.-]*://[^/?#@[:space:]]*:)[^/?#@[:space:]]*@', '\1***@', 'gi'),
               '((^|[[:space:]?&;])(password|passwd|pwd)[[:space:]]*=)[[:space:]]*[^[:space:]&;]*', '\1***', 'gi')
$$;

--
-- Name: refuse_job_version_change(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.refuse_job_version_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    perform ops_private.fail(409, 'conflict',
        'job versions are immutable: register a new version instead (docs/jobs.md)',
        pg_catalog.jsonb_build_object('job_version_id', old.id));
    return null;
end
$$;

--
-- Name: refuse_manifest_connections(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.refuse_manifest_connections() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    perform ops_private.fail(400, 'invalid_argument',
        'input_manifest carries connections: connections are registered in the workspace'
        || ' (`control-room connections create`) and a phase names them in params.connections;'
        || ' leave connections out of input_manifest',
        pg_catalog.jsonb_build_object('argument', 'input_manifest.connections'));
    return new;
end
$$;

--
-- Name: repair_set(uuid, text[]); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.repair_set(p_parent uuid, p_named text[]) RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
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

--
-- Name: require_github_deliverer(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.require_github_deliverer(p_fn text) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        perform ops_private.fail(403, 'forbidden',
            p_fn || ' is for the GitHub status deliverer (service_role): members read statuses with list_github_statuses');
    end if;
end
$$;

--
-- Name: require_role(uuid, text[], boolean, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.require_role(p_workspace uuid, p_roles text[], p_hide boolean DEFAULT false, p_what text DEFAULT 'workspace'::text) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_uid  uuid;
    v_role text;
begin
    if ops_private.is_privileged() then
        return 'service_role';
    end if;
    v_uid := ops_private.principal();
    if v_uid is null then
        perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
    end if;
    select m.role into v_role
    from ops.workspace_members m
    where m.workspace_id = p_workspace and m.principal_id = v_uid;
    if v_role is null then
        if p_hide then
            perform ops_private.fail(404, 'not_found', p_what || ' not found');
        end if;
        perform ops_private.fail(403, 'forbidden', 'caller is not a member of workspace ' || p_workspace::text);
    end if;
    if not (v_role = any (p_roles)) then
        perform ops_private.fail(403, 'forbidden',
            pg_catalog.format('role %s may not do this; it needs one of: %s', v_role,
                              pg_catalog.array_to_string(p_roles, ', ')));
    end if;
    return v_role;
end
$$;

--
-- Name: require_service_role(text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.require_service_role(p_fn text) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        perform ops_private.fail(403, 'forbidden',
            p_fn || ' is for the alert deliverer (service_role): members read alerts with list_alerts');
    end if;
end
$$;

--
-- Name: rerun_to_an_end(uuid, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.rerun_to_an_end(p_run uuid, p_name text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    select exists (
        select 1 from ops.runs c join ops.phases cp on cp.run_id = c.id
        where c.parent_run_id = p_run and cp.name = p_name
          and cp.reused_from_phase_id is null and cp.state in ('succeeded', 'failed'))
$$;

--
-- Name: run_job_json(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.run_job_json(p_version uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if p_version is null then
        return null;
    end if;
    return (select pg_catalog.jsonb_build_object('id', j.id, 'slug', j.slug, 'version', v.version,
                                                 'version_id', v.id)
            from ops.job_versions v join ops.jobs j on j.id = v.job_id
            where v.id = p_version);
end
$$;

--
-- Name: run_json(uuid, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.run_json(p_run uuid, p_with_phases boolean DEFAULT true) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest' - 'job_version_id'
           || pg_catalog.jsonb_build_object('created_by',
                  case when ops_private.sees_principals(r.workspace_id) then r.created_by end,
                  'job', ops_private.run_job_json(r.job_version_id))
           || case when p_with_phases then pg_catalog.jsonb_build_object('phases', ops_private.phases_json(r.id))
                   else pg_catalog.jsonb_build_object('phase_counts', (
                        select coalesce(pg_catalog.jsonb_object_agg(c.state, c.n), '{}'::jsonb)
                        from (select p.state, count(*) as n from ops.phases p
                              where p.run_id = r.id group by p.state) c))
              end
    from ops.runs r
    where r.id = p_run);
end
$$;

--
-- Name: run_summary_json(uuid, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.run_summary_json(p_run uuid, p_sees boolean) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest' - 'input_manifest' - 'output_manifest' - 'error'
                                  - 'job_version_id'
           || pg_catalog.jsonb_build_object(
                  'created_by', case when p_sees then r.created_by end,
                  'job', ops_private.run_job_json(r.job_version_id),
                  'error', case when r.error is not null then pg_catalog.jsonb_build_object(
                      'phase', r.error ->> 'phase',
                      'message', pg_catalog.left(coalesce(r.error -> 'error' ->> 'message',
                                                          r.error ->> 'message', ''), 500)) end,
                  'phase_counts', (
                      select coalesce(pg_catalog.jsonb_object_agg(c.state, c.n), '{}'::jsonb)
                      from (select p.state, count(*) as n from ops.phases p
                            where p.run_id = r.id group by p.state) c))
    from ops.runs r
    where r.id = p_run);
end
$$;

--
-- Name: schedule_json(ops.schedules); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.schedule_json(s ops.schedules) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', s.id, 'workspace_id', s.workspace_id, 'name', s.name, 'description', s.description,
        'job_id', s.job_id, 'job', (select j.slug from ops.jobs j where j.id = s.job_id),
        'cron', s.cron, 'timezone', s.timezone, 'interval_seconds', s.interval_seconds,
        'params', s.params, 'enabled', s.enabled, 'catchup', s.catchup, 'catchup_max', s.catchup_max,
        'max_concurrent', s.max_concurrent, 'overlap', s.overlap, 'priority', s.priority,
        'next_tick_at', s.next_tick_at, 'last_tick_at', s.last_tick_at,
        'created_by', case when ops_private.sees_principals(s.workspace_id) then s.created_by end,
        'created_at', s.created_at, 'updated_at', s.updated_at)
$$;

--
-- Name: schedule_next(ops.schedules, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.schedule_next(s ops.schedules, p_after timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    AS $$
    select t from ops_private.schedule_times(s, p_after, null, 1) t
$$;

--
-- Name: schedule_times(ops.schedules, timestamp with time zone, timestamp with time zone, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.schedule_times(s ops.schedules, p_after timestamp with time zone, p_until timestamp with time zone, p_limit integer) RETURNS SETOF timestamp with time zone
    LANGUAGE plpgsql STABLE
    AS $$
declare
    v_day   date;
    v_last  date;
    v_count integer := 0;
    v_t     timestamptz;
    v_k     bigint;
    v_dom   boolean;
    v_dow   boolean;
begin
    if p_limit <= 0 then
        return;
    end if;
    if s.interval_seconds is not null then
        v_k := greatest(0, pg_catalog.floor(extract(epoch from (p_after - s.anchor_at)) / s.interval_seconds)::bigint + 1);
        loop
            v_t := s.anchor_at + pg_catalog.make_interval(secs => (v_k * s.interval_seconds)::double precision);
            if v_t <= p_after then
                v_k := v_k + 1;
                continue;
            end if;
            exit when p_until is not null and v_t > p_until;
            return next v_t;
            v_count := v_count + 1;
            exit when v_count >= p_limit;
            v_k := v_k + 1;
        end loop;
        return;
    end if;
    v_day := (p_after at time zone s.timezone)::date - 1;
    v_last := least(coalesce((p_until at time zone s.timezone)::date + 1, v_day + 1830), v_day + 1830);
    while v_day <= v_last loop
        if extract(month from v_day)::integer = any (s.cron_months) then
            v_dom := extract(day from v_day)::integer = any (s.cron_days);
            v_dow := extract(dow from v_day)::integer = any (s.cron_weekdays);
            if (case when s.cron_days_star and s.cron_weekdays_star then true
                     when s.cron_days_star then v_dow
                     when s.cron_weekdays_star then v_dom
                     else v_dom or v_dow end) then
                for v_t in
                    select distinct ((v_day + pg_catalog.make_interval(hours => h, mins => m))
                                     at time zone s.timezone) as t
                    from pg_catalog.unnest(s.cron_hours) h cross join pg_catalog.unnest(s.cron_minutes) m
                    order by 1
                loop
                    continue when v_t <= p_after;
                    if p_until is not null and v_t > p_until then
                        return;
                    end if;
                    return next v_t;
                    v_count := v_count + 1;
                    if v_count >= p_limit then
                        return;
                    end if;
                end loop;
            end if;
        end if;
        v_day := v_day + 1;
    end loop;
end
$$;

--
-- Name: schedule_workspace(uuid, text[]); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.schedule_workspace(p_workspace uuid, p_roles text[]) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return ops_private.require_role(p_workspace, p_roles, true);
end
$$;

--
-- Name: secret_key_pattern(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.secret_key_pattern() RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select '(password|passwd|passphrase|pwd|secret|token|api_?key|private_?key|credential|access_?key|authorization|cookie)'::text
$$;

--
-- Name: sees_principals(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.sees_principals(p_workspace uuid) RETURNS boolean
    LANGUAGE plpgsql STABLE
    AS $$
begin
    return ops_private.is_privileged()
        or p_workspace in (select ops_private.admin_workspaces());
end
$$;

--
-- Name: sensor_json(ops.sensors); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.sensor_json(s ops.sensors) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
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

--
-- Name: settle_run(ops.runs, timestamp with time zone); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.settle_run(p_run ops.runs, p_now timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
declare
    v_state text := case p_run.state when 'failed' then 'skipped' else 'cancelled' end;
    v_type  text := case p_run.state when 'failed' then 'PHASE_SKIPPED' else 'PHASE_CANCELLED' end;
    v_p     record;
    v_n     integer := 0;
begin
    if p_run.state not in ('failed', 'cancelled') then
        return 0;
    end if;
    for v_p in
        select q.id, q.name, q.attempt from ops.phases q
        where q.run_id = p_run.id and q.state in ('waiting', 'queued')
        order by q.id
        for update skip locked
    loop
        perform ops_private.move_phase(v_p.id, v_state, p_now);
        perform ops_private.emit(p_run.id, p_run.workspace_id, v_p.name, v_p.attempt, v_type, 'info',
            case p_run.state when 'failed' then 'skipped: the run failed' else 'cancelled with the run' end,
            '{}'::jsonb, p_now);
        v_n := v_n + 1;
    end loop;
    return v_n;
end
$$;

--
-- Name: start_job_run(uuid, jsonb, text, jsonb, integer); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer) RETURNS jsonb
    LANGUAGE sql
    AS $$
    select ops_private.start_job_run(p_version_id, p_params, p_idempotency_key, p_labels, p_priority,
                                     null::uuid, null::jsonb)
$$;

--
-- Name: start_job_run(uuid, jsonb, text, jsonb, integer, uuid, jsonb); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer, p_base uuid, p_changed jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: tick_json(ops.schedule_ticks); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.tick_json(t ops.schedule_ticks) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    select pg_catalog.jsonb_build_object(
        'id', t.id, 'schedule_id', t.schedule_id, 'workspace_id', t.workspace_id,
        'scheduled_for', t.scheduled_for, 'state', t.state, 'reason', t.reason, 'run_id', t.run_id,
        'created_at', t.created_at)
$$;

--
-- Name: time_arg(text, text); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.time_arg(p_name text, p_value text) RETURNS timestamp with time zone
    LANGUAGE plpgsql STABLE
    AS $_$
declare
    v_t timestamptz;
begin
    if p_value is null then
        return null;
    end if;
    if p_value !~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$' then
        perform ops_private.fail(400, 'invalid_argument', p_name || ' must be an ISO 8601 time',
                                 pg_catalog.jsonb_build_object('argument', p_name));
    end if;
    begin
        v_t := p_value::timestamptz;
    exception when others then
        perform ops_private.fail(400, 'invalid_argument', p_name || ' must be an ISO 8601 time',
                                 pg_catalog.jsonb_build_object('argument', p_name));
    end;
    return v_t;
end
$_$;

--
-- Name: token_pins(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.token_pins() RETURNS uuid[]
    LANGUAGE plpgsql STABLE
    AS $_$
declare
    v_pins jsonb := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb -> 'workspaces';
begin
    if v_pins is null or pg_catalog.jsonb_typeof(v_pins) <> 'array' then
        return null;
    end if;
    return array(select x::uuid from pg_catalog.jsonb_array_elements_text(v_pins) x
                 where x ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$');
end
$_$;

--
-- Name: uid(); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.uid() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$
    select coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                    (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;

--
-- Name: uuid_arg(text, text, boolean); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.uuid_arg(p_name text, p_value text, p_required boolean DEFAULT false) RETURNS uuid
    LANGUAGE plpgsql IMMUTABLE
    AS $_$
begin
    if p_value is null then
        if p_required then
            perform ops_private.fail(400, 'invalid_argument', p_name || ' is required');
        end if;
        return null;
    end if;
    if p_value !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('%s is not a valid UUID: %s', p_name, pg_catalog.left(p_value, 64)),
            pg_catalog.jsonb_build_object('argument', p_name));
    end if;
    return p_value::uuid;
end
$_$;

--
-- Name: workspace_slug(uuid); Type: FUNCTION; Schema: ops_private; Owner: -
--

CREATE FUNCTION ops_private.workspace_slug(p_workspace uuid) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    select w.slug from ops.workspaces w where w.id = p_workspace
$$;

--
-- Name: alert_deliveries; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.alert_deliveries (
    alert_id uuid NOT NULL,
    attempt integer NOT NULL,
    workspace_id uuid NOT NULL,
    at timestamp with time zone NOT NULL,
    ok boolean NOT NULL,
    http_status integer,
    error text,
    duration_ms integer,
    CONSTRAINT alert_deliveries_error_check CHECK ((length(error) <= 500))
);

--
-- Name: artifacts; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.artifacts (
    workspace_id uuid NOT NULL,
    digest text NOT NULL,
    size_bytes bigint NOT NULL,
    media_type text NOT NULL,
    kind text NOT NULL,
    uri text NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    first_run_id uuid,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT artifacts_digest_check CHECK ((digest ~ '^blake3:[0-9a-f]{64}$'::text)),
    CONSTRAINT artifacts_size_bytes_check CHECK ((size_bytes >= 0))
);

--
-- Name: audit_log; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.audit_log (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    principal_id uuid,
    db_role text NOT NULL,
    function_name text NOT NULL,
    workspace_id uuid,
    target_type text,
    target_id text,
    details jsonb DEFAULT '{}'::jsonb NOT NULL
);

--
-- Name: audit_log_id_seq; Type: SEQUENCE; Schema: ops; Owner: -
--

ALTER TABLE ops.audit_log ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME ops.audit_log_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: dataset_versions; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.dataset_versions (
    dataset_id uuid NOT NULL,
    version integer NOT NULL,
    workspace_id uuid NOT NULL,
    change text NOT NULL,
    applied boolean NOT NULL,
    schema jsonb,
    changes jsonb DEFAULT '[]'::jsonb NOT NULL,
    run_id uuid,
    phase_id uuid,
    phase text,
    table_version bigint,
    digest text,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL,
    recorded_by uuid,
    CONSTRAINT dataset_versions_change_check CHECK ((change = ANY (ARRAY['INITIAL'::text, 'NON_BREAKING'::text, 'BREAKING'::text]))),
    CONSTRAINT dataset_versions_version_check CHECK ((version >= 1))
);

--
-- Name: github_check_runs_seq_seq; Type: SEQUENCE; Schema: ops; Owner: -
--

ALTER TABLE ops.github_check_runs ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME ops.github_check_runs_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: github_statuses_seq_seq; Type: SEQUENCE; Schema: ops; Owner: -
--

ALTER TABLE ops.github_statuses ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME ops.github_statuses_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: principals; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.principals (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    revoked_by uuid,
    owner_workspace_id uuid,
    CONSTRAINT principals_kind_check CHECK ((kind = ANY (ARRAY['user'::text, 'executor'::text]))),
    CONSTRAINT principals_name_check CHECK (((length(name) >= 1) AND (length(name) <= 200)))
);

--
-- Name: COLUMN principals.owner_workspace_id; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON COLUMN ops.principals.owner_workspace_id IS 'The workspace that owns this principal (its admins may enrol and revoke it); null: a user of the installation.';

--
-- Name: run_artifacts; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.run_artifacts (
    id bigint NOT NULL,
    run_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    phase_id uuid,
    phase text,
    digest text NOT NULL,
    role text NOT NULL,
    name text NOT NULL,
    attempt integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT run_artifacts_role_check CHECK ((role = ANY (ARRAY['output'::text, 'input'::text, 'log'::text, 'report'::text])))
);

--
-- Name: run_artifacts_id_seq; Type: SEQUENCE; Schema: ops; Owner: -
--

ALTER TABLE ops.run_artifacts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME ops.run_artifacts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: secrets_refs; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.secrets_refs (
    connection_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    field text NOT NULL,
    reference text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT secrets_refs_field_check CHECK ((field ~ '^[a-z][a-z0-9_]{0,62}$'::text)),
    CONSTRAINT secrets_refs_reference_check CHECK (((reference ~ '^env:[A-Za-z_][A-Za-z0-9_]{0,127}$'::text) OR ((reference ~ '^file:/'::text) AND (length(reference) <= 1029) AND (substr(reference, 6) !~ '(^|/)\.\.(/|$)'::text) AND (reference !~ '[[:cntrl:]]'::text))))
);

--
-- Name: TABLE secrets_refs; Type: COMMENT; Schema: ops; Owner: -
--

COMMENT ON TABLE ops.secrets_refs IS 'Where the worker finds each secret of a connection (env:NAME or file:/path). Never a secret value.';

--
-- Name: workspace_members; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.workspace_members (
    workspace_id uuid NOT NULL,
    principal_id uuid NOT NULL,
    role text NOT NULL,
    name text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT workspace_members_name_check CHECK ((length(name) <= 200)),
    CONSTRAINT workspace_members_role_check CHECK ((role = ANY (ARRAY['viewer'::text, 'developer'::text, 'admin'::text, 'executor'::text])))
);

--
-- Name: workspaces; Type: TABLE; Schema: ops; Owner: -
--

CREATE TABLE ops.workspaces (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    slug text NOT NULL,
    name text NOT NULL,
    env text NOT NULL,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT workspaces_env_check CHECK ((env = ANY (ARRAY['dev'::text, 'stage'::text, 'prod'::text]))),
    CONSTRAINT workspaces_name_check CHECK (((length(name) >= 1) AND (length(name) <= 200))),
    CONSTRAINT workspaces_slug_check CHECK ((slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'::text))
);

--
-- Name: auth_failures; Type: TABLE; Schema: ops_private; Owner: -
--

CREATE TABLE ops_private.auth_failures (
    id bigint NOT NULL,
    at timestamp with time zone NOT NULL,
    email text NOT NULL,
    ip text NOT NULL
);

--
-- Name: TABLE auth_failures; Type: COMMENT; Schema: ops_private; Owner: -
--

COMMENT ON TABLE ops_private.auth_failures IS 'Failed sign-ins (never the password tried), counted for the rate limits; pruned after a day.';

--
-- Name: auth_failures_id_seq; Type: SEQUENCE; Schema: ops_private; Owner: -
--

ALTER TABLE ops_private.auth_failures ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME ops_private.auth_failures_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: auth_refresh_tokens; Type: TABLE; Schema: ops_private; Owner: -
--

CREATE TABLE ops_private.auth_refresh_tokens (
    id bigint NOT NULL,
    token_hash bytea NOT NULL,
    session_id uuid NOT NULL,
    parent_id bigint,
    created_at timestamp with time zone NOT NULL,
    used_at timestamp with time zone,
    CONSTRAINT auth_refresh_tokens_token_hash_check CHECK ((length(token_hash) = 32))
);

--
-- Name: TABLE auth_refresh_tokens; Type: COMMENT; Schema: ops_private; Owner: -
--

COMMENT ON TABLE ops_private.auth_refresh_tokens IS 'Refresh tokens as SHA-256 hashes; each is used once (used_at), its use issues the next one.';

--
-- Name: auth_refresh_tokens_id_seq; Type: SEQUENCE; Schema: ops_private; Owner: -
--

ALTER TABLE ops_private.auth_refresh_tokens ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME ops_private.auth_refresh_tokens_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: auth_sessions; Type: TABLE; Schema: ops_private; Owner: -
--

CREATE TABLE ops_private.auth_sessions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    principal_id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL,
    refreshed_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone,
    revoked_reason text,
    ip text,
    user_agent text,
    CONSTRAINT auth_sessions_user_agent_check CHECK ((length(user_agent) <= 512))
);

--
-- Name: TABLE auth_sessions; Type: COMMENT; Schema: ops_private; Owner: -
--

COMMENT ON TABLE ops_private.auth_sessions IS 'Sign-in sessions; the access tokens carry the id (claim session_id). Ended: revoked, or expires_at passed.';

--
-- Name: auth_users; Type: TABLE; Schema: ops_private; Owner: -
--

CREATE TABLE ops_private.auth_users (
    principal_id uuid NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL,
    disabled_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    password_changed_at timestamp with time zone DEFAULT now() NOT NULL,
    last_sign_in_at timestamp with time zone,
    CONSTRAINT auth_users_email_check CHECK (((email = lower(email)) AND ((length(email) >= 3) AND (length(email) <= 320)) AND (email ~ '^[^@\s]+@[^@\s]+$'::text))),
    CONSTRAINT auth_users_password_hash_check CHECK ((password_hash ~~ '$argon2id$%'::text))
);

--
-- Name: TABLE auth_users; Type: COMMENT; Schema: ops_private; Owner: -
--

COMMENT ON TABLE ops_private.auth_users IS 'Credentials of local users (principals of kind user): lowercased email, argon2id hash, disabled flag.';

--
-- Name: reserved_event_types; Type: TABLE; Schema: ops_private; Owner: -
--

CREATE TABLE ops_private.reserved_event_types (
    type text NOT NULL,
    CONSTRAINT reserved_event_types_type_check CHECK ((type ~ '^[A-Z][A-Z0-9_]{0,63}$'::text))
);

--
-- Name: TABLE reserved_event_types; Type: COMMENT; Schema: ops_private; Owner: -
--

COMMENT ON TABLE ops_private.reserved_event_types IS 'Event types append_events refuses: only the control plane writes them.';

--
-- Name: alert_deliveries alert_deliveries_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_deliveries
    ADD CONSTRAINT alert_deliveries_pkey PRIMARY KEY (alert_id, attempt);

--
-- Name: alert_destinations alert_destinations_id_workspace_id_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_destinations
    ADD CONSTRAINT alert_destinations_id_workspace_id_key UNIQUE (id, workspace_id);

--
-- Name: alert_destinations alert_destinations_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_destinations
    ADD CONSTRAINT alert_destinations_pkey PRIMARY KEY (id);

--
-- Name: alert_destinations alert_destinations_workspace_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_destinations
    ADD CONSTRAINT alert_destinations_workspace_id_name_key UNIQUE (workspace_id, name);

--
-- Name: alert_rules alert_rules_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_rules
    ADD CONSTRAINT alert_rules_pkey PRIMARY KEY (id);

--
-- Name: alert_rules alert_rules_workspace_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_rules
    ADD CONSTRAINT alert_rules_workspace_id_name_key UNIQUE (workspace_id, name);

--
-- Name: alerts alerts_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alerts
    ADD CONSTRAINT alerts_pkey PRIMARY KEY (id);

--
-- Name: alerts alerts_rule_id_dedupe_key_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alerts
    ADD CONSTRAINT alerts_rule_id_dedupe_key_key UNIQUE (rule_id, dedupe_key);

--
-- Name: artifacts artifacts_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.artifacts
    ADD CONSTRAINT artifacts_pkey PRIMARY KEY (workspace_id, digest);

--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);

--
-- Name: connections connections_id_workspace_id_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.connections
    ADD CONSTRAINT connections_id_workspace_id_key UNIQUE (id, workspace_id);

--
-- Name: connections connections_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.connections
    ADD CONSTRAINT connections_pkey PRIMARY KEY (id);

--
-- Name: connections connections_workspace_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.connections
    ADD CONSTRAINT connections_workspace_id_name_key UNIQUE (workspace_id, name);

--
-- Name: dataset_versions dataset_versions_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.dataset_versions
    ADD CONSTRAINT dataset_versions_pkey PRIMARY KEY (dataset_id, version);

--
-- Name: datasets datasets_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.datasets
    ADD CONSTRAINT datasets_pkey PRIMARY KEY (id);

--
-- Name: datasets datasets_workspace_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.datasets
    ADD CONSTRAINT datasets_workspace_id_name_key UNIQUE (workspace_id, name);

--
-- Name: github_check_runs github_check_runs_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_check_runs
    ADD CONSTRAINT github_check_runs_pkey PRIMARY KEY (id);

--
-- Name: github_check_runs github_check_runs_run_id_context_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_check_runs
    ADD CONSTRAINT github_check_runs_run_id_context_key UNIQUE (run_id, context);

--
-- Name: github_check_runs github_check_runs_seq_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_check_runs
    ADD CONSTRAINT github_check_runs_seq_key UNIQUE (seq);

--
-- Name: github_statuses github_statuses_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_statuses
    ADD CONSTRAINT github_statuses_pkey PRIMARY KEY (id);

--
-- Name: github_statuses github_statuses_seq_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_statuses
    ADD CONSTRAINT github_statuses_seq_key UNIQUE (seq);

--
-- Name: invitations invitations_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.invitations
    ADD CONSTRAINT invitations_pkey PRIMARY KEY (workspace_id, principal_id);

--
-- Name: job_versions job_versions_job_id_version_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.job_versions
    ADD CONSTRAINT job_versions_job_id_version_key UNIQUE (job_id, version);

--
-- Name: job_versions job_versions_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.job_versions
    ADD CONSTRAINT job_versions_pkey PRIMARY KEY (id);

--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

--
-- Name: jobs jobs_workspace_id_slug_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.jobs
    ADD CONSTRAINT jobs_workspace_id_slug_key UNIQUE (workspace_id, slug);

--
-- Name: phases phases_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.phases
    ADD CONSTRAINT phases_pkey PRIMARY KEY (id);

--
-- Name: phases phases_run_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.phases
    ADD CONSTRAINT phases_run_id_name_key UNIQUE (run_id, name);

--
-- Name: principals principals_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.principals
    ADD CONSTRAINT principals_pkey PRIMARY KEY (id);

--
-- Name: run_artifacts run_artifacts_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_artifacts
    ADD CONSTRAINT run_artifacts_pkey PRIMARY KEY (id);

--
-- Name: run_artifacts run_artifacts_run_id_phase_digest_role_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_artifacts
    ADD CONSTRAINT run_artifacts_run_id_phase_digest_role_name_key UNIQUE NULLS NOT DISTINCT (run_id, phase, digest, role, name);

--
-- Name: run_events run_events_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_events
    ADD CONSTRAINT run_events_pkey PRIMARY KEY (run_id, seq);

--
-- Name: run_events run_events_run_id_event_id_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_events
    ADD CONSTRAINT run_events_run_id_event_id_key UNIQUE (run_id, event_id);

--
-- Name: runs runs_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.runs
    ADD CONSTRAINT runs_pkey PRIMARY KEY (id);

--
-- Name: runs runs_workspace_id_idempotency_key_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.runs
    ADD CONSTRAINT runs_workspace_id_idempotency_key_key UNIQUE (workspace_id, idempotency_key);

--
-- Name: schedule_ticks schedule_ticks_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedule_ticks
    ADD CONSTRAINT schedule_ticks_pkey PRIMARY KEY (id);

--
-- Name: schedule_ticks schedule_ticks_schedule_id_scheduled_for_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedule_ticks
    ADD CONSTRAINT schedule_ticks_schedule_id_scheduled_for_key UNIQUE (schedule_id, scheduled_for);

--
-- Name: schedules schedules_id_workspace_id_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedules
    ADD CONSTRAINT schedules_id_workspace_id_key UNIQUE (id, workspace_id);

--
-- Name: schedules schedules_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedules
    ADD CONSTRAINT schedules_pkey PRIMARY KEY (id);

--
-- Name: schedules schedules_workspace_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedules
    ADD CONSTRAINT schedules_workspace_id_name_key UNIQUE (workspace_id, name);

--
-- Name: secrets_refs secrets_refs_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.secrets_refs
    ADD CONSTRAINT secrets_refs_pkey PRIMARY KEY (connection_id, field);

--
-- Name: sensors sensors_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.sensors
    ADD CONSTRAINT sensors_pkey PRIMARY KEY (id);

--
-- Name: sensors sensors_workspace_id_name_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.sensors
    ADD CONSTRAINT sensors_workspace_id_name_key UNIQUE (workspace_id, name);

--
-- Name: workspace_members workspace_members_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.workspace_members
    ADD CONSTRAINT workspace_members_pkey PRIMARY KEY (workspace_id, principal_id);

--
-- Name: workspaces workspaces_pkey; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.workspaces
    ADD CONSTRAINT workspaces_pkey PRIMARY KEY (id);

--
-- Name: workspaces workspaces_slug_key; Type: CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.workspaces
    ADD CONSTRAINT workspaces_slug_key UNIQUE (slug);

--
-- Name: auth_failures auth_failures_pkey; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_failures
    ADD CONSTRAINT auth_failures_pkey PRIMARY KEY (id);

--
-- Name: auth_refresh_tokens auth_refresh_tokens_pkey; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_refresh_tokens
    ADD CONSTRAINT auth_refresh_tokens_pkey PRIMARY KEY (id);

--
-- Name: auth_refresh_tokens auth_refresh_tokens_token_hash_key; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_refresh_tokens
    ADD CONSTRAINT auth_refresh_tokens_token_hash_key UNIQUE (token_hash);

--
-- Name: auth_sessions auth_sessions_pkey; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_sessions
    ADD CONSTRAINT auth_sessions_pkey PRIMARY KEY (id);

--
-- Name: auth_users auth_users_email_key; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_users
    ADD CONSTRAINT auth_users_email_key UNIQUE (email);

--
-- Name: auth_users auth_users_pkey; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_users
    ADD CONSTRAINT auth_users_pkey PRIMARY KEY (principal_id);

--
-- Name: reserved_event_types reserved_event_types_pkey; Type: CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.reserved_event_types
    ADD CONSTRAINT reserved_event_types_pkey PRIMARY KEY (type);

--
-- Name: alert_deliveries_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alert_deliveries_workspace_idx ON ops.alert_deliveries USING btree (workspace_id);

--
-- Name: alert_rules_destination_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alert_rules_destination_idx ON ops.alert_rules USING btree (destination_id);

--
-- Name: alert_rules_event_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alert_rules_event_idx ON ops.alert_rules USING btree (workspace_id, event) WHERE enabled;

--
-- Name: alerts_destination_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alerts_destination_idx ON ops.alerts USING btree (destination_id);

--
-- Name: alerts_due_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alerts_due_idx ON ops.alerts USING btree (next_attempt_at) WHERE (state = 'pending'::text);

--
-- Name: alerts_leased_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alerts_leased_idx ON ops.alerts USING btree (lease_expires_at) WHERE (state = 'delivering'::text);

--
-- Name: alerts_workspace_created_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX alerts_workspace_created_idx ON ops.alerts USING btree (workspace_id, created_at DESC, id DESC);

--
-- Name: audit_log_workspace_id_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX audit_log_workspace_id_idx ON ops.audit_log USING btree (workspace_id, id DESC);

--
-- Name: audit_log_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX audit_log_workspace_idx ON ops.audit_log USING btree (workspace_id, at DESC);

--
-- Name: datasets_freshness_job_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX datasets_freshness_job_idx ON ops.datasets USING btree (data_time_job_id, data_time) WHERE (data_time_job_id IS NOT NULL);

--
-- Name: datasets_not_active_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX datasets_not_active_idx ON ops.datasets USING btree (workspace_id, schema_state) WHERE (schema_state <> 'active'::text);

--
-- Name: github_check_runs_due_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_check_runs_due_idx ON ops.github_check_runs USING btree (next_attempt_at) WHERE (delivery = 'pending'::text);

--
-- Name: github_check_runs_leased_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_check_runs_leased_idx ON ops.github_check_runs USING btree (lease_expires_at) WHERE (delivery = 'delivering'::text);

--
-- Name: github_check_runs_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_check_runs_workspace_idx ON ops.github_check_runs USING btree (workspace_id, seq DESC);

--
-- Name: github_statuses_due_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_statuses_due_idx ON ops.github_statuses USING btree (next_attempt_at) WHERE (delivery = 'pending'::text);

--
-- Name: github_statuses_leased_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_statuses_leased_idx ON ops.github_statuses USING btree (lease_expires_at) WHERE (delivery = 'delivering'::text);

--
-- Name: github_statuses_run_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_statuses_run_idx ON ops.github_statuses USING btree (run_id, seq DESC);

--
-- Name: github_statuses_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX github_statuses_workspace_idx ON ops.github_statuses USING btree (workspace_id, seq DESC);

--
-- Name: invitations_principal_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX invitations_principal_idx ON ops.invitations USING btree (principal_id);

--
-- Name: job_versions_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX job_versions_workspace_idx ON ops.job_versions USING btree (workspace_id);

--
-- Name: phases_claim_id_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE UNIQUE INDEX phases_claim_id_idx ON ops.phases USING btree (claim_id) WHERE (state = 'running'::text);

--
-- Name: phases_claimable_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_claimable_idx ON ops.phases USING btree (priority DESC, fair_round, queued_at, ordinal, id) WHERE (state = 'queued'::text);

--
-- Name: phases_due_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_due_idx ON ops.phases USING btree (not_before) WHERE (state = 'queued'::text);

--
-- Name: phases_failed_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_failed_idx ON ops.phases USING btree (workspace_id, finished_at DESC, id DESC) WHERE (state = 'failed'::text);

--
-- Name: phases_finished_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_finished_idx ON ops.phases USING btree (workspace_id, finished_at) WHERE (state = ANY (ARRAY['succeeded'::text, 'failed'::text]));

--
-- Name: phases_lease_expiry_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_lease_expiry_idx ON ops.phases USING btree (lease_expires_at) WHERE (state = 'running'::text);

--
-- Name: phases_lease_token_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE UNIQUE INDEX phases_lease_token_idx ON ops.phases USING btree (lease_token) WHERE (lease_token IS NOT NULL);

--
-- Name: phases_retry_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_retry_idx ON ops.phases USING btree (not_before) WHERE ((state = 'queued'::text) AND (fair_round IS NULL));

--
-- Name: phases_run_claimable_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX phases_run_claimable_idx ON ops.phases USING btree (run_id, priority DESC, fair_round, queued_at, ordinal, id) WHERE (state = 'queued'::text);

--
-- Name: principals_owner_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX principals_owner_idx ON ops.principals USING btree (owner_workspace_id) WHERE (owner_workspace_id IS NOT NULL);

--
-- Name: principals_revoked_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX principals_revoked_idx ON ops.principals USING btree (id) WHERE (revoked_at IS NOT NULL);

--
-- Name: run_artifacts_digest_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_artifacts_digest_idx ON ops.run_artifacts USING btree (workspace_id, digest);

--
-- Name: run_events_lease_expired_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_events_lease_expired_idx ON ops.run_events USING btree (recorded_at) WHERE (type = 'LEASE_EXPIRED'::text);

--
-- Name: run_events_lifecycle_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_events_lifecycle_idx ON ops.run_events USING btree (run_id, seq) WHERE (type = ANY (ARRAY['PHASE_CLAIMED'::text, 'PHASE_STARTED'::text, 'PHASE_SUCCEEDED'::text, 'PHASE_FAILED'::text, 'LEASE_EXPIRED'::text, 'PHASE_CANCELLED'::text, 'PHASE_STOPPED'::text]));

--
-- Name: run_events_phase_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_events_phase_idx ON ops.run_events USING btree (run_id, phase, seq) WHERE (phase IS NOT NULL);

--
-- Name: run_events_problems_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_events_problems_idx ON ops.run_events USING btree (run_id, seq) WHERE (level = ANY (ARRAY['warning'::text, 'error'::text]));

--
-- Name: run_events_run_type_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_events_run_type_idx ON ops.run_events USING btree (run_id, type, seq);

--
-- Name: run_events_type_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX run_events_type_idx ON ops.run_events USING btree (workspace_id, type);

--
-- Name: runs_created_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX runs_created_idx ON ops.runs USING btree (created_at DESC, id DESC);

--
-- Name: runs_job_version_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX runs_job_version_idx ON ops.runs USING btree (job_version_id, created_at DESC, id DESC) WHERE (job_version_id IS NOT NULL);

--
-- Name: runs_parent_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX runs_parent_idx ON ops.runs USING btree (parent_run_id) WHERE (parent_run_id IS NOT NULL);

--
-- Name: runs_workspace_created_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX runs_workspace_created_idx ON ops.runs USING btree (workspace_id, created_at DESC, id DESC);

--
-- Name: schedule_ticks_run_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX schedule_ticks_run_idx ON ops.schedule_ticks USING btree (run_id) WHERE (run_id IS NOT NULL);

--
-- Name: schedule_ticks_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX schedule_ticks_workspace_idx ON ops.schedule_ticks USING btree (workspace_id);

--
-- Name: schedules_due_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX schedules_due_idx ON ops.schedules USING btree (next_tick_at) WHERE (enabled AND (next_tick_at IS NOT NULL));

--
-- Name: schedules_job_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX schedules_job_idx ON ops.schedules USING btree (job_id);

--
-- Name: secrets_refs_workspace_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX secrets_refs_workspace_idx ON ops.secrets_refs USING btree (workspace_id);

--
-- Name: sensors_due_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX sensors_due_idx ON ops.sensors USING btree (next_evaluation_at) WHERE enabled;

--
-- Name: sensors_job_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX sensors_job_idx ON ops.sensors USING btree (job_id);

--
-- Name: workspace_members_principal_idx; Type: INDEX; Schema: ops; Owner: -
--

CREATE INDEX workspace_members_principal_idx ON ops.workspace_members USING btree (principal_id, workspace_id);

--
-- Name: auth_failures_at_idx; Type: INDEX; Schema: ops_private; Owner: -
--

CREATE INDEX auth_failures_at_idx ON ops_private.auth_failures USING btree (at);

--
-- Name: auth_failures_email_idx; Type: INDEX; Schema: ops_private; Owner: -
--

CREATE INDEX auth_failures_email_idx ON ops_private.auth_failures USING btree (email, at);

--
-- Name: auth_failures_ip_idx; Type: INDEX; Schema: ops_private; Owner: -
--

CREATE INDEX auth_failures_ip_idx ON ops_private.auth_failures USING btree (ip, at);

--
-- Name: auth_refresh_tokens_session_idx; Type: INDEX; Schema: ops_private; Owner: -
--

CREATE INDEX auth_refresh_tokens_session_idx ON ops_private.auth_refresh_tokens USING btree (session_id);

--
-- Name: auth_sessions_principal_idx; Type: INDEX; Schema: ops_private; Owner: -
--

CREATE INDEX auth_sessions_principal_idx ON ops_private.auth_sessions USING btree (principal_id) WHERE (revoked_at IS NULL);

--
-- Name: job_versions job_versions_immutable; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER job_versions_immutable BEFORE DELETE OR UPDATE ON ops.job_versions FOR EACH ROW EXECUTE FUNCTION ops_private.refuse_job_version_change();

--
-- Name: phases phases_alert_dead_lettered; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER phases_alert_dead_lettered AFTER UPDATE OF state ON ops.phases FOR EACH ROW WHEN (((new.state = 'failed'::text) AND (old.state IS DISTINCT FROM 'failed'::text))) EXECUTE FUNCTION ops_private.alert_phase_dead_lettered();

--
-- Name: phases phases_connections; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER phases_connections BEFORE INSERT ON ops.phases FOR EACH ROW WHEN (((new.params ? 'connections'::text) AND (new.state <> 'succeeded'::text))) EXECUTE FUNCTION ops_private.check_phase_connections();

--
-- Name: phases phases_initial_state; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER phases_initial_state BEFORE INSERT ON ops.phases FOR EACH ROW WHEN ((new.state <> ALL (ARRAY['waiting'::text, 'queued'::text, 'succeeded'::text]))) EXECUTE FUNCTION ops_private.check_phase_transition();

--
-- Name: phases phases_transition; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER phases_transition BEFORE UPDATE OF state ON ops.phases FOR EACH ROW WHEN ((old.state IS DISTINCT FROM new.state)) EXECUTE FUNCTION ops_private.check_phase_transition();

--
-- Name: run_events run_events_alert_lease_expiries; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER run_events_alert_lease_expiries AFTER INSERT ON ops.run_events FOR EACH ROW WHEN ((new.type = 'LEASE_EXPIRED'::text)) EXECUTE FUNCTION ops_private.alert_lease_expiries();

--
-- Name: run_events run_events_freshness; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER run_events_freshness AFTER INSERT ON ops.run_events FOR EACH ROW WHEN ((new.type = 'FRESHNESS'::text)) EXECUTE FUNCTION ops_private.record_freshness();

--
-- Name: run_events run_events_lineage; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER run_events_lineage AFTER INSERT ON ops.run_events FOR EACH ROW WHEN ((new.type = 'DATASET_LINEAGE'::text)) EXECUTE FUNCTION ops_private.record_lineage();

--
-- Name: run_events run_events_notify_changes; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER run_events_notify_changes AFTER INSERT ON ops.run_events REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION ops_private.notify_run_changes();

--
-- Name: runs runs_alert_failed; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_alert_failed AFTER UPDATE OF state ON ops.runs FOR EACH ROW WHEN (((new.state = 'failed'::text) AND (old.state IS DISTINCT FROM 'failed'::text))) EXECUTE FUNCTION ops_private.alert_run_failed();

--
-- Name: runs runs_github_check_run_insert; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_github_check_run_insert AFTER INSERT ON ops.runs FOR EACH ROW WHEN (((new.labels ? 'github_repo'::text) AND (new.labels ? 'github_sha'::text))) EXECUTE FUNCTION ops_private.github_check_run_on_run();

--
-- Name: runs runs_github_check_run_state; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_github_check_run_state AFTER UPDATE OF state ON ops.runs FOR EACH ROW WHEN (((new.labels ? 'github_repo'::text) AND (new.labels ? 'github_sha'::text) AND (old.state IS DISTINCT FROM new.state))) EXECUTE FUNCTION ops_private.github_check_run_on_run();

--
-- Name: runs runs_github_status_insert; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_github_status_insert AFTER INSERT ON ops.runs FOR EACH ROW WHEN (((new.labels ? 'github_repo'::text) AND (new.labels ? 'github_sha'::text))) EXECUTE FUNCTION ops_private.github_status_on_run();

--
-- Name: runs runs_github_status_state; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_github_status_state AFTER UPDATE OF state ON ops.runs FOR EACH ROW WHEN (((new.labels ? 'github_repo'::text) AND (new.labels ? 'github_sha'::text) AND (old.state IS DISTINCT FROM new.state))) EXECUTE FUNCTION ops_private.github_status_on_run();

--
-- Name: runs runs_inherit_job_version; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_inherit_job_version BEFORE INSERT ON ops.runs FOR EACH ROW WHEN (((new.parent_run_id IS NOT NULL) AND (new.job_version_id IS NULL))) EXECUTE FUNCTION ops_private.inherit_job_version();

--
-- Name: runs runs_initial_state; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_initial_state BEFORE INSERT ON ops.runs FOR EACH ROW WHEN ((new.state <> 'queued'::text)) EXECUTE FUNCTION ops_private.check_run_transition();

--
-- Name: runs runs_no_manifest_connections; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_no_manifest_connections BEFORE INSERT ON ops.runs FOR EACH ROW WHEN ((new.input_manifest ? 'connections'::text)) EXECUTE FUNCTION ops_private.refuse_manifest_connections();

--
-- Name: runs runs_transition; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER runs_transition BEFORE UPDATE OF state ON ops.runs FOR EACH ROW WHEN ((old.state IS DISTINCT FROM new.state)) EXECUTE FUNCTION ops_private.check_run_transition();

--
-- Name: schedule_ticks schedule_ticks_alert_failed; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER schedule_ticks_alert_failed AFTER INSERT ON ops.schedule_ticks FOR EACH ROW WHEN ((new.state = 'failed'::text)) EXECUTE FUNCTION ops_private.alert_schedule_tick_failed();

--
-- Name: schedule_ticks schedule_ticks_alert_failed_update; Type: TRIGGER; Schema: ops; Owner: -
--

CREATE TRIGGER schedule_ticks_alert_failed_update AFTER UPDATE OF state ON ops.schedule_ticks FOR EACH ROW WHEN (((new.state = 'failed'::text) AND (old.state IS DISTINCT FROM 'failed'::text))) EXECUTE FUNCTION ops_private.alert_schedule_tick_failed();

--
-- Name: alert_deliveries alert_deliveries_alert_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_deliveries
    ADD CONSTRAINT alert_deliveries_alert_id_fkey FOREIGN KEY (alert_id) REFERENCES ops.alerts(id) ON DELETE CASCADE;

--
-- Name: alert_destinations alert_destinations_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_destinations
    ADD CONSTRAINT alert_destinations_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: alert_rules alert_rules_destination_id_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_rules
    ADD CONSTRAINT alert_rules_destination_id_workspace_id_fkey FOREIGN KEY (destination_id, workspace_id) REFERENCES ops.alert_destinations(id, workspace_id);

--
-- Name: alert_rules alert_rules_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alert_rules
    ADD CONSTRAINT alert_rules_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: alerts alerts_destination_id_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alerts
    ADD CONSTRAINT alerts_destination_id_workspace_id_fkey FOREIGN KEY (destination_id, workspace_id) REFERENCES ops.alert_destinations(id, workspace_id) ON DELETE CASCADE;

--
-- Name: alerts alerts_rule_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alerts
    ADD CONSTRAINT alerts_rule_id_fkey FOREIGN KEY (rule_id) REFERENCES ops.alert_rules(id) ON DELETE SET NULL;

--
-- Name: alerts alerts_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.alerts
    ADD CONSTRAINT alerts_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: artifacts artifacts_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.artifacts
    ADD CONSTRAINT artifacts_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: connections connections_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.connections
    ADD CONSTRAINT connections_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: dataset_versions dataset_versions_dataset_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.dataset_versions
    ADD CONSTRAINT dataset_versions_dataset_id_fkey FOREIGN KEY (dataset_id) REFERENCES ops.datasets(id) ON DELETE CASCADE;

--
-- Name: datasets datasets_data_time_job_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.datasets
    ADD CONSTRAINT datasets_data_time_job_id_fkey FOREIGN KEY (data_time_job_id) REFERENCES ops.jobs(id) ON DELETE SET NULL;

--
-- Name: datasets datasets_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.datasets
    ADD CONSTRAINT datasets_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: github_check_runs github_check_runs_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_check_runs
    ADD CONSTRAINT github_check_runs_run_id_fkey FOREIGN KEY (run_id) REFERENCES ops.runs(id);

--
-- Name: github_check_runs github_check_runs_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_check_runs
    ADD CONSTRAINT github_check_runs_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: github_statuses github_statuses_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_statuses
    ADD CONSTRAINT github_statuses_run_id_fkey FOREIGN KEY (run_id) REFERENCES ops.runs(id);

--
-- Name: github_statuses github_statuses_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.github_statuses
    ADD CONSTRAINT github_statuses_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: invitations invitations_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.invitations
    ADD CONSTRAINT invitations_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id) ON DELETE CASCADE;

--
-- Name: job_versions job_versions_job_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.job_versions
    ADD CONSTRAINT job_versions_job_id_fkey FOREIGN KEY (job_id) REFERENCES ops.jobs(id);

--
-- Name: job_versions job_versions_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.job_versions
    ADD CONSTRAINT job_versions_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: jobs jobs_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.jobs
    ADD CONSTRAINT jobs_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: phases phases_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.phases
    ADD CONSTRAINT phases_run_id_fkey FOREIGN KEY (run_id) REFERENCES ops.runs(id) ON DELETE CASCADE;

--
-- Name: phases phases_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.phases
    ADD CONSTRAINT phases_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: principals principals_owner_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.principals
    ADD CONSTRAINT principals_owner_workspace_id_fkey FOREIGN KEY (owner_workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: run_artifacts run_artifacts_phase_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_artifacts
    ADD CONSTRAINT run_artifacts_phase_id_fkey FOREIGN KEY (phase_id) REFERENCES ops.phases(id) ON DELETE CASCADE;

--
-- Name: run_artifacts run_artifacts_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_artifacts
    ADD CONSTRAINT run_artifacts_run_id_fkey FOREIGN KEY (run_id) REFERENCES ops.runs(id) ON DELETE CASCADE;

--
-- Name: run_artifacts run_artifacts_workspace_id_digest_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_artifacts
    ADD CONSTRAINT run_artifacts_workspace_id_digest_fkey FOREIGN KEY (workspace_id, digest) REFERENCES ops.artifacts(workspace_id, digest);

--
-- Name: run_events run_events_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.run_events
    ADD CONSTRAINT run_events_run_id_fkey FOREIGN KEY (run_id) REFERENCES ops.runs(id) ON DELETE CASCADE;

--
-- Name: runs runs_job_version_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.runs
    ADD CONSTRAINT runs_job_version_id_fkey FOREIGN KEY (job_version_id) REFERENCES ops.job_versions(id);

--
-- Name: runs runs_parent_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.runs
    ADD CONSTRAINT runs_parent_run_id_fkey FOREIGN KEY (parent_run_id) REFERENCES ops.runs(id);

--
-- Name: runs runs_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.runs
    ADD CONSTRAINT runs_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: schedule_ticks schedule_ticks_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedule_ticks
    ADD CONSTRAINT schedule_ticks_run_id_fkey FOREIGN KEY (run_id) REFERENCES ops.runs(id) ON DELETE SET NULL;

--
-- Name: schedule_ticks schedule_ticks_schedule_id_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedule_ticks
    ADD CONSTRAINT schedule_ticks_schedule_id_workspace_id_fkey FOREIGN KEY (schedule_id, workspace_id) REFERENCES ops.schedules(id, workspace_id) ON DELETE CASCADE;

--
-- Name: schedules schedules_job_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedules
    ADD CONSTRAINT schedules_job_id_fkey FOREIGN KEY (job_id) REFERENCES ops.jobs(id) ON DELETE CASCADE;

--
-- Name: schedules schedules_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.schedules
    ADD CONSTRAINT schedules_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: secrets_refs secrets_refs_connection_id_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.secrets_refs
    ADD CONSTRAINT secrets_refs_connection_id_workspace_id_fkey FOREIGN KEY (connection_id, workspace_id) REFERENCES ops.connections(id, workspace_id) ON DELETE CASCADE;

--
-- Name: sensors sensors_job_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.sensors
    ADD CONSTRAINT sensors_job_id_fkey FOREIGN KEY (job_id) REFERENCES ops.jobs(id) ON DELETE CASCADE;

--
-- Name: sensors sensors_last_run_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.sensors
    ADD CONSTRAINT sensors_last_run_id_fkey FOREIGN KEY (last_run_id) REFERENCES ops.runs(id) ON DELETE SET NULL;

--
-- Name: sensors sensors_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.sensors
    ADD CONSTRAINT sensors_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id);

--
-- Name: workspace_members workspace_members_workspace_id_fkey; Type: FK CONSTRAINT; Schema: ops; Owner: -
--

ALTER TABLE ONLY ops.workspace_members
    ADD CONSTRAINT workspace_members_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES ops.workspaces(id) ON DELETE CASCADE;

--
-- Name: auth_refresh_tokens auth_refresh_tokens_session_id_fkey; Type: FK CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_refresh_tokens
    ADD CONSTRAINT auth_refresh_tokens_session_id_fkey FOREIGN KEY (session_id) REFERENCES ops_private.auth_sessions(id) ON DELETE CASCADE;

--
-- Name: auth_sessions auth_sessions_principal_id_fkey; Type: FK CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_sessions
    ADD CONSTRAINT auth_sessions_principal_id_fkey FOREIGN KEY (principal_id) REFERENCES ops_private.auth_users(principal_id) ON DELETE CASCADE;

--
-- Name: auth_users auth_users_principal_id_fkey; Type: FK CONSTRAINT; Schema: ops_private; Owner: -
--

ALTER TABLE ONLY ops_private.auth_users
    ADD CONSTRAINT auth_users_principal_id_fkey FOREIGN KEY (principal_id) REFERENCES ops.principals(id) ON DELETE CASCADE;

--
-- Name: alert_deliveries; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.alert_deliveries ENABLE ROW LEVEL SECURITY;

--
-- Name: alert_deliveries alert_deliveries_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY alert_deliveries_read ON ops.alert_deliveries FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: alert_destinations; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.alert_destinations ENABLE ROW LEVEL SECURITY;

--
-- Name: alert_destinations alert_destinations_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY alert_destinations_read ON ops.alert_destinations FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: alert_rules; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.alert_rules ENABLE ROW LEVEL SECURITY;

--
-- Name: alert_rules alert_rules_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY alert_rules_read ON ops.alert_rules FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: alerts; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.alerts ENABLE ROW LEVEL SECURITY;

--
-- Name: alerts alerts_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY alerts_read ON ops.alerts FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: artifacts; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.artifacts ENABLE ROW LEVEL SECURITY;

--
-- Name: artifacts artifacts_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY artifacts_read ON ops.artifacts FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: audit_log; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.audit_log ENABLE ROW LEVEL SECURITY;

--
-- Name: audit_log audit_log_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY audit_log_read ON ops.audit_log FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.admin_workspaces() AS admin_workspaces)));

--
-- Name: connections; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.connections ENABLE ROW LEVEL SECURITY;

--
-- Name: connections connections_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY connections_read ON ops.connections FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: dataset_versions; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.dataset_versions ENABLE ROW LEVEL SECURITY;

--
-- Name: dataset_versions dataset_versions_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY dataset_versions_read ON ops.dataset_versions FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: datasets; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.datasets ENABLE ROW LEVEL SECURITY;

--
-- Name: datasets datasets_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY datasets_read ON ops.datasets FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: github_check_runs; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.github_check_runs ENABLE ROW LEVEL SECURITY;

--
-- Name: github_check_runs github_check_runs_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY github_check_runs_read ON ops.github_check_runs FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: github_statuses; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.github_statuses ENABLE ROW LEVEL SECURITY;

--
-- Name: github_statuses github_statuses_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY github_statuses_read ON ops.github_statuses FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: invitations; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.invitations ENABLE ROW LEVEL SECURITY;

--
-- Name: invitations invitations_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY invitations_read ON ops.invitations FOR SELECT TO authenticated USING (((workspace_id IN ( SELECT ops_private.admin_workspaces() AS admin_workspaces)) OR (principal_id = ( SELECT auth.uid() AS uid))));

--
-- Name: job_versions; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.job_versions ENABLE ROW LEVEL SECURITY;

--
-- Name: job_versions job_versions_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY job_versions_read ON ops.job_versions FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: jobs; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.jobs ENABLE ROW LEVEL SECURITY;

--
-- Name: jobs jobs_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY jobs_read ON ops.jobs FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: phases; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.phases ENABLE ROW LEVEL SECURITY;

--
-- Name: phases phases_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY phases_read ON ops.phases FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: principals; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.principals ENABLE ROW LEVEL SECURITY;

--
-- Name: principals principals_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY principals_read ON ops.principals FOR SELECT TO authenticated USING ((((id = ( SELECT auth.uid() AS uid)) AND (revoked_at IS NULL)) OR (owner_workspace_id IN ( SELECT ops_private.admin_workspaces() AS admin_workspaces)) OR (id IN ( SELECT m.principal_id
   FROM ops.workspace_members m
  WHERE (m.workspace_id IN ( SELECT ops_private.admin_workspaces() AS admin_workspaces))))));

--
-- Name: run_artifacts; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.run_artifacts ENABLE ROW LEVEL SECURITY;

--
-- Name: run_artifacts run_artifacts_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY run_artifacts_read ON ops.run_artifacts FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: run_events; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.run_events ENABLE ROW LEVEL SECURITY;

--
-- Name: run_events run_events_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY run_events_read ON ops.run_events FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: runs; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.runs ENABLE ROW LEVEL SECURITY;

--
-- Name: runs runs_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY runs_read ON ops.runs FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: schedule_ticks; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.schedule_ticks ENABLE ROW LEVEL SECURITY;

--
-- Name: schedule_ticks schedule_ticks_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY schedule_ticks_read ON ops.schedule_ticks FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: schedules; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.schedules ENABLE ROW LEVEL SECURITY;

--
-- Name: schedules schedules_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY schedules_read ON ops.schedules FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: secrets_refs; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.secrets_refs ENABLE ROW LEVEL SECURITY;

--
-- Name: secrets_refs secrets_refs_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY secrets_refs_read ON ops.secrets_refs FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: sensors; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.sensors ENABLE ROW LEVEL SECURITY;

--
-- Name: sensors sensors_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY sensors_read ON ops.sensors FOR SELECT TO authenticated USING ((workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: workspace_members; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.workspace_members ENABLE ROW LEVEL SECURITY;

--
-- Name: workspace_members workspace_members_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY workspace_members_read ON ops.workspace_members FOR SELECT TO authenticated USING (((workspace_id IN ( SELECT ops_private.admin_workspaces() AS admin_workspaces)) OR ((principal_id = ( SELECT auth.uid() AS uid)) AND (workspace_id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)))));

--
-- Name: workspaces; Type: ROW SECURITY; Schema: ops; Owner: -
--

ALTER TABLE ops.workspaces ENABLE ROW LEVEL SECURITY;

--
-- Name: workspaces workspaces_read; Type: POLICY; Schema: ops; Owner: -
--

CREATE POLICY workspaces_read ON ops.workspaces FOR SELECT TO authenticated USING ((id IN ( SELECT ops_private.member_workspaces() AS member_workspaces)));

--
-- Name: SCHEMA ops; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA ops TO authenticated;
GRANT USAGE ON SCHEMA ops TO service_role;

--
-- Name: SCHEMA ops_private; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA ops_private TO authenticated;
GRANT USAGE ON SCHEMA ops_private TO service_role;
GRANT USAGE ON SCHEMA ops_private TO anon;

--
-- Name: FUNCTION accept_invitation(workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.accept_invitation(workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.accept_invitation(workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.accept_invitation(workspace_id text) TO service_role;

--
-- Name: FUNCTION add_member(workspace_id text, principal_id text, role text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.add_member(workspace_id text, principal_id text, role text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.add_member(workspace_id text, principal_id text, role text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.add_member(workspace_id text, principal_id text, role text, name text) TO service_role;

--
-- Name: FUNCTION append_events(run_id text, events jsonb, lease_token text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.append_events(run_id text, events jsonb, lease_token text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.append_events(run_id text, events jsonb, lease_token text) TO authenticated;
GRANT ALL ON FUNCTION ops.append_events(run_id text, events jsonb, lease_token text) TO service_role;

--
-- Name: FUNCTION cancel_run(run_id text, reason text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.cancel_run(run_id text, reason text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.cancel_run(run_id text, reason text) TO authenticated;
GRANT ALL ON FUNCTION ops.cancel_run(run_id text, reason text) TO service_role;

--
-- Name: FUNCTION claim_alerts("limit" integer, lease_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.claim_alerts("limit" integer, lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.claim_alerts("limit" integer, lease_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.claim_alerts("limit" integer, lease_seconds integer) TO service_role;

--
-- Name: FUNCTION claim_due_sensors(workspace_id text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.claim_due_sensors(workspace_id text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.claim_due_sensors(workspace_id text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.claim_due_sensors(workspace_id text, "limit" integer) TO service_role;

--
-- Name: FUNCTION claim_github_check_runs("limit" integer, lease_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.claim_github_check_runs("limit" integer, lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.claim_github_check_runs("limit" integer, lease_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.claim_github_check_runs("limit" integer, lease_seconds integer) TO service_role;

--
-- Name: FUNCTION claim_github_statuses("limit" integer, lease_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.claim_github_statuses("limit" integer, lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.claim_github_statuses("limit" integer, lease_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.claim_github_statuses("limit" integer, lease_seconds integer) TO service_role;

--
-- Name: FUNCTION claim_phase(kinds text[], lease_seconds integer, claim_id text, run_id text, workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.claim_phase(kinds text[], lease_seconds integer, claim_id text, run_id text, workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.claim_phase(kinds text[], lease_seconds integer, claim_id text, run_id text, workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.claim_phase(kinds text[], lease_seconds integer, claim_id text, run_id text, workspace_id text) TO service_role;

--
-- Name: FUNCTION claim_phases(kinds text[], lease_seconds integer, "limit" integer, claim_id text, run_id text, workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.claim_phases(kinds text[], lease_seconds integer, "limit" integer, claim_id text, run_id text, workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.claim_phases(kinds text[], lease_seconds integer, "limit" integer, claim_id text, run_id text, workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.claim_phases(kinds text[], lease_seconds integer, "limit" integer, claim_id text, run_id text, workspace_id text) TO service_role;

--
-- Name: FUNCTION complete_phase(lease_token text, outcome text, output_manifest jsonb, error jsonb, retryable boolean); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.complete_phase(lease_token text, outcome text, output_manifest jsonb, error jsonb, retryable boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.complete_phase(lease_token text, outcome text, output_manifest jsonb, error jsonb, retryable boolean) TO authenticated;
GRANT ALL ON FUNCTION ops.complete_phase(lease_token text, outcome text, output_manifest jsonb, error jsonb, retryable boolean) TO service_role;

--
-- Name: FUNCTION complete_phases(completions jsonb); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.complete_phases(completions jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.complete_phases(completions jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops.complete_phases(completions jsonb) TO service_role;

--
-- Name: FUNCTION complete_run(run_id text, output_manifest jsonb); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.complete_run(run_id text, output_manifest jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.complete_run(run_id text, output_manifest jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops.complete_run(run_id text, output_manifest jsonb) TO service_role;

--
-- Name: FUNCTION create_alert_destination(workspace_id text, name text, type text, url text, headers jsonb, description text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_alert_destination(workspace_id text, name text, type text, url text, headers jsonb, description text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_alert_destination(workspace_id text, name text, type text, url text, headers jsonb, description text) TO authenticated;
GRANT ALL ON FUNCTION ops.create_alert_destination(workspace_id text, name text, type text, url text, headers jsonb, description text) TO service_role;

--
-- Name: FUNCTION create_alert_rule(workspace_id text, name text, event text, destination text, threshold integer, filters jsonb, enabled boolean, description text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_alert_rule(workspace_id text, name text, event text, destination text, threshold integer, filters jsonb, enabled boolean, description text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_alert_rule(workspace_id text, name text, event text, destination text, threshold integer, filters jsonb, enabled boolean, description text) TO authenticated;
GRANT ALL ON FUNCTION ops.create_alert_rule(workspace_id text, name text, event text, destination text, threshold integer, filters jsonb, enabled boolean, description text) TO service_role;

--
-- Name: FUNCTION create_changed_run(workspace_id text, job text, base_run_id text, changed jsonb, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_changed_run(workspace_id text, job text, base_run_id text, changed jsonb, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_changed_run(workspace_id text, job text, base_run_id text, changed jsonb, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer) TO authenticated;
GRANT ALL ON FUNCTION ops.create_changed_run(workspace_id text, job text, base_run_id text, changed jsonb, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer) TO service_role;

--
-- Name: FUNCTION create_connection(workspace_id text, name text, type text, config jsonb, secrets jsonb, description text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_connection(workspace_id text, name text, type text, config jsonb, secrets jsonb, description text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_connection(workspace_id text, name text, type text, config jsonb, secrets jsonb, description text) TO authenticated;
GRANT ALL ON FUNCTION ops.create_connection(workspace_id text, name text, type text, config jsonb, secrets jsonb, description text) TO service_role;

--
-- Name: FUNCTION create_job_run(workspace_id text, job text, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_job_run(workspace_id text, job text, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_job_run(workspace_id text, job text, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer) TO authenticated;
GRANT ALL ON FUNCTION ops.create_job_run(workspace_id text, job text, version integer, params jsonb, idempotency_key text, labels jsonb, priority integer) TO service_role;

--
-- Name: FUNCTION create_principal(name text, kind text, workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_principal(name text, kind text, workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_principal(name text, kind text, workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.create_principal(name text, kind text, workspace_id text) TO service_role;

--
-- Name: FUNCTION create_run(workspace_id text, spec_slug text, git_sha text, phases jsonb, input_manifest jsonb, idempotency_key text, labels jsonb, priority integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_run(workspace_id text, spec_slug text, git_sha text, phases jsonb, input_manifest jsonb, idempotency_key text, labels jsonb, priority integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_run(workspace_id text, spec_slug text, git_sha text, phases jsonb, input_manifest jsonb, idempotency_key text, labels jsonb, priority integer) TO authenticated;
GRANT ALL ON FUNCTION ops.create_run(workspace_id text, spec_slug text, git_sha text, phases jsonb, input_manifest jsonb, idempotency_key text, labels jsonb, priority integer) TO service_role;

--
-- Name: FUNCTION create_schedule(workspace_id text, name text, job text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_schedule(workspace_id text, name text, job text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_schedule(workspace_id text, name text, job text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text) TO authenticated;
GRANT ALL ON FUNCTION ops.create_schedule(workspace_id text, name text, job text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text) TO service_role;

--
-- Name: FUNCTION create_sensor(workspace_id text, name text, job text, connection text, query text, params jsonb, interval_seconds integer, enabled boolean); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_sensor(workspace_id text, name text, job text, connection text, query text, params jsonb, interval_seconds integer, enabled boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_sensor(workspace_id text, name text, job text, connection text, query text, params jsonb, interval_seconds integer, enabled boolean) TO authenticated;
GRANT ALL ON FUNCTION ops.create_sensor(workspace_id text, name text, job text, connection text, query text, params jsonb, interval_seconds integer, enabled boolean) TO service_role;

--
-- Name: FUNCTION create_workspace(slug text, name text, env text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.create_workspace(slug text, name text, env text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.create_workspace(slug text, name text, env text) TO authenticated;
GRANT ALL ON FUNCTION ops.create_workspace(slug text, name text, env text) TO service_role;

--
-- Name: FUNCTION delete_alert_destination(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.delete_alert_destination(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.delete_alert_destination(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.delete_alert_destination(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION delete_alert_rule(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.delete_alert_rule(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.delete_alert_rule(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.delete_alert_rule(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION delete_connection(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.delete_connection(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.delete_connection(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.delete_connection(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION delete_schedule(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.delete_schedule(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.delete_schedule(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.delete_schedule(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION delete_sensor(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.delete_sensor(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.delete_sensor(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.delete_sensor(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION evaluate_slos(workspace_id text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.evaluate_slos(workspace_id text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.evaluate_slos(workspace_id text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.evaluate_slos(workspace_id text, "limit" integer) TO service_role;

--
-- Name: FUNCTION get_connection(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_connection(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_connection(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_connection(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION get_dataset(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_dataset(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_dataset(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_dataset(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION get_health(workspace_id text, since text, bucket_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_health(workspace_id text, since text, bucket_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_health(workspace_id text, since text, bucket_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.get_health(workspace_id text, since text, bucket_seconds integer) TO service_role;

--
-- Name: FUNCTION get_job(workspace_id text, slug text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_job(workspace_id text, slug text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_job(workspace_id text, slug text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_job(workspace_id text, slug text) TO service_role;

--
-- Name: FUNCTION get_run(run_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_run(run_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_run(run_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_run(run_id text) TO service_role;

--
-- Name: FUNCTION get_run_grid(workspace_id text, job_slug text, spec_slug text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_run_grid(workspace_id text, job_slug text, spec_slug text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_run_grid(workspace_id text, job_slug text, spec_slug text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.get_run_grid(workspace_id text, job_slug text, spec_slug text, "limit" integer) TO service_role;

--
-- Name: FUNCTION get_run_lineage(run_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_run_lineage(run_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_run_lineage(run_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_run_lineage(run_id text) TO service_role;

--
-- Name: FUNCTION get_run_timeline(run_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_run_timeline(run_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_run_timeline(run_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_run_timeline(run_id text) TO service_role;

--
-- Name: FUNCTION get_schedule(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_schedule(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_schedule(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_schedule(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION get_sensor(workspace_id text, name text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.get_sensor(workspace_id text, name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.get_sensor(workspace_id text, name text) TO authenticated;
GRANT ALL ON FUNCTION ops.get_sensor(workspace_id text, name text) TO service_role;

--
-- Name: FUNCTION heartbeat(lease_token text, progress jsonb, lease_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.heartbeat(lease_token text, progress jsonb, lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.heartbeat(lease_token text, progress jsonb, lease_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.heartbeat(lease_token text, progress jsonb, lease_seconds integer) TO service_role;

--
-- Name: FUNCTION invite_member(workspace_id text, principal_id text, role text, name text, expires_in_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.invite_member(workspace_id text, principal_id text, role text, name text, expires_in_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.invite_member(workspace_id text, principal_id text, role text, name text, expires_in_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.invite_member(workspace_id text, principal_id text, role text, name text, expires_in_seconds integer) TO service_role;

--
-- Name: FUNCTION list_alert_destinations(workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_alert_destinations(workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_alert_destinations(workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_alert_destinations(workspace_id text) TO service_role;

--
-- Name: FUNCTION list_alert_rules(workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_alert_rules(workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_alert_rules(workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_alert_rules(workspace_id text) TO service_role;

--
-- Name: FUNCTION list_alerts(workspace_id text, state text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_alerts(workspace_id text, state text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_alerts(workspace_id text, state text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.list_alerts(workspace_id text, state text, "limit" integer) TO service_role;

--
-- Name: FUNCTION list_artifacts(run_id text, workspace_id text, digest text, "limit" integer, after bigint); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_artifacts(run_id text, workspace_id text, digest text, "limit" integer, after bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_artifacts(run_id text, workspace_id text, digest text, "limit" integer, after bigint) TO authenticated;
GRANT ALL ON FUNCTION ops.list_artifacts(run_id text, workspace_id text, digest text, "limit" integer, after bigint) TO service_role;

--
-- Name: FUNCTION list_audit(workspace_id text, before bigint, "limit" integer, function_name text, principal_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_audit(workspace_id text, before bigint, "limit" integer, function_name text, principal_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_audit(workspace_id text, before bigint, "limit" integer, function_name text, principal_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_audit(workspace_id text, before bigint, "limit" integer, function_name text, principal_id text) TO service_role;

--
-- Name: FUNCTION list_connections(workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_connections(workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_connections(workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_connections(workspace_id text) TO service_role;

--
-- Name: FUNCTION list_datasets(workspace_id text, layer text, schema_state text, name text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_datasets(workspace_id text, layer text, schema_state text, name text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_datasets(workspace_id text, layer text, schema_state text, name text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.list_datasets(workspace_id text, layer text, schema_state text, name text, "limit" integer) TO service_role;

--
-- Name: FUNCTION list_dead_letters(workspace_id text, spec_slug text, since text, "limit" integer, cursor text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_dead_letters(workspace_id text, spec_slug text, since text, "limit" integer, cursor text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_dead_letters(workspace_id text, spec_slug text, since text, "limit" integer, cursor text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_dead_letters(workspace_id text, spec_slug text, since text, "limit" integer, cursor text) TO service_role;

--
-- Name: FUNCTION list_events(run_id text, after bigint, "limit" integer, phase text, before bigint, types text[], levels text[], text text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_events(run_id text, after bigint, "limit" integer, phase text, before bigint, types text[], levels text[], text text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_events(run_id text, after bigint, "limit" integer, phase text, before bigint, types text[], levels text[], text text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_events(run_id text, after bigint, "limit" integer, phase text, before bigint, types text[], levels text[], text text) TO service_role;

--
-- Name: FUNCTION list_github_check_runs(workspace_id text, run_id text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_github_check_runs(workspace_id text, run_id text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_github_check_runs(workspace_id text, run_id text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.list_github_check_runs(workspace_id text, run_id text, "limit" integer) TO service_role;

--
-- Name: FUNCTION list_github_statuses(workspace_id text, run_id text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_github_statuses(workspace_id text, run_id text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_github_statuses(workspace_id text, run_id text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.list_github_statuses(workspace_id text, run_id text, "limit" integer) TO service_role;

--
-- Name: FUNCTION list_invitations(workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_invitations(workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_invitations(workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_invitations(workspace_id text) TO service_role;

--
-- Name: FUNCTION list_jobs(workspace_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_jobs(workspace_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_jobs(workspace_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_jobs(workspace_id text) TO service_role;

--
-- Name: FUNCTION list_runs(workspace_id text, state text, spec_slug text, labels jsonb, parent_run_id text, "limit" integer, cursor text, job_slug text, git_sha text, env text, created_after text, created_before text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_runs(workspace_id text, state text, spec_slug text, labels jsonb, parent_run_id text, "limit" integer, cursor text, job_slug text, git_sha text, env text, created_after text, created_before text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_runs(workspace_id text, state text, spec_slug text, labels jsonb, parent_run_id text, "limit" integer, cursor text, job_slug text, git_sha text, env text, created_after text, created_before text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_runs(workspace_id text, state text, spec_slug text, labels jsonb, parent_run_id text, "limit" integer, cursor text, job_slug text, git_sha text, env text, created_after text, created_before text) TO service_role;

--
-- Name: FUNCTION list_schedule_ticks(workspace_id text, name text, state text, before text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_schedule_ticks(workspace_id text, name text, state text, before text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_schedule_ticks(workspace_id text, name text, state text, before text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.list_schedule_ticks(workspace_id text, name text, state text, before text, "limit" integer) TO service_role;

--
-- Name: FUNCTION list_schedules(workspace_id text, job text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_schedules(workspace_id text, job text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_schedules(workspace_id text, job text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_schedules(workspace_id text, job text) TO service_role;

--
-- Name: FUNCTION list_sensors(workspace_id text, job text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_sensors(workspace_id text, job text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_sensors(workspace_id text, job text) TO authenticated;
GRANT ALL ON FUNCTION ops.list_sensors(workspace_id text, job text) TO service_role;

--
-- Name: FUNCTION list_workspaces(); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.list_workspaces() FROM PUBLIC;
GRANT ALL ON FUNCTION ops.list_workspaces() TO authenticated;
GRANT ALL ON FUNCTION ops.list_workspaces() TO service_role;

--
-- Name: FUNCTION record_alert_delivery(alert_id text, ok boolean, http_status integer, error text, duration_ms integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.record_alert_delivery(alert_id text, ok boolean, http_status integer, error text, duration_ms integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.record_alert_delivery(alert_id text, ok boolean, http_status integer, error text, duration_ms integer) TO authenticated;
GRANT ALL ON FUNCTION ops.record_alert_delivery(alert_id text, ok boolean, http_status integer, error text, duration_ms integer) TO service_role;

--
-- Name: FUNCTION record_connection_test(workspace_id text, name text, ok boolean, message text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.record_connection_test(workspace_id text, name text, ok boolean, message text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.record_connection_test(workspace_id text, name text, ok boolean, message text) TO authenticated;
GRANT ALL ON FUNCTION ops.record_connection_test(workspace_id text, name text, ok boolean, message text) TO service_role;

--
-- Name: FUNCTION record_dataset(lease_token text, name text, location text, layer text, format text, schema jsonb, change text, changes jsonb, table_version bigint, digest text, rows bigint, owner text, tags text[]); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.record_dataset(lease_token text, name text, location text, layer text, format text, schema jsonb, change text, changes jsonb, table_version bigint, digest text, rows bigint, owner text, tags text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.record_dataset(lease_token text, name text, location text, layer text, format text, schema jsonb, change text, changes jsonb, table_version bigint, digest text, rows bigint, owner text, tags text[]) TO authenticated;
GRANT ALL ON FUNCTION ops.record_dataset(lease_token text, name text, location text, layer text, format text, schema jsonb, change text, changes jsonb, table_version bigint, digest text, rows bigint, owner text, tags text[]) TO service_role;

--
-- Name: FUNCTION record_github_check_run_delivery(check_id text, version integer, ok boolean, check_run bigint, html_url text, http_status integer, error text, retry boolean, retry_after_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.record_github_check_run_delivery(check_id text, version integer, ok boolean, check_run bigint, html_url text, http_status integer, error text, retry boolean, retry_after_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.record_github_check_run_delivery(check_id text, version integer, ok boolean, check_run bigint, html_url text, http_status integer, error text, retry boolean, retry_after_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.record_github_check_run_delivery(check_id text, version integer, ok boolean, check_run bigint, html_url text, http_status integer, error text, retry boolean, retry_after_seconds integer) TO service_role;

--
-- Name: FUNCTION record_github_status_delivery(status_id text, ok boolean, http_status integer, error text, retry boolean, retry_after_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.record_github_status_delivery(status_id text, ok boolean, http_status integer, error text, retry boolean, retry_after_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.record_github_status_delivery(status_id text, ok boolean, http_status integer, error text, retry boolean, retry_after_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.record_github_status_delivery(status_id text, ok boolean, http_status integer, error text, retry boolean, retry_after_seconds integer) TO service_role;

--
-- Name: FUNCTION record_sensor_value(sensor_id text, value text, error text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.record_sensor_value(sensor_id text, value text, error text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.record_sensor_value(sensor_id text, value text, error text) TO authenticated;
GRANT ALL ON FUNCTION ops.record_sensor_value(sensor_id text, value text, error text) TO service_role;

--
-- Name: FUNCTION register_artifact(lease_token text, digest text, uri text, size_bytes bigint, media_type text, kind text, name text, role text, metadata jsonb); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.register_artifact(lease_token text, digest text, uri text, size_bytes bigint, media_type text, kind text, name text, role text, metadata jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.register_artifact(lease_token text, digest text, uri text, size_bytes bigint, media_type text, kind text, name text, role text, metadata jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops.register_artifact(lease_token text, digest text, uri text, size_bytes bigint, media_type text, kind text, name text, role text, metadata jsonb) TO service_role;

--
-- Name: FUNCTION register_job(workspace_id text, slug text, spec jsonb, digest text, git_sha text, description text, owner text, tags jsonb); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.register_job(workspace_id text, slug text, spec jsonb, digest text, git_sha text, description text, owner text, tags jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.register_job(workspace_id text, slug text, spec jsonb, digest text, git_sha text, description text, owner text, tags jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops.register_job(workspace_id text, slug text, spec jsonb, digest text, git_sha text, description text, owner text, tags jsonb) TO service_role;

--
-- Name: FUNCTION remove_member(workspace_id text, principal_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.remove_member(workspace_id text, principal_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.remove_member(workspace_id text, principal_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.remove_member(workspace_id text, principal_id text) TO service_role;

--
-- Name: FUNCTION repair_run(run_id text, phases text[], idempotency_key text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.repair_run(run_id text, phases text[], idempotency_key text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.repair_run(run_id text, phases text[], idempotency_key text) TO authenticated;
GRANT ALL ON FUNCTION ops.repair_run(run_id text, phases text[], idempotency_key text) TO service_role;

--
-- Name: FUNCTION requeue_dead_letters(workspace_id text, phase_ids text[]); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.requeue_dead_letters(workspace_id text, phase_ids text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.requeue_dead_letters(workspace_id text, phase_ids text[]) TO authenticated;
GRANT ALL ON FUNCTION ops.requeue_dead_letters(workspace_id text, phase_ids text[]) TO service_role;

--
-- Name: FUNCTION retry_run(run_id text, idempotency_key text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.retry_run(run_id text, idempotency_key text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.retry_run(run_id text, idempotency_key text) TO authenticated;
GRANT ALL ON FUNCTION ops.retry_run(run_id text, idempotency_key text) TO service_role;

--
-- Name: FUNCTION revoke_invitation(workspace_id text, principal_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.revoke_invitation(workspace_id text, principal_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.revoke_invitation(workspace_id text, principal_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.revoke_invitation(workspace_id text, principal_id text) TO service_role;

--
-- Name: FUNCTION revoke_principal(principal_id text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.revoke_principal(principal_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.revoke_principal(principal_id text) TO authenticated;
GRANT ALL ON FUNCTION ops.revoke_principal(principal_id text) TO service_role;

--
-- Name: FUNCTION run_due_schedules(workspace_id text, "limit" integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.run_due_schedules(workspace_id text, "limit" integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.run_due_schedules(workspace_id text, "limit" integer) TO authenticated;
GRANT ALL ON FUNCTION ops.run_due_schedules(workspace_id text, "limit" integer) TO service_role;

--
-- Name: FUNCTION set_job_concurrency(workspace_id text, job text, max_concurrent_runs integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.set_job_concurrency(workspace_id text, job text, max_concurrent_runs integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.set_job_concurrency(workspace_id text, job text, max_concurrent_runs integer) TO authenticated;
GRANT ALL ON FUNCTION ops.set_job_concurrency(workspace_id text, job text, max_concurrent_runs integer) TO service_role;

--
-- Name: FUNCTION set_job_slo(workspace_id text, job text, freshness_seconds integer); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.set_job_slo(workspace_id text, job text, freshness_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.set_job_slo(workspace_id text, job text, freshness_seconds integer) TO authenticated;
GRANT ALL ON FUNCTION ops.set_job_slo(workspace_id text, job text, freshness_seconds integer) TO service_role;

--
-- Name: FUNCTION unblock_dataset(workspace_id text, name text, resolution text, note text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.unblock_dataset(workspace_id text, name text, resolution text, note text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.unblock_dataset(workspace_id text, name text, resolution text, note text) TO authenticated;
GRANT ALL ON FUNCTION ops.unblock_dataset(workspace_id text, name text, resolution text, note text) TO service_role;

--
-- Name: FUNCTION update_connection(workspace_id text, name text, config jsonb, secrets jsonb, description text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.update_connection(workspace_id text, name text, config jsonb, secrets jsonb, description text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.update_connection(workspace_id text, name text, config jsonb, secrets jsonb, description text) TO authenticated;
GRANT ALL ON FUNCTION ops.update_connection(workspace_id text, name text, config jsonb, secrets jsonb, description text) TO service_role;

--
-- Name: FUNCTION update_schedule(workspace_id text, name text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text); Type: ACL; Schema: ops; Owner: -
--

REVOKE ALL ON FUNCTION ops.update_schedule(workspace_id text, name text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops.update_schedule(workspace_id text, name text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text) TO authenticated;
GRANT ALL ON FUNCTION ops.update_schedule(workspace_id text, name text, cron text, timezone text, interval_seconds integer, params jsonb, enabled boolean, catchup text, catchup_max integer, max_concurrent integer, overlap text, priority integer, description text) TO service_role;

--
-- Name: FUNCTION active_child(p_parent uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.active_child(p_parent uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.active_child(p_parent uuid) TO authenticated;
GRANT ALL ON FUNCTION ops_private.active_child(p_parent uuid) TO service_role;

--
-- Name: FUNCTION admin_workspaces(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.admin_workspaces() FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.admin_workspaces() TO authenticated;
GRANT ALL ON FUNCTION ops_private.admin_workspaces() TO service_role;

--
-- Name: FUNCTION alert_backoff_seconds(p_attempt integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_backoff_seconds(p_attempt integer) FROM PUBLIC;

--
-- Name: TABLE alert_destinations; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.alert_destinations TO authenticated;
GRANT SELECT ON TABLE ops.alert_destinations TO service_role;

--
-- Name: FUNCTION alert_destination_json(d ops.alert_destinations); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_destination_json(d ops.alert_destinations) FROM PUBLIC;

--
-- Name: TABLE runs; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.runs TO authenticated;
GRANT SELECT ON TABLE ops.runs TO service_role;

--
-- Name: FUNCTION alert_filters_match(p_filters jsonb, p_run ops.runs); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_filters_match(p_filters jsonb, p_run ops.runs) FROM PUBLIC;

--
-- Name: TABLE alerts; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.alerts TO authenticated;
GRANT SELECT ON TABLE ops.alerts TO service_role;

--
-- Name: FUNCTION alert_json(a ops.alerts); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_json(a ops.alerts) FROM PUBLIC;

--
-- Name: FUNCTION alert_lease_expiries(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_lease_expiries() FROM PUBLIC;

--
-- Name: FUNCTION alert_message(p_text text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_message(p_text text) FROM PUBLIC;

--
-- Name: FUNCTION alert_phase_dead_lettered(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_phase_dead_lettered() FROM PUBLIC;

--
-- Name: TABLE alert_rules; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.alert_rules TO authenticated;
GRANT SELECT ON TABLE ops.alert_rules TO service_role;

--
-- Name: FUNCTION alert_rule_json(r ops.alert_rules); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_rule_json(r ops.alert_rules) FROM PUBLIC;

--
-- Name: FUNCTION alert_run_failed(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_run_failed() FROM PUBLIC;

--
-- Name: FUNCTION alert_schedule_tick_failed(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_schedule_tick_failed() FROM PUBLIC;

--
-- Name: FUNCTION alert_workspace(p_workspace uuid, p_roles text[]); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.alert_workspace(p_workspace uuid, p_roles text[]) FROM PUBLIC;

--
-- Name: FUNCTION append_events_problem(p_events jsonb, p_n integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.append_events_problem(p_events jsonb, p_n integer) FROM PUBLIC;

--
-- Name: FUNCTION audit(p_function text, p_workspace uuid, p_target_type text, p_target_id text, p_details jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.audit(p_function text, p_workspace uuid, p_target_type text, p_target_id text, p_details jsonb) FROM PUBLIC;

--
-- Name: FUNCTION auth_audit(p_actor uuid, p_subject uuid, p_function text, p_details jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_audit(p_actor uuid, p_subject uuid, p_function text, p_details jsonb) FROM PUBLIC;

--
-- Name: FUNCTION auth_create_user(p_email text, p_name text, p_password_hash text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_create_user(p_email text, p_name text, p_password_hash text) FROM PUBLIC;

--
-- Name: FUNCTION auth_disable_user(p_email text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_disable_user(p_email text) FROM PUBLIC;

--
-- Name: FUNCTION auth_email(p_email text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_email(p_email text) FROM PUBLIC;

--
-- Name: FUNCTION auth_get_user(p_principal uuid, p_session uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_get_user(p_principal uuid, p_session uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.auth_get_user(p_principal uuid, p_session uuid) TO service_role;

--
-- Name: FUNCTION auth_list_users(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_list_users() FROM PUBLIC;

--
-- Name: FUNCTION auth_logout(p_principal uuid, p_session uuid, p_scope text, p_ip text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_logout(p_principal uuid, p_session uuid, p_scope text, p_ip text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.auth_logout(p_principal uuid, p_session uuid, p_scope text, p_ip text) TO service_role;

--
-- Name: FUNCTION auth_refresh(p_hash text, p_new_hash text, p_session_ttl_seconds integer, p_grace_seconds integer, p_ip text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_refresh(p_hash text, p_new_hash text, p_session_ttl_seconds integer, p_grace_seconds integer, p_ip text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.auth_refresh(p_hash text, p_new_hash text, p_session_ttl_seconds integer, p_grace_seconds integer, p_ip text) TO service_role;

--
-- Name: FUNCTION auth_revoke_sessions(p_principal uuid, p_reason text, p_except uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_revoke_sessions(p_principal uuid, p_reason text, p_except uuid) FROM PUBLIC;

--
-- Name: FUNCTION auth_set_password(p_email text, p_password_hash text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_set_password(p_email text, p_password_hash text) FROM PUBLIC;

--
-- Name: FUNCTION auth_signin_failed(p_email text, p_ip text, p_principal uuid, p_reason text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_signin_failed(p_email text, p_ip text, p_principal uuid, p_reason text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.auth_signin_failed(p_email text, p_ip text, p_principal uuid, p_reason text) TO service_role;

--
-- Name: FUNCTION auth_signin_lookup(p_email text, p_ip text, p_window_seconds integer, p_max_per_email integer, p_max_per_ip integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_signin_lookup(p_email text, p_ip text, p_window_seconds integer, p_max_per_email integer, p_max_per_ip integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.auth_signin_lookup(p_email text, p_ip text, p_window_seconds integer, p_max_per_email integer, p_max_per_ip integer) TO service_role;

--
-- Name: FUNCTION auth_signin_ok(p_principal uuid, p_ip text, p_user_agent text, p_refresh_hash text, p_session_ttl_seconds integer, p_rehash text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_signin_ok(p_principal uuid, p_ip text, p_user_agent text, p_refresh_hash text, p_session_ttl_seconds integer, p_rehash text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.auth_signin_ok(p_principal uuid, p_ip text, p_user_agent text, p_refresh_hash text, p_session_ttl_seconds integer, p_rehash text) TO service_role;

--
-- Name: FUNCTION auth_user_id(p_email text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_user_id(p_email text) FROM PUBLIC;

--
-- Name: FUNCTION auth_user_json(p_principal uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.auth_user_json(p_principal uuid) FROM PUBLIC;

--
-- Name: FUNCTION backoff_seconds(p_attempt integer, p_base numeric, p_cap numeric); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.backoff_seconds(p_attempt integer, p_base numeric, p_cap numeric) FROM PUBLIC;

--
-- Name: FUNCTION batch_claim_id(p_claim uuid, p_i integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.batch_claim_id(p_claim uuid, p_i integer) FROM PUBLIC;

--
-- Name: FUNCTION changed_plan(p_phases jsonb, p_base ops.runs, p_changed jsonb, p_params jsonb, p_git_sha text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.changed_plan(p_phases jsonb, p_base ops.runs, p_changed jsonb, p_params jsonb, p_git_sha text) FROM PUBLIC;

--
-- Name: FUNCTION check_alert_destination(p_type text, p_url text, p_headers jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_alert_destination(p_type text, p_url text, p_headers jsonb) FROM PUBLIC;

--
-- Name: FUNCTION check_alert_name(p_what text, p_name text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_alert_name(p_what text, p_name text) FROM PUBLIC;

--
-- Name: FUNCTION check_connection(p_config jsonb, p_secrets jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_connection(p_config jsonb, p_secrets jsonb) FROM PUBLIC;

--
-- Name: FUNCTION check_connection_name(p_name text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_connection_name(p_name text) FROM PUBLIC;

--
-- Name: FUNCTION check_job_spec(p_slug text, p_spec jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_job_spec(p_slug text, p_spec jsonb) FROM PUBLIC;

--
-- Name: FUNCTION check_object(p_name text, p_value jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_object(p_name text, p_value jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.check_object(p_name text, p_value jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops_private.check_object(p_name text, p_value jsonb) TO service_role;

--
-- Name: FUNCTION check_phase_connections(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_phase_connections() FROM PUBLIC;

--
-- Name: FUNCTION check_phase_transition(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_phase_transition() FROM PUBLIC;

--
-- Name: FUNCTION check_run_transition(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_run_transition() FROM PUBLIC;

--
-- Name: TABLE schedules; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.schedules TO authenticated;
GRANT SELECT ON TABLE ops.schedules TO service_role;

--
-- Name: FUNCTION check_schedule(s ops.schedules, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_schedule(s ops.schedules, p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: FUNCTION check_size(p_name text, p_value jsonb, p_max_bytes integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.check_size(p_name text, p_value jsonb, p_max_bytes integer) FROM PUBLIC;

--
-- Name: FUNCTION claim_connections(p_workspace uuid, p_names jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_connections(p_workspace uuid, p_names jsonb) FROM PUBLIC;

--
-- Name: FUNCTION claim_due_at(p_kinds text[], p_workspaces uuid[], p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_due_at(p_kinds text[], p_workspaces uuid[], p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: COLUMN phases.id; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(id) ON TABLE ops.phases TO authenticated;
GRANT SELECT(id) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.run_id; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(run_id) ON TABLE ops.phases TO authenticated;
GRANT SELECT(run_id) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.workspace_id; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(workspace_id) ON TABLE ops.phases TO authenticated;
GRANT SELECT(workspace_id) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.name; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(name) ON TABLE ops.phases TO authenticated;
GRANT SELECT(name) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.ordinal; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(ordinal) ON TABLE ops.phases TO authenticated;
GRANT SELECT(ordinal) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.kind; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(kind) ON TABLE ops.phases TO authenticated;
GRANT SELECT(kind) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.params; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(params) ON TABLE ops.phases TO authenticated;
GRANT SELECT(params) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.depends_on; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(depends_on) ON TABLE ops.phases TO authenticated;
GRANT SELECT(depends_on) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.state; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(state) ON TABLE ops.phases TO authenticated;
GRANT SELECT(state) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.priority; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(priority) ON TABLE ops.phases TO authenticated;
GRANT SELECT(priority) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.attempt; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(attempt) ON TABLE ops.phases TO authenticated;
GRANT SELECT(attempt) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.max_attempts; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(max_attempts) ON TABLE ops.phases TO authenticated;
GRANT SELECT(max_attempts) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.timeout_seconds; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(timeout_seconds) ON TABLE ops.phases TO authenticated;
GRANT SELECT(timeout_seconds) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.retry_backoff_seconds; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(retry_backoff_seconds) ON TABLE ops.phases TO authenticated;
GRANT SELECT(retry_backoff_seconds) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.retry_backoff_max_seconds; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(retry_backoff_max_seconds) ON TABLE ops.phases TO authenticated;
GRANT SELECT(retry_backoff_max_seconds) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.queued_at; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(queued_at) ON TABLE ops.phases TO authenticated;
GRANT SELECT(queued_at) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.not_before; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(not_before) ON TABLE ops.phases TO authenticated;
GRANT SELECT(not_before) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.lease_seconds; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(lease_seconds) ON TABLE ops.phases TO authenticated;
GRANT SELECT(lease_seconds) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.lease_expires_at; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(lease_expires_at) ON TABLE ops.phases TO authenticated;
GRANT SELECT(lease_expires_at) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.claimed_by; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(claimed_by) ON TABLE ops.phases TO authenticated;
GRANT SELECT(claimed_by) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.started_at; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(started_at) ON TABLE ops.phases TO authenticated;
GRANT SELECT(started_at) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.finished_at; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(finished_at) ON TABLE ops.phases TO authenticated;
GRANT SELECT(finished_at) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.progress; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(progress) ON TABLE ops.phases TO authenticated;
GRANT SELECT(progress) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.output_manifest; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(output_manifest) ON TABLE ops.phases TO authenticated;
GRANT SELECT(output_manifest) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.error; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(error) ON TABLE ops.phases TO authenticated;
GRANT SELECT(error) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.reused_from_phase_id; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(reused_from_phase_id) ON TABLE ops.phases TO authenticated;
GRANT SELECT(reused_from_phase_id) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.updated_at; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(updated_at) ON TABLE ops.phases TO authenticated;
GRANT SELECT(updated_at) ON TABLE ops.phases TO service_role;

--
-- Name: COLUMN phases.fair_round; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT(fair_round) ON TABLE ops.phases TO authenticated;
GRANT SELECT(fair_round) ON TABLE ops.phases TO service_role;

--
-- Name: FUNCTION claim_expired_candidate(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_skip uuid[], p_busy uuid[]); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_expired_candidate(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_skip uuid[], p_busy uuid[]) FROM PUBLIC;

--
-- Name: FUNCTION claim_json(p ops.phases, r ops.runs); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_json(p ops.phases, r ops.runs) FROM PUBLIC;

--
-- Name: FUNCTION claim_next(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_uid uuid, p_lease_seconds integer, p_claim uuid, p_held boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_next(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_uid uuid, p_lease_seconds integer, p_claim uuid, p_held boolean) FROM PUBLIC;

--
-- Name: FUNCTION claim_queued_candidate(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_skip uuid[], p_busy uuid[]); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_queued_candidate(p_now timestamp with time zone, p_kinds text[], p_ws uuid[], p_run uuid, p_skip uuid[], p_busy uuid[]) FROM PUBLIC;

--
-- Name: FUNCTION claim_scope(p_kinds text[], p_lease_seconds integer, p_wsid uuid, p_run uuid, p_uid uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.claim_scope(p_kinds text[], p_lease_seconds integer, p_wsid uuid, p_run uuid, p_uid uuid) FROM PUBLIC;

--
-- Name: TABLE connections; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.connections TO authenticated;
GRANT SELECT ON TABLE ops.connections TO service_role;

--
-- Name: FUNCTION connection_json(c ops.connections); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.connection_json(c ops.connections) FROM PUBLIC;

--
-- Name: FUNCTION connection_secrets(p_connection uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.connection_secrets(p_connection uuid) FROM PUBLIC;

--
-- Name: FUNCTION connection_workspace(p_workspace uuid, p_roles text[]); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.connection_workspace(p_workspace uuid, p_roles text[]) FROM PUBLIC;

--
-- Name: FUNCTION cron_field(p_text text, p_field text, p_min integer, p_max integer, p_names text[], p_names_from integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.cron_field(p_text text, p_field text, p_min integer, p_max integer, p_names text[], p_names_from integer) FROM PUBLIC;

--
-- Name: FUNCTION cron_parse(p_cron text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.cron_parse(p_cron text) FROM PUBLIC;

--
-- Name: TABLE datasets; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.datasets TO authenticated;
GRANT SELECT ON TABLE ops.datasets TO service_role;

--
-- Name: FUNCTION dataset_record_json(p_d ops.datasets, p_recorded boolean, p_version integer, p_change text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.dataset_record_json(p_d ops.datasets, p_recorded boolean, p_version integer, p_change text) FROM PUBLIC;

--
-- Name: FUNCTION dead_letters(p_ws uuid, p_spec text, p_since timestamp with time zone, p_at timestamp with time zone, p_id uuid, p_limit integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.dead_letters(p_ws uuid, p_spec text, p_since timestamp with time zone, p_at timestamp with time zone, p_id uuid, p_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.dead_letters(p_ws uuid, p_spec text, p_since timestamp with time zone, p_at timestamp with time zone, p_id uuid, p_limit integer) TO authenticated;
GRANT ALL ON FUNCTION ops_private.dead_letters(p_ws uuid, p_spec text, p_since timestamp with time zone, p_at timestamp with time zone, p_id uuid, p_limit integer) TO service_role;

--
-- Name: FUNCTION emit(p_run uuid, p_workspace uuid, p_phase text, p_attempt integer, p_type text, p_level text, p_message text, p_payload jsonb, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.emit(p_run uuid, p_workspace uuid, p_phase text, p_attempt integer, p_type text, p_level text, p_message text, p_payload jsonb, p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: TABLE run_events; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.run_events TO authenticated;
GRANT SELECT ON TABLE ops.run_events TO service_role;

--
-- Name: FUNCTION event_json(e ops.run_events, p_sees boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.event_json(e ops.run_events, p_sees boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.event_json(e ops.run_events, p_sees boolean) TO authenticated;
GRANT ALL ON FUNCTION ops_private.event_json(e ops.run_events, p_sees boolean) TO service_role;

--
-- Name: FUNCTION fail(p_status integer, p_code text, p_message text, p_details jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.fail(p_status integer, p_code text, p_message text, p_details jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.fail(p_status integer, p_code text, p_message text, p_details jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops_private.fail(p_status integer, p_code text, p_message text, p_details jsonb) TO service_role;

--
-- Name: FUNCTION fail_phase_final(p_phase uuid, p_run ops.runs, p_error jsonb, p_retryable boolean, p_now timestamp with time zone, p_lease text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.fail_phase_final(p_phase uuid, p_run ops.runs, p_error jsonb, p_retryable boolean, p_now timestamp with time zone, p_lease text) FROM PUBLIC;

--
-- Name: FUNCTION fair_round_next(p_run uuid, p_priority integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.fair_round_next(p_run uuid, p_priority integer) FROM PUBLIC;

--
-- Name: FUNCTION find_connection(p_workspace uuid, p_name text, p_lock boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.find_connection(p_workspace uuid, p_name text, p_lock boolean) FROM PUBLIC;

--
-- Name: TABLE jobs; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.jobs TO authenticated;
GRANT SELECT ON TABLE ops.jobs TO service_role;

--
-- Name: FUNCTION find_job(p_workspace text, p_slug text, p_roles text[], p_lock boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.find_job(p_workspace text, p_slug text, p_roles text[], p_lock boolean) FROM PUBLIC;

--
-- Name: FUNCTION find_schedule(p_workspace uuid, p_name text, p_lock boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.find_schedule(p_workspace uuid, p_name text, p_lock boolean) FROM PUBLIC;

--
-- Name: TABLE sensors; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.sensors TO authenticated;
GRANT SELECT ON TABLE ops.sensors TO service_role;

--
-- Name: FUNCTION find_sensor(p_workspace uuid, p_name text, p_lock boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.find_sensor(p_workspace uuid, p_name text, p_lock boolean) FROM PUBLIC;

--
-- Name: TABLE schedule_ticks; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.schedule_ticks TO authenticated;
GRANT SELECT ON TABLE ops.schedule_ticks TO service_role;

--
-- Name: FUNCTION fire_tick(s ops.schedules, p_for timestamp with time zone, p_state text, p_reason text, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.fire_tick(s ops.schedules, p_for timestamp with time zone, p_state text, p_reason text, p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: TABLE github_check_runs; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.github_check_runs TO authenticated;
GRANT SELECT ON TABLE ops.github_check_runs TO service_role;

--
-- Name: FUNCTION github_check_run_json(c ops.github_check_runs); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.github_check_run_json(c ops.github_check_runs) FROM PUBLIC;

--
-- Name: FUNCTION github_check_run_on_run(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.github_check_run_on_run() FROM PUBLIC;

--
-- Name: FUNCTION github_state(p_run_state text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.github_state(p_run_state text) FROM PUBLIC;

--
-- Name: TABLE github_statuses; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.github_statuses TO authenticated;
GRANT SELECT ON TABLE ops.github_statuses TO service_role;

--
-- Name: FUNCTION github_status_json(s ops.github_statuses); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.github_status_json(s ops.github_statuses) FROM PUBLIC;

--
-- Name: FUNCTION github_status_on_run(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.github_status_on_run() FROM PUBLIC;

--
-- Name: FUNCTION has_password(p_text text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.has_password(p_text text) FROM PUBLIC;

--
-- Name: FUNCTION inherit_job_version(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.inherit_job_version() FROM PUBLIC;

--
-- Name: FUNCTION insert_run(p_workspace uuid, p_spec_slug text, p_git_sha text, p_phases jsonb, p_input_manifest jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer, p_parent uuid, p_reuse jsonb, p_digest text, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.insert_run(p_workspace uuid, p_spec_slug text, p_git_sha text, p_phases jsonb, p_input_manifest jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer, p_parent uuid, p_reuse jsonb, p_digest text, p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: FUNCTION int_field(p_obj jsonb, p_key text, p_path text, p_default integer, p_min integer, p_max integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.int_field(p_obj jsonb, p_key text, p_path text, p_default integer, p_min integer, p_max integer) FROM PUBLIC;

--
-- Name: TABLE invitations; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.invitations TO authenticated;
GRANT SELECT ON TABLE ops.invitations TO service_role;

--
-- Name: FUNCTION invitation_json(i ops.invitations, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.invitation_json(i ops.invitations, p_now timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.invitation_json(i ops.invitations, p_now timestamp with time zone) TO authenticated;
GRANT ALL ON FUNCTION ops_private.invitation_json(i ops.invitations, p_now timestamp with time zone) TO service_role;

--
-- Name: FUNCTION is_privileged(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.is_privileged() FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.is_privileged() TO authenticated;
GRANT ALL ON FUNCTION ops_private.is_privileged() TO service_role;

--
-- Name: FUNCTION is_secret_reference(p_text text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.is_secret_reference(p_text text) FROM PUBLIC;

--
-- Name: FUNCTION is_timestamptz(p_value text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.is_timestamptz(p_value text) FROM PUBLIC;

--
-- Name: FUNCTION job_busy(p_job uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.job_busy(p_job uuid) FROM PUBLIC;

--
-- Name: FUNCTION job_freshness_json(j ops.jobs); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.job_freshness_json(j ops.jobs) FROM PUBLIC;

--
-- Name: FUNCTION job_json(j ops.jobs); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.job_json(j ops.jobs) FROM PUBLIC;

--
-- Name: FUNCTION job_last_run(p_job uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.job_last_run(p_job uuid) FROM PUBLIC;

--
-- Name: FUNCTION job_next_run_at(p_job uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.job_next_run_at(p_job uuid) FROM PUBLIC;

--
-- Name: TABLE job_versions; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.job_versions TO authenticated;
GRANT SELECT ON TABLE ops.job_versions TO service_role;

--
-- Name: FUNCTION job_version_json(v ops.job_versions, p_with_spec boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.job_version_json(v ops.job_versions, p_with_spec boolean) FROM PUBLIC;

--
-- Name: FUNCTION limit_arg(p_name text, p_value integer, p_max integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.limit_arg(p_name text, p_value integer, p_max integer) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.limit_arg(p_name text, p_value integer, p_max integer) TO authenticated;
GRANT ALL ON FUNCTION ops_private.limit_arg(p_name text, p_value integer, p_max integer) TO service_role;

--
-- Name: FUNCTION lineage_json(p_run uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.lineage_json(p_run uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.lineage_json(p_run uuid) TO authenticated;
GRANT ALL ON FUNCTION ops_private.lineage_json(p_run uuid) TO service_role;

--
-- Name: FUNCTION make_repair(p_r ops.runs, p_rerun text[], p_key text, p_digest text, p_on_active text, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.make_repair(p_r ops.runs, p_rerun text[], p_key text, p_digest text, p_on_active text, p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: FUNCTION manifest_tables(p_manifest jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.manifest_tables(p_manifest jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.manifest_tables(p_manifest jsonb) TO authenticated;
GRANT ALL ON FUNCTION ops_private.manifest_tables(p_manifest jsonb) TO service_role;

--
-- Name: FUNCTION member_workspaces(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.member_workspaces() FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.member_workspaces() TO authenticated;
GRANT ALL ON FUNCTION ops_private.member_workspaces() TO service_role;

--
-- Name: FUNCTION move_phase(p_phase uuid, p_to text, p_now timestamp with time zone, p_lease text, p_error jsonb, p_output_manifest jsonb, p_not_before timestamp with time zone, p_lease_seconds integer, p_claim_id uuid, p_claimed_by uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.move_phase(p_phase uuid, p_to text, p_now timestamp with time zone, p_lease text, p_error jsonb, p_output_manifest jsonb, p_not_before timestamp with time zone, p_lease_seconds integer, p_claim_id uuid, p_claimed_by uuid) FROM PUBLIC;

--
-- Name: FUNCTION normalize_phases(p_phases jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.normalize_phases(p_phases jsonb) FROM PUBLIC;

--
-- Name: FUNCTION notify_queued(p_workspace uuid, p_kind text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.notify_queued(p_workspace uuid, p_kind text) FROM PUBLIC;

--
-- Name: FUNCTION notify_run_changes(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.notify_run_changes() FROM PUBLIC;

--
-- Name: FUNCTION now(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.now() FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.now() TO authenticated;
GRANT ALL ON FUNCTION ops_private.now() TO service_role;

--
-- Name: FUNCTION num_field(p_obj jsonb, p_key text, p_path text, p_default numeric, p_min numeric, p_max numeric); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.num_field(p_obj jsonb, p_key text, p_path text, p_default numeric, p_min numeric, p_max numeric) FROM PUBLIC;

--
-- Name: FUNCTION param_problem(p_type text, p_value jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.param_problem(p_type text, p_value jsonb) FROM PUBLIC;

--
-- Name: FUNCTION phases_json(p_run uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.phases_json(p_run uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.phases_json(p_run uuid) TO authenticated;
GRANT ALL ON FUNCTION ops_private.phases_json(p_run uuid) TO service_role;

--
-- Name: FUNCTION pre_request(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.pre_request() FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.pre_request() TO anon;
GRANT ALL ON FUNCTION ops_private.pre_request() TO authenticated;
GRANT ALL ON FUNCTION ops_private.pre_request() TO service_role;

--
-- Name: FUNCTION principal(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.principal() FROM PUBLIC;

--
-- Name: FUNCTION principal_name(p_workspace uuid, p_principal uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.principal_name(p_workspace uuid, p_principal uuid) FROM PUBLIC;

--
-- Name: FUNCTION raise_alerts(p_workspace uuid, p_event text, p_subject jsonb, p_payload jsonb, p_run ops.runs, p_dedupe text, p_count bigint); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.raise_alerts(p_workspace uuid, p_event text, p_subject jsonb, p_payload jsonb, p_run ops.runs, p_dedupe text, p_count bigint) FROM PUBLIC;

--
-- Name: FUNCTION readable_workspace(p_workspace uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.readable_workspace(p_workspace uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.readable_workspace(p_workspace uuid) TO authenticated;
GRANT ALL ON FUNCTION ops_private.readable_workspace(p_workspace uuid) TO service_role;

--
-- Name: FUNCTION record_freshness(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.record_freshness() FROM PUBLIC;

--
-- Name: FUNCTION record_lineage(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.record_lineage() FROM PUBLIC;

--
-- Name: FUNCTION redact_passwords(p_text text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.redact_passwords(p_text text) FROM PUBLIC;

--
-- Name: FUNCTION refuse_job_version_change(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.refuse_job_version_change() FROM PUBLIC;

--
-- Name: FUNCTION refuse_manifest_connections(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.refuse_manifest_connections() FROM PUBLIC;

--
-- Name: FUNCTION repair_set(p_parent uuid, p_named text[]); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.repair_set(p_parent uuid, p_named text[]) FROM PUBLIC;

--
-- Name: FUNCTION require_github_deliverer(p_fn text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.require_github_deliverer(p_fn text) FROM PUBLIC;

--
-- Name: FUNCTION require_role(p_workspace uuid, p_roles text[], p_hide boolean, p_what text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.require_role(p_workspace uuid, p_roles text[], p_hide boolean, p_what text) FROM PUBLIC;

--
-- Name: FUNCTION require_service_role(p_fn text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.require_service_role(p_fn text) FROM PUBLIC;

--
-- Name: FUNCTION rerun_to_an_end(p_run uuid, p_name text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.rerun_to_an_end(p_run uuid, p_name text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.rerun_to_an_end(p_run uuid, p_name text) TO authenticated;
GRANT ALL ON FUNCTION ops_private.rerun_to_an_end(p_run uuid, p_name text) TO service_role;

--
-- Name: FUNCTION run_job_json(p_version uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.run_job_json(p_version uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.run_job_json(p_version uuid) TO authenticated;
GRANT ALL ON FUNCTION ops_private.run_job_json(p_version uuid) TO service_role;

--
-- Name: FUNCTION run_json(p_run uuid, p_with_phases boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.run_json(p_run uuid, p_with_phases boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.run_json(p_run uuid, p_with_phases boolean) TO authenticated;
GRANT ALL ON FUNCTION ops_private.run_json(p_run uuid, p_with_phases boolean) TO service_role;

--
-- Name: FUNCTION run_summary_json(p_run uuid, p_sees boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.run_summary_json(p_run uuid, p_sees boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.run_summary_json(p_run uuid, p_sees boolean) TO authenticated;
GRANT ALL ON FUNCTION ops_private.run_summary_json(p_run uuid, p_sees boolean) TO service_role;

--
-- Name: FUNCTION schedule_json(s ops.schedules); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.schedule_json(s ops.schedules) FROM PUBLIC;

--
-- Name: FUNCTION schedule_next(s ops.schedules, p_after timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.schedule_next(s ops.schedules, p_after timestamp with time zone) FROM PUBLIC;

--
-- Name: FUNCTION schedule_times(s ops.schedules, p_after timestamp with time zone, p_until timestamp with time zone, p_limit integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.schedule_times(s ops.schedules, p_after timestamp with time zone, p_until timestamp with time zone, p_limit integer) FROM PUBLIC;

--
-- Name: FUNCTION schedule_workspace(p_workspace uuid, p_roles text[]); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.schedule_workspace(p_workspace uuid, p_roles text[]) FROM PUBLIC;

--
-- Name: FUNCTION secret_key_pattern(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.secret_key_pattern() FROM PUBLIC;

--
-- Name: FUNCTION sees_principals(p_workspace uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.sees_principals(p_workspace uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.sees_principals(p_workspace uuid) TO authenticated;
GRANT ALL ON FUNCTION ops_private.sees_principals(p_workspace uuid) TO service_role;

--
-- Name: FUNCTION sensor_json(s ops.sensors); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.sensor_json(s ops.sensors) FROM PUBLIC;

--
-- Name: FUNCTION settle_run(p_run ops.runs, p_now timestamp with time zone); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.settle_run(p_run ops.runs, p_now timestamp with time zone) FROM PUBLIC;

--
-- Name: FUNCTION start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer) FROM PUBLIC;

--
-- Name: FUNCTION start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer, p_base uuid, p_changed jsonb); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text, p_labels jsonb, p_priority integer, p_base uuid, p_changed jsonb) FROM PUBLIC;

--
-- Name: FUNCTION tick_json(t ops.schedule_ticks); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.tick_json(t ops.schedule_ticks) FROM PUBLIC;

--
-- Name: FUNCTION time_arg(p_name text, p_value text); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.time_arg(p_name text, p_value text) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.time_arg(p_name text, p_value text) TO authenticated;
GRANT ALL ON FUNCTION ops_private.time_arg(p_name text, p_value text) TO service_role;

--
-- Name: FUNCTION token_pins(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.token_pins() FROM PUBLIC;

--
-- Name: FUNCTION uid(); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.uid() FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.uid() TO authenticated;
GRANT ALL ON FUNCTION ops_private.uid() TO service_role;

--
-- Name: FUNCTION uuid_arg(p_name text, p_value text, p_required boolean); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.uuid_arg(p_name text, p_value text, p_required boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION ops_private.uuid_arg(p_name text, p_value text, p_required boolean) TO authenticated;
GRANT ALL ON FUNCTION ops_private.uuid_arg(p_name text, p_value text, p_required boolean) TO service_role;

--
-- Name: FUNCTION workspace_slug(p_workspace uuid); Type: ACL; Schema: ops_private; Owner: -
--

REVOKE ALL ON FUNCTION ops_private.workspace_slug(p_workspace uuid) FROM PUBLIC;

--
-- Name: TABLE alert_deliveries; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.alert_deliveries TO authenticated;
GRANT SELECT ON TABLE ops.alert_deliveries TO service_role;

--
-- Name: TABLE artifacts; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.artifacts TO authenticated;
GRANT SELECT ON TABLE ops.artifacts TO service_role;

--
-- Name: TABLE audit_log; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.audit_log TO authenticated;
GRANT SELECT ON TABLE ops.audit_log TO service_role;

--
-- Name: TABLE dataset_versions; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.dataset_versions TO authenticated;
GRANT SELECT ON TABLE ops.dataset_versions TO service_role;

--
-- Name: TABLE principals; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.principals TO authenticated;
GRANT SELECT ON TABLE ops.principals TO service_role;

--
-- Name: TABLE run_artifacts; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.run_artifacts TO authenticated;
GRANT SELECT ON TABLE ops.run_artifacts TO service_role;

--
-- Name: TABLE secrets_refs; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.secrets_refs TO authenticated;
GRANT SELECT ON TABLE ops.secrets_refs TO service_role;

--
-- Name: TABLE workspace_members; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.workspace_members TO authenticated;
GRANT SELECT ON TABLE ops.workspace_members TO service_role;

--
-- Name: TABLE workspaces; Type: ACL; Schema: ops; Owner: -
--

GRANT SELECT ON TABLE ops.workspaces TO authenticated;
GRANT SELECT ON TABLE ops.workspaces TO service_role;

--
-- PostgreSQL database dump complete
--

-- reference rows

--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Data for Name: reserved_event_types; Type: TABLE DATA; Schema: ops_private; Owner: -
--

INSERT INTO ops_private.reserved_event_types VALUES ('RUN_CREATED');
INSERT INTO ops_private.reserved_event_types VALUES ('RUN_SUCCEEDED');
INSERT INTO ops_private.reserved_event_types VALUES ('RUN_FAILED');
INSERT INTO ops_private.reserved_event_types VALUES ('RUN_CANCELLED');
INSERT INTO ops_private.reserved_event_types VALUES ('RUN_FINALIZED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_QUEUED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_CLAIMED');
INSERT INTO ops_private.reserved_event_types VALUES ('LEASE_EXPIRED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_SUCCEEDED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_FAILED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_RETRY_SCHEDULED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_SKIPPED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_CANCELLED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_REUSED');
INSERT INTO ops_private.reserved_event_types VALUES ('PHASE_STOPPED');
INSERT INTO ops_private.reserved_event_types VALUES ('ARTIFACT_REGISTERED');
INSERT INTO ops_private.reserved_event_types VALUES ('DATASET_SCHEMA_CHANGED');
INSERT INTO ops_private.reserved_event_types VALUES ('DATASET_BLOCKED');

--
-- PostgreSQL database dump complete
--
