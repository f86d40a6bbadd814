-- append_events at batch speed (issue 17: batches of events sustain >= 50,000 events/s with
-- de-duplication). It checked, de-duplicated and collected its events one by one in PL/pgSQL,
-- growing a jsonb array and a uuid array per event (quadratic in the batch): 2,600 events/s in
-- batches of 1,000. Now one set-based pass checks every event (the same rules); only a batch
-- that fails it is walked event by event (ops_private.append_events_problem, the former loop)
-- to name its first problem exactly as before (a timestamp on the 29th to 31st of a month is
-- checked by ops_private.is_timestamptz, earlier days by the pattern alone); the events are
-- de-duplicated and inserted by one statement.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

-- Raises the first problem of a batch of events, as append_events named it (one by one).
create function ops_private.append_events_problem(p_events jsonb, p_n integer)
returns void
language plpgsql
as $_$
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

revoke execute on function ops_private.append_events_problem(jsonb, integer)
    from public, anon, authenticated, service_role;

create or replace function ops.append_events(run_id text, events jsonb, lease_token text default null)
returns jsonb
language plpgsql security definer
set search_path = ''
as $_$
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
