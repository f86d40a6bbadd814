-- ops: the data catalog. Every table a phase writes is a dataset of its workspace (layer,
-- location, format, owner, tags) with the versions of its schema. The worker records each table
-- write with record_dataset under the phase's lease; the schema evolution rules live here:
--   INITIAL       the first schema the catalog sees: version 1, applied;
--   NON_BREAKING  applied, recorded as a new version;
--   NONE          nothing to record (the write kept the schema);
--   BREAKING      refused: recorded as a version that is not applied, the dataset's schema is
--                 blocked (event DATASET_BLOCKED) until an admin accepts or rejects the change
--                 with unblock_dataset. Once accepted, the next BREAKING write is applied.
-- docs/catalog.md describes the lifecycle; docs/contract.md the calls.
-- Supabase CLI rules as in the other migrations: no BEGIN/COMMIT, explicit grants.

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

-- ---------------------------------------------------------------------------------------------
-- append_events: the catalog's two event types are written by record_dataset only, like the
-- lifecycle events; an executor cannot forge them. (The function as in 20261125120200, with
-- the two types added to its reserved list.)

create or replace function ops.append_events(run_id text, events jsonb, lease_token text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_run      uuid := ops_private.uuid_arg('run_id', append_events.run_id, true);
    v_token    uuid := ops_private.uuid_arg('lease_token', append_events.lease_token);
    v_reserved constant text[] := array['DATASET_SCHEMA_CHANGED', 'DATASET_BLOCKED', 'RUN_CREATED', 'RUN_SUCCEEDED', 'RUN_FAILED', 'RUN_CANCELLED',
                                        'RUN_FINALIZED', 'PHASE_QUEUED', 'PHASE_CLAIMED', 'LEASE_EXPIRED',
                                        'PHASE_SUCCEEDED', 'PHASE_FAILED', 'PHASE_RETRY_SCHEDULED',
                                        'PHASE_SKIPPED', 'PHASE_CANCELLED', 'PHASE_REUSED', 'PHASE_STOPPED',
                                        'ARTIFACT_REGISTERED'];
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
        if (v_e ->> 'type') = any (v_reserved) then
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
