-- Every static query the Python code runs, by name. Loaded by control_room.db.queries.
-- A block starts with a `-- name: <name>` line and runs to the next one.

-- ---------------------------------------------------------------------------------------------
-- migrations (control_room.db.migrate)
-- ---------------------------------------------------------------------------------------------

-- name: advisory_lock
select pg_catalog.pg_advisory_lock(%(key)s::bigint);

-- name: advisory_unlock
select pg_catalog.pg_advisory_unlock(%(key)s::bigint);

-- name: detect_platform
select
    exists (select 1 from pg_catalog.pg_roles where rolname = 'supabase_admin')
        or pg_catalog.to_regclass('auth.users') is not null as is_supabase,
    pg_catalog.to_regprocedure('auth.uid()') is not null as has_auth_uid;

-- name: history_table_exists
select pg_catalog.to_regclass('supabase_migrations.schema_migrations') is not null;

-- name: create_history_table
-- The statements of supabase/cli pkg/migration/history.go CreateMigrationTable, verbatim.
SET LOCAL lock_timeout = '4s';
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text NOT NULL PRIMARY KEY);
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[];
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text;

-- name: select_history
SELECT version, coalesce(name, '') AS name, statements
FROM supabase_migrations.schema_migrations
ORDER BY version;

-- name: insert_history
INSERT INTO supabase_migrations.schema_migrations (version, name, statements)
VALUES (%(version)s, %(name)s, %(statements)s::text[]);

-- ---------------------------------------------------------------------------------------------
-- contract calls (control_room.db.store)
-- ---------------------------------------------------------------------------------------------

-- name: function_signatures
-- One row per overload of schema.fn. Arrays cover all arguments (IN, OUT, INOUT, VARIADIC,
-- TABLE); arg_modes is empty when every argument is IN.
select
    p.oid::bigint as oid,
    coalesce(p.proargnames, '{}') as arg_names,
    coalesce(p.proargmodes::text[], '{}') as arg_modes,
    array(
        select pg_catalog.format_type(t.oid, null)
        from pg_catalog.unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
            with ordinality as t(oid, ord)
        order by t.ord
    ) as arg_types,
    p.pronargdefaults::int as n_defaults,
    p.proretset as returns_set,
    pg_catalog.format_type(p.prorettype, null) as return_type,
    rt.typtype::text as return_typtype
from pg_catalog.pg_proc as p
join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
join pg_catalog.pg_type as rt on rt.oid = p.prorettype
where n.nspname = %(schema)s
  and p.proname = %(fn)s
  and p.prokind = 'f'
order by p.oid;

-- name: set_statement_timeout
select pg_catalog.set_config('statement_timeout', %(ms)s, false);

-- name: set_request_context
-- What PostgREST runs at the start of each request's transaction (PreQuery.hs txVarQuery),
-- then its pre-request hook (db-pre-request = ops_private.pre_request: a revoked principal is
-- refused with 401 before any call). The select list is evaluated in order: the hook sees the
-- settings before it.
select
    pg_catalog.set_config('search_path', 'ops, public, extensions', true),
    pg_catalog.set_config('role', %(role)s, true),
    pg_catalog.set_config('request.jwt.claims', %(claims)s, true),
    ops_private.pre_request();

-- name: set_request_context_positional
-- The same (the pre-request hook included), plus the test clock ('' = the real time), sent in
-- one message with the call (store.call_as).
select
    pg_catalog.set_config('search_path', 'ops, public, extensions', true),
    pg_catalog.set_config('role', %s, true),
    pg_catalog.set_config('request.jwt.claims', %s, true),
    pg_catalog.set_config('control_room.now', %s, true),
    ops_private.pre_request()

-- name: set_clock
-- Test-only clock override read by the ops functions.
select pg_catalog.set_config('control_room.now', %(now)s, true);

-- ---------------------------------------------------------------------------------------------
-- status (control-room status)
-- ---------------------------------------------------------------------------------------------

-- name: server_info
select
    pg_catalog.current_setting('server_version') as server_version,
    pg_catalog.current_database() as database,
    pg_catalog.to_regnamespace('ops') is not null as has_ops,
    pg_catalog.to_regclass('supabase_migrations.schema_migrations') is not null as has_history;

-- name: migration_summary
select pg_catalog.count(*)::int as applied, pg_catalog.max(version) as latest
from supabase_migrations.schema_migrations;

-- name: count_workspaces
select pg_catalog.count(*)::int from ops.workspaces;

-- name: runs_by_state
select state, pg_catalog.count(*)::int from ops.runs group by 1 order by 1;

-- name: phases_by_state
select state, pg_catalog.count(*)::int from ops.phases group by 1 order by 1;

-- ---------------------------------------------------------------------------------------------
-- gateway (control_room.gateway)
-- ---------------------------------------------------------------------------------------------

-- name: listen_phase_queued
-- The ops functions notify this channel when they queue a phase (ops_private.notify_queued).
listen ops_phase_queued;

-- name: listen_run_changes
-- A statement on ops.run_events notifies this channel once per run ('<workspace> <run> <seq>',
-- 20261204000100_ui_reads.sql); the gateway's change feed (gateway/feed.py) listens.
listen ops_run_changes;

-- name: claim_due_at
-- When a waiting claim should try again without a notification: the soonest not_before of a
-- phase queued for later, or lease expiry, among its kinds and workspaces, in seconds from now
-- on the database's clock (null: none pending).
select extract(epoch from ops_private.claim_due_at(%(kinds)s::text[], %(workspaces)s::uuid[], t.now)
                           - t.now)::float8
from (select coalesce(%(now)s::timestamptz, pg_catalog.now()) as now) t;

-- name: ping
select 1;

-- name: metrics_phases_by_state
select state, pg_catalog.count(*)::bigint from ops.phases group by state order by state;

-- name: metrics_queue
-- Both counts read the claim path's partial indexes; the expiry count the partial index on
-- LEASE_EXPIRED events.
select
    (select pg_catalog.count(*) from ops.phases
     where state = 'queued' and not_before <= pg_catalog.now())::bigint as queue_depth,
    (select pg_catalog.count(*) from ops.phases
     where state = 'running' and lease_expires_at <= pg_catalog.now())::bigint as leases_expired,
    (select pg_catalog.count(*) from ops.run_events
     where type = 'LEASE_EXPIRED')::bigint as lease_expiries;

-- name: metrics_outcomes
select kind, state, pg_catalog.count(*)::bigint from ops.phases
where state in ('succeeded', 'failed', 'skipped', 'cancelled')
group by kind, state order by kind, state;

-- name: live_member
-- (control_room.localstack) is this principal still an unrevoked member of the workspace?
select 1
from ops.workspace_members m
join ops.principals p on p.id = m.principal_id
where m.workspace_id = %(workspace_id)s and m.principal_id = %(principal_id)s
  and p.revoked_at is null;
