-- People who sign in (issue 13, "People and sign-in"): local users of the installation with
-- argon2id password hashes, sign-in sessions with rotating refresh tokens, failed sign-ins
-- counted in the database (rate limits that hold across gateways), and the audit log readable
-- by workspace admins (ops.list_audit).
--   1. ops_private.auth_users: a user principal's (ops.principals, kind user) email (lowercased,
--      unique), argon2id hash and disabled flag. ops_private.auth_sessions: one per sign-in;
--      ends when revoked (logout, refresh-token reuse, disabling, a password change) or after
--      the session TTL without a refresh. ops_private.auth_refresh_tokens: only SHA-256 hashes
--      of the tokens, each used once (a refresh rotates it). ops_private.auth_failures: failed
--      sign-ins (email, client IP, when) for the rate limits. None is readable by an API role.
--   2. ops_private.auth_*: what the gateway's /auth/v1 endpoints call (as service_role) and
--      what `control-room users` calls (the operator's own login). Hashing and verifying are
--      the gateway's (Python, argon2-cffi): no password ever reaches the database.
--   3. ops_private.pre_request() also refuses a token whose `session_id` claim names a session
--      of ours that has ended: signing out is immediate. A session id we do not know (a
--      Supabase Auth token) is not ours to judge.
--   4. ops.list_audit(workspace_id, before, limit, function_name, principal_id).
-- Audit rows of sign-in events: one per workspace the principal belongs to (workspace_id null
-- when none, and for failures with an unknown email); never a password. docs/auth.md.

-- ---------------------------------------------------------------------------------------------
-- 1. tables
-- ---------------------------------------------------------------------------------------------
create table ops_private.auth_users (
    principal_id        uuid primary key references ops.principals (id) on delete cascade,
    email               text not null unique
                        check (email = pg_catalog.lower(email) and length(email) between 3 and 320
                               and email ~ '^[^@\s]+@[^@\s]+$'),
    password_hash       text not null check (password_hash like '$argon2id$%'),
    disabled_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    password_changed_at timestamptz not null default now(),
    last_sign_in_at     timestamptz
);
comment on table ops_private.auth_users is
    'Credentials of local users (principals of kind user): lowercased email, argon2id hash, disabled flag.';

create table ops_private.auth_sessions (
    id             uuid primary key default gen_random_uuid(),
    principal_id   uuid not null references ops_private.auth_users (principal_id) on delete cascade,
    created_at     timestamptz not null,
    refreshed_at   timestamptz not null,
    expires_at     timestamptz not null,
    revoked_at     timestamptz,
    revoked_reason text,
    ip             text,
    user_agent     text check (length(user_agent) <= 512)
);
create index auth_sessions_principal_idx on ops_private.auth_sessions (principal_id) where revoked_at is null;
comment on table ops_private.auth_sessions is
    'Sign-in sessions; the access tokens carry the id (claim session_id). Ended: revoked, or expires_at passed.';

create table ops_private.auth_refresh_tokens (
    id          bigint generated always as identity primary key,
    token_hash  bytea not null unique check (length(token_hash) = 32),
    session_id  uuid not null references ops_private.auth_sessions (id) on delete cascade,
    parent_id   bigint,
    created_at  timestamptz not null,
    used_at     timestamptz
);
create index auth_refresh_tokens_session_idx on ops_private.auth_refresh_tokens (session_id);
comment on table ops_private.auth_refresh_tokens is
    'Refresh tokens as SHA-256 hashes; each is used once (used_at), its use issues the next one.';

create table ops_private.auth_failures (
    id     bigint generated always as identity primary key,
    at     timestamptz not null,
    email  text not null,
    ip     text not null
);
create index auth_failures_email_idx on ops_private.auth_failures (email, at);
create index auth_failures_ip_idx on ops_private.auth_failures (ip, at);
create index auth_failures_at_idx on ops_private.auth_failures (at);
comment on table ops_private.auth_failures is
    'Failed sign-ins (never the password tried), counted for the rate limits; pruned after a day.';

revoke all on ops_private.auth_users, ops_private.auth_sessions, ops_private.auth_refresh_tokens,
              ops_private.auth_failures from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- 2. helpers
-- ---------------------------------------------------------------------------------------------
-- An email as stored: trimmed, lowercased.
create function ops_private.auth_email(p_email text)
returns text
language sql immutable
as $$
    select pg_catalog.lower(pg_catalog.btrim(p_email))
$$;

-- The user object of /auth/v1 (GoTrue's shape).
create function ops_private.auth_user_json(p_principal uuid)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', u.principal_id, 'aud', 'authenticated', 'role', 'authenticated',
        'email', u.email, 'email_confirmed_at', u.created_at, 'phone', '',
        'created_at', u.created_at, 'updated_at', u.updated_at,
        'last_sign_in_at', u.last_sign_in_at,
        'app_metadata', pg_catalog.jsonb_build_object('provider', 'email', 'providers',
                                                      pg_catalog.jsonb_build_array('email')),
        'user_metadata', pg_catalog.jsonb_build_object('name', p.name),
        'identities', '[]'::jsonb, 'is_anonymous', false)
    from ops_private.auth_users u join ops.principals p on p.id = u.principal_id
    where u.principal_id = p_principal
$$;

-- One audit row per workspace the user `p_subject` belongs to (workspace_id null when none, or
-- when the user is unknown), by `p_actor` (the user itself when it signs in or out; the
-- operator, ops_private.uid(), when `control-room users` changes it).
create function ops_private.auth_audit(p_actor uuid, p_subject uuid, p_function text, p_details jsonb)
returns void
language plpgsql
as $$
declare
    v_now  timestamptz := ops_private.now();
    v_role text := coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text);
begin
    insert into ops.audit_log (at, principal_id, db_role, function_name, workspace_id, target_type,
                               target_id, details)
    select v_now, p_actor, v_role, p_function, w.workspace_id, 'user', p_subject::text,
           coalesce(p_details, '{}'::jsonb)
    from (select m.workspace_id from ops.workspace_members m
          where p_subject is not null and m.principal_id = p_subject
          union all
          select null::uuid
          where p_subject is null
             or not exists (select 1 from ops.workspace_members m where m.principal_id = p_subject)) w;
end
$$;

-- Revoke sessions of a principal (all, or all but one); returns how many.
create function ops_private.auth_revoke_sessions(p_principal uuid, p_reason text, p_except uuid default null)
returns integer
language plpgsql
as $$
declare
    v_count integer;
begin
    update ops_private.auth_sessions s set revoked_at = ops_private.now(), revoked_reason = p_reason
    where s.principal_id = p_principal and s.revoked_at is null
      and (p_except is null or s.id <> p_except);
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- what the gateway calls (as service_role)
-- ---------------------------------------------------------------------------------------------
-- Step 1 of a password sign-in: refuse (429, details.retry_after) when the email or the client
-- IP has failed too often within the window; else the stored hash to verify against (null
-- principal_id: no such email; the gateway then verifies against a dummy hash all the same).
create function ops_private.auth_signin_lookup(p_email text, p_ip text, p_window_seconds integer,
                                               p_max_per_email integer, p_max_per_ip integer)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
    v_email text := ops_private.auth_email(p_email);
    v_now   timestamptz := ops_private.now();
    v_since timestamptz := v_now - pg_catalog.make_interval(secs => p_window_seconds);
    v_at    timestamptz;
    v_user  ops_private.auth_users;
begin
    -- the failure whose ageing out brings the count under the limit
    select f.at into v_at from ops_private.auth_failures f
    where f.email = v_email and f.at > v_since
    order by f.at desc offset greatest(p_max_per_email - 1, 0) limit 1;
    if v_at is null then
        select f.at into v_at from ops_private.auth_failures f
        where f.ip = p_ip and f.at > v_since
        order by f.at desc offset greatest(p_max_per_ip - 1, 0) limit 1;
    end if;
    if v_at is not null then
        perform ops_private.fail(429, 'over_request_rate_limit',
            'too many failed sign-ins: try again later',
            pg_catalog.jsonb_build_object('retry_after', greatest(1, pg_catalog.ceil(
                extract(epoch from (v_at + pg_catalog.make_interval(secs => p_window_seconds) - v_now)))::integer)));
    end if;
    select * into v_user from ops_private.auth_users u where u.email = v_email;
    if not found then
        return pg_catalog.jsonb_build_object('principal_id', null, 'password_hash', null, 'disabled', false);
    end if;
    return pg_catalog.jsonb_build_object(
        'principal_id', v_user.principal_id, 'password_hash', v_user.password_hash,
        'disabled', v_user.disabled_at is not null
                    or exists (select 1 from ops.principals p
                               where p.id = v_user.principal_id and p.revoked_at is not null));
end
$$;

-- A failed sign-in: counted for the rate limits and audited (reason: wrong_password, disabled
-- or unknown_email; never the password tried).
create function ops_private.auth_signin_failed(p_email text, p_ip text, p_principal uuid, p_reason text)
returns void
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_email text := pg_catalog.left(ops_private.auth_email(p_email), 320);
    v_now   timestamptz := ops_private.now();
begin
    delete from ops_private.auth_failures f where f.at < v_now - interval '1 day';
    insert into ops_private.auth_failures (at, email, ip) values (v_now, v_email, p_ip);
    perform ops_private.auth_audit(p_principal, p_principal, 'auth.signin_failed',
        pg_catalog.jsonb_build_object('email', v_email, 'ip', p_ip, 'reason', p_reason));
end
$$;

-- A verified sign-in: a new session and its first refresh token (the gateway made the token and
-- sends its SHA-256, hex); `p_rehash`, when set, replaces the stored hash (parameters upgraded).
create function ops_private.auth_signin_ok(p_principal uuid, p_ip text, p_user_agent text,
                                           p_refresh_hash text, p_session_ttl_seconds integer,
                                           p_rehash text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_now     timestamptz := ops_private.now();
    v_user    ops_private.auth_users;
    v_session uuid;
begin
    select * into v_user from ops_private.auth_users u where u.principal_id = p_principal for update;
    if not found or v_user.disabled_at is not null
       or exists (select 1 from ops.principals p where p.id = p_principal and p.revoked_at is not null) then
        perform ops_private.fail(400, 'invalid_credentials', 'Invalid login credentials');
    end if;
    update ops_private.auth_users u
       set last_sign_in_at = v_now,
           password_hash = coalesce(p_rehash, u.password_hash)
     where u.principal_id = p_principal;
    delete from ops_private.auth_failures f where f.email = v_user.email;
    insert into ops_private.auth_sessions (principal_id, created_at, refreshed_at, expires_at, ip, user_agent)
    values (p_principal, v_now, v_now, v_now + pg_catalog.make_interval(secs => p_session_ttl_seconds),
            p_ip, pg_catalog.left(p_user_agent, 512))
    returning id into v_session;
    insert into ops_private.auth_refresh_tokens (token_hash, session_id, created_at)
    values (pg_catalog.decode(p_refresh_hash, 'hex'), v_session, v_now);
    perform ops_private.auth_audit(p_principal, p_principal, 'auth.signin',
        pg_catalog.jsonb_build_object('email', v_user.email, 'ip', p_ip, 'session_id', v_session));
    return pg_catalog.jsonb_build_object('session_id', v_session, 'signed_in_at', extract(epoch from v_now)::bigint,
                                         'user', ops_private.auth_user_json(p_principal));
end
$$;

-- A refresh: the token is used once and replaced by `p_new_hash`'s. A token already used less
-- than `p_grace_seconds` ago (two tabs refreshing at once) gets another successor; used longer
-- ago, its reuse revokes the session (answer `{"error": "refresh_token_already_used"}`, not
-- raised: the revocation must commit).
create function ops_private.auth_refresh(p_hash text, p_new_hash text, p_session_ttl_seconds integer,
                                         p_grace_seconds integer, p_ip text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_now     timestamptz := ops_private.now();
    v_token   ops_private.auth_refresh_tokens;
    v_session ops_private.auth_sessions;
begin
    select * into v_token from ops_private.auth_refresh_tokens t where t.token_hash = pg_catalog.decode(p_hash, 'hex') for update;
    if not found then
        return pg_catalog.jsonb_build_object('error', 'refresh_token_not_found');
    end if;
    select * into v_session from ops_private.auth_sessions s where s.id = v_token.session_id for update;
    if v_session.revoked_at is not null or v_session.expires_at <= v_now
       or exists (select 1 from ops_private.auth_users u where u.principal_id = v_session.principal_id
                  and u.disabled_at is not null)
       or exists (select 1 from ops.principals p where p.id = v_session.principal_id
                  and p.revoked_at is not null) then
        return pg_catalog.jsonb_build_object('error', 'refresh_token_not_found');
    end if;
    if v_token.used_at is not null and v_token.used_at < v_now - pg_catalog.make_interval(secs => p_grace_seconds) then
        update ops_private.auth_sessions s set revoked_at = v_now, revoked_reason = 'refresh_token_reuse'
         where s.id = v_session.id;
        perform ops_private.auth_audit(v_session.principal_id, v_session.principal_id, 'auth.refresh_token_reuse',
            pg_catalog.jsonb_build_object('session_id', v_session.id, 'ip', p_ip,
                                          'used_at', v_token.used_at));
        return pg_catalog.jsonb_build_object('error', 'refresh_token_already_used');
    end if;
    update ops_private.auth_refresh_tokens t set used_at = coalesce(t.used_at, v_now) where t.id = v_token.id;
    insert into ops_private.auth_refresh_tokens (token_hash, session_id, parent_id, created_at)
    values (pg_catalog.decode(p_new_hash, 'hex'), v_session.id, v_token.id, v_now);
    update ops_private.auth_sessions s
       set refreshed_at = v_now, expires_at = v_now + pg_catalog.make_interval(secs => p_session_ttl_seconds)
     where s.id = v_session.id;
    return pg_catalog.jsonb_build_object('session_id', v_session.id,
                                         'signed_in_at', extract(epoch from v_session.created_at)::bigint,
                                         'user', ops_private.auth_user_json(v_session.principal_id));
end
$$;

-- /auth/v1/user: the user of a token (its session, when it names one of ours, must be live).
create function ops_private.auth_get_user(p_principal uuid, p_session uuid)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
    v_user jsonb;
begin
    if p_session is not null and exists (
            select 1 from ops_private.auth_sessions s where s.id = p_session
            and (s.revoked_at is not null or s.expires_at <= ops_private.now())) then
        return pg_catalog.jsonb_build_object('error', 'session_not_found');
    end if;
    v_user := ops_private.auth_user_json(p_principal);
    if v_user is null then
        return pg_catalog.jsonb_build_object('error', 'user_not_found');
    end if;
    return pg_catalog.jsonb_build_object('user', v_user);
end
$$;

-- /auth/v1/logout: scope local (the token's session), global (all the user's sessions) or
-- others (all but the token's).
create function ops_private.auth_logout(p_principal uuid, p_session uuid, p_scope text, p_ip text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_count integer := 0;
begin
    if p_session is not null and not exists (
            select 1 from ops_private.auth_sessions s where s.id = p_session and s.principal_id = p_principal
            and s.revoked_at is null and s.expires_at > ops_private.now()) then
        return pg_catalog.jsonb_build_object('error', 'session_not_found');
    end if;
    if p_scope = 'global' then
        v_count := ops_private.auth_revoke_sessions(p_principal, 'logout_global');
    elsif p_scope = 'others' then
        v_count := ops_private.auth_revoke_sessions(p_principal, 'logout_others', p_session);
    elsif p_session is not null then
        update ops_private.auth_sessions s set revoked_at = ops_private.now(), revoked_reason = 'logout'
         where s.id = p_session;
        v_count := 1;
    end if;
    perform ops_private.auth_audit(p_principal, p_principal, 'auth.logout',
        pg_catalog.jsonb_build_object('scope', p_scope, 'session_id', p_session, 'ip', p_ip,
                                      'sessions_revoked', v_count));
    return pg_catalog.jsonb_build_object('sessions_revoked', v_count);
end
$$;

revoke all on function ops_private.auth_signin_lookup(text, text, integer, integer, integer),
                       ops_private.auth_signin_failed(text, text, uuid, text),
                       ops_private.auth_signin_ok(uuid, text, text, text, integer, text),
                       ops_private.auth_refresh(text, text, integer, integer, text),
                       ops_private.auth_get_user(uuid, uuid),
                       ops_private.auth_logout(uuid, uuid, text, text)
    from public, anon, authenticated;
grant execute on function ops_private.auth_signin_lookup(text, text, integer, integer, integer),
                          ops_private.auth_signin_failed(text, text, uuid, text),
                          ops_private.auth_signin_ok(uuid, text, text, text, integer, text),
                          ops_private.auth_refresh(text, text, integer, integer, text),
                          ops_private.auth_get_user(uuid, uuid),
                          ops_private.auth_logout(uuid, uuid, text, text)
    to service_role;

-- ---------------------------------------------------------------------------------------------
-- what `control-room users` calls (the operator's own login; no API role may)
-- ---------------------------------------------------------------------------------------------
create function ops_private.auth_create_user(p_email text, p_name text, p_password_hash text)
returns uuid
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_email text := ops_private.auth_email(p_email);
    v_id    uuid;
begin
    if v_email is null or length(v_email) not between 3 and 320 or v_email !~ '^[^@\s]+@[^@\s]+$' then
        perform ops_private.fail(400, 'invalid_argument', 'email must look like name@host',
                                 pg_catalog.jsonb_build_object('argument', 'email'));
    end if;
    if exists (select 1 from ops_private.auth_users u where u.email = v_email) then
        perform ops_private.fail(409, 'conflict', 'a user with email ' || v_email || ' already exists',
                                 pg_catalog.jsonb_build_object('argument', 'email'));
    end if;
    if p_name is null or length(p_name) not between 1 and 200 then
        perform ops_private.fail(400, 'invalid_argument', 'name must be 1-200 characters',
                                 pg_catalog.jsonb_build_object('argument', 'name'));
    end if;
    insert into ops.principals (kind, name, created_by, created_at)
    values ('user', p_name, ops_private.uid(), ops_private.now())
    returning id into v_id;
    insert into ops_private.auth_users (principal_id, email, password_hash, created_at, updated_at,
                                        password_changed_at)
    values (v_id, v_email, p_password_hash, ops_private.now(), ops_private.now(), ops_private.now());
    perform ops_private.auth_audit(ops_private.uid(), v_id, 'auth.create_user',
                                   pg_catalog.jsonb_build_object('email', v_email, 'name', p_name));
    return v_id;
end
$$;

-- The principal of an email (null: none).
create function ops_private.auth_user_id(p_email text)
returns uuid
language sql stable security definer
set search_path = ''
as $$
    select u.principal_id from ops_private.auth_users u where u.email = ops_private.auth_email(p_email)
$$;

-- A new password (hash): every session of the user ends.
create function ops_private.auth_set_password(p_email text, p_password_hash text)
returns uuid
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_id uuid := ops_private.auth_user_id(p_email);
begin
    if v_id is null then
        perform ops_private.fail(404, 'not_found', 'no user with email ' || ops_private.auth_email(p_email));
    end if;
    update ops_private.auth_users u
       set password_hash = p_password_hash, password_changed_at = ops_private.now(),
           updated_at = ops_private.now()
     where u.principal_id = v_id;
    perform ops_private.auth_audit(ops_private.uid(), v_id, 'auth.password_change', pg_catalog.jsonb_build_object(
        'email', ops_private.auth_email(p_email),
        'sessions_revoked', ops_private.auth_revoke_sessions(v_id, 'password_change')));
    return v_id;
end
$$;

-- Disable a user: it cannot sign in or refresh, and its sessions end now.
create function ops_private.auth_disable_user(p_email text)
returns uuid
language plpgsql volatile security definer
set search_path = ''
as $$
declare
    v_id uuid := ops_private.auth_user_id(p_email);
begin
    if v_id is null then
        perform ops_private.fail(404, 'not_found', 'no user with email ' || ops_private.auth_email(p_email));
    end if;
    update ops_private.auth_users u
       set disabled_at = coalesce(u.disabled_at, ops_private.now()), updated_at = ops_private.now()
     where u.principal_id = v_id;
    perform ops_private.auth_audit(ops_private.uid(), v_id, 'auth.disable_user', pg_catalog.jsonb_build_object(
        'email', ops_private.auth_email(p_email),
        'sessions_revoked', ops_private.auth_revoke_sessions(v_id, 'disabled')));
    return v_id;
end
$$;

-- Every local user with its workspaces (no hash).
create function ops_private.auth_list_users()
returns jsonb
language sql stable security definer
set search_path = ''
as $$
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', u.principal_id, 'email', u.email, 'name', p.name,
               'disabled', u.disabled_at is not null, 'revoked', p.revoked_at is not null,
               'created_at', u.created_at, 'last_sign_in_at', u.last_sign_in_at,
               'memberships', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                        'workspace_id', w.id, 'slug', w.slug, 'role', m.role)
                                        order by w.slug), '[]'::jsonb)
                               from ops.workspace_members m join ops.workspaces w on w.id = m.workspace_id
                               where m.principal_id = u.principal_id))
               order by u.email), '[]'::jsonb)
    from ops_private.auth_users u join ops.principals p on p.id = u.principal_id
$$;

revoke all on function ops_private.auth_create_user(text, text, text),
                       ops_private.auth_user_id(text),
                       ops_private.auth_set_password(text, text),
                       ops_private.auth_disable_user(text),
                       ops_private.auth_list_users()
    from public, anon, authenticated, service_role;
revoke all on function ops_private.auth_email(text), ops_private.auth_user_json(uuid),
                       ops_private.auth_audit(uuid, uuid, text, jsonb),
                       ops_private.auth_revoke_sessions(uuid, text, uuid)
    from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- 3. pre_request: the revoked, and the tokens of ended sessions, are refused on every call
-- ---------------------------------------------------------------------------------------------
create or replace function ops_private.pre_request()
returns void
language plpgsql stable security definer
set search_path = ''
as $$
declare
    v_claims jsonb := nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb;
    v_sub    text := coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                              v_claims ->> 'sub');
    v_sid    text := case when pg_catalog.jsonb_typeof(v_claims) = 'object' then v_claims ->> 'session_id' end;
begin
    if v_sub is not null
       and v_sub ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
       and exists (select 1 from ops.principals p where p.id = v_sub::uuid and p.revoked_at is not null) then
        perform ops_private.fail(401, 'unauthorized', 'principal ' || v_sub || ' has been revoked');
    end if;
    if v_sid is not null
       and v_sid ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
       and exists (select 1 from ops_private.auth_sessions s where s.id = v_sid::uuid
                   and (s.revoked_at is not null or s.expires_at <= ops_private.now())) then
        perform ops_private.fail(401, 'unauthorized', 'the session has ended (signed out or expired): sign in again');
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. ops.list_audit: who did what, when, on what (admins of the workspace)
-- ---------------------------------------------------------------------------------------------
create function ops.list_audit(workspace_id text, before bigint default null, "limit" integer default 100,
                               function_name text default null, principal_id text default null)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws        uuid := ops_private.uuid_arg('workspace_id', list_audit.workspace_id, true);
    v_principal uuid := ops_private.uuid_arg('principal_id', list_audit.principal_id);
    v_limit     integer := list_audit."limit";
    v_entries   jsonb;
    v_count     integer;
    v_last      bigint;
begin
    if not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        if v_ws not in (select ops_private.admin_workspaces()) then
            perform ops_private.fail(403, 'forbidden', 'the audit log is for the workspace''s admins');
        end if;
    end if;
    if v_limit is null or v_limit not between 1 and 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 1000',
                                 pg_catalog.jsonb_build_object('argument', 'limit'));
    end if;
    if list_audit.function_name is not null and length(list_audit.function_name) > 200 then
        perform ops_private.fail(400, 'invalid_argument', 'function_name is at most 200 characters',
                                 pg_catalog.jsonb_build_object('argument', 'function_name'));
    end if;
    select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', a.id, 'at', a.at,
               'actor', case when a.principal_id is null then null else pg_catalog.jsonb_build_object(
                   'id', a.principal_id,
                   'name', ops_private.principal_name(v_ws, a.principal_id),
                   'email', (select u.email from ops_private.auth_users u where u.principal_id = a.principal_id))
               end,
               'db_role', a.db_role, 'function_name', a.function_name, 'target_type', a.target_type,
               'target_id', a.target_id, 'details', a.details) order by a.id desc), '[]'::jsonb),
           pg_catalog.count(*), pg_catalog.min(a.id)
      into v_entries, v_count, v_last
      from (select * from ops.audit_log a
            where a.workspace_id = v_ws
              and (list_audit.before is null or a.id < list_audit.before)
              and (list_audit.function_name is null or a.function_name = list_audit.function_name)
              and (v_principal is null or a.principal_id = v_principal)
            order by a.id desc limit v_limit) a;
    return pg_catalog.jsonb_build_object('entries', v_entries,
                                         'next_before', case when v_count = v_limit then v_last end);
end
$$;
create index audit_log_workspace_id_idx on ops.audit_log (workspace_id, id desc);
revoke all on function ops.list_audit(text, bigint, integer, text, text) from public, anon;
grant execute on function ops.list_audit(text, bigint, integer, text, text) to authenticated, service_role;
