-- Queries of bench/peers.py, by name (parsed with control_room.db.queries.parse_queries).
-- The peers' own statements (enqueue, dequeue, finish) are theirs: these only prepare and check.

-- name: vacuum_analyze
-- The whole database: each system has a database of its own, so these are its tables.
vacuum analyze;

-- name: server_version
select current_setting('server_version');

-- name: succeeded_phases
select count(*) from ops.phases where workspace_id = %(workspace_id)s and state = 'succeeded';

-- name: listen_phase_queued
-- The channel ops_private.notify_queued notifies when a phase becomes claimable.
listen ops_phase_queued;

-- name: pgqueuer_reset
truncate pgqueuer, pgqueuer_log, pgqueuer_statistics;

-- name: pgqueuer_counts
select (select count(*) from pgqueuer) as left_in_queue,
       (select count(*) from pgqueuer_log where status = 'successful') as successful;

-- name: procrastinate_reset
truncate procrastinate_jobs, procrastinate_events, procrastinate_workers restart identity cascade;

-- name: procrastinate_succeeded
select count(*) from procrastinate_jobs where status = 'succeeded';
