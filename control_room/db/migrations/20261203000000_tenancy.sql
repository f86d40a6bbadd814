-- Tenancy that holds against a hostile member (issue 10, control-plane half):
--   1. principals have an owner: a workspace (executors and service users its admins or the
--      operators made for it) or none (users of the installation, principals service_role made);
--   2. an admin adds to its workspace only principals it owns, or principals that accepted an
--      invitation; service_role adds anyone; an admin revokes only the principals its workspaces own;
--   3. executor tokens are pinned to workspaces at mint time (JWT claim `workspaces`): claim_phase
--      never claims outside the pins, whatever memberships appear later;
--   4. principal ids are shown to admins only (PHASE_CLAIMED/LEASE_EXPIRED name the executor,
--      list_events' principal_id, a phase's claimed_by and a run's created_by are null for others);
--   5. ops_private.pre_request(): a revoked principal is refused (401) before any call, reads
--      included (the gateway runs it with the request settings; PostgREST's db-pre-request);
--   6. list_runs returns summaries (no manifests) in pages capped in bytes too;
--   7. ops_private.fail caps the message and details it raises.
-- docs/contract.md ("Principals, enrolment and revocation") describes the rules.

-- ---------------------------------------------------------------------------------------------
-- tables
-- ---------------------------------------------------------------------------------------------
alter table ops.principals add column owner_workspace_id uuid references ops.workspaces (id);
comment on column ops.principals.owner_workspace_id is
    'The workspace that owns this principal (its admins may enrol and revoke it); null: a user of the installation.';
create index principals_owner_idx on ops.principals (owner_workspace_id) where owner_workspace_id is not null;

-- Invitations: how an admin brings a principal it does not own into its workspace. The invitee
-- accepts itself (accept_invitation); an executor never accepts one.
create table ops.invitations (
    workspace_id uuid not null references ops.workspaces (id) on delete cascade,
    principal_id uuid not null,
    role         text not null check (role in ('viewer', 'developer', 'admin')),
    name         text check (length(name) <= 200),
    invited_by   uuid,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null,
    accepted_at  timestamptz,
    primary key (workspace_id, principal_id)
);
create index invitations_principal_idx on ops.invitations (principal_id);

alter table ops.invitations enable row level security;
-- admins of the workspace and the invitee read an invitation
create policy invitations_read on ops.invitations for select to authenticated
    using (workspace_id in (select ops_private.admin_workspaces())
           or principal_id = (select auth.uid()));
revoke all on ops.invitations from public, anon, authenticated, service_role;
grant select on ops.invitations to authenticated, service_role;

-- Who else is a member, and which principals exist, is for admins: a member reads its own
-- membership and principal row; an admin reads its workspaces' memberships, their principals
-- and the principals its workspaces own. (Tables in an exposed schema are readable through
-- PostgREST on Supabase; the ids there are no capability any more, but a name is enough.)
drop policy workspace_members_read on ops.workspace_members;
create policy workspace_members_read on ops.workspace_members for select to authenticated
    using (workspace_id in (select ops_private.admin_workspaces())
           or (principal_id = (select auth.uid())
               and workspace_id in (select ops_private.member_workspaces())));
drop policy principals_read on ops.principals;
create policy principals_read on ops.principals for select to authenticated
    using ((id = (select auth.uid()) and revoked_at is null)
           or owner_workspace_id in (select ops_private.admin_workspaces())
           or id in (select m.principal_id from ops.workspace_members m
                     where m.workspace_id in (select ops_private.admin_workspaces())));

-- ---------------------------------------------------------------------------------------------
-- ops_private.fail: messages and details are capped, so that no function echoes a huge value
-- ---------------------------------------------------------------------------------------------
create or replace function ops_private.fail(p_status integer, p_code text, p_message text, p_details jsonb default null)
returns void
language plpgsql
as $$
declare
    v_message text := coalesce(p_message, '');
    v_details jsonb := p_details;
begin
    if pg_catalog.length(v_message) > 1000 then
        v_message := pg_catalog.left(v_message, 1000) || ' ... (truncated)';
    end if;
    if v_details is not null and pg_catalog.octet_length(v_details::text) > 2048 then
        -- keep the short members that say which argument and why; drop the rest
        v_details := coalesce((select pg_catalog.jsonb_object_agg(d.key, d.value)
                               from pg_catalog.jsonb_each(case when pg_catalog.jsonb_typeof(v_details) = 'object'
                                                               then v_details else '{}'::jsonb end) d
                               where pg_catalog.octet_length(d.value::text) <= 200), '{}'::jsonb)
                     || pg_catalog.jsonb_build_object('truncated', true);
    end if;
    if v_details is null then
        raise exception using errcode = 'PT' || p_status::text, message = v_message, hint = p_code;
    end if;
    raise exception using errcode = 'PT' || p_status::text, message = v_message, hint = p_code,
                          detail = v_details::text;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- ops_private.pre_request: the revoked are refused on every call
-- ---------------------------------------------------------------------------------------------
-- One lookup in the partial index principals_revoked_idx (it holds only revoked principals).
-- The gateway calls it in the statement that sets the request's settings; on Supabase set it
-- as PostgREST's pre-request hook (docs/gateway.md):
--     alter role authenticator set pgrst.db_pre_request = 'ops_private.pre_request';
--     notify pgrst, 'reload config';
-- SECURITY DEFINER: row level security hides a revoked principal's own row from it.
create function ops_private.pre_request()
returns void
language plpgsql stable security definer
set search_path = ''
as $$
declare
    v_sub text := coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                           nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub');
begin
    if v_sub is not null
       and v_sub ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
       and exists (select 1 from ops.principals p where p.id = v_sub::uuid and p.revoked_at is not null) then
        perform ops_private.fail(401, 'unauthorized', 'principal ' || v_sub || ' has been revoked');
    end if;
end
$$;
revoke all on function ops_private.pre_request() from public;
-- PostgREST runs the hook as the request's role, anon included (it must not fail for anon:
-- on Supabase the hook runs for every schema's requests)
grant usage on schema ops_private to anon;
grant execute on function ops_private.pre_request() to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- helpers: who is an admin here, a principal's display name, the token's pins
-- ---------------------------------------------------------------------------------------------
-- Whether the caller may see principal ids of workspace p_workspace: privileged or its admin.
create function ops_private.sees_principals(p_workspace uuid)
returns boolean
language plpgsql stable
as $$
begin
    return ops_private.is_privileged()
        or p_workspace in (select ops_private.admin_workspaces());
end
$$;

-- The name a principal goes by in a workspace: its member name, else its principal name.
create function ops_private.principal_name(p_workspace uuid, p_principal uuid)
returns text
language plpgsql stable
as $$
begin
    if p_principal is null then
        return null;
    end if;
    return coalesce(
        (select m.name from ops.workspace_members m
         where m.workspace_id = p_workspace and m.principal_id = p_principal),
        (select p.name from ops.principals p where p.id = p_principal),
        case when p_principal = ops_private.uid()
             then nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'name' end,
        'unnamed');
end
$$;

-- The workspaces the caller's token is pinned to (JWT claim `workspaces`), or null when the
-- token carries no such claim (or not an array).
create function ops_private.token_pins()
returns uuid[]
language plpgsql stable
as $$
declare
    v_pins jsonb := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb -> 'workspaces';
begin
    if v_pins is null or pg_catalog.jsonb_typeof(v_pins) <> 'array' then
        return null;
    end if;
    return array(select x::uuid from pg_catalog.jsonb_array_elements_text(v_pins) x
                 where x ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$');
end
$$;

-- ---------------------------------------------------------------------------------------------
-- reads show principal ids to admins only
-- ---------------------------------------------------------------------------------------------
create or replace function ops_private.phases_json(p_run uuid)
returns jsonb
language plpgsql stable
as $$
declare
    v_sees boolean := ops_private.sees_principals((select r.workspace_id from ops.runs r where r.id = p_run));
begin
    return (
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'id', p.id, 'name', p.name, 'ordinal', p.ordinal, 'kind', p.kind, 'params', p.params,
        'depends_on', pg_catalog.to_jsonb(p.depends_on), 'state', p.state, 'priority', p.priority,
        'attempt', p.attempt, 'max_attempts', p.max_attempts, 'timeout_seconds', p.timeout_seconds,
        'retry_backoff_seconds', p.retry_backoff_seconds,
        'retry_backoff_max_seconds', p.retry_backoff_max_seconds,
        'queued_at', p.queued_at, 'not_before', p.not_before, 'lease_seconds', p.lease_seconds,
        'lease_expires_at', p.lease_expires_at,
        'claimed_by', case when v_sees then p.claimed_by end,
        'started_at', p.started_at, 'finished_at', p.finished_at, 'progress', p.progress,
        'output_manifest', p.output_manifest, 'error', p.error,
        'reused_from_phase_id', p.reused_from_phase_id) order by p.ordinal), '[]'::jsonb)
    from ops.phases p
    where p.run_id = p_run);
end
$$;

create or replace function ops_private.run_json(p_run uuid, p_with_phases boolean default true)
returns jsonb
language plpgsql stable
as $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest'
           || pg_catalog.jsonb_build_object('created_by',
                  case when ops_private.sees_principals(r.workspace_id) then r.created_by end)
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

-- A run as list_runs shows it: no manifests, the error reduced to its phase and a short message.
create function ops_private.run_summary_json(p_run uuid, p_sees boolean)
returns jsonb
language plpgsql stable
as $$
begin
    return (
    select pg_catalog.to_jsonb(r) - 'request_digest' - 'input_manifest' - 'output_manifest' - 'error'
           || pg_catalog.jsonb_build_object(
                  'created_by', case when p_sees then r.created_by end,
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

create or replace function ops.list_runs(workspace_id text default null, state text default null, spec_slug text default null,
                              labels jsonb default null, parent_run_id text default null,
                              "limit" integer default 50, cursor text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws     uuid := ops_private.uuid_arg('workspace_id', list_runs.workspace_id);
    v_parent uuid := ops_private.uuid_arg('parent_run_id', list_runs.parent_run_id);
    v_at     timestamptz;
    v_id     uuid;
    v_rows   jsonb[] := '{}';
    v_item   jsonb;
    v_bytes  bigint := 0;
    v_more   boolean := false;
    v_last_at timestamptz;
    v_last_id uuid;
    v_x      record;
    v_admin  uuid[] := case when ops_private.is_privileged() then null
                            else array(select ops_private.admin_workspaces()) end;
begin
    if list_runs."limit" is null or list_runs."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500');
    end if;
    if list_runs.state is not null and list_runs.state not in ('queued', 'running', 'succeeded', 'failed', 'cancelled') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of queued, running, succeeded, failed, cancelled');
    end if;
    perform ops_private.check_object('labels', list_runs.labels);
    if list_runs.cursor is not null then
        if list_runs.cursor !~ '^\d{1,16}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
            perform ops_private.fail(400, 'invalid_argument', 'cursor is not one this function returned');
        end if;
        v_at := to_timestamp(split_part(list_runs.cursor, ':', 1)::numeric / 1000000);
        v_id := split_part(list_runs.cursor, ':', 2)::uuid;
    end if;
    -- a page holds at most `limit` runs and about 1 MiB: the run that passes the byte budget
    -- ends the page (it comes first on the next one)
    for v_x in
        select r.id, r.created_at, r.workspace_id from ops.runs r
        where (v_ws is null or r.workspace_id = v_ws)
          and (list_runs.state is null or r.state = list_runs.state)
          and (list_runs.spec_slug is null or r.spec_slug = list_runs.spec_slug)
          and (list_runs.labels is null or r.labels @> list_runs.labels)
          and (v_parent is null or r.parent_run_id = v_parent)
          and (v_at is null or (r.created_at, r.id) < (v_at, v_id))
        order by r.created_at desc, r.id desc
        limit list_runs."limit"
    loop
        v_item := ops_private.run_summary_json(v_x.id, v_admin is null or v_x.workspace_id = any (v_admin));
        v_bytes := v_bytes + pg_catalog.octet_length(v_item::text);
        if v_bytes > 1048576 and cardinality(v_rows) > 0 then
            v_more := true;
            exit;
        end if;
        v_rows := v_rows || v_item;
        v_last_at := v_x.created_at;
        v_last_id := v_x.id;
    end loop;
    return jsonb_build_object('runs', pg_catalog.to_jsonb(v_rows),
        'next_cursor', case when v_more or cardinality(v_rows) = list_runs."limit" then
            (extract(epoch from v_last_at) * 1000000)::bigint::text || ':' || v_last_id::text end);
end
$$;

create or replace function ops.list_events(run_id text, after bigint default 0, "limit" integer default 100,
                                phase text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_run    uuid := ops_private.uuid_arg('run_id', list_events.run_id, true);
    v_ws     uuid;
    v_sees   boolean;
    v_events jsonb;
begin
    if list_events."limit" is null or list_events."limit" not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000');
    end if;
    if list_events.after is null or list_events.after < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'after must be a sequence number >= 0');
    end if;
    select r.workspace_id into v_ws from ops.runs r where r.id = v_run;
    if v_ws is null then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;
    v_sees := ops_private.sees_principals(v_ws);
    select coalesce(jsonb_agg(jsonb_build_object(
               'seq', e.seq, 'event_id', e.event_id, 'run_id', e.run_id, 'phase', e.phase, 'attempt', e.attempt,
               'ts', e.ts, 'recorded_at', e.recorded_at, 'level', e.level, 'type', e.type,
               'message', e.message,
               -- events written before names replaced ids in claimed_by keep an id: hidden too
               'payload', case when not v_sees and e.type in ('PHASE_CLAIMED', 'LEASE_EXPIRED')
                                    and e.payload ->> 'claimed_by' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                               then e.payload || '{"claimed_by": null}'::jsonb else e.payload end,
               'principal_id', case when v_sees then e.principal_id end) order by e.seq),
           '[]'::jsonb)
    into v_events
    from (select * from ops.run_events e
          where e.run_id = v_run and e.seq > list_events.after
            and (list_events.phase is null or e.phase = list_events.phase)
          order by e.seq
          limit list_events."limit") e;
    return jsonb_build_object('events', v_events,
        'next_after', coalesce((v_events -> -1 ->> 'seq')::bigint, list_events.after));
end
$$;

-- ---------------------------------------------------------------------------------------------
-- principals: owned by a workspace or by nobody
-- ---------------------------------------------------------------------------------------------
drop function ops.create_principal(text, text);
create function ops.create_principal(name text, kind text default 'executor', workspace_id text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', create_principal.workspace_id);
    v_row ops.principals;
begin
    if not ops_private.is_privileged() then
        if v_ws is null then
            perform ops_private.fail(403, 'forbidden',
                'only service_role may create a principal without a workspace; an admin passes workspace_id',
                jsonb_build_object('argument', 'workspace_id', 'reason', 'workspace_required'));
        end if;
        if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
            perform ops_private.fail(404, 'not_found', 'workspace not found');
        end if;
        perform ops_private.require_role(v_ws, array['admin'], true);
    elsif v_ws is not null and not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    if create_principal.name is null or length(create_principal.name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-200 characters',
                                 jsonb_build_object('argument', 'name'));
    end if;
    if create_principal.kind is null or create_principal.kind not in ('user', 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'kind must be user or executor, got ' || coalesce(pg_catalog.left(create_principal.kind, 64), 'nothing'),
            jsonb_build_object('argument', 'kind'));
    end if;
    insert into ops.principals (kind, name, created_by, created_at, owner_workspace_id)
    values (create_principal.kind, create_principal.name, ops_private.uid(), ops_private.now(), v_ws)
    returning * into v_row;
    perform ops_private.audit('create_principal', v_ws, 'principal', v_row.id::text,
                              jsonb_build_object('name', v_row.name, 'kind', v_row.kind));
    return to_jsonb(v_row);
end
$$;

create or replace function ops.add_member(workspace_id text, principal_id text, role text, name text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', add_member.workspace_id, true);
    v_pr  uuid := ops_private.uuid_arg('principal_id', add_member.principal_id, true);
    v_row ops.workspace_members;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    if add_member.role is null or add_member.role not in ('viewer', 'developer', 'admin', 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'role must be one of viewer, developer, admin, executor, got '
            || coalesce(pg_catalog.left(add_member.role, 64), 'nothing'));
    end if;
    if add_member.name is not null and length(add_member.name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be at most 200 characters');
    end if;
    -- an admin enrols only principals its workspace owns; members already here may change role.
    -- Anyone else joins by accepting an invitation (invite_member), or service_role adds it.
    if not ops_private.is_privileged()
       and not exists (select 1 from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_pr)
       and not exists (select 1 from ops.principals p
                       where p.id = v_pr and p.owner_workspace_id = v_ws and p.revoked_at is null) then
        perform ops_private.fail(403, 'forbidden',
            'this principal is not owned by the workspace: invite it (invite_member) and let it accept, '
            || 'or ask an operator (service_role) to add it',
            jsonb_build_object('argument', 'principal_id', 'reason', 'not_owned'));
    end if;
    -- lock the workspace's admins so concurrent changes cannot leave it without one
    perform 1 from ops.workspace_members m where m.workspace_id = v_ws and m.role = 'admin' for update;
    if add_member.role <> 'admin'
       and exists (select 1 from ops.workspace_members m
                   where m.workspace_id = v_ws and m.principal_id = v_pr and m.role = 'admin')
       and (select count(*) from ops.workspace_members m
            where m.workspace_id = v_ws and m.role = 'admin') = 1 then
        perform ops_private.fail(409, 'conflict', 'cannot demote the last admin of a workspace');
    end if;
    insert into ops.workspace_members as m (workspace_id, principal_id, role, name, created_at)
    values (v_ws, v_pr, add_member.role, add_member.name, ops_private.now())
    on conflict (workspace_id, principal_id)
        do update set role = excluded.role, name = coalesce(excluded.name, m.name)
    returning * into v_row;
    perform ops_private.audit('add_member', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_row.role));
    return to_jsonb(v_row);
end
$$;

create or replace function ops.revoke_principal(principal_id text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_id  uuid := ops_private.uuid_arg('principal_id', revoke_principal.principal_id, true);
    v_row ops.principals;
begin
    if not ops_private.is_privileged() then
        perform ops_private.principal();
        if ops_private.uid() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
    end if;
    select * into v_row from ops.principals p where p.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'principal not found');
    end if;
    -- an admin revokes only the principals one of its workspaces owns (others: not found)
    if not ops_private.is_privileged()
       and (v_row.owner_workspace_id is null
            or v_row.owner_workspace_id not in (select ops_private.admin_workspaces())) then
        perform ops_private.fail(404, 'not_found', 'principal not found');
    end if;
    if v_row.revoked_at is null then
        update ops.principals p set revoked_at = ops_private.now(), revoked_by = ops_private.uid()
        where p.id = v_id
        returning * into v_row;
        perform ops_private.audit('revoke_principal', m.workspace_id, 'principal', v_id::text, '{}'::jsonb)
        from ops.workspace_members m where m.principal_id = v_id;
        if not found then
            perform ops_private.audit('revoke_principal', v_row.owner_workspace_id, 'principal', v_id::text,
                                      '{}'::jsonb);
        end if;
        -- its pending invitations go with it
        delete from ops.invitations i where i.principal_id = v_id and i.accepted_at is null;
    end if;
    return to_jsonb(v_row);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- invitations
-- ---------------------------------------------------------------------------------------------
create function ops_private.invitation_json(i ops.invitations, p_now timestamptz)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'workspace_id', i.workspace_id, 'principal_id', i.principal_id, 'role', i.role, 'name', i.name,
        'invited_by', i.invited_by, 'created_at', i.created_at, 'expires_at', i.expires_at,
        'accepted_at', i.accepted_at,
        'state', case when i.accepted_at is not null then 'accepted'
                      when i.expires_at <= p_now then 'expired' else 'pending' end)
$$;

-- An admin invites a principal it does not own (a user of the installation, a Supabase Auth
-- user, a principal of another workspace); it joins only when it accepts. Inviting again
-- renews the invitation (role, name, expiry).
create function ops.invite_member(workspace_id text, principal_id text, role text, name text default null,
                                  expires_in_seconds integer default 604800)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', invite_member.workspace_id, true);
    v_pr  uuid := ops_private.uuid_arg('principal_id', invite_member.principal_id, true);
    v_now timestamptz := ops_private.now();
    v_row ops.invitations;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    if invite_member.role is null or invite_member.role not in ('viewer', 'developer', 'admin') then
        perform ops_private.fail(400, 'invalid_argument',
            'role must be one of viewer, developer, admin (executors are enrolled by their owner), got '
            || coalesce(pg_catalog.left(invite_member.role, 64), 'nothing'),
            jsonb_build_object('argument', 'role'));
    end if;
    if invite_member.name is not null and length(invite_member.name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be at most 200 characters',
                                 jsonb_build_object('argument', 'name'));
    end if;
    if invite_member.expires_in_seconds is null or invite_member.expires_in_seconds not between 60 and 2592000 then
        perform ops_private.fail(400, 'invalid_argument', 'expires_in_seconds must be between 60 and 2592000 (30 days)',
                                 jsonb_build_object('argument', 'expires_in_seconds'));
    end if;
    if exists (select 1 from ops.principals p where p.id = v_pr and p.kind = 'executor') then
        perform ops_private.fail(400, 'invalid_argument',
            'an executor cannot accept an invitation: its owner workspace''s admin or service_role enrols it',
            jsonb_build_object('argument', 'principal_id', 'reason', 'executor'));
    end if;
    if exists (select 1 from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_pr) then
        perform ops_private.fail(409, 'conflict', 'the principal is already a member: change its role with add_member',
                                 jsonb_build_object('argument', 'principal_id'));
    end if;
    insert into ops.invitations as i (workspace_id, principal_id, role, name, invited_by, created_at, expires_at)
    values (v_ws, v_pr, invite_member.role, invite_member.name, ops_private.uid(), v_now,
            v_now + pg_catalog.make_interval(secs => invite_member.expires_in_seconds))
    on conflict (workspace_id, principal_id) do update
        set role = excluded.role, name = excluded.name, invited_by = excluded.invited_by,
            created_at = excluded.created_at, expires_at = excluded.expires_at, accepted_at = null
    returning * into v_row;
    perform ops_private.audit('invite_member', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_row.role, 'expires_at', v_row.expires_at));
    return ops_private.invitation_json(v_row, v_now);
end
$$;

-- The invitee itself accepts: it becomes a member with the invited role.
create function ops.accept_invitation(workspace_id text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', accept_invitation.workspace_id, true);
    v_uid uuid := ops_private.principal();
    v_now timestamptz := ops_private.now();
    v_inv ops.invitations;
    v_row ops.workspace_members;
begin
    if ops_private.is_privileged() then
        perform ops_private.fail(403, 'forbidden', 'the invitee accepts its invitation itself, with its own token',
                                 jsonb_build_object('reason', 'invitee_only'));
    end if;
    if v_uid is null then
        perform ops_private.fail(401, 'unauthorized',
            'this call needs an authenticated principal (a JWT with sub): the invitee accepts itself');
    end if;
    if exists (select 1 from ops.principals p where p.id = v_uid and p.kind = 'executor')
       or ops_private.token_pins() is not null then
        perform ops_private.fail(403, 'forbidden', 'an executor cannot accept an invitation',
                                 jsonb_build_object('reason', 'executor'));
    end if;
    select * into v_inv from ops.invitations i
    where i.workspace_id = v_ws and i.principal_id = v_uid and i.accepted_at is null and i.expires_at > v_now
    for update;
    if v_inv.workspace_id is null then
        perform ops_private.fail(404, 'not_found', 'no pending invitation to this workspace');
    end if;
    insert into ops.workspace_members as m (workspace_id, principal_id, role, name, created_at)
    values (v_ws, v_uid, v_inv.role, v_inv.name, v_now)
    on conflict (workspace_id, principal_id) do nothing
    returning * into v_row;
    if v_row.workspace_id is null then
        select * into v_row from ops.workspace_members m where m.workspace_id = v_ws and m.principal_id = v_uid;
    end if;
    update ops.invitations i set accepted_at = v_now
    where i.workspace_id = v_ws and i.principal_id = v_uid;
    perform ops_private.audit('accept_invitation', v_ws, 'principal', v_uid::text,
                              jsonb_build_object('role', v_row.role, 'invited_by', v_inv.invited_by));
    return to_jsonb(v_row);
end
$$;

create function ops.revoke_invitation(workspace_id text, principal_id text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', revoke_invitation.workspace_id, true);
    v_pr  uuid := ops_private.uuid_arg('principal_id', revoke_invitation.principal_id, true);
    v_row ops.invitations;
begin
    if not exists (select 1 from ops.workspaces w where w.id = v_ws) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    perform ops_private.require_role(v_ws, array['admin'], true);
    delete from ops.invitations i
    where i.workspace_id = v_ws and i.principal_id = v_pr and i.accepted_at is null
    returning * into v_row;
    if v_row.workspace_id is null then
        perform ops_private.fail(404, 'not_found', 'no pending invitation for this principal');
    end if;
    perform ops_private.audit('revoke_invitation', v_ws, 'principal', v_pr::text,
                              jsonb_build_object('role', v_row.role));
    return jsonb_build_object('workspace_id', v_ws, 'principal_id', v_pr, 'revoked', true);
end
$$;

-- Read: the workspace's invitations for its admins (pending, expired and accepted ones).
create function ops.list_invitations(workspace_id text)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', list_invitations.workspace_id, true);
    v_now timestamptz := ops_private.now();
begin
    if not (ops_private.is_privileged() or v_ws in (select ops_private.admin_workspaces())) then
        perform ops_private.fail(404, 'not_found', 'workspace not found');
    end if;
    return (select coalesce(pg_catalog.jsonb_agg(ops_private.invitation_json(i, v_now)
                                                 order by i.created_at desc, i.principal_id), '[]'::jsonb)
            from ops.invitations i where i.workspace_id = v_ws);
end
$$;

-- ---------------------------------------------------------------------------------------------
-- claim_phase: only inside the token's pinned workspaces; events name the executor
-- ---------------------------------------------------------------------------------------------
-- (the claim path's queries are the baseline's: the pins only narrow the workspace list)
create or replace function ops.claim_phase(kinds text[] default null, lease_seconds integer default 60,
                                claim_id text default null, run_id text default null,
                                workspace_id text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
-- Bitmap scans never mark dead index entries, so with them every claim would revisit each
-- phase claimed since the last vacuum; ordered index scans stop at the first live entry.
set enable_bitmapscan = off
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := ops_private.now();
    v_uid      uuid := ops_private.principal();
    v_claim    uuid := ops_private.uuid_arg('claim_id', claim_phase.claim_id);
    v_run      uuid := ops_private.uuid_arg('run_id', claim_phase.run_id);
    v_wsid     uuid := ops_private.uuid_arg('workspace_id', claim_phase.workspace_id);
    v_kinds    text[] := claim_phase.kinds;
    v_ws       uuid[];          -- workspaces the caller may claim in; null means any
    v_pins     uuid[];          -- the workspaces the caller's token is pinned to
    v_p        ops.phases;
    v_r        ops.runs;
    v_expired  boolean;
    v_held_run boolean := false; -- this transaction holds a run lock: take further ones with SKIP LOCKED
    v_skip     uuid[] := '{}';   -- phases tried (and locked) by this call
    v_busy     uuid[] := '{}';   -- runs whose row another transaction holds: look elsewhere first
    v_fallback ops.phases;       -- a phase of a busy run, claimed by waiting if nothing else is free
    v_fallback_expired boolean;
    v_i        integer := 0;
begin
    if claim_phase.lease_seconds is null or claim_phase.lease_seconds not between 1 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 1 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    if v_kinds is not null then
        if cardinality(v_kinds) = 0 or cardinality(v_kinds) > 100
           or exists (select 1 from unnest(v_kinds) k where k is null or k !~ '^[a-z][a-z0-9_]{0,63}$') then
            perform ops_private.fail(400, 'invalid_argument',
                'kinds must be a non-empty list of at most 100 kind names such as python or sql',
                jsonb_build_object('argument', 'kinds'));
        end if;
    end if;

    if ops_private.is_privileged() then
        if v_wsid is not null then
            v_ws := array[v_wsid];
        end if;
    else
        if v_uid is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        -- an executor token is pinned to its workspaces when minted: claims never leave them,
        -- whatever memberships appear later
        v_pins := ops_private.token_pins();
        if v_pins is null then
            perform ops_private.fail(403, 'forbidden',
                'this token is not pinned to workspaces (JWT claim workspaces): mint an executor token with '
                || 'control-room token create --role executor --workspace <slug>',
                jsonb_build_object('reason', 'token_not_pinned'));
        end if;
        if v_wsid is not null and not (v_wsid = any (v_pins)) then
            perform ops_private.fail(403, 'forbidden',
                'workspace ' || v_wsid::text || ' is not one this token is pinned to',
                jsonb_build_object('argument', 'workspace_id', 'reason', 'workspace_not_pinned'));
        end if;
        v_ws := array(select m.workspace_id from ops.workspace_members m
                      where m.principal_id = v_uid and m.role = 'executor' and m.workspace_id = any (v_pins));
        if v_wsid is not null then
            if not (v_wsid = any (v_ws)) then
                perform ops_private.fail(403, 'forbidden', 'caller is not an executor in workspace ' || v_wsid::text);
            end if;
            v_ws := array[v_wsid];
        end if;
        if cardinality(v_ws) = 0 then
            perform ops_private.fail(403, 'forbidden',
                'caller is not an executor in any workspace its token is pinned to');
        end if;
    end if;
    if v_run is not null and not exists (select 1 from ops.runs r where r.id = v_run
                                         and (v_ws is null or r.workspace_id = any (v_ws))) then
        perform ops_private.fail(404, 'not_found', 'run not found');
    end if;

    -- a repeated call with the same claim_id gets the same phase and lease back; concurrent
    -- calls with one claim_id queue on it (this lock is taken before any row lock)
    if v_claim is not null then
        perform pg_advisory_xact_lock(
            ('x' || left(replace(v_claim::text, '-', ''), 16))::bit(64)::bigint);
        select * into v_p from ops.phases p where p.claim_id = v_claim and p.state = 'running';
        if v_p.id is not null then
            if v_p.claimed_by is distinct from v_uid and not ops_private.is_privileged() then
                perform ops_private.fail(409, 'conflict', 'claim_id is in use by another principal');
            end if;
            select * into v_r from ops.runs r where r.id = v_p.run_id;
            return ops_private.claim_json(v_p, v_r);
        end if;
    end if;

    -- Claims of one run serialize on its row (its events are numbered under it), so a claim
    -- first looks for work in runs nobody else holds, and waits for a busy run only when
    -- there is nothing else.
    loop
        v_i := v_i + 1;
        v_p := null;
        if v_i <= 20 then
            -- 1. a running phase whose lease expired (its holder is presumed dead)
            select * into v_p from ops.phases p
            where p.state = 'running' and p.lease_expires_at <= v_now
              and (v_kinds is null or p.kind = any (v_kinds))
              and (v_ws is null or p.workspace_id = any (v_ws))
              and (v_run is null or p.run_id = v_run)
              and p.id <> all (v_skip) and p.run_id <> all (v_busy)
            order by p.lease_expires_at
            limit 1
            for update skip locked;
            v_expired := v_p.id is not null;
            -- 2. else the best queued phase: priority, then age
            if not v_expired then
                select * into v_p from ops.phases p
                where p.state = 'queued' and p.not_before <= v_now
                  and (v_kinds is null or p.kind = any (v_kinds))
                  and (v_ws is null or p.workspace_id = any (v_ws))
                  and (v_run is null or p.run_id = v_run)
                  and p.id <> all (v_skip) and p.run_id <> all (v_busy)
                order by p.priority desc, p.queued_at, p.ordinal, p.id
                limit 1
                for update skip locked;
            end if;
        end if;

        if v_p.id is null then
            if v_fallback.id is null or v_held_run then
                return null;
            end if;
            v_p := v_fallback;
            v_expired := v_fallback_expired;
            v_fallback := null;
            select * into v_r from ops.runs r where r.id = v_p.run_id for update;
        else
            v_skip := v_skip || v_p.id;
            select * into v_r from ops.runs r where r.id = v_p.run_id for update skip locked;
            if v_r.id is null then
                if not v_held_run then
                    v_busy := v_busy || v_p.run_id;
                    if v_fallback.id is null then
                        v_fallback := v_p;
                        v_fallback_expired := v_expired;
                    end if;
                end if;
                continue;
            end if;
        end if;
        v_held_run := true;

        if v_r.state not in ('queued', 'running') then
            -- the run finished while this phase was locked by us: settle it (protocol rule 3)
            if v_p.state = 'running' and v_r.state = 'cancelled' then
                perform ops_private.move_phase(v_p.id, 'cancelled', v_now, 'revoke');
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CANCELLED',
                                         'info', 'cancelled with the run (its lease had expired)', '{}'::jsonb, v_now);
            elsif v_p.state = 'running' then
                perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED',
                    'warning', 'lease expired after the run had finished',
                    jsonb_build_object('attempt', v_p.attempt, 'lease_expires_at', v_p.lease_expires_at), v_now);
                -- the dead holder's token must not pass for a completion replay
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired', 'reason', 'lease_expired'), true, v_now,
                    'revoke');
            else
                perform ops_private.settle_run(v_r, v_now);
            end if;
            continue;
        end if;

        if v_expired then
            perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'LEASE_EXPIRED', 'warning',
                'lease expired: attempt ' || v_p.attempt || ' counted as failed',
                jsonb_build_object('attempt', v_p.attempt, 'max_attempts', v_p.max_attempts,
                                   'lease_expires_at', v_p.lease_expires_at,
                                   'claimed_by', ops_private.principal_name(v_p.workspace_id, v_p.claimed_by)),
                v_now);
            if v_p.attempt >= v_p.max_attempts then
                perform ops_private.fail_phase_final(v_p.id, v_r,
                    jsonb_build_object('message', 'lease expired on the last attempt', 'reason', 'lease_expired'),
                    true, v_now, 'revoke');
                continue;
            end if;
        end if;

        v_p := ops_private.move_phase(v_p.id, 'running', v_now, p_lease_seconds => claim_phase.lease_seconds,
                                      p_claim_id => v_claim, p_claimed_by => v_uid);
        if v_r.state = 'queued' then
            update ops.runs r set state = 'running', started_at = v_now, updated_at = v_now
            where r.id = v_r.id
            returning * into v_r;
        end if;
        perform ops_private.emit(v_r.id, v_r.workspace_id, v_p.name, v_p.attempt, 'PHASE_CLAIMED', 'info',
            'claimed, attempt ' || v_p.attempt || ' of ' || v_p.max_attempts,
            jsonb_build_object('attempt', v_p.attempt,
                               'claimed_by', ops_private.principal_name(v_p.workspace_id, v_uid),
                               'lease_expires_at', v_p.lease_expires_at, 'kind', v_p.kind), v_now);
        perform ops_private.audit('claim_phase', v_p.workspace_id, 'phase', v_p.id::text,
                                  jsonb_build_object('run_id', v_p.run_id, 'phase', v_p.name, 'attempt', v_p.attempt));
        return ops_private.claim_json(v_p, v_r);
    end loop;
    return null;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- grants
-- ---------------------------------------------------------------------------------------------
revoke execute on function ops.create_principal(text, text, text), ops.invite_member(text, text, text, text, integer),
                           ops.accept_invitation(text), ops.revoke_invitation(text, text),
                           ops.list_invitations(text)
    from public, anon;
grant execute on function ops.create_principal(text, text, text), ops.invite_member(text, text, text, text, integer),
                          ops.accept_invitation(text), ops.revoke_invitation(text, text),
                          ops.list_invitations(text)
    to authenticated, service_role;
revoke execute on function ops_private.sees_principals(uuid), ops_private.run_summary_json(uuid, boolean),
                           ops_private.invitation_json(ops.invitations, timestamptz),
                           ops_private.principal_name(uuid, uuid), ops_private.token_pins()
    from public, anon;
-- called from SECURITY INVOKER reads
grant execute on function ops_private.sees_principals(uuid), ops_private.run_summary_json(uuid, boolean),
                          ops_private.invitation_json(ops.invitations, timestamptz)
    to authenticated, service_role;
