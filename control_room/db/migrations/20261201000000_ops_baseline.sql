-- The baseline of the control plane (schemas ops and ops_private), in four parts:
--   1. tables, indexes, row level security and grants;
--   2. ops_private: the helpers of the contract's functions (the locking protocol, the one way
--      to move a phase, the transition rules);
--   3. ops: the executor contract (contract/openapi.yaml describes each function);
--   4. ops: the data catalog (datasets and their schema versions).
-- Supabase CLI rules: no BEGIN/COMMIT, no CONCURRENTLY, explicit grants. A migration applied
-- anywhere is never edited: a change is a new file, and `python -m control_room.db.snapshot`
-- regenerates control_room/db/schema.sql (docs/contract.md, "Migrations").
-- Every write goes through the functions of parts 3 and 4; tables take no direct writes.

-- =============================================================================================
-- 1. tables, indexes, row level security and grants
-- =============================================================================================

create schema if not exists ops;
create schema if not exists ops_private;

comment on schema ops is 'Lakehouse Control Room control plane: runs, phases, events, artifacts. Exposed over /rest/v1/rpc.';
comment on schema ops_private is 'Helpers of the ops functions. Never exposed.';

-- ---------------------------------------------------------------------------------------------
-- tenants and principals
-- ---------------------------------------------------------------------------------------------
create table ops.workspaces (
    id          uuid primary key default gen_random_uuid(),
    slug        text not null unique check (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name        text not null check (length(name) between 1 and 200),
    env         text not null check (env in ('dev', 'stage', 'prod')),
    created_by  uuid,
    created_at  timestamptz not null default now()
);

create table ops.workspace_members (
    workspace_id uuid not null references ops.workspaces (id) on delete cascade,
    principal_id uuid not null,
    role         text not null check (role in ('viewer', 'developer', 'admin', 'executor')),
    name         text check (length(name) <= 200),
    created_at   timestamptz not null default now(),
    primary key (workspace_id, principal_id)
);
create index workspace_members_principal_idx on ops.workspace_members (principal_id, workspace_id);

-- Principals that hold tokens minted by `control-room token create` (executors, service users).
-- Supabase Auth users need no row here; a row with revoked_at set refuses its holder even
-- when the token's signature is valid.
create table ops.principals (
    id          uuid primary key default gen_random_uuid(),
    kind        text not null check (kind in ('user', 'executor')),
    name        text not null check (length(name) between 1 and 200),
    created_by  uuid,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz,
    revoked_by  uuid
);
create index principals_revoked_idx on ops.principals (id) where revoked_at is not null;

-- ---------------------------------------------------------------------------------------------
-- runs and phases
-- ---------------------------------------------------------------------------------------------
create table ops.runs (
    id              uuid primary key default gen_random_uuid(),
    workspace_id    uuid not null references ops.workspaces (id),
    env             text not null,
    spec_slug       text not null,
    git_sha         text not null,
    state           text not null default 'queued'
                    check (state in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority        integer not null default 0,
    labels          jsonb not null default '{}',
    input_manifest  jsonb not null default '{}',
    output_manifest jsonb,
    idempotency_key text,
    request_digest  text not null,
    parent_run_id   uuid references ops.runs (id),
    error           jsonb,
    cancel_reason   text,
    created_by      uuid,
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    finalized_at    timestamptz,
    updated_at      timestamptz not null default now(),
    -- per-run event counter: run_events.seq is allocated under this row's lock, so a
    -- reader's `after` cursor never skips an event committed late.
    last_event_seq  bigint not null default 0,
    unique (workspace_id, idempotency_key)
);
create index runs_workspace_created_idx on ops.runs (workspace_id, created_at desc, id desc);
create index runs_created_idx on ops.runs (created_at desc, id desc);
create index runs_parent_idx on ops.runs (parent_run_id) where parent_run_id is not null;

create table ops.phases (
    id                    uuid primary key default gen_random_uuid(),
    run_id                uuid not null references ops.runs (id) on delete cascade,
    workspace_id          uuid not null references ops.workspaces (id),
    name                  text not null,
    ordinal               integer not null,
    kind                  text not null,
    params                jsonb not null default '{}',
    depends_on            text[] not null default '{}',
    state                 text not null
                          check (state in ('waiting', 'queued', 'running', 'succeeded',
                                           'failed', 'skipped', 'cancelled')),
    priority              integer not null default 0,
    attempt               integer not null default 0,
    max_attempts          integer not null,
    timeout_seconds       integer not null,
    retry_backoff_seconds numeric not null,
    retry_backoff_max_seconds numeric not null,
    queued_at             timestamptz,
    not_before            timestamptz,
    lease_token           uuid,
    lease_seconds         integer,
    lease_expires_at      timestamptz,
    claim_id              uuid,
    claimed_by            uuid,
    started_at            timestamptz,
    finished_at           timestamptz,
    progress              jsonb,
    output_manifest       jsonb,
    error                 jsonb,
    reused_from_phase_id  uuid,
    updated_at            timestamptz not null default now(),
    unique (run_id, name)
);
-- Phases and runs are updated on every claim, heartbeat, event and completion: leave room on
-- each page for HOT updates, and vacuum them eagerly so that dead tuples do not pile up in the
-- claim path's indexes (a queue table's usual decline).
alter table ops.phases set (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                            autovacuum_vacuum_threshold = 500, autovacuum_analyze_scale_factor = 0.02);
alter table ops.runs set (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                          autovacuum_vacuum_threshold = 500);

-- The claim path reads only these two partial indexes: their size follows the live queue,
-- not the history (finished phases are in neither).
create index phases_claimable_idx on ops.phases (priority desc, queued_at, ordinal, id) where state = 'queued';
create index phases_lease_expiry_idx on ops.phases (lease_expires_at) where state = 'running';
-- claims within one run (claim_phase(run_id => ...)): the same order, the run first
create index phases_run_claimable_idx on ops.phases (run_id, priority desc, queued_at, ordinal, id)
    where state = 'queued';
create unique index phases_lease_token_idx on ops.phases (lease_token) where lease_token is not null;
create unique index phases_claim_id_idx on ops.phases (claim_id) where state = 'running';

-- ---------------------------------------------------------------------------------------------
-- events (append-only) and artifacts (immutable, content-addressed)
-- ---------------------------------------------------------------------------------------------
create table ops.run_events (
    run_id        uuid not null references ops.runs (id) on delete cascade,
    seq           bigint not null,
    event_id      uuid not null,
    workspace_id  uuid not null,
    phase         text,
    attempt       integer,
    ts            timestamptz not null,
    recorded_at   timestamptz not null default now(),
    level         text not null check (level in ('debug', 'info', 'warning', 'error')),
    type          text not null,
    message       text not null default '',
    payload       jsonb not null default '{}',
    principal_id  uuid,
    primary key (run_id, seq),
    unique (run_id, event_id)
);
create index run_events_type_idx on ops.run_events (workspace_id, type);
create index run_events_lease_expired_idx on ops.run_events (recorded_at) where type = 'LEASE_EXPIRED';

-- Event types that only the control plane writes (the run and phase lifecycle,
-- register_artifact, record_dataset): append_events refuses them. Reserving one more is one
-- line in a new migration:
--     insert into ops_private.reserved_event_types (type) values ('NEW_TYPE');
create table ops_private.reserved_event_types (
    type text primary key check (type ~ '^[A-Z][A-Z0-9_]{0,63}$')
);
comment on table ops_private.reserved_event_types is 'Event types append_events refuses: only the control plane writes them.';
insert into ops_private.reserved_event_types (type) values
    ('RUN_CREATED'),
    ('RUN_SUCCEEDED'),
    ('RUN_FAILED'),
    ('RUN_CANCELLED'),
    ('RUN_FINALIZED'),
    ('PHASE_QUEUED'),
    ('PHASE_CLAIMED'),
    ('LEASE_EXPIRED'),
    ('PHASE_SUCCEEDED'),
    ('PHASE_FAILED'),
    ('PHASE_RETRY_SCHEDULED'),
    ('PHASE_SKIPPED'),
    ('PHASE_CANCELLED'),
    ('PHASE_REUSED'),
    ('PHASE_STOPPED'),
    ('ARTIFACT_REGISTERED'),
    ('DATASET_SCHEMA_CHANGED'),
    ('DATASET_BLOCKED');

create table ops.artifacts (
    workspace_id  uuid not null references ops.workspaces (id),
    digest        text not null check (digest ~ '^blake3:[0-9a-f]{64}$'),
    size_bytes    bigint not null check (size_bytes >= 0),
    media_type    text not null,
    kind          text not null,
    uri           text not null,
    metadata      jsonb not null default '{}',
    first_run_id  uuid,
    created_by    uuid,
    created_at    timestamptz not null default now(),
    primary key (workspace_id, digest)
);

create table ops.run_artifacts (
    id            bigint generated always as identity primary key,
    run_id        uuid not null references ops.runs (id) on delete cascade,
    workspace_id  uuid not null,
    phase_id      uuid references ops.phases (id) on delete cascade,
    phase         text,
    digest        text not null,
    role          text not null check (role in ('output', 'input', 'log', 'report')),
    name          text not null,
    attempt       integer,
    created_at    timestamptz not null default now(),
    foreign key (workspace_id, digest) references ops.artifacts (workspace_id, digest),
    unique nulls not distinct (run_id, phase, digest, role, name)
);
create index run_artifacts_digest_idx on ops.run_artifacts (workspace_id, digest);

-- ---------------------------------------------------------------------------------------------
-- audit
-- ---------------------------------------------------------------------------------------------
create table ops.audit_log (
    id            bigint generated always as identity primary key,
    at            timestamptz not null default now(),
    principal_id  uuid,
    db_role       text not null,
    function_name text not null,
    workspace_id  uuid,
    target_type   text,
    target_id     text,
    details       jsonb not null default '{}'
);
create index audit_log_workspace_idx on ops.audit_log (workspace_id, at desc);

-- ---------------------------------------------------------------------------------------------
-- row level security: members read their workspaces' rows; nobody writes directly
-- ---------------------------------------------------------------------------------------------
-- The workspaces the caller belongs to, evaluated once per statement. SECURITY DEFINER so the
-- policy on workspace_members does not recurse into itself.
create function ops_private.member_workspaces()
returns setof uuid
language sql stable security definer
set search_path = ''
as $$
    select m.workspace_id from ops.workspace_members m
    where m.principal_id = (select auth.uid())
      and not exists (select 1 from ops.principals p
                      where p.id = (select auth.uid()) and p.revoked_at is not null)
$$;

create function ops_private.admin_workspaces()
returns setof uuid
language sql stable security definer
set search_path = ''
as $$
    select m.workspace_id from ops.workspace_members m
    where m.principal_id = (select auth.uid()) and m.role = 'admin'
      and not exists (select 1 from ops.principals p
                      where p.id = (select auth.uid()) and p.revoked_at is not null)
$$;

alter table ops.workspaces        enable row level security;
alter table ops.workspace_members enable row level security;
alter table ops.runs              enable row level security;
alter table ops.phases            enable row level security;
alter table ops.run_events        enable row level security;
alter table ops.artifacts         enable row level security;
alter table ops.run_artifacts     enable row level security;
alter table ops.audit_log         enable row level security;
alter table ops.principals        enable row level security;

create policy workspaces_read on ops.workspaces for select to authenticated
    using (id in (select ops_private.member_workspaces()));
create policy workspace_members_read on ops.workspace_members for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy runs_read on ops.runs for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy phases_read on ops.phases for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy run_events_read on ops.run_events for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy artifacts_read on ops.artifacts for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy run_artifacts_read on ops.run_artifacts for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy audit_log_read on ops.audit_log for select to authenticated
    using (workspace_id in (select ops_private.admin_workspaces()));
create policy principals_read on ops.principals for select to authenticated
    using (id in (select m.principal_id from ops.workspace_members m
                  where m.workspace_id in (select ops_private.member_workspaces())));

-- ---------------------------------------------------------------------------------------------
-- grants: reads only; lease tokens and claim ids are never readable (they are capabilities)
-- ---------------------------------------------------------------------------------------------
revoke all on all tables in schema ops from public, anon, authenticated, service_role;
revoke all on all sequences in schema ops from public, anon, authenticated, service_role;
revoke all on schema ops_private from public, anon;
revoke all on ops_private.reserved_event_types from public, anon, authenticated, service_role;
grant usage on schema ops to authenticated, service_role;
grant usage on schema ops_private to authenticated, service_role;

grant select on ops.workspaces, ops.workspace_members, ops.runs, ops.run_events,
                ops.artifacts, ops.run_artifacts, ops.audit_log, ops.principals
    to authenticated, service_role;
grant select (id, run_id, workspace_id, name, ordinal, kind, params, depends_on, state, priority,
              attempt, max_attempts, timeout_seconds, retry_backoff_seconds,
              retry_backoff_max_seconds, queued_at, not_before, lease_seconds, lease_expires_at, claimed_by,
              started_at, finished_at, progress, output_manifest, error, reused_from_phase_id,
              updated_at)
    on ops.phases to authenticated, service_role;

revoke execute on all functions in schema ops_private from public, anon;
grant execute on function ops_private.member_workspaces() to authenticated, service_role;
grant execute on function ops_private.admin_workspaces() to authenticated, service_role;

-- functions created later in these schemas are not callable by anyone until granted
alter default privileges in schema ops revoke execute on functions from public;
alter default privileges in schema ops_private revoke execute on functions from public;

-- =============================================================================================
-- 2. ops_private: helpers shared by the contract's functions. Never exposed, never granted to anon.
-- =============================================================================================
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

-- The one way to move a phase: every change of ops.phases.state is a call of this function,
-- which sets what the target state implies (the "also changes" column of
-- docs/state_machine.md). p_lease says what becomes of the current attempt's lease when the
-- phase leaves `running` (a move to `running` always starts a new lease):
--   'end'     the attempt is over: the expiry is cleared, the token kept, so that its holder's
--             repeated complete_phase is answered as a replay (default, except as below);
--   'revoke'  token and expiry cleared: the holder is presumed dead (its lease expired) or the
--             phase never started; its token is lease_lost from now on (default for skipped
--             and cancelled);
--   'keep'    token and expiry kept and finished_at left null: a running phase is cancelled and
--             its executor, told by heartbeat, still reports through complete_phase.
-- p_error and p_output_manifest are what the attempt reported (succeeded: the manifest, error
-- cleared; failed and queued: the error; cancelled with 'end': both, as the executor sent them).
-- p_not_before is when a queued phase may be claimed (default now). The caller holds the
-- phase's row lock and its run's; the trigger phases_transition refuses an illegal move.
create function ops_private.move_phase(p_phase uuid, p_to text, p_now timestamptz,
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
begin
    if v_lease not in ('end', 'revoke', 'keep') or (p_to = 'running' and p_lease_seconds is null) then
        raise exception 'move_phase(%, %): p_lease must be end, revoke or keep (got %) and a claim needs p_lease_seconds',
                        p_phase, p_to, v_lease using errcode = '22023';
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

-- The transitions docs/state_machine.md allows, enforced on every insert and every change of
-- state of a phase or run, whoever makes it (move_phase, or an UPDATE by hand): anything else
-- is PT409 conflict naming both states. A state kept (running -> running on a reclaim,
-- cancelled -> cancelled when a cancelled phase's executor reports) is not a transition.
create function ops_private.check_phase_transition()
returns trigger
language plpgsql
as $$
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

create function ops_private.check_run_transition()
returns trigger
language plpgsql
as $$
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

-- The WHEN clauses keep every other update (heartbeats, event counters) off the trigger.
create trigger phases_transition before update of state on ops.phases
    for each row when (old.state is distinct from new.state)
    execute function ops_private.check_phase_transition();
create trigger phases_initial_state before insert on ops.phases
    for each row when (new.state not in ('waiting', 'queued', 'succeeded'))
    execute function ops_private.check_phase_transition();
create trigger runs_transition before update of state on ops.runs
    for each row when (old.state is distinct from new.state)
    execute function ops_private.check_run_transition();
create trigger runs_initial_state before insert on ops.runs
    for each row when (new.state <> 'queued')
    execute function ops_private.check_run_transition();

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

-- =============================================================================================
-- 3. ops: the executor contract. Every state change of the control plane is one of these functions;
-- =============================================================================================
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
-- p_lease as for move_phase: 'end' when the holder reported the failure, 'revoke' when its
-- lease expired (its token must not pass for a completion replay).
create function ops_private.fail_phase_final(p_phase uuid, p_run ops.runs, p_error jsonb, p_retryable boolean,
                                             p_now timestamptz, p_lease text default 'end')
returns ops.runs
language plpgsql
as $$
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
                                   'lease_expires_at', v_p.lease_expires_at, 'claimed_by', v_p.claimed_by),
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

-- =============================================================================================
-- 4. ops: the data catalog. Every table a phase writes is a dataset of its workspace (layer,
-- =============================================================================================
-- location, format, owner, tags) with the versions of its schema. The worker records each table
-- write with record_dataset under the phase's lease; the schema evolution rules live here:
--   INITIAL       the first schema the catalog sees: version 1, applied;
--   NON_BREAKING  applied, recorded as a new version;
--   NONE          nothing to record (the write kept the schema);
--   BREAKING      refused: recorded as a version that is not applied, the dataset's schema is
--                 blocked (event DATASET_BLOCKED) until an admin accepts or rejects the change
--                 with unblock_dataset. Once accepted, the next BREAKING write is applied.
-- docs/catalog.md describes the lifecycle; docs/contract.md the calls.

-- ---------------------------------------------------------------------------------------------
-- tables
-- ---------------------------------------------------------------------------------------------
create table ops.datasets (
    id                 uuid primary key default gen_random_uuid(),
    workspace_id       uuid not null references ops.workspaces (id),
    name               text not null check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$'),
    layer              text not null check (layer in ('raw', 'bronze', 'silver', 'gold', 'other')),
    location           text not null check (length(location) between 1 and 2048),
    format             text not null check (format ~ '^[a-z][a-z0-9_]{0,63}$'),
    owner              text check (length(owner) between 1 and 200),
    tags               text[] not null default '{}',
    -- active: writes are recorded; blocked: a breaking change waits for an admin; accepted: an
    -- admin accepted it, the next breaking write is applied
    schema_state       text not null default 'active'
                       check (schema_state in ('active', 'blocked', 'accepted')),
    schema_version     integer not null default 0 check (schema_version >= 0),  -- 0: no schema yet
    blocked_change     jsonb,        -- the refused change (a version that is not applied)
    blocked_at         timestamptz,
    last_run_id        uuid,         -- the last write (not a refused one)
    last_phase_id      uuid,
    last_table_version bigint,
    last_digest        text,
    last_rows          bigint,
    last_written_at    timestamptz,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    unique (workspace_id, name)
);
-- what the worker asks before each phase: the workspace's datasets that are not active
create index datasets_not_active_idx on ops.datasets (workspace_id, schema_state)
    where schema_state <> 'active';

-- Every schema the catalog was shown: numbered per dataset, applied or refused. The dataset's
-- schema_version is the number of the last applied one.
create table ops.dataset_versions (
    dataset_id    uuid not null references ops.datasets (id) on delete cascade,
    version       integer not null check (version >= 1),
    workspace_id  uuid not null,
    change        text not null check (change in ('INITIAL', 'NON_BREAKING', 'BREAKING')),
    applied       boolean not null,
    schema        jsonb,         -- null only for a refused change whose writer could not tell it
    changes       jsonb not null default '[]',
    run_id        uuid,
    phase_id      uuid,
    phase         text,
    table_version bigint,
    digest        text,
    recorded_at   timestamptz not null default now(),
    recorded_by   uuid,
    primary key (dataset_id, version)
);

-- ---------------------------------------------------------------------------------------------
-- row level security and grants, as for the other tables: members read their workspaces' rows,
-- nobody writes directly
-- ---------------------------------------------------------------------------------------------
alter table ops.datasets         enable row level security;
alter table ops.dataset_versions enable row level security;

create policy datasets_read on ops.datasets for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy dataset_versions_read on ops.dataset_versions for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));

revoke all on ops.datasets, ops.dataset_versions from public, anon, authenticated, service_role;
grant select on ops.datasets, ops.dataset_versions to authenticated, service_role;

-- record_dataset's answer.
create function ops_private.dataset_record_json(p_d ops.datasets, p_recorded boolean, p_version integer,
                                                p_change text)
returns jsonb
language sql stable
as $$
    select jsonb_build_object('dataset_id', p_d.id, 'workspace_id', p_d.workspace_id, 'name', p_d.name,
                              'layer', p_d.layer, 'schema_state', p_d.schema_state,
                              'schema_version', p_d.schema_version, 'recorded', p_recorded,
                              'version', p_version, 'change', p_change)
$$;

-- ---------------------------------------------------------------------------------------------
-- record_dataset: a table write of the leased phase
-- ---------------------------------------------------------------------------------------------
-- Locks: the run (which fences the lease check and numbers the events), then the dataset row.
-- Waiting for the dataset row is safe: its other holders are a record_dataset of another phase,
-- which holds only its own run lock and waits for nothing more, and unblock_dataset, which holds
-- only the dataset row.
create function ops.record_dataset(lease_token text, name text, location text, layer text default null,
                                   format text default 'delta', schema jsonb default null,
                                   change text default 'NONE', changes jsonb default '[]'::jsonb,
                                   table_version bigint default null, digest text default null,
                                   "rows" bigint default null, owner text default null,
                                   tags text[] default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
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
$$;

-- ---------------------------------------------------------------------------------------------
-- unblock_dataset: an admin's answer to a blocked (or accepted) schema change
-- ---------------------------------------------------------------------------------------------
create function ops.unblock_dataset(workspace_id text, name text, resolution text, note text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
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

-- ---------------------------------------------------------------------------------------------
-- reads: SECURITY INVOKER, so they see exactly what row level security lets the caller see
-- ---------------------------------------------------------------------------------------------
create function ops.list_datasets(workspace_id text default null, layer text default null,
                                  schema_state text default null, name text default null,
                                  "limit" integer default 100)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
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

create function ops.get_dataset(workspace_id text, name text)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
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

-- ---------------------------------------------------------------------------------------------
-- grants: the API roles call the contract; anon calls nothing; the helper is private
-- ---------------------------------------------------------------------------------------------
revoke execute on function ops.record_dataset(text, text, text, text, text, jsonb, text, jsonb, bigint, text,
                                              bigint, text, text[]),
                           ops.unblock_dataset(text, text, text, text),
                           ops.list_datasets(text, text, text, text, integer),
                           ops.get_dataset(text, text),
                           ops_private.dataset_record_json(ops.datasets, boolean, integer, text)
    from public, anon;
grant execute on function ops.record_dataset(text, text, text, text, text, jsonb, text, jsonb, bigint, text,
                                             bigint, text, text[]),
                          ops.unblock_dataset(text, text, text, text),
                          ops.list_datasets(text, text, text, text, integer),
                          ops.get_dataset(text, text)
    to authenticated, service_role;
