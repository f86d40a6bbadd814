-- Connections and secret references (issue 10): a workspace's named connections live in ops,
-- specs only name them (a phase's `params.connections`), claims carry them to the worker.
--   ops.connections    one row per (workspace, name): type, non-secret config, version;
--   ops.secrets_refs   one row per (connection, field): a REFERENCE to a secret
--                      (`env:NAME`, `file:/absolute/path`), never its value.
-- The control plane never stores a secret value: config keys that look like secrets, config
-- strings that are secret references, and URLs or DSNs with a password in them are refused
-- (docs/contract.md, "Connections"). The worker resolves a reference only when its own policy
-- (CONTROL_ROOM_SECRET_ALLOW) allows it.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

-- =============================================================================================
-- tables, row level security, grants
-- =============================================================================================
create table ops.connections (
    id                uuid primary key default gen_random_uuid(),
    workspace_id      uuid not null references ops.workspaces (id),
    name              text not null check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    type              text not null
                      check (type in ('postgres', 's3', 'trino', 'spark', 'http', 'dbt-profile')),
    config            jsonb not null default '{}' check (jsonb_typeof(config) = 'object'),
    description       text check (length(description) <= 1000),
    version           integer not null default 1 check (version >= 1),
    created_by        uuid,
    created_at        timestamptz not null default now(),
    updated_by        uuid,
    updated_at        timestamptz not null default now(),
    last_test_at      timestamptz,
    last_test_ok      boolean,
    last_test_message text check (length(last_test_message) <= 500),
    unique (workspace_id, name),
    unique (id, workspace_id)
);
comment on table ops.connections is
    'Named connections of a workspace: type and non-secret config. Secrets are in ops.secrets_refs, by reference only.';

create table ops.secrets_refs (
    connection_id uuid not null,
    workspace_id  uuid not null,
    field         text not null check (field ~ '^[a-z][a-z0-9_]{0,62}$'),
    reference     text not null check (
        reference ~ '^env:[A-Za-z_][A-Za-z0-9_]{0,127}$'
        or (reference ~ '^file:/' and length(reference) <= 1029
            and substr(reference, 6) !~ '(^|/)\.\.(/|$)' and reference !~ '[[:cntrl:]]')),
    created_at    timestamptz not null default now(),
    primary key (connection_id, field),
    foreign key (connection_id, workspace_id) references ops.connections (id, workspace_id)
        on delete cascade
);
create index secrets_refs_workspace_idx on ops.secrets_refs (workspace_id);
comment on table ops.secrets_refs is
    'Where the worker finds each secret of a connection (env:NAME or file:/path). Never a secret value.';

alter table ops.connections  enable row level security;
alter table ops.secrets_refs enable row level security;
create policy connections_read on ops.connections for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy secrets_refs_read on ops.secrets_refs for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));

revoke all on ops.connections, ops.secrets_refs from public, anon, authenticated, service_role;
grant select on ops.connections, ops.secrets_refs to authenticated, service_role;

-- =============================================================================================
-- ops_private: validation and the JSON shape
-- =============================================================================================

-- Key names that hold secrets (matched case-insensitively, `-` read as `_`, anywhere in the key).
create function ops_private.secret_key_pattern()
returns text
language sql immutable
as $$
    select '(password|passwd|passphrase|pwd|secret|token|api_?key|private_?key|credential|access_?key|authorization|cookie)'::text
$$;

-- Whether a text holds a password: a URL with user:password@ (any scheme, a DSN included) or a
-- keyword DSN's password=.
create function ops_private.has_password(p_text text)
returns boolean
language sql immutable
as $$
    select p_text ~* '[a-z][a-z0-9+.-]*://[^/?#@[:space:]]*:[^/?#@[:space:]]*@'
        or p_text ~* '(^|[[:space:]?&;])(password|passwd|pwd)[[:space:]]*='
$$;

-- A text with the passwords of its URLs and keyword DSNs replaced by ***.
create function ops_private.redact_passwords(p_text text)
returns text
language sql immutable
as $$
    select pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(p_text,
                   '([a-z][a-z0-9+.-]*://[^/?#@[:space:]]*:)[^/?#@[:space:]]*@', '\1***@', 'gi'),
               '((^|[[:space:]?&;])(password|passwd|pwd)[[:space:]]*=)[[:space:]]*[^[:space:]&;]*', '\1***', 'gi')
$$;

-- Refuse a connection name that is not an identifier.
create function ops_private.check_connection_name(p_name text)
returns void
language plpgsql immutable
as $$
begin
    if p_name is null or p_name !~ '^[a-z][a-z0-9_]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits or _, starting with a letter, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_name, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
end
$$;

-- Refuse a config or secrets map that could carry a secret value (the rules of
-- docs/contract.md, "Connections"). Error texts name the path, never the value.
create function ops_private.check_connection(p_config jsonb, p_secrets jsonb)
returns void
language plpgsql immutable
as $$
declare
    v_bad  record;
    v_ref  text;
    v_path text;
begin
    perform ops_private.check_object('config', p_config);
    perform ops_private.check_size('config', p_config, 16384);
    perform ops_private.check_object('secrets', p_secrets);
    perform ops_private.check_size('secrets', p_secrets, 16384);

    -- every key and value of config, at any depth, with its path
    for v_bad in
        with recursive node(path, parent, key, value, depth) as (
            select 'config'::text, null::text, null::text, p_config, 0
          union all
            select case when c.key is not null then n.path || '.' || c.key
                        else n.path || '[' || (c.idx - 1)::text || ']' end,
                   n.path, c.key, c.value, n.depth + 1
            from node n
            cross join lateral (
                select o.key, o.value, null::bigint as idx
                from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(n.value) = 'object'
                                                then n.value end) o
                union all
                select null::text, a.value, a.idx
                from pg_catalog.jsonb_array_elements(case when pg_catalog.jsonb_typeof(n.value) = 'array'
                                                          then n.value end) with ordinality a(value, idx)
            ) c
        )
        select n.path, n.parent, n.key,
               case when pg_catalog.jsonb_typeof(n.value) = 'string' then n.value #>> '{}' end as text_value
        from node n
        where n.depth > 0
        order by n.depth, n.path
    loop
        if v_bad.key is not null
           and pg_catalog.replace(pg_catalog.lower(v_bad.key), '-', '_') ~ ops_private.secret_key_pattern() then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s looks like a secret: config holds no secret values; put it in secrets'
                                  ' as a reference (for example {"secrets": {"password": "env:NAME"}} or'
                                  ' "file:/path"), and the worker resolves it', pg_catalog.left(v_bad.path, 200)),
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.path, 200)));
        end if;
        if v_bad.key is not null and ops_private.has_password(v_bad.key) then
            -- the key is not echoed: it holds the password
            perform ops_private.fail(400, 'invalid_argument',
                'a key of ' || pg_catalog.left(v_bad.parent, 200) || ' holds a password: config holds no secret'
                || ' values; put it in secrets as a reference',
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.parent, 200)));
        end if;
        if v_bad.text_value is not null and pg_catalog.lower(pg_catalog.left(v_bad.text_value, 7)) = 'secret:' then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s is a secret reference (secret:...) in config: name the secret in secrets'
                                  ' instead, as env:NAME or file:/path (for example {"secrets": {"password":'
                                  ' "env:NAME"}})', pg_catalog.left(v_bad.path, 200)),
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.path, 200)));
        end if;
        if v_bad.text_value is not null and ops_private.has_password(v_bad.text_value) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s holds a password (scheme://user:password@host or password=): leave it out'
                                  ' of the URL or DSN and put it in secrets as a reference (for example'
                                  ' {"secrets": {"password": "env:PGPASSWORD"}})', pg_catalog.left(v_bad.path, 200)),
                pg_catalog.jsonb_build_object('argument', pg_catalog.left(v_bad.path, 200)));
        end if;
    end loop;

    -- secrets: field -> reference
    if (select count(*) from pg_catalog.jsonb_object_keys(p_secrets)) > 64 then
        perform ops_private.fail(400, 'invalid_argument', 'secrets may name at most 64 fields',
                                 pg_catalog.jsonb_build_object('argument', 'secrets'));
    end if;
    for v_bad in select s.key, s.value from pg_catalog.jsonb_each(p_secrets) s order by s.key loop
        v_path := 'secrets.' || pg_catalog.left(v_bad.key, 64);
        if v_bad.key !~ '^[a-z][a-z0-9_]{0,62}$' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ': a secrets field must be 1-63 lower-case letters, digits or _, starting with a letter',
                pg_catalog.jsonb_build_object('argument', v_path));
        end if;
        if p_config ? v_bad.key then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('%s is in config and in secrets: a field is one or the other', v_bad.key),
                pg_catalog.jsonb_build_object('argument', 'config.' || v_bad.key));
        end if;
        v_ref := case when pg_catalog.jsonb_typeof(v_bad.value) = 'string' then v_bad.value #>> '{}' end;
        if v_ref is not null and v_ref ~* '^secret:' then
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ' must be a reference without the secret: prefix (env:NAME or file:/absolute/path)',
                pg_catalog.jsonb_build_object('argument', v_path));
        end if;
        if v_ref is null
           or not (v_ref ~ '^env:[A-Za-z_][A-Za-z0-9_]{0,127}$'
                   or (v_ref ~ '^file:/' and pg_catalog.length(v_ref) <= 1029
                       and pg_catalog.substr(v_ref, 6) !~ '(^|/)\.\.(/|$)' and v_ref !~ '[[:cntrl:]]')) then
            -- the value is not echoed: it may be a secret pasted by mistake
            perform ops_private.fail(400, 'invalid_argument',
                v_path || ' must be a secret reference, env:NAME (letters, digits, _; at most 128) or'
                || ' file:/absolute/path (at most 1024 characters, no .. segments); the value itself is'
                || ' never stored',
                pg_catalog.jsonb_build_object('argument', v_path));
        end if;
    end loop;
end
$$;

-- The secrets map of a connection: field -> reference.
create function ops_private.connection_secrets(p_connection uuid)
returns jsonb
language sql stable
as $$
    select coalesce(pg_catalog.jsonb_object_agg(s.field, s.reference), '{}'::jsonb)
    from ops.secrets_refs s where s.connection_id = p_connection
$$;

-- A connection as the API shows it.
create function ops_private.connection_json(c ops.connections)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', c.id, 'workspace_id', c.workspace_id, 'name', c.name, 'type', c.type,
        'config', c.config, 'secrets', ops_private.connection_secrets(c.id),
        'description', c.description, 'version', c.version,
        'created_at', c.created_at, 'updated_at', c.updated_at,
        'last_test', case when c.last_test_at is null then null
                          else pg_catalog.jsonb_build_object('at', c.last_test_at, 'ok', c.last_test_ok,
                                                             'message', c.last_test_message) end)
$$;

-- The caller's role in a workspace that must exist (404 for a non-member, as for a missing one).
create function ops_private.connection_workspace(p_workspace uuid, p_roles text[])
returns text
language plpgsql stable
as $$
begin
    if not exists (select 1 from ops.workspaces w where w.id = p_workspace) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return ops_private.require_role(p_workspace, p_roles, true);
end
$$;

-- The connection row, locked when asked, or 404 naming it.
create function ops_private.find_connection(p_workspace uuid, p_name text, p_lock boolean)
returns ops.connections
language plpgsql volatile
as $$
declare
    v_row ops.connections;
begin
    if p_name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    if p_lock then
        select * into v_row from ops.connections c
        where c.workspace_id = p_workspace and c.name = p_name for update;
    else
        select * into v_row from ops.connections c
        where c.workspace_id = p_workspace and c.name = p_name;
    end if;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'connection ' || pg_catalog.left(p_name, 64) || ' not found in this workspace',
            pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    return v_row;
end
$$;

-- =============================================================================================
-- ops: the connection functions
-- =============================================================================================
create function ops.create_connection(workspace_id text, name text, type text,
                                      config jsonb default '{}'::jsonb, secrets jsonb default '{}'::jsonb,
                                      description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', create_connection.workspace_id, true);
    v_config  jsonb := coalesce(create_connection.config, '{}'::jsonb);
    v_secrets jsonb := coalesce(create_connection.secrets, '{}'::jsonb);
    v_row     ops.connections;
begin
    perform ops_private.connection_workspace(v_ws, array['admin']);
    perform ops_private.check_connection_name(create_connection.name);
    if create_connection.type is null
       or create_connection.type not in ('postgres', 's3', 'trino', 'spark', 'http', 'dbt-profile') then
        perform ops_private.fail(400, 'invalid_argument',
            'type must be one of postgres, s3, trino, spark, http, dbt-profile, got '
            || coalesce(pg_catalog.quote_literal(left(create_connection.type, 64)), 'nothing'),
            jsonb_build_object('argument', 'type'));
    end if;
    if create_connection.description is not null and length(create_connection.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    perform ops_private.check_connection(v_config, v_secrets);
    insert into ops.connections (workspace_id, name, type, config, description, version,
                                 created_by, created_at, updated_by, updated_at)
    values (v_ws, create_connection.name, create_connection.type, v_config,
            nullif(create_connection.description, ''), 1, ops_private.uid(), v_now, ops_private.uid(), v_now)
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'a connection named ' || create_connection.name
            || ' exists in this workspace; change it with update_connection',
            jsonb_build_object('argument', 'name'));
    end if;
    insert into ops.secrets_refs (connection_id, workspace_id, field, reference, created_at)
    select v_row.id, v_ws, s.key, s.value #>> '{}', v_now from jsonb_each(v_secrets) s;
    perform ops_private.audit('create_connection', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type, 'version', v_row.version,
                           'config_keys', (select coalesce(jsonb_agg(k order by k), '[]'::jsonb)
                                           from jsonb_object_keys(v_config) k),
                           'secret_fields', (select coalesce(jsonb_agg(k order by k), '[]'::jsonb)
                                             from jsonb_object_keys(v_secrets) k)));
    return ops_private.connection_json(v_row);
end
$$;

create function ops.update_connection(workspace_id text, name text, config jsonb default null,
                                      secrets jsonb default null, description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now     timestamptz := ops_private.now();
    v_ws      uuid := ops_private.uuid_arg('workspace_id', update_connection.workspace_id, true);
    v_row     ops.connections;
    v_old     jsonb;
    v_config  jsonb;
    v_secrets jsonb;
    v_desc    text;
    v_changed text[] := '{}';
    v_rotated jsonb;
begin
    perform ops_private.connection_workspace(v_ws, array['admin']);
    v_row := ops_private.find_connection(v_ws, update_connection.name, true);
    if update_connection.description is not null and length(update_connection.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    v_old := ops_private.connection_secrets(v_row.id);
    v_config := coalesce(update_connection.config, v_row.config);
    v_secrets := coalesce(update_connection.secrets, v_old);
    v_desc := case when update_connection.description is null then v_row.description
                   else nullif(update_connection.description, '') end;
    perform ops_private.check_connection(v_config, v_secrets);
    if v_config <> v_row.config then
        v_changed := v_changed || 'config'::text;
    end if;
    if v_secrets <> v_old then
        v_changed := v_changed || 'secrets'::text;
    end if;
    if v_desc is distinct from v_row.description then
        v_changed := v_changed || 'description'::text;
    end if;
    if cardinality(v_changed) = 0 then
        return ops_private.connection_json(v_row);   -- nothing changed: no new version
    end if;
    update ops.connections c
    set config = v_config, description = v_desc, version = c.version + 1,
        updated_by = ops_private.uid(), updated_at = v_now
    where c.id = v_row.id
    returning * into v_row;
    if 'secrets' = any (v_changed) then
        select coalesce(jsonb_agg(f order by f), '[]'::jsonb) into v_rotated
        from (select s.key as f from jsonb_each(v_secrets) s where v_old -> s.key is distinct from s.value
              union
              select o.key from jsonb_each(v_old) o where not v_secrets ? o.key) x;
        delete from ops.secrets_refs s where s.connection_id = v_row.id and not v_secrets ? s.field;
        insert into ops.secrets_refs as s (connection_id, workspace_id, field, reference, created_at)
        select v_row.id, v_ws, n.key, n.value #>> '{}', v_now from jsonb_each(v_secrets) n
        on conflict (connection_id, field) do update
            set reference = excluded.reference, created_at = excluded.created_at
            where s.reference is distinct from excluded.reference;
    end if;
    perform ops_private.audit('update_connection', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'version', v_row.version, 'changed', to_jsonb(v_changed),
                           'secret_fields_changed', coalesce(v_rotated, '[]'::jsonb)));
    return ops_private.connection_json(v_row);
end
$$;

create function ops.delete_connection(workspace_id text, name text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_connection.workspace_id, true);
    v_row ops.connections;
begin
    perform ops_private.connection_workspace(v_ws, array['admin']);
    v_row := ops_private.find_connection(v_ws, delete_connection.name, true);
    delete from ops.connections c where c.id = v_row.id;   -- its secrets_refs go with it
    perform ops_private.audit('delete_connection', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type, 'version', v_row.version));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

create function ops.list_connections(workspace_id text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_connections.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return (select coalesce(jsonb_agg(ops_private.connection_json(c) order by c.name), '[]'::jsonb)
            from ops.connections c where c.workspace_id = v_ws);
end
$$;

create function ops.get_connection(workspace_id text, name text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', get_connection.workspace_id, true);
begin
    perform ops_private.connection_workspace(v_ws, array['viewer', 'developer', 'admin', 'executor']);
    return ops_private.connection_json(ops_private.find_connection(v_ws, get_connection.name, false));
end
$$;

create function ops.record_connection_test(workspace_id text, name text, ok boolean, message text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_ws  uuid := ops_private.uuid_arg('workspace_id', record_connection_test.workspace_id, true);
    v_row ops.connections;
    v_msg text;
begin
    perform ops_private.connection_workspace(v_ws, array['developer', 'admin']);
    v_row := ops_private.find_connection(v_ws, record_connection_test.name, true);
    if record_connection_test.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    -- a driver's error may quote a DSN: passwords in it are redacted, the text capped
    v_msg := nullif(left(ops_private.redact_passwords(left(record_connection_test.message, 4000)), 500), '');
    update ops.connections c
    set last_test_at = v_now, last_test_ok = record_connection_test.ok, last_test_message = v_msg
    where c.id = v_row.id
    returning * into v_row;
    perform ops_private.audit('record_connection_test', v_ws, 'connection', v_row.name,
        jsonb_build_object('id', v_row.id, 'version', v_row.version, 'ok', record_connection_test.ok));
    return ops_private.connection_json(v_row);
end
$$;

-- =============================================================================================
-- runs name connections; claims carry them
-- =============================================================================================

-- A new phase's params.connections names connections its workspace has (a reused phase of a
-- retry is not checked: it does not run again). Only phases that name connections pay.
create function ops_private.check_phase_connections()
returns trigger
language plpgsql
as $$
declare
    v_names jsonb := new.params -> 'connections';
    v_elem  jsonb;
    v_name  text;
    v_slug  text;
begin
    if v_names = 'null'::jsonb then
        return new;
    end if;
    if pg_catalog.jsonb_typeof(v_names) <> 'array' then
        perform ops_private.fail(400, 'invalid_argument',
            'phase ' || new.name || ': params.connections must be an array of connection names, got '
            || pg_catalog.jsonb_typeof(v_names),
            pg_catalog.jsonb_build_object('argument', 'phases', 'phase', new.name));
    end if;
    for v_elem in select pg_catalog.jsonb_array_elements(v_names) loop
        v_name := case when pg_catalog.jsonb_typeof(v_elem) = 'string' then v_elem #>> '{}' end;
        if v_name is null or v_name !~ '^[a-z][a-z0-9_]{0,62}$' then
            perform ops_private.fail(400, 'invalid_argument',
                'phase ' || new.name || ': params.connections must hold connection names (1-63 lower-case'
                || ' letters, digits or _), got ' || pg_catalog.left(v_elem::text, 64),
                pg_catalog.jsonb_build_object('argument', 'phases', 'phase', new.name));
        end if;
        if not exists (select 1 from ops.connections c
                       where c.workspace_id = new.workspace_id and c.name = v_name) then
            select w.slug into v_slug from ops.workspaces w where w.id = new.workspace_id;
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('phase %s names connection %s, which workspace %s does not have: register'
                                  ' it with `control-room connections create` (a spec only names connections;'
                                  ' the workspace holds them)', new.name, v_name, v_slug),
                pg_catalog.jsonb_build_object('argument', 'phases', 'phase', new.name, 'connection', v_name));
        end if;
    end loop;
    return new;
end
$$;

create trigger phases_connections before insert on ops.phases
    for each row when (new.params ? 'connections' and new.state <> 'succeeded')
    execute function ops_private.check_phase_connections();

-- A run's input_manifest carries no connections: they are registered in the workspace.
create function ops_private.refuse_manifest_connections()
returns trigger
language plpgsql
as $$
begin
    perform ops_private.fail(400, 'invalid_argument',
        'input_manifest carries connections: connections are registered in the workspace'
        || ' (`control-room connections create`) and a phase names them in params.connections;'
        || ' leave connections out of input_manifest',
        pg_catalog.jsonb_build_object('argument', 'input_manifest.connections'));
    return new;
end
$$;

create trigger runs_no_manifest_connections before insert on ops.runs
    for each row when (new.input_manifest ? 'connections')
    execute function ops_private.refuse_manifest_connections();

-- The connections a claimed phase names (`p_names`, its params.connections), as the claim
-- carries them: by name, {type, config, secrets: {field: reference}, version}. A name the
-- workspace does not have is absent. Its own function, so that claim_json's plan stays as
-- small as the baseline's for the phases that name none.
create function ops_private.claim_connections(p_workspace uuid, p_names jsonb)
returns jsonb
language plpgsql stable
as $$
begin
    return (
        select coalesce(pg_catalog.jsonb_object_agg(c.name, pg_catalog.jsonb_build_object(
                   'type', c.type, 'config', c.config,
                   'secrets', (select coalesce(pg_catalog.jsonb_object_agg(s.field, s.reference), '{}'::jsonb)
                               from ops.secrets_refs s where s.connection_id = c.id),
                   'version', c.version)), '{}'::jsonb)
        from ops.connections c
        where c.workspace_id = p_workspace
          and c.name in (select pg_catalog.jsonb_array_elements_text(p_names)));
end
$$;

-- The claim (baseline) plus `connections`: the registered connections the phase names, by name
-- (references, never values; a name the workspace no longer has is absent). Phases that name
-- none pay one `?` test.
create or replace function ops_private.claim_json(p ops.phases, r ops.runs)
returns jsonb
language plpgsql stable
as $$
begin
    return jsonb_build_object(
        'phase_id', p.id, 'run_id', p.run_id, 'workspace_id', p.workspace_id, 'name', p.name,
        'kind', p.kind, 'params', p.params, 'depends_on', to_jsonb(p.depends_on),
        'attempt', p.attempt, 'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
        'lease_token', p.lease_token, 'lease_seconds', p.lease_seconds,
        'lease_expires_at', p.lease_expires_at, 'claim_id', p.claim_id,
        'inputs', (select coalesce(jsonb_object_agg(d.name, d.output_manifest), '{}'::jsonb)
                   from ops.phases d where d.run_id = p.run_id and d.name = any (p.depends_on)),
        'run', jsonb_build_object('spec_slug', r.spec_slug, 'git_sha', r.git_sha, 'env', r.env,
                                  'input_manifest', r.input_manifest, 'labels', r.labels,
                                  'priority', r.priority, 'parent_run_id', r.parent_run_id),
        'connections', case when jsonb_typeof(p.params -> 'connections') = 'array'
                            then ops_private.claim_connections(p.workspace_id, p.params -> 'connections')
                            else '{}'::jsonb end);
end
$$;

-- =============================================================================================
-- grants: the API roles call the functions; anon calls nothing; the helpers are private
-- =============================================================================================
revoke execute on function ops.create_connection(text, text, text, jsonb, jsonb, text),
                           ops.update_connection(text, text, jsonb, jsonb, text),
                           ops.delete_connection(text, text),
                           ops.list_connections(text),
                           ops.get_connection(text, text),
                           ops.record_connection_test(text, text, boolean, text),
                           ops_private.secret_key_pattern(),
                           ops_private.has_password(text),
                           ops_private.redact_passwords(text),
                           ops_private.check_connection_name(text),
                           ops_private.check_connection(jsonb, jsonb),
                           ops_private.connection_secrets(uuid),
                           ops_private.connection_json(ops.connections),
                           ops_private.connection_workspace(uuid, text[]),
                           ops_private.find_connection(uuid, text, boolean),
                           ops_private.claim_connections(uuid, jsonb),
                           ops_private.check_phase_connections(),
                           ops_private.refuse_manifest_connections()
    from public, anon, authenticated, service_role;
grant execute on function ops.create_connection(text, text, text, jsonb, jsonb, text),
                          ops.update_connection(text, text, jsonb, jsonb, text),
                          ops.delete_connection(text, text),
                          ops.list_connections(text),
                          ops.get_connection(text, text),
                          ops.record_connection_test(text, text, boolean, text)
    to authenticated, service_role;
