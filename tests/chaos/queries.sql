-- Queries of the chaos tests, by name (parsed with control_room.db.queries.parse_queries).
-- They read the tables as the superuser: the gateway may be down while they run.

-- name: phases_of_runs
select r.id::text as run_id, p.name, p.state, p.attempt
from ops.phases p join ops.runs r on r.id = p.run_id
where r.id = any (%(runs)s::uuid[])
order by r.id, p.ordinal;

-- name: runs_states
select r.id::text as run_id, r.state, r.finalized_at is not null as finalized
from ops.runs r where r.id = any (%(runs)s::uuid[]);

-- name: events_of_runs
select e.run_id::text as run_id, e.phase, e.type, e.attempt
from ops.run_events e
where e.run_id = any (%(runs)s::uuid[])
order by e.run_id, e.seq;

-- name: unfinished_runs
-- Runs not over yet: still running, or succeeded but not finalized (complete_run) yet.
select count(*)::int from ops.runs r
where r.id = any (%(runs)s::uuid[])
  and (r.state in ('queued', 'running') or (r.state = 'succeeded' and r.finalized_at is null));

-- name: has_event
select 1 from ops.run_events e where e.run_id = %(run_id)s::uuid and e.type = %(type)s limit 1;

-- name: terminate_backends
-- Every other session on this database (the gateway's pool and its listener), as an operator's
-- pg_terminate_backend or a failover would end them.
select count(*)::int from (
    select pg_terminate_backend(a.pid) from pg_stat_activity a
    where a.datname = current_database() and a.pid <> pg_backend_pid()
      and a.backend_type = 'client backend' and a.application_name <> 'chaos-observer') t;

-- name: claims_behind
-- The phases of run %(big)s claimed (first attempts) after run %(small)s was created and before
-- its first phase was claimed, and the seconds from its creation to that claim (null: not yet).
select (select count(*)::int from ops.phases b
        where b.run_id = %(big)s::uuid and b.started_at > s.created_at
          and b.started_at <= coalesce(f.first, 'infinity')) as ahead,
       extract(epoch from f.first - s.created_at)::float8 as waited
from ops.runs s,
     lateral (select min(p.started_at) as first from ops.phases p where p.run_id = s.id) f
where s.id = %(small)s::uuid;

-- name: succeeded_phases
select count(*)::int from ops.phases p where p.run_id = %(run)s::uuid and p.state = 'succeeded';

-- name: retry_pickups
-- Each retry of these runs: the not_before its PHASE_RETRY_SCHEDULED gave, and the seconds
-- from it to the next attempt's PHASE_CLAIMED (null: never claimed).
select s.run_id::text as run_id, s.phase, s.attempt,
       (s.payload ->> 'not_before')::timestamptz as not_before,
       extract(epoch from c.ts - (s.payload ->> 'not_before')::timestamptz)::float8 as delay
from ops.run_events s
left join lateral (
    select min(e.ts) as ts from ops.run_events e
    where e.run_id = s.run_id and e.phase = s.phase and e.type = 'PHASE_CLAIMED'
      and e.attempt = s.attempt + 1) c on true
where s.run_id = any (%(runs)s::uuid[]) and s.type = 'PHASE_RETRY_SCHEDULED'
order by s.run_id, s.phase, s.attempt;

-- name: sessions_of_database
-- The client sessions on this database but the test's own (the gateway's pool and listener).
select count(*)::int from pg_stat_activity a
where a.datname = current_database() and a.pid <> pg_backend_pid()
  and a.backend_type = 'client backend' and a.application_name <> 'chaos-observer';

-- name: claimed_after
-- Seconds from the run's creation to its first PHASE_CLAIMED (null: not claimed yet).
select extract(epoch from min(e.ts) - r.created_at)::float8
from ops.runs r left join ops.run_events e on e.run_id = r.id and e.type = 'PHASE_CLAIMED'
where r.id = %(run_id)s::uuid group by r.created_at;
