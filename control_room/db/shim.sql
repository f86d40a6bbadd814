-- The local Supabase shim: what a plain PostgreSQL lacks and a Supabase project provides.
--
-- Applied by control_room.db.migrate before the migrations, on plain PostgreSQL only (never
-- on Supabase, where these objects exist and `postgres` may not create objects in `auth`).
-- It is not a migration and is never recorded in supabase_migrations.schema_migrations.
--
-- Sources: supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql
-- and 00000000000001-auth-schema.sql; supabase/auth
-- migrations/20240624145325_recreate_auth_functions.up.sql (the auth.* helpers, verbatim).
--
-- Idempotent. Roles are cluster-wide and several databases of one cluster may run this at
-- the same time, so a role or membership created concurrently elsewhere is tolerated.

-- ---------------------------------------------------------------------------------------------
-- API roles
-- ---------------------------------------------------------------------------------------------
do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
        begin
            create role anon nologin noinherit;
        exception when duplicate_object or unique_violation then null;
        end;
    end if;
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated') then
        begin
            create role authenticated nologin noinherit;
        exception when duplicate_object or unique_violation then null;
        end;
    end if;
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
        begin
            create role service_role nologin noinherit bypassrls;
        exception when duplicate_object or unique_violation then null;
        end;
    end if;
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticator') then
        begin
            create role authenticator login noinherit;
        exception when duplicate_object or unique_violation then null;
        end;
    end if;
end
$$;

do $$
declare
    api_role text;
begin
    foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
        if not pg_catalog.pg_has_role('authenticator', api_role, 'member') then
            begin
                execute pg_catalog.format('grant %I to authenticator', api_role);
            exception when duplicate_object or unique_violation then null;
            end;
        end if;
    end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- schema extensions
-- ---------------------------------------------------------------------------------------------
create schema if not exists extensions;

do $$
begin
    if exists (select 1 from pg_catalog.pg_available_extensions where name = 'pgcrypto') then
        create extension if not exists pgcrypto with schema extensions;
    end if;
    if exists (select 1 from pg_catalog.pg_available_extensions where name = 'uuid-ossp') then
        create extension if not exists "uuid-ossp" with schema extensions;
    end if;
end
$$;

-- A server built without OpenSSL (the embedded one) has no pgcrypto. Provide its digest()
-- from the core hash functions so `extensions.digest(x, 'sha256')` works everywhere.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_extension where extname = 'pgcrypto') then
        create or replace function extensions.digest(data bytea, type text)
            returns bytea
            language plpgsql immutable strict parallel safe
            set search_path to ''
        as $func$
        begin
            case pg_catalog.lower(type)
                when 'sha224' then return pg_catalog.sha224(data);
                when 'sha256' then return pg_catalog.sha256(data);
                when 'sha384' then return pg_catalog.sha384(data);
                when 'sha512' then return pg_catalog.sha512(data);
                when 'md5' then return pg_catalog.decode(pg_catalog.md5(data), 'hex');
                else raise exception 'Cannot use "%", no such hash algorithm', type
                    using errcode = '22023';
            end case;
        end
        $func$;

        create or replace function extensions.digest(data text, type text)
            returns bytea
            language sql immutable strict parallel safe
            set search_path to ''
        as $func$
            select extensions.digest(pg_catalog.convert_to(data, 'UTF8'), type)
        $func$;
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- schema auth and its helpers (as supabase/auth defines them)
-- ---------------------------------------------------------------------------------------------
create schema if not exists auth;

create or replace function auth.uid()
    returns uuid
    set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.sub', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$func$ language sql stable;

create or replace function auth.role()
    returns text
    set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.role', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$func$ language sql stable;

create or replace function auth.email()
    returns text
    set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.email', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
    )::text
$func$ language sql stable;

create or replace function auth.jwt()
    returns jsonb
    set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim', true), ''),
      nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$func$ language sql stable;

-- ---------------------------------------------------------------------------------------------
-- grants
-- ---------------------------------------------------------------------------------------------
grant usage on schema public, extensions, auth to anon, authenticated, service_role;
grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
    to anon, authenticated, service_role;

-- Supabase creates this publication; migrations may add tables to it for Realtime.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_publication where pubname = 'supabase_realtime')
    then
        create publication supabase_realtime;
    end if;
exception when insufficient_privilege or duplicate_object then null;
end
$$;
