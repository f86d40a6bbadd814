-- Jobs (issue 11): versioned job definitions, and runs of a job.
--   1. ops.jobs: a named pipeline of a workspace (slug, description, owner, tags);
--   2. ops.job_versions: the job's spec as validated JSON, pinned to a git sha; immutable.
--      register_job adds a version only when (digest, git_sha) differs from the latest one's:
--      the same spec at a new commit is a new version, because a version pins the code it runs;
--   3. ops.runs.job_version_id: the version a run was made from (run JSON: `job`); a retry or
--      repair of a run of a job is a run of the same version;
--   4. ops_private.start_job_run: the one way to make a run of a version (create_job_run and
--      the scheduler call it): params checked against the version's declared types, defaults
--      filled in, then the baseline's insert path with create_run's idempotency rules.
-- docs/jobs.md describes the rules; docs/contract.md ("Jobs") the functions.

-- ---------------------------------------------------------------------------------------------
-- tables
-- ---------------------------------------------------------------------------------------------
create table ops.jobs (
    id             uuid primary key default gen_random_uuid(),
    workspace_id   uuid not null references ops.workspaces (id),
    slug           text not null check (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description    text check (length(description) <= 2000),
    owner          text check (length(owner) <= 200),
    tags           jsonb not null default '{}' check (jsonb_typeof(tags) = 'object'),
    created_by     uuid,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    latest_version integer not null default 0,
    unique (workspace_id, slug)
);
comment on table ops.jobs is 'Jobs: named, versioned pipelines of a workspace (docs/jobs.md).';

create table ops.job_versions (
    id           uuid primary key default gen_random_uuid(),
    job_id       uuid not null references ops.jobs (id),
    workspace_id uuid not null references ops.workspaces (id),
    version      integer not null check (version >= 1),
    spec         jsonb not null,
    digest       text not null check (digest ~ '^blake3:[0-9a-f]{64}$'),
    git_sha      text not null check (git_sha ~ '^[0-9a-f]{7,64}$'),
    created_by   uuid,
    created_at   timestamptz not null default now(),
    unique (job_id, version)
);
comment on table ops.job_versions is 'Versions of a job: the spec as validated JSON, its digest and git sha. Immutable.';
create index job_versions_workspace_idx on ops.job_versions (workspace_id);

alter table ops.runs add column job_version_id uuid references ops.job_versions (id);
comment on column ops.runs.job_version_id is 'The job version this run was made from (null: a run of a spec file).';
create index runs_job_version_idx on ops.runs (job_version_id, created_at desc, id desc)
    where job_version_id is not null;

-- A child run (retry_run, repair_run) is a run of its parent's job version: it reruns the
-- parent's phases at the parent's git sha.
create function ops_private.inherit_job_version()
returns trigger
language plpgsql
as $$
begin
    new.job_version_id := (select r.job_version_id from ops.runs r where r.id = new.parent_run_id);
    return new;
end
$$;
create trigger runs_inherit_job_version before insert on ops.runs
    for each row when (new.parent_run_id is not null and new.job_version_id is null)
    execute function ops_private.inherit_job_version();

-- A version never changes: nothing updates or deletes one (no function does; this says so).
create function ops_private.refuse_job_version_change()
returns trigger
language plpgsql
as $$
begin
    perform ops_private.fail(409, 'conflict',
        'job versions are immutable: register a new version instead (docs/jobs.md)',
        pg_catalog.jsonb_build_object('job_version_id', old.id));
    return null;
end
$$;
create trigger job_versions_immutable before update or delete on ops.job_versions
    for each row execute function ops_private.refuse_job_version_change();

alter table ops.jobs         enable row level security;
alter table ops.job_versions enable row level security;
create policy jobs_read on ops.jobs for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy job_versions_read on ops.job_versions for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
revoke all on ops.jobs, ops.job_versions from public, anon, authenticated, service_role;
grant select on ops.jobs, ops.job_versions to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- helpers
-- ---------------------------------------------------------------------------------------------
-- A run's job as run JSON shows it: null, or {id, slug, version, version_id}.
create function ops_private.run_job_json(p_version uuid)
returns jsonb
language plpgsql stable
as $$
begin
    if p_version is null then
        return null;
    end if;
    return (select pg_catalog.jsonb_build_object('id', j.id, 'slug', j.slug, 'version', v.version,
                                                 'version_id', v.id)
            from ops.job_versions v join ops.jobs j on j.id = v.job_id
            where v.id = p_version);
end
$$;

create or replace function ops_private.run_json(p_run uuid, p_with_phases boolean default true)
returns jsonb
language plpgsql stable
as $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest' - 'job_version_id'
           || pg_catalog.jsonb_build_object('created_by',
                  case when ops_private.sees_principals(r.workspace_id) then r.created_by end,
                  'job', ops_private.run_job_json(r.job_version_id))
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

create or replace function ops_private.run_summary_json(p_run uuid, p_sees boolean)
returns jsonb
language plpgsql stable
as $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest' - 'input_manifest' - 'output_manifest' - 'error'
                                  - 'job_version_id'
           || pg_catalog.jsonb_build_object(
                  'created_by', case when p_sees then r.created_by end,
                  'job', ops_private.run_job_json(r.job_version_id),
                  'error', case when r.error is not null then pg_catalog.jsonb_build_object(
                      'phase', r.error ->> 'phase',
                      'message', pg_catalog.left(coalesce(r.error -> 'error' ->> 'message',
                                                          r.error ->> 'message', ''), 500)) end,
                  'phase_counts', (
                      select coalesce(pg_catalog.jsonb_object_agg(c.state, c.n), '{}'::jsonb)
                      from (select p.state, count(*) as n from ops.phases p
                            where p.run_id = r.id group by p.state) c))
    from ops.runs r
    where r.id = p_run);
end
$$;

-- A job as the API shows it (created_by to admins only, as a run's).
create function ops_private.job_json(j ops.jobs)
returns jsonb
language plpgsql stable
as $$
begin
    return pg_catalog.jsonb_build_object(
        'id', j.id, 'workspace_id', j.workspace_id, 'slug', j.slug, 'description', j.description,
        'owner', j.owner, 'tags', j.tags,
        'created_by', case when ops_private.sees_principals(j.workspace_id) then j.created_by end,
        'created_at', j.created_at, 'updated_at', j.updated_at, 'latest_version', j.latest_version);
end
$$;

-- A version as the API shows it; the spec itself only when asked (p_with_spec), its declared
-- params always (what a run of it takes).
create function ops_private.job_version_json(v ops.job_versions, p_with_spec boolean)
returns jsonb
language plpgsql stable
as $$
begin
    return pg_catalog.jsonb_build_object(
        'id', v.id, 'job_id', v.job_id, 'version', v.version, 'digest', v.digest,
        'git_sha', v.git_sha, 'params', coalesce(v.spec -> 'params', '{}'::jsonb),
        'source', v.spec -> 'source',
        'created_by', case when ops_private.sees_principals(v.workspace_id) then v.created_by end,
        'created_at', v.created_at)
        || case when p_with_spec then pg_catalog.jsonb_build_object('spec', v.spec) else '{}'::jsonb end;
end
$$;

-- The shape of a job spec (the caller is untrusted: the CLI's loader checked it, this checks it
-- again): {slug, version, description, params, phases, source}. The phases are checked as
-- create_run checks them (normalize_phases); the result is the spec as stored.
create function ops_private.check_job_spec(p_slug text, p_spec jsonb)
returns jsonb
language plpgsql immutable
as $$
declare
    v_allowed constant text[] := array['slug', 'version', 'description', 'params', 'phases', 'source'];
    v_key     text;
    v_param   record;
    v_pkey    text;
    v_type    text;
    v_default jsonb;
    v_req     jsonb;
    v_desc    jsonb;
    v_source  jsonb;
    v_names   text[];
    v_ref     text;
begin
    if p_spec is null or pg_catalog.jsonb_typeof(p_spec) <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'spec must be a JSON object, got ' || coalesce(pg_catalog.jsonb_typeof(p_spec), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'spec'));
    end if;
    perform ops_private.check_size('spec', p_spec, 1048576);
    for v_key in select k from pg_catalog.jsonb_object_keys(p_spec) k loop
        if not (v_key = any (v_allowed)) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec: unknown field %s (allowed: %s)', pg_catalog.left(v_key, 64),
                                  pg_catalog.array_to_string(v_allowed, ', ')),
                pg_catalog.jsonb_build_object('argument', 'spec'));
        end if;
    end loop;
    if pg_catalog.jsonb_typeof(p_spec -> 'slug') is distinct from 'string' or p_spec ->> 'slug' <> p_slug then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('spec.slug must be the job''s slug %s, got %s', p_slug,
                              coalesce(pg_catalog.left((p_spec -> 'slug')::text, 64), 'nothing')),
            pg_catalog.jsonb_build_object('argument', 'spec.slug'));
    end if;
    if (case when pg_catalog.jsonb_typeof(p_spec -> 'version') = 'number'
             then (p_spec ->> 'version')::numeric <> pg_catalog.trunc((p_spec ->> 'version')::numeric)
                  or (p_spec ->> 'version')::numeric not between 1 and 1000
             else true end) then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.version (the spec format version) must be an integer from 1, got '
            || coalesce(pg_catalog.left((p_spec -> 'version')::text, 64), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'spec.version'));
    end if;
    if coalesce(pg_catalog.jsonb_typeof(p_spec -> 'description'), 'null') not in ('null', 'string')
       or pg_catalog.length(p_spec ->> 'description') > 2000 then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.description must be a string of at most 2000 characters, or null',
            pg_catalog.jsonb_build_object('argument', 'spec.description'));
    end if;

    -- params: {name: {type, default, required, description}}
    if coalesce(pg_catalog.jsonb_typeof(p_spec -> 'params'), 'object') <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.params must be an object of declared params, got ' || pg_catalog.jsonb_typeof(p_spec -> 'params'),
            pg_catalog.jsonb_build_object('argument', 'spec.params'));
    end if;
    if (select count(*) from pg_catalog.jsonb_object_keys(coalesce(p_spec -> 'params', '{}'::jsonb))) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'spec.params declares more than 200 params',
            pg_catalog.jsonb_build_object('argument', 'spec.params'));
    end if;
    for v_param in select e.key, e.value from pg_catalog.jsonb_each(coalesce(p_spec -> 'params', '{}'::jsonb)) e loop
        if v_param.key !~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params: invalid param name %s (1-64 letters, digits or _, not starting with a digit)',
                                  pg_catalog.left(v_param.key, 64)),
                pg_catalog.jsonb_build_object('argument', 'spec.params'));
        end if;
        if pg_catalog.jsonb_typeof(v_param.value) <> 'object' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s must be an object {type, default, required, description}', v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key));
        end if;
        for v_pkey in select k from pg_catalog.jsonb_object_keys(v_param.value) k loop
            if v_pkey not in ('type', 'default', 'required', 'description') then
                perform ops_private.fail(400, 'invalid_argument',
                    pg_catalog.format('spec.params.%s: unknown field %s (allowed: type, default, required, description)',
                                      v_param.key, pg_catalog.left(v_pkey, 64)),
                    pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key));
            end if;
        end loop;
        v_type := v_param.value ->> 'type';
        if pg_catalog.jsonb_typeof(v_param.value -> 'type') is distinct from 'string'
           or v_type not in ('string', 'path', 'integer', 'number', 'boolean') then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.type must be one of string, path, integer, number, boolean, got %s',
                                  v_param.key, coalesce(pg_catalog.left((v_param.value -> 'type')::text, 64), 'nothing')),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.type'));
        end if;
        v_req := v_param.value -> 'required';
        v_default := coalesce(v_param.value -> 'default', 'null'::jsonb);
        if v_req is null or pg_catalog.jsonb_typeof(v_req) <> 'boolean' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.required must be true or false', v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.required'));
        end if;
        if (v_req = 'true'::jsonb) <> (v_default = 'null'::jsonb) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s: a param is required exactly when it has no default', v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key));
        end if;
        if v_default <> 'null'::jsonb and ops_private.param_problem(v_type, v_default) is not null then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.default %s', v_param.key,
                                  ops_private.param_problem(v_type, v_default)),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.default'));
        end if;
        v_desc := v_param.value -> 'description';
        if coalesce(pg_catalog.jsonb_typeof(v_desc), 'null') not in ('null', 'string')
           or pg_catalog.length(v_desc #>> '{}') > 2000 then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('spec.params.%s.description must be a string of at most 2000 characters, or null',
                                  v_param.key),
                pg_catalog.jsonb_build_object('argument', 'spec.params.' || v_param.key || '.description'));
        end if;
    end loop;

    -- phases: as create_run takes them, and every ${params.X} they use is declared
    if pg_catalog.jsonb_typeof(p_spec -> 'phases') is distinct from 'array'
       or pg_catalog.jsonb_array_length(p_spec -> 'phases') = 0 then
        perform ops_private.fail(400, 'invalid_argument', 'spec.phases must be a non-empty array of phases',
            pg_catalog.jsonb_build_object('argument', 'spec.phases'));
    end if;
    perform ops_private.normalize_phases(p_spec -> 'phases');
    select pg_catalog.array_agg(k) into v_names
    from pg_catalog.jsonb_object_keys(coalesce(p_spec -> 'params', '{}'::jsonb)) k;
    select m[1] into v_ref
    from pg_catalog.regexp_matches((p_spec -> 'phases')::text, '\$\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)', 'g') m
    where not (m[1] = any (coalesce(v_names, '{}'))) limit 1;
    if v_ref is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('spec.phases use ${params.%s}, which spec.params does not declare', v_ref),
            pg_catalog.jsonb_build_object('argument', 'spec.phases', 'param', v_ref));
    end if;

    -- source: {path, digest[, dirty]}
    v_source := p_spec -> 'source';
    if v_source is null or pg_catalog.jsonb_typeof(v_source) <> 'object'
       or pg_catalog.jsonb_typeof(v_source -> 'path') is distinct from 'string'
       or pg_catalog.length(v_source ->> 'path') not between 1 and 1000
       or pg_catalog.jsonb_typeof(v_source -> 'digest') is distinct from 'string'
       or v_source ->> 'digest' !~ '^blake3:[0-9a-f]{64}$'
       or coalesce(pg_catalog.jsonb_typeof(v_source -> 'dirty'), 'boolean') <> 'boolean'
       or exists (select 1 from pg_catalog.jsonb_object_keys(v_source) k where k not in ('path', 'digest', 'dirty')) then
        perform ops_private.fail(400, 'invalid_argument',
            'spec.source must be {"path": the spec file (1-1000 characters), "digest": "blake3:<64 hex>"'
            || ' of its bytes, "dirty": optional boolean}',
            pg_catalog.jsonb_build_object('argument', 'spec.source'));
    end if;
    return pg_catalog.jsonb_build_object(
        'slug', p_spec -> 'slug', 'version', p_spec -> 'version',
        'description', coalesce(p_spec -> 'description', 'null'::jsonb),
        'params', coalesce(p_spec -> 'params', '{}'::jsonb),
        'phases', p_spec -> 'phases', 'source', v_source);
end
$$;

-- Why a JSON value is not of param type p_type (e.g. 'must be integer, got "abc"'), or null.
create function ops_private.param_problem(p_type text, p_value jsonb)
returns text
language plpgsql immutable
as $$
declare
    v_kind text := pg_catalog.jsonb_typeof(p_value);
    v_ok   boolean;
begin
    v_ok := case p_type
        when 'string'  then v_kind = 'string'
        when 'path'    then v_kind = 'string' and p_value #>> '{}' <> ''
        when 'integer' then case when v_kind = 'number'
                                 then (p_value #>> '{}')::numeric = pg_catalog.trunc((p_value #>> '{}')::numeric)
                                 else false end
        when 'number'  then v_kind = 'number'
        when 'boolean' then v_kind = 'boolean'
        else false end;
    if v_ok then
        return null;
    end if;
    return pg_catalog.format('must be %s%s, got %s %s', p_type,
                             case when p_type = 'path' then ' (a non-empty string)' else '' end,
                             v_kind, pg_catalog.left(p_value::text, 40)
                             || case when pg_catalog.length(p_value::text) > 40 then '...' else '' end);
end
$$;

-- The workspace and job named by (workspace_id, slug), or 404; the caller's role checked.
create function ops_private.find_job(p_workspace text, p_slug text, p_roles text[], p_lock boolean)
returns ops.jobs
language plpgsql
as $$
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', p_workspace, true);
    v_job ops.jobs;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, p_roles, true, 'workspace');
    if p_slug is null or p_slug !~ '^[a-z0-9][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'job must be a job slug: 1-63 lower-case letters, digits, _ or -, got '
            || coalesce(pg_catalog.left(p_slug, 80), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'job'));
    end if;
    if p_lock then
        select * into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = p_slug for update;
    else
        select * into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = p_slug;
    end if;
    if v_job.id is null then
        perform ops_private.fail(404, 'not_found', 'job ' || p_slug || ' not found in this workspace',
                                 pg_catalog.jsonb_build_object('argument', 'job'));
    end if;
    return v_job;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- start_job_run: a run of a job version (no role check: its callers check)
-- ---------------------------------------------------------------------------------------------
create function ops_private.start_job_run(p_version_id uuid, p_params jsonb, p_idempotency_key text,
                                          p_labels jsonb, p_priority integer)
returns jsonb
language plpgsql
as $$
declare
    v_now      timestamptz := ops_private.now();
    v_ver      ops.job_versions;
    v_job      ops.jobs;
    v_declared jsonb;
    v_given    jsonb := coalesce(p_params, '{}'::jsonb);
    v_labels   jsonb := coalesce(p_labels, '{}'::jsonb);
    v_params   jsonb := '{}'::jsonb;
    v_p        record;
    v_key      text;
    v_problem  text;
    v_phases   jsonb;
    v_input    jsonb;
    v_digest   text;
    v_run      uuid;
    v_old      ops.runs;
    v_bad      text;
begin
    select * into v_ver from ops.job_versions v where v.id = p_version_id;
    if v_ver.id is null then
        perform ops_private.fail(404, 'not_found', 'job version not found');
    end if;
    select * into v_job from ops.jobs j where j.id = v_ver.job_id;
    v_declared := coalesce(v_ver.spec -> 'params', '{}'::jsonb);

    perform ops_private.check_object('params', v_given);
    perform ops_private.check_size('params', v_given, 65536);
    if p_priority is null or p_priority not between -1000 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'priority must be between -1000 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'priority'));
    end if;
    if p_idempotency_key is not null and pg_catalog.length(p_idempotency_key) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'idempotency_key must be 1-200 characters',
                                 pg_catalog.jsonb_build_object('argument', 'idempotency_key'));
    end if;
    perform ops_private.check_object('labels', v_labels);
    perform ops_private.check_size('labels', v_labels, 16384);
    select l.key into v_bad from pg_catalog.jsonb_each(v_labels) l
    where pg_catalog.jsonb_typeof(l.value) <> 'string' or pg_catalog.length(l.key) > 64
       or pg_catalog.length(l.value #>> '{}') > 256 limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'labels must map keys of at most 64 characters to strings of at most 256; label '
            || pg_catalog.left(v_bad, 64) || ' does not',
            pg_catalog.jsonb_build_object('argument', 'labels.' || pg_catalog.left(v_bad, 64)));
    end if;

    -- params: only declared ones, each of its type; defaults for the rest; required ones given
    select k into v_key from pg_catalog.jsonb_object_keys(v_given) k where not (v_declared ? k) order by k limit 1;
    if v_key is not null then
        perform ops_private.fail(400, 'invalid_argument',
            pg_catalog.format('unknown param %s for job %s version %s (params: %s)', pg_catalog.left(v_key, 64),
                              v_job.slug, v_ver.version,
                              coalesce((select pg_catalog.string_agg(k, ', ' order by k)
                                        from pg_catalog.jsonb_object_keys(v_declared) k), 'none declared')),
            pg_catalog.jsonb_build_object('argument', 'params.' || pg_catalog.left(v_key, 64),
                                          'param', pg_catalog.left(v_key, 64)));
    end if;
    for v_p in select e.key, e.value from pg_catalog.jsonb_each(v_declared) e order by e.key loop
        if v_given ? v_p.key then
            v_problem := ops_private.param_problem(v_p.value ->> 'type', v_given -> v_p.key);
            if v_problem is not null then
                perform ops_private.fail(400, 'invalid_argument',
                    pg_catalog.format('param %s %s', v_p.key, v_problem),
                    pg_catalog.jsonb_build_object('argument', 'params.' || v_p.key, 'param', v_p.key,
                                                  'type', v_p.value ->> 'type'));
            end if;
            v_params := v_params || pg_catalog.jsonb_build_object(v_p.key, v_given -> v_p.key);
        elsif coalesce(v_p.value -> 'default', 'null'::jsonb) = 'null'::jsonb then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('param %s is required (job %s version %s declares no default for it)',
                                  v_p.key, v_job.slug, v_ver.version),
                pg_catalog.jsonb_build_object('argument', 'params.' || v_p.key, 'param', v_p.key,
                                              'type', v_p.value ->> 'type'));
        else
            v_params := v_params || pg_catalog.jsonb_build_object(v_p.key, v_p.value -> 'default');
        end if;
    end loop;

    v_phases := ops_private.normalize_phases(v_ver.spec -> 'phases');
    v_input := pg_catalog.jsonb_build_object(
        'spec', pg_catalog.jsonb_build_object('slug', v_ver.spec -> 'slug', 'version', v_ver.spec -> 'version',
                                              'path', v_ver.spec -> 'source' -> 'path',
                                              'digest', v_ver.spec -> 'source' -> 'digest',
                                              'dirty', coalesce(v_ver.spec -> 'source' -> 'dirty', 'false'::jsonb)),
        'params', v_params,
        'job', pg_catalog.jsonb_build_object('slug', v_job.slug, 'version', v_ver.version));

    v_digest := pg_catalog.md5(pg_catalog.jsonb_build_array(v_job.slug, v_ver.git_sha, v_phases, v_input, v_labels,
                                                             p_priority, v_ver.id)::text);
    if p_idempotency_key is not null then
        select * into v_old from ops.runs r
        where r.workspace_id = v_ver.workspace_id and r.idempotency_key = p_idempotency_key;
    end if;
    if v_old.id is null then
        v_run := ops_private.insert_run(v_ver.workspace_id, v_job.slug, v_ver.git_sha, v_phases, v_input,
                                        p_idempotency_key, v_labels, p_priority, null, '{}'::jsonb, v_digest, v_now);
        if v_run is null then
            select * into v_old from ops.runs r
            where r.workspace_id = v_ver.workspace_id and r.idempotency_key = p_idempotency_key;
        end if;
    end if;
    if v_old.id is not null then
        if v_old.request_digest <> v_digest then
            perform ops_private.fail(409, 'conflict',
                'idempotency_key ' || pg_catalog.left(p_idempotency_key, 200) || ' was used for a run with other arguments',
                pg_catalog.jsonb_build_object('run_id', v_old.id));
        end if;
        return ops_private.run_json(v_old.id) || pg_catalog.jsonb_build_object('created', false);
    end if;
    update ops.runs r set job_version_id = v_ver.id where r.id = v_run;
    return ops_private.run_json(v_run) || pg_catalog.jsonb_build_object('created', true);
end
$$;

-- The latest run of a job (any version): {id, state, created_at}, or null.
create function ops_private.job_last_run(p_job uuid)
returns jsonb
language plpgsql stable
as $$
begin
    return (select pg_catalog.jsonb_build_object('id', r.id, 'state', r.state, 'created_at', r.created_at)
            from ops.runs r
            where r.job_version_id in (select v.id from ops.job_versions v where v.job_id = p_job)
            order by r.created_at desc, r.id desc
            limit 1);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- the RPCs: developers and admins change jobs; every member reads them
-- ---------------------------------------------------------------------------------------------
-- Register a job's spec: the job is created when new; a version is added only when (digest,
-- git_sha) differs from the latest version's. description, owner and tags are the job's (not
-- versioned): a non-null description or owner, and non-empty tags, replace the job's.
create function ops.register_job(workspace_id text, slug text, spec jsonb, digest text, git_sha text,
                                 description text default null, owner text default null,
                                 tags jsonb default '{}'::jsonb)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', register_job.workspace_id, true);
    v_tags    jsonb := coalesce(register_job.tags, '{}'::jsonb);
    v_spec    jsonb;
    v_job     ops.jobs;
    v_latest  ops.job_versions;
    v_ver     ops.job_versions;
    v_created boolean := false;
    v_bad     text;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['developer', 'admin'], true, 'workspace');
    if register_job.slug is null or register_job.slug !~ '^[a-z0-9][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'slug must be 1-63 lower-case letters, digits, _ or -, got ' || coalesce(left(register_job.slug, 80), 'nothing'),
            jsonb_build_object('argument', 'slug'));
    end if;
    if register_job.digest is null or register_job.digest !~ '^blake3:[0-9a-f]{64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'digest must be blake3: followed by 64 lower-case hex digits, got ' || coalesce(left(register_job.digest, 80), 'nothing'),
            jsonb_build_object('argument', 'digest'));
    end if;
    if register_job.git_sha is null or register_job.git_sha !~ '^[0-9a-f]{7,64}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'git_sha must be 7-64 lower-case hex digits, got ' || coalesce(left(register_job.git_sha, 80), 'nothing'),
            jsonb_build_object('argument', 'git_sha'));
    end if;
    if register_job.description is not null and length(register_job.description) > 2000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 2000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    if register_job.owner is not null and length(register_job.owner) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'owner must be 1-200 characters (a name or an email)',
                                 jsonb_build_object('argument', 'owner'));
    end if;
    perform ops_private.check_object('tags', v_tags);
    perform ops_private.check_size('tags', v_tags, 16384);
    if (select count(*) from jsonb_object_keys(v_tags)) > 50 then
        perform ops_private.fail(400, 'invalid_argument', 'tags: at most 50 tags',
                                 jsonb_build_object('argument', 'tags'));
    end if;
    select t.key into v_bad from jsonb_each(v_tags) t
    where jsonb_typeof(t.value) <> 'string' or length(t.key) not between 1 and 64 or length(t.value #>> '{}') > 256 limit 1;
    if v_bad is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'tags must map keys of 1-64 characters to strings of at most 256; tag ' || left(v_bad, 64) || ' does not',
            jsonb_build_object('argument', 'tags.' || left(v_bad, 64)));
    end if;
    v_spec := ops_private.check_job_spec(register_job.slug, register_job.spec);

    insert into ops.jobs (workspace_id, slug, description, owner, tags, created_by, created_at, updated_at)
    values (v_ws, register_job.slug, coalesce(register_job.description, v_spec ->> 'description'),
            register_job.owner, v_tags, ops_private.uid(), v_now, v_now)
    on conflict (workspace_id, slug) do nothing;
    select * into v_job from ops.jobs j where j.workspace_id = v_ws and j.slug = register_job.slug for update;
    if (register_job.description is not null and register_job.description is distinct from v_job.description)
       or (register_job.owner is not null and register_job.owner is distinct from v_job.owner)
       or (v_tags <> '{}'::jsonb and v_tags <> v_job.tags) then
        update ops.jobs j set description = coalesce(register_job.description, j.description),
                              owner = coalesce(register_job.owner, j.owner),
                              tags = case when v_tags <> '{}'::jsonb then v_tags else j.tags end,
                              updated_at = v_now
        where j.id = v_job.id
        returning * into v_job;
    end if;
    select * into v_latest from ops.job_versions v where v.job_id = v_job.id and v.version = v_job.latest_version;
    if v_latest.id is null or v_latest.digest <> register_job.digest or v_latest.git_sha <> register_job.git_sha then
        insert into ops.job_versions (job_id, workspace_id, version, spec, digest, git_sha, created_by, created_at)
        values (v_job.id, v_ws, v_job.latest_version + 1, v_spec, register_job.digest, register_job.git_sha,
                ops_private.uid(), v_now)
        returning * into v_ver;
        update ops.jobs j set latest_version = v_ver.version, updated_at = v_now
        where j.id = v_job.id
        returning * into v_job;
        v_created := true;
        perform ops_private.audit('register_job', v_ws, 'job_version', v_ver.id::text,
            jsonb_build_object('job', v_job.slug, 'version', v_ver.version, 'digest', v_ver.digest,
                               'git_sha', v_ver.git_sha));
    else
        v_ver := v_latest;
    end if;
    return jsonb_build_object('job', ops_private.job_json(v_job),
                              'version', ops_private.job_version_json(v_ver, true),
                              'created', v_created);
end
$$;

-- The workspace's jobs, by slug, with their latest version number, their last run and (filled in
-- by the schedules migration) their next scheduled run.
create function ops.list_jobs(workspace_id text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_jobs.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.job_json(j)
                                      || jsonb_build_object('last_run', ops_private.job_last_run(j.id),
                                                            'next_run_at', null)
                                      order by j.slug), '[]'::jsonb)
            from ops.jobs j where j.workspace_id = v_ws);
end
$$;

-- A job, its versions (newest first, at most 100; the latest with its spec) and its recent runs.
create function ops.get_job(workspace_id text, slug text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_job  ops.jobs := ops_private.find_job(get_job.workspace_id, get_job.slug,
                                            array['viewer', 'developer', 'admin', 'executor'], false);
    v_sees boolean := ops_private.sees_principals(v_job.workspace_id);
begin
    return ops_private.job_json(v_job) || jsonb_build_object(
        'versions', (select coalesce(jsonb_agg(ops_private.job_version_json(v, false)
                                               || jsonb_build_object('created_by_name',
                                                      ops_private.principal_name(v.workspace_id, v.created_by))
                                               order by v.version desc), '[]'::jsonb)
                     from (select * from ops.job_versions v where v.job_id = v_job.id
                           order by v.version desc limit 100) v),
        'latest', (select ops_private.job_version_json(v, true) from ops.job_versions v
                   where v.job_id = v_job.id and v.version = v_job.latest_version),
        'recent_runs', (select coalesce(jsonb_agg(ops_private.run_summary_json(x.id, v_sees)
                                                  order by x.created_at desc, x.id desc), '[]'::jsonb)
                        from (select r.id, r.created_at from ops.runs r
                              where r.job_version_id in (select v.id from ops.job_versions v where v.job_id = v_job.id)
                              order by r.created_at desc, r.id desc limit 20) x),
        'last_run', ops_private.job_last_run(v_job.id),
        'next_run_at', null);
end
$$;

-- A run of a job: of its latest version, or of `version`. Idempotent as create_run is.
create function ops.create_job_run(workspace_id text, job text, version integer default null,
                                   params jsonb default '{}'::jsonb, idempotency_key text default null,
                                   labels jsonb default '{}'::jsonb, priority integer default 0)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_job ops.jobs := ops_private.find_job(create_job_run.workspace_id, create_job_run.job,
                                           array['developer', 'admin'], false);
    v_ver uuid;
    v_out jsonb;
begin
    if v_job.latest_version = 0 then
        perform ops_private.fail(404, 'not_found', 'job ' || v_job.slug || ' has no version');
    end if;
    if create_job_run.version is not null and create_job_run.version not between 1 and v_job.latest_version then
        perform ops_private.fail(404, 'not_found',
            pg_catalog.format('job %s has no version %s (versions 1..%s)', v_job.slug, create_job_run.version,
                              v_job.latest_version),
            jsonb_build_object('argument', 'version'));
    end if;
    select v.id into v_ver from ops.job_versions v
    where v.job_id = v_job.id and v.version = coalesce(create_job_run.version, v_job.latest_version);
    v_out := ops_private.start_job_run(v_ver, create_job_run.params, create_job_run.idempotency_key,
                                       create_job_run.labels, create_job_run.priority);
    if (v_out ->> 'created')::boolean then
        perform ops_private.audit('create_job_run', v_job.workspace_id, 'run', v_out ->> 'id',
            jsonb_build_object('job', v_job.slug, 'version', v_out -> 'job' -> 'version',
                               'idempotency_key', create_job_run.idempotency_key));
    end if;
    return v_out;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- grants: the API roles call the RPCs; the helpers are private (run_job_json is called by the
-- SECURITY INVOKER reads get_run and list_runs)
-- ---------------------------------------------------------------------------------------------
revoke execute on function ops.register_job(text, text, jsonb, text, text, text, text, jsonb),
                           ops.list_jobs(text),
                           ops.get_job(text, text),
                           ops.create_job_run(text, text, integer, jsonb, text, jsonb, integer),
                           ops_private.refuse_job_version_change(),
                           ops_private.inherit_job_version(),
                           ops_private.run_job_json(uuid),
                           ops_private.job_json(ops.jobs),
                           ops_private.job_version_json(ops.job_versions, boolean),
                           ops_private.check_job_spec(text, jsonb),
                           ops_private.param_problem(text, jsonb),
                           ops_private.find_job(text, text, text[], boolean),
                           ops_private.start_job_run(uuid, jsonb, text, jsonb, integer),
                           ops_private.job_last_run(uuid)
    from public, anon, authenticated, service_role;
grant execute on function ops.register_job(text, text, jsonb, text, text, text, text, jsonb),
                          ops.list_jobs(text),
                          ops.get_job(text, text),
                          ops.create_job_run(text, text, integer, jsonb, text, jsonb, integer)
    to authenticated, service_role;
grant execute on function ops_private.run_job_json(uuid) to authenticated, service_role;
