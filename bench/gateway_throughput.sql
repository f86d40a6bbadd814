-- Queries of bench/gateway_throughput.py, by name (parsed with control_room.db.queries.parse_queries).

-- name: server_version
show server_version;

-- name: count_succeeded_phases
select count(*) from ops.phases where workspace_id = %(workspace_id)s and state = 'succeeded';

-- name: backend_pids
-- The server processes serving this database (the gateway's pool, the benchmark's connections),
-- whose CPU time the benchmark reads from /proc when the server runs on this machine.
select pid from pg_catalog.pg_stat_activity
where datname = pg_catalog.current_database() and pid <> pg_catalog.pg_backend_pid();

-- name: claim_phase_calls
-- How often ops.claim_phase ran in this database (needs track_functions = pl or all).
select coalesce(sum(calls), 0) from pg_catalog.pg_stat_user_functions
where schemaname = 'ops' and funcname = 'claim_phase';
