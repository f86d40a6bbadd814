-- Queries of test_claim_plan.py, by name (parsed with control_room.db.queries.parse_queries).

-- name: insert_finished_phases
-- %(n)s finished phases of long-past runs, spread over the given runs, as fast as Postgres can
-- take them: ids and names increase with i, so every index is appended to at its right edge.
insert into ops.phases (id, run_id, workspace_id, name, ordinal, kind, params, depends_on, state,
                        attempt, max_attempts, timeout_seconds, retry_backoff_seconds,
                        retry_backoff_max_seconds, queued_at, not_before, started_at, finished_at,
                        output_manifest, updated_at)
select ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       (%(runs)s::uuid[])[1 + i %% cardinality(%(runs)s::uuid[])],
       %(workspace_id)s::uuid,
       'h' || lpad(i::text, 8, '0'),
       i + 1,
       (array['python', 'sql'])[1 + i %% 2],
       '{}'::jsonb,
       '{}'::text[],
       (array['succeeded', 'failed', 'skipped', 'cancelled'])[1 + i %% 4],
       1, 3, 3600, 10, 3600,
       t, null, t, t + interval '1 minute',
       '{}'::jsonb,
       t + interval '1 minute'
from generate_series(1, %(n)s) as i,
     lateral (select timestamptz '2029-01-01' + i * interval '1 second' as t) as at;

-- name: phases_by_state
select state, count(*)::int from ops.phases group by state order by state;

-- name: load_auto_explain
-- Log the plan of every statement, nested ones (those inside plpgsql functions) included, as a
-- NOTICE the client receives, in JSON.
load 'auto_explain';
set auto_explain.log_min_duration = 0;
set auto_explain.log_nested_statements = on;
set auto_explain.log_level = 'notice';
set auto_explain.log_format = 'json';

-- name: skip_fk_triggers
-- The rows reference runs and a workspace that exist; skip the per-row foreign key triggers.
set local session_replication_role = replica;

-- name: explain_with_actuals
-- With the plans, what each node did: rows and buffers (not timing, which costs more).
set auto_explain.log_analyze = on;
set auto_explain.log_buffers = on;
set auto_explain.log_timing = off;

-- name: insert_churned_phases
-- %(n)s phases that went through the queue: inserted queued in round 0, as a first phase is (an
-- entry in phases_claimable_idx, ahead of the live phases: the same round, older),
-- then running (an entry in phases_lease_expiry_idx, its lease long expired), then finished.
-- Without a vacuum every entry stays in both partial indexes, pointing at a dead version.
insert into ops.phases (id, run_id, workspace_id, name, ordinal, kind, params, depends_on, state,
                        attempt, max_attempts, timeout_seconds, retry_backoff_seconds,
                        retry_backoff_max_seconds, queued_at, not_before, fair_round, updated_at)
select ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       (%(runs)s::uuid[])[1 + i %% cardinality(%(runs)s::uuid[])],
       %(workspace_id)s::uuid,
       'h' || lpad(i::text, 8, '0'),
       i + 1,
       (array['python', 'sql'])[1 + i %% 2],
       '{}'::jsonb,
       '{}'::text[],
       'queued',
       0, 3, 3600, 10, 3600,
       t, t, 0, t
from generate_series(1, %(n)s) as i,
     lateral (select timestamptz '2029-01-01' + i * interval '1 second' as t) as at;

-- name: run_churned_phases
update ops.phases set state = 'running', attempt = 1, lease_token = gen_random_uuid(),
                      lease_expires_at = queued_at + interval '60 seconds', started_at = queued_at
where name like 'h%%';

-- name: finish_churned_phases
update ops.phases set state = (array['succeeded', 'failed', 'skipped', 'cancelled'])[1 + ordinal %% 4],
                      lease_expires_at = null, not_before = null,
                      finished_at = started_at + interval '1 minute'
where name like 'h%%';

-- name: read_every_phase
-- What the rest of a workload does to the table's rows (reads that set their hint bits), short
-- of an ANALYZE or a VACUUM.
select count(*) from ops.phases;

-- name: phases_statistics
-- Whether the planner has anything but the table's size: ANALYZE (auto or not) ever, column
-- statistics.
select (select coalesce(last_analyze, last_autoanalyze, last_vacuum, last_autovacuum)
        from pg_stat_user_tables where relid = 'ops.phases'::regclass) as analyzed,
       (select count(*) from pg_statistic where starelid = 'ops.phases'::regclass)::int as columns;

-- name: autovacuum_off_for_phases
-- This machine's server runs with autovacuum off; a server with it on must not analyze the
-- table behind the test's back either.
alter table ops.phases set (autovacuum_enabled = off);

-- name: mislead_the_planner
-- Random reads priced at 100 sequential ones: index scans look dear, a scan of the table and a
-- sort cheap, as wrong estimates can make them look.
set random_page_cost = 100;
