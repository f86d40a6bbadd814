-- ops_private: helpers shared by the contract's functions. Never exposed, never granted to anon.
-- They run inside the ops functions and inherit their `search_path = ''` (every name here is
-- schema-qualified), so they carry no SET clause of their own: a SET clause costs a settings
-- save and restore on each call and keeps SQL functions from being inlined. The helpers row
-- level security calls (member_workspaces, admin_workspaces) keep theirs: they run anywhere.
--
-- Locking protocol (it is what makes the functions deadlock-free under any interleaving):
--   1. phase rows are locked before their run row, several phases always in id order;
--   2. a transaction holding a run row lock never waits for another lock: after it, phases are
--      only taken with SKIP LOCKED;
--   3. whoever holds a not-started phase of a finished run settles it (skipped or cancelled) once
--      it holds the run lock, so a SKIP LOCKED cascade never leaves a phase behind.
-- Every event of a run is written under that run's row lock, which allocates its `seq`: the
-- event cursor is gap-free and commit-ordered per run.

-- The current time. Tests (and only tests) set control_room.now to move the clock without
-- sleeping, as River's `now` parameter does; PostgREST cannot set this setting.
create function ops_private.now()
returns timestamptz
language sql stable
as $$
    select coalesce(nullif(pg_catalog.current_setting('control_room.now', true), '')::timestamptz,
                    pg_catalog.now())
$$;

-- Raise a contract error: SQLSTATE PT<status> (PostgREST answers HTTP <status>), the stable
-- machine code in HINT, optional structured details as JSON text in DETAIL.
create function ops_private.fail(p_status integer, p_code text, p_message text, p_details jsonb default null)
returns void
language plpgsql
as $$
begin
    if p_details is null then
        raise exception using errcode = 'PT' || p_status::text, message = p_message, hint = p_code;
    end if;
    raise exception using errcode = 'PT' || p_status::text, message = p_message, hint = p_code,
                          detail = p_details::text;
end
$$;

-- A uuid argument given as text, so that a malformed one is a PT400 naming the argument.
create function ops_private.uuid_arg(p_name text, p_value text, p_required boolean default false)
returns uuid
language plpgsql immutable
as $$
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
$$;

-- Refuse a json argument larger than max_bytes (its text form) with PT413.
create function ops_private.check_size(p_name text, p_value jsonb, p_max_bytes integer)
returns void
language plpgsql immutable
as $$
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

-- Require a json object (or null when allowed).
create function ops_private.check_object(p_name text, p_value jsonb)
returns void
language plpgsql immutable
as $$
begin
    if p_value is not null and pg_catalog.jsonb_typeof(p_value) <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('%s must be a JSON object, got %s', p_name, pg_catalog.jsonb_typeof(p_value)),
            pg_catalog.jsonb_build_object('argument', p_name));
    end if;
end
$$;

-- Whether text is an ISO 8601 timestamp with a time zone that PostgreSQL can represent
-- (checked field by field, so that a bad one is a PT400 and not a cast error).
create function ops_private.is_timestamptz(p_value text)
returns boolean
language plpgsql immutable
as $$
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
$$;

-- Read an optional integer member of a json object, within bounds.
create function ops_private.int_field(p_obj jsonb, p_key text, p_path text, p_default integer,
                                      p_min integer, p_max integer)
returns integer
language plpgsql immutable
as $$
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

create function ops_private.num_field(p_obj jsonb, p_key text, p_path text, p_default numeric,
                                      p_min numeric, p_max numeric)
returns numeric
language plpgsql immutable
as $$
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

-- Whether the caller's own database role may do anything: a superuser or a BYPASSRLS role
-- (service_role, and postgres on Supabase). Inside SECURITY DEFINER functions current_user is
-- the owner, but the `role` setting still names the role PostgREST (or SET ROLE) switched to.
create function ops_private.is_privileged()
returns boolean
language plpgsql stable
as $$
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

-- auth.uid() as Supabase defines it (supabase/auth 20240624145325_recreate_auth_functions),
-- minus its SET clause so that it is inlined: the functions ask for it several times a call.
create function ops_private.uid()
returns uuid
language sql stable
as $$
    select coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                    (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;

-- The calling principal (auth.uid()), refused when it has been revoked.
create function ops_private.principal()
returns uuid
language plpgsql stable
as $$
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

-- Wake executors waiting for work (the gateway LISTENs; on Supabase nobody does, harmlessly).
-- The payload '<workspace id> <kind>' lets the gateway wake only the waiters that could claim
-- it. Notifications are sent at commit; identical ones in one transaction are folded into one.
create function ops_private.notify_queued(p_workspace uuid, p_kind text)
returns void
language plpgsql
as $$
begin
    perform pg_catalog.pg_notify('ops_phase_queued', p_workspace::text || ' ' || p_kind);
end
$$;

-- The caller's role in a workspace, or an error. Privileged callers pass as 'service_role'.
-- p_hide: answer "not found" instead of "forbidden" to non-members (used when the workspace was
-- reached through a run or phase id, so ids of other tenants reveal nothing).
create function ops_private.require_role(p_workspace uuid, p_roles text[], p_hide boolean default false,
                                         p_what text default 'workspace')
returns text
language plpgsql stable
as $$
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

-- Append one lifecycle event. Takes (or already holds) the run's row lock.
create function ops_private.emit(p_run uuid, p_workspace uuid, p_phase text, p_attempt integer,
                                 p_type text, p_level text, p_message text, p_payload jsonb,
                                 p_now timestamptz)
returns bigint
language plpgsql
as $$
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

create function ops_private.audit(p_function text, p_workspace uuid, p_target_type text, p_target_id text,
                                  p_details jsonb default '{}'::jsonb)
returns void
language plpgsql
as $$
begin
    insert into ops.audit_log (at, principal_id, db_role, function_name, workspace_id, target_type,
                               target_id, details)
    values (ops_private.now(), ops_private.uid(),
            coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text),
            p_function, p_workspace, p_target_type, p_target_id, coalesce(p_details, '{}'::jsonb));
end
$$;

-- Retry delay for a failed attempt: exponential from the phase's base, capped, with equal
-- jitter (uniform in [d/2, d]) so that retries of many phases failing together spread out.
create function ops_private.backoff_seconds(p_attempt integer, p_base numeric, p_cap numeric)
returns numeric
language plpgsql volatile
as $$
declare
    d numeric := least(p_cap, p_base * power(2::numeric, greatest(p_attempt, 1) - 1));
begin
    return d / 2 + pg_catalog.random()::numeric * d / 2;
end
$$;

-- Phases of a run as the API shows them (never the lease token or claim id).
-- SECURITY INVOKER: called from read functions it sees what RLS lets the caller see.
create function ops_private.phases_json(p_run uuid)
returns jsonb
language plpgsql stable
as $$
begin
    return (
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', p.id, 'name', p.name, 'ordinal', p.ordinal, 'kind', p.kind, 'params', p.params,
        'depends_on', pg_catalog.to_jsonb(p.depends_on), 'state', p.state, 'priority', p.priority,
        'attempt', p.attempt, 'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
        'retry_backoff_seconds', p.retry_backoff_seconds,
        'retry_backoff_max_seconds', p.retry_backoff_max_seconds,
        'queued_at', p.queued_at, 'not_before', p.not_before, 'lease_seconds', p.lease_seconds,
        'lease_expires_at', p.lease_expires_at, 'claimed_by', p.claimed_by,
        'started_at', p.started_at, 'finished_at', p.finished_at, 'progress', p.progress,
        'output_manifest', p.output_manifest, 'error', p.error,
        'reused_from_phase_id', p.reused_from_phase_id) order by p.ordinal), '[]'::jsonb)
    from ops.phases p
    where p.run_id = p_run);
end
$$;

create function ops_private.run_json(p_run uuid, p_with_phases boolean default true)
returns jsonb
language plpgsql stable
as $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest'
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

-- Settle the not-started phases of a finished run that this transaction can lock (rule 3 of
-- the protocol): skipped when the run failed, cancelled when it was cancelled. Running phases
-- are left to their holders. The caller holds the run lock.
create function ops_private.settle_run(p_run ops.runs, p_now timestamptz)
returns integer
language plpgsql
as $$
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
        update ops.phases p
        set state = v_state, finished_at = p_now, updated_at = p_now, lease_expires_at = null,
            lease_token = null, not_before = null
        where p.id in (select q.id from ops.phases q
                       where q.run_id = p_run.id and q.state in ('waiting', 'queued')
                       order by q.id for update skip locked)
        returning p.name, p.attempt
    loop
        perform ops_private.emit(p_run.id, p_run.workspace_id, v_p.name, v_p.attempt, v_type, 'info',
            case p_run.state when 'failed' then 'skipped: the run failed' else 'cancelled with the run' end,
            '{}'::jsonb, p_now);
        v_n := v_n + 1;
    end loop;
    return v_n;
end
$$;

-- Validate a phases argument and return it normalised, in a topological order, with each
-- phase's ordinal. Errors name the phase index and field. Linear in phases + dependencies:
-- a thousand-phase chain validates in milliseconds.
create function ops_private.normalize_phases(p_phases jsonb)
returns jsonb
language plpgsql immutable
as $$
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
$$;

-- Insert a new run with its phases; roots are queued, the rest wait. `p_reuse` maps phase names
-- of a parent run to the succeeded phases whose outputs the new run keeps (retry_run).
create function ops_private.insert_run(p_workspace uuid, p_spec_slug text, p_git_sha text, p_phases jsonb,
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
                            queued_at, not_before, output_manifest, finished_at, reused_from_phase_id,
                            updated_at)
    select v_run, p_workspace, e ->> 'name', (e ->> 'ordinal')::integer, e ->> 'kind', e -> 'params',
           array(select pg_catalog.jsonb_array_elements_text(e -> 'depends_on')),
           case when p_reuse ? (e ->> 'name') then 'succeeded'
                when not exists (select 1 from pg_catalog.jsonb_array_elements_text(e -> 'depends_on') d(name)
                                 where not coalesce(p_reuse ? d.name, false)) then 'queued'
                else 'waiting' end,
           p_priority, (e ->> 'max_attempts')::integer, (e ->> 'timeout_seconds')::integer,
           (e ->> 'retry_backoff_seconds')::numeric, (e ->> 'retry_backoff_max_seconds')::numeric,
           p_now, p_now,
           p_reuse -> (e ->> 'name') -> 'output_manifest',
           case when p_reuse ? (e ->> 'name') then p_now end,
           (p_reuse -> (e ->> 'name') ->> 'phase_id')::uuid,
           p_now
    from pg_catalog.jsonb_array_elements(p_phases) e;

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

revoke execute on all functions in schema ops_private from public, anon;
grant execute on function ops_private.phases_json(uuid), ops_private.run_json(uuid, boolean),
                          ops_private.uuid_arg(text, text, boolean), ops_private.fail(integer, text, text, jsonb),
                          ops_private.check_object(text, jsonb), ops_private.now(),
                          ops_private.is_privileged(), ops_private.uid()
    to authenticated, service_role;
