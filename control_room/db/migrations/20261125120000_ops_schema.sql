-- ops: the control plane's tables, indexes, row level security and grants.
-- Supabase CLI rules: no BEGIN/COMMIT, no CONCURRENTLY, explicit grants.
-- Every write goes through the functions of the next migration; tables take no direct writes.

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
