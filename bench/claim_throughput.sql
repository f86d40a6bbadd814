-- Queries of bench/claim_throughput.py, by name (parsed with control_room.db.queries.parse_queries).

-- name: create_jobs_table
-- The database's own limit: a pgbench-style queue with nothing but the claim and the finish.
create schema if not exists bench;
drop table if exists bench.jobs;
create table bench.jobs (
    id         bigint generated always as identity primary key,
    state      text not null default 'queued',
    claimed_by integer,
    claimed_at timestamptz,
    done_at    timestamptz
);
create index jobs_queued_idx on bench.jobs (id) where state = 'queued';

-- name: truncate_jobs
truncate bench.jobs restart identity;

-- name: fill_jobs
insert into bench.jobs (state) select 'queued' from generate_series(1, %(n)s);

-- name: claim_job
-- One transaction: take the oldest queued job.
update bench.jobs set state = 'running', claimed_by = %(worker)s, claimed_at = now()
where id = (select j.id from bench.jobs j where j.state = 'queued' order by j.id
            for update skip locked limit 1)
returning id;

-- name: finish_job
-- A second transaction: mark it done.
update bench.jobs set state = 'done', done_at = now() where id = %(id)s;

-- name: count_done_jobs
select count(*) from bench.jobs where state = 'done';

-- name: drop_jobs_schema
drop schema if exists bench cascade;

-- name: count_succeeded_phases
select count(*) from ops.phases where workspace_id = %(workspace_id)s and state = 'succeeded';

-- name: track_functions
-- Per-function call counts and times of this session's calls, in pg_stat_user_functions.
set track_functions = 'all';

-- name: reset_function_stats
select pg_stat_reset();

-- name: function_stats
select schemaname || '.' || funcname as function, calls, round(total_time::numeric, 1) as total_ms,
       round(self_time::numeric, 1) as self_ms
from pg_stat_user_functions
where schemaname in ('ops', 'ops_private', 'auth')
order by self_time desc;

-- name: load_auto_explain
-- Every statement's plan with actual times and buffers, nested statements (inside the
-- functions) included, as a NOTICE to this session's client, in JSON.
load 'auto_explain';
set auto_explain.log_min_duration = 0;
set auto_explain.log_nested_statements = on;
set auto_explain.log_level = 'notice';
set auto_explain.log_format = 'json';
set auto_explain.log_analyze = on;
set auto_explain.log_buffers = on;
