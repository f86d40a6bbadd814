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
