-- Alerts (issue 11): rules per workspace sending to webhook destinations through an outbox.
--   ops.alert_destinations  where alerts go: a generic JSON webhook or a Slack incoming webhook.
--                           The URL is a secret REFERENCE (env:NAME, file:/path) resolved by the
--                           deliverer under its own CONTROL_ROOM_SECRET_ALLOW; a generic webhook may
--                           instead give a literal http(s) URL without credentials (no user:password@,
--                           no query string). Headers are references only.
--   ops.alert_rules         which events of a workspace raise an alert, to which destination.
--   ops.alerts              the outbox: one row per alert, inserted by a trigger in the SAME
--                           transaction as its cause (a rolled-back failure leaves no alert); its id is
--                           the dedupe id receivers see. Delivered at least once by `control-room
--                           alerts deliver` through claim_alerts / record_alert_delivery.
--   ops.alert_deliveries    each delivery attempt: when, HTTP status, error (capped), duration.
-- Triggers cost one indexed existence check when a workspace has no enabled rule for the event.
-- Supabase CLI rules: no BEGIN/COMMIT, explicit grants. Never edit this file once applied.

-- =============================================================================================
-- tables, row level security, grants
-- =============================================================================================
create table ops.alert_destinations (
    id           uuid primary key default gen_random_uuid(),
    workspace_id uuid not null references ops.workspaces (id),
    name         text not null check (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    type         text not null check (type in ('webhook', 'slack')),
    url          text not null check (length(url) <= 2048),
    headers      jsonb not null default '{}' check (jsonb_typeof(headers) = 'object'),
    description  text check (length(description) <= 1000),
    created_by   uuid,
    created_at   timestamptz not null default now(),
    unique (workspace_id, name),
    unique (id, workspace_id)
);
comment on table ops.alert_destinations is
    'Where alerts of a workspace go. url is a secret reference (env:NAME, file:/path) or, for a webhook, a literal URL without credentials; headers are references. Never a secret value.';

create table ops.alert_rules (
    id             uuid primary key default gen_random_uuid(),
    workspace_id   uuid not null references ops.workspaces (id),
    name           text not null check (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    event          text not null
                   check (event in ('run_failed', 'phase_dead_lettered', 'schedule_tick_failed',
                                    'lease_expiries', 'slo_breached')),
    threshold      integer check (threshold between 1 and 1000000),
    filters        jsonb not null default '{}' check (jsonb_typeof(filters) = 'object'),
    destination_id uuid not null,
    enabled        boolean not null default true,
    description    text check (length(description) <= 1000),
    created_by     uuid,
    created_at     timestamptz not null default now(),
    unique (workspace_id, name),
    foreign key (destination_id, workspace_id) references ops.alert_destinations (id, workspace_id)
);
-- the triggers' one existence check
create index alert_rules_event_idx on ops.alert_rules (workspace_id, event) where enabled;
create index alert_rules_destination_idx on ops.alert_rules (destination_id);

create table ops.alerts (
    id              uuid primary key default gen_random_uuid(),
    workspace_id    uuid not null references ops.workspaces (id),
    rule_id         uuid references ops.alert_rules (id) on delete set null,
    rule_name       text not null,
    destination_id  uuid not null,
    event           text not null,
    subject         jsonb not null default '{}',
    payload         jsonb not null default '{}',
    dedupe_key      text,
    created_at      timestamptz not null default now(),
    state           text not null default 'pending'
                    check (state in ('pending', 'delivering', 'delivered', 'failed')),
    attempts        integer not null default 0,
    max_attempts    integer not null default 8,
    next_attempt_at timestamptz not null default now(),
    lease_expires_at timestamptz,
    last_error      text check (length(last_error) <= 500),
    delivered_at    timestamptz,
    foreign key (destination_id, workspace_id) references ops.alert_destinations (id, workspace_id)
        on delete cascade,
    unique (rule_id, dedupe_key)
);
create index alerts_workspace_created_idx on ops.alerts (workspace_id, created_at desc, id desc);
create index alerts_due_idx on ops.alerts (next_attempt_at) where state = 'pending';
create index alerts_leased_idx on ops.alerts (lease_expires_at) where state = 'delivering';
create index alerts_destination_idx on ops.alerts (destination_id);

create table ops.alert_deliveries (
    alert_id     uuid not null references ops.alerts (id) on delete cascade,
    attempt      integer not null,
    workspace_id uuid not null,
    at           timestamptz not null,
    ok           boolean not null,
    http_status  integer,
    error        text check (length(error) <= 500),
    duration_ms  integer,
    primary key (alert_id, attempt)
);
create index alert_deliveries_workspace_idx on ops.alert_deliveries (workspace_id);

alter table ops.alert_destinations enable row level security;
alter table ops.alert_rules        enable row level security;
alter table ops.alerts             enable row level security;
alter table ops.alert_deliveries   enable row level security;
create policy alert_destinations_read on ops.alert_destinations for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy alert_rules_read on ops.alert_rules for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy alerts_read on ops.alerts for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));
create policy alert_deliveries_read on ops.alert_deliveries for select to authenticated
    using (workspace_id in (select ops_private.member_workspaces()));

revoke all on ops.alert_destinations, ops.alert_rules, ops.alerts, ops.alert_deliveries
    from public, anon, authenticated, service_role;
grant select on ops.alert_destinations, ops.alert_rules, ops.alerts, ops.alert_deliveries
    to authenticated, service_role;

-- =============================================================================================
-- ops_private: validation, shapes, the outbox
-- =============================================================================================

-- Whether a text is a secret reference as ops.secrets_refs stores them.
create function ops_private.is_secret_reference(p_text text)
returns boolean
language sql immutable
as $$
    select p_text ~ '^env:[A-Za-z_][A-Za-z0-9_]{0,127}$'
        or (p_text ~ '^file:/' and pg_catalog.length(p_text) <= 1029
            and pg_catalog.substr(p_text, 6) !~ '(^|/)\.\.(/|$)' and p_text !~ '[[:cntrl:]]')
$$;

create function ops_private.check_alert_name(p_what text, p_name text)
returns void
language plpgsql immutable
as $$
begin
    if p_name is null or p_name !~ '^[a-z][a-z0-9_-]{0,62}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'name must be 1-63 lower-case letters, digits, _ or -, starting with a letter, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_name, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', p_what));
    end if;
end
$$;

-- A destination's URL and headers: references (slack: always), or a literal webhook URL without
-- credentials. Error texts never echo the URL.
create function ops_private.check_alert_destination(p_type text, p_url text, p_headers jsonb)
returns void
language plpgsql immutable
as $$
declare
    v_h record;
begin
    if p_type is null or p_type not in ('webhook', 'slack') then
        perform ops_private.fail(400, 'invalid_argument',
            'type must be webhook or slack, got '
            || coalesce(pg_catalog.quote_literal(pg_catalog.left(p_type, 64)), 'nothing'),
            pg_catalog.jsonb_build_object('argument', 'type'));
    end if;
    if p_url is null or p_url = '' then
        perform ops_private.fail(400, 'invalid_argument',
            'url is required: a secret reference (env:NAME or file:/absolute/path)',
            pg_catalog.jsonb_build_object('argument', 'url'));
    end if;
    if not ops_private.is_secret_reference(p_url) then
        if p_type = 'slack' then
            perform ops_private.fail(400, 'invalid_argument',
                'url of a slack destination must be a secret reference (env:NAME or file:/absolute/path): a'
                || ' Slack incoming-webhook URL is a credential and is never stored; put it in an environment'
                || ' variable or a file the deliverer may read (its CONTROL_ROOM_SECRET_ALLOW) and name that',
                pg_catalog.jsonb_build_object('argument', 'url'));
        end if;
        if p_url !~* '^https?://' then
            perform ops_private.fail(400, 'invalid_argument',
                'url must be a secret reference (env:NAME or file:/absolute/path) or a literal http(s):// URL'
                || ' without credentials',
                pg_catalog.jsonb_build_object('argument', 'url'));
        end if;
        if pg_catalog.length(p_url) > 2048 or p_url ~ '[[:space:][:cntrl:]]'
           or p_url !~* '^https?://[^/?#@[:space:]]+(/[^?#[:space:]]*)?$' then
            perform ops_private.fail(400, 'invalid_argument',
                'url: a literal webhook URL is http(s)://host[:port][/path], at most 2048 characters, with no'
                || ' user:password@, query string or fragment; a URL carrying a credential goes in a secret'
                || ' reference (env:NAME or file:/absolute/path)',
                pg_catalog.jsonb_build_object('argument', 'url'));
        end if;
    end if;
    perform ops_private.check_object('headers', p_headers);
    perform ops_private.check_size('headers', p_headers, 8192);
    for v_h in select h.key, h.value from pg_catalog.jsonb_each(coalesce(p_headers, '{}'::jsonb)) h order by h.key loop
        if v_h.key !~ '^[A-Za-z0-9-]{1,64}$' then
            perform ops_private.fail(400, 'invalid_argument',
                'headers: a header name is 1-64 letters, digits or -, got '
                || pg_catalog.quote_literal(pg_catalog.left(v_h.key, 64)),
                pg_catalog.jsonb_build_object('argument', 'headers'));
        end if;
        if pg_catalog.jsonb_typeof(v_h.value) <> 'string' or not ops_private.is_secret_reference(v_h.value #>> '{}') then
            perform ops_private.fail(400, 'invalid_argument',
                'headers.' || v_h.key || ' must be a secret reference (env:NAME or file:/absolute/path): header'
                || ' values (tokens) are never stored',
                pg_catalog.jsonb_build_object('argument', 'headers.' || v_h.key));
        end if;
    end loop;
end
$$;

create function ops_private.alert_destination_json(d ops.alert_destinations)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', d.id, 'workspace_id', d.workspace_id, 'name', d.name, 'type', d.type,
        'url', d.url, 'headers', d.headers, 'description', d.description, 'created_at', d.created_at)
$$;

create function ops_private.alert_rule_json(r ops.alert_rules)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', r.id, 'workspace_id', r.workspace_id, 'name', r.name, 'event', r.event,
        'threshold', r.threshold, 'filters', r.filters,
        'destination', (select d.name from ops.alert_destinations d where d.id = r.destination_id),
        'enabled', r.enabled, 'description', r.description, 'created_at', r.created_at)
$$;

create function ops_private.alert_json(a ops.alerts)
returns jsonb
language sql stable
as $$
    select pg_catalog.jsonb_build_object(
        'id', a.id, 'workspace_id', a.workspace_id, 'rule', a.rule_name,
        'destination', (select d.name from ops.alert_destinations d where d.id = a.destination_id),
        'event', a.event, 'subject', a.subject, 'payload', a.payload, 'created_at', a.created_at,
        'state', a.state, 'attempts', a.attempts, 'max_attempts', a.max_attempts,
        'next_attempt_at', case when a.state in ('pending', 'delivering') then a.next_attempt_at end,
        'last_error', a.last_error, 'delivered_at', a.delivered_at,
        'deliveries', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'attempt', x.attempt, 'at', x.at, 'ok', x.ok, 'http_status', x.http_status,
                           'error', x.error, 'duration_ms', x.duration_ms) order by x.attempt), '[]'::jsonb)
                       from ops.alert_deliveries x where x.alert_id = a.id))
$$;

-- Whether a rule's filters match a run: spec_slug (equal), labels (contained in the run's),
-- job (the slug of the job the run was made from).
create function ops_private.alert_filters_match(p_filters jsonb, p_run ops.runs)
returns boolean
language plpgsql stable
as $$
declare
    v_job_id text;
    v_slug   text;
begin
    if p_filters = '{}'::jsonb then
        return true;
    end if;
    if p_filters ? 'spec_slug' and p_run.spec_slug is distinct from p_filters ->> 'spec_slug' then
        return false;
    end if;
    if p_filters ? 'labels' and not (p_run.labels @> (p_filters -> 'labels')) then
        return false;
    end if;
    if p_filters ? 'job' then
        -- ops.runs.job_version_id and ops.jobs come from the jobs migration (sorted before this one)
        v_job_id := pg_catalog.to_jsonb(p_run) ->> 'job_version_id';
        if v_job_id is null then
            return false;
        end if;
        select j.slug into v_slug
        from ops.job_versions v join ops.jobs j on j.id = v.job_id
        where v.id = v_job_id::uuid;
        if v_slug is distinct from p_filters ->> 'job' then
            return false;
        end if;
    end if;
    return true;
end
$$;

-- Insert one alert per enabled rule of (workspace, event) whose filters match (p_run null: only
-- rules without run filters... any filter of a rule not about a run is ignored). p_dedupe: one
-- alert per rule and key (lease expiries: the hour window).
create function ops_private.raise_alerts(p_workspace uuid, p_event text, p_subject jsonb, p_payload jsonb,
                                         p_run ops.runs default null, p_dedupe text default null,
                                         p_count bigint default null)
returns integer
language plpgsql
as $$
declare
    v_now timestamptz := ops_private.now();
    v_n   integer;
begin
    insert into ops.alerts (workspace_id, rule_id, rule_name, destination_id, event, subject, payload,
                            dedupe_key, created_at, next_attempt_at)
    select p_workspace, r.id, r.name, r.destination_id, p_event, p_subject,
           p_payload || pg_catalog.jsonb_build_object('rule', r.name),
           p_dedupe, v_now, v_now
    from ops.alert_rules r
    where r.workspace_id = p_workspace and r.event = p_event and r.enabled
      and (p_run.id is null or ops_private.alert_filters_match(r.filters, p_run))
      and (p_count is null or p_count >= coalesce(r.threshold, 1))
    on conflict (rule_id, dedupe_key) do nothing;
    get diagnostics v_n = row_count;
    return v_n;
end
$$;

-- An error message as an alert carries it: passwords redacted, capped at 500 characters.
create function ops_private.alert_message(p_text text)
returns text
language sql immutable
as $$
    select pg_catalog.left(ops_private.redact_passwords(pg_catalog.left(p_text, 4000)), 500)
$$;

-- The workspace's slug (payloads name it).
create function ops_private.workspace_slug(p_workspace uuid)
returns text
language sql stable
as $$
    select w.slug from ops.workspaces w where w.id = p_workspace
$$;

-- runs: state -> failed
create function ops_private.alert_run_failed()
returns trigger
language plpgsql
as $$
begin
    if not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = new.workspace_id and r.event = 'run_failed' and r.enabled) then
        return null;
    end if;
    perform ops_private.raise_alerts(new.workspace_id, 'run_failed',
        pg_catalog.jsonb_build_object('run_id', new.id),
        pg_catalog.jsonb_build_object(
            'run_id', new.id, 'workspace', ops_private.workspace_slug(new.workspace_id),
            'spec_slug', new.spec_slug, 'state', new.state, 'labels', new.labels,
            'phase', new.error ->> 'phase',
            'error', ops_private.alert_message(coalesce(new.error #>> '{error,message}', new.error ->> 'message')),
            'links', pg_catalog.jsonb_build_object('cli', 'control-room runs show ' || new.id::text)),
        new);
    return null;
end
$$;

create trigger runs_alert_failed after update of state on ops.runs
    for each row when (new.state = 'failed' and old.state is distinct from 'failed')
    execute function ops_private.alert_run_failed();

-- phases: state -> failed (a dead letter)
create function ops_private.alert_phase_dead_lettered()
returns trigger
language plpgsql
as $$
declare
    v_run ops.runs;
begin
    if not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = new.workspace_id and r.event = 'phase_dead_lettered' and r.enabled) then
        return null;
    end if;
    select * into v_run from ops.runs r where r.id = new.run_id;
    perform ops_private.raise_alerts(new.workspace_id, 'phase_dead_lettered',
        pg_catalog.jsonb_build_object('run_id', new.run_id, 'phase', new.name, 'attempt', new.attempt),
        pg_catalog.jsonb_build_object(
            'run_id', new.run_id, 'workspace', ops_private.workspace_slug(new.workspace_id),
            'spec_slug', v_run.spec_slug, 'phase', new.name, 'kind', new.kind, 'state', new.state,
            'attempt', new.attempt, 'max_attempts', new.max_attempts,
            'error', ops_private.alert_message(new.error ->> 'message'),
            'links', pg_catalog.jsonb_build_object('cli', 'control-room runs show ' || new.run_id::text)),
        v_run);
    return null;
end
$$;

-- A phase in state failed is failed for good (a retry goes back to queued, never through
-- failed): out of attempts, or a terminal error on any attempt. The same rule as
-- list_dead_letters (20261203010300_repair.sql).
create trigger phases_alert_dead_lettered after update of state on ops.phases
    for each row when (new.state = 'failed' and old.state is distinct from 'failed')
    execute function ops_private.alert_phase_dead_lettered();

-- run_events: a LEASE_EXPIRED event; the rules whose threshold the last hour's count reaches
-- fire once per clock hour.
create function ops_private.alert_lease_expiries()
returns trigger
language plpgsql
as $$
declare
    v_now   timestamptz := ops_private.now();
    v_count bigint;
begin
    if not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = new.workspace_id and r.event = 'lease_expiries' and r.enabled) then
        return null;
    end if;
    select count(*) into v_count from ops.run_events e
    where e.type = 'LEASE_EXPIRED' and e.recorded_at > v_now - interval '1 hour'
      and e.workspace_id = new.workspace_id;
    perform ops_private.raise_alerts(new.workspace_id, 'lease_expiries',
        pg_catalog.jsonb_build_object('window', pg_catalog.date_trunc('hour', v_now at time zone 'UTC')),
        pg_catalog.jsonb_build_object(
            'workspace', ops_private.workspace_slug(new.workspace_id), 'count', v_count,
            'window_minutes', 60, 'last_run_id', new.run_id, 'last_phase', new.phase,
            'links', pg_catalog.jsonb_build_object('cli', 'control-room runs show ' || new.run_id::text)),
        null, 'lease_expiries:' || pg_catalog.to_char(v_now at time zone 'UTC', 'YYYY-MM-DD"T"HH24'),
        v_count);
    return null;
end
$$;

create trigger run_events_alert_lease_expiries after insert on ops.run_events
    for each row when (new.type = 'LEASE_EXPIRED')
    execute function ops_private.alert_lease_expiries();

-- schedule ticks (ops.schedule_ticks, issue 11 schedules): a tick recorded as failed. Read through
-- to_jsonb so that only the columns named here are assumed: id, workspace_id, schedule_id,
-- scheduled_for, state, and the first of error / reason / message present.
create function ops_private.alert_schedule_tick_failed()
returns trigger
language plpgsql
as $$
declare
    v_tick jsonb := pg_catalog.to_jsonb(new);
    v_ws   uuid := (v_tick ->> 'workspace_id')::uuid;
    v_err  text;
begin
    if v_ws is null or not exists (select 1 from ops.alert_rules r
                   where r.workspace_id = v_ws and r.event = 'schedule_tick_failed' and r.enabled) then
        return null;
    end if;
    v_err := coalesce(v_tick #>> '{error,message}', v_tick ->> 'error', v_tick ->> 'reason', v_tick ->> 'message');
    perform ops_private.raise_alerts(v_ws, 'schedule_tick_failed',
        pg_catalog.jsonb_build_object('tick_id', v_tick -> 'id', 'schedule_id', v_tick -> 'schedule_id',
                                      'scheduled_for', v_tick -> 'scheduled_for'),
        pg_catalog.jsonb_build_object(
            'workspace', ops_private.workspace_slug(v_ws), 'tick_id', v_tick -> 'id',
            'schedule_id', v_tick -> 'schedule_id', 'scheduled_for', v_tick -> 'scheduled_for',
            'state', v_tick ->> 'state', 'error', ops_private.alert_message(v_err)),
        null, 'tick:' || coalesce(v_tick ->> 'id', gen_random_uuid()::text));
    return null;
end
$$;

do $$
begin
    if pg_catalog.to_regclass('ops.schedule_ticks') is not null then
        create trigger schedule_ticks_alert_failed after insert on ops.schedule_ticks
            for each row when (new.state = 'failed')
            execute function ops_private.alert_schedule_tick_failed();
        create trigger schedule_ticks_alert_failed_update after update of state on ops.schedule_ticks
            for each row when (new.state = 'failed' and old.state is distinct from 'failed')
            execute function ops_private.alert_schedule_tick_failed();
    end if;
end
$$;

-- Backoff after failed attempt n (1-based): 5 s, 30 s, 2 min, 10 min, 30 min, then hourly.
create function ops_private.alert_backoff_seconds(p_attempt integer)
returns integer
language sql immutable
as $$
    select (array[5, 30, 120, 600, 1800, 3600])[least(greatest(p_attempt, 1), 6)]
$$;

-- The workspace (must exist; a non-member is 404 like a missing one) and the caller's role.
create function ops_private.alert_workspace(p_workspace uuid, p_roles text[])
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

create function ops_private.require_service_role(p_fn text)
returns void
language plpgsql stable
as $$
begin
    if not ops_private.is_privileged() then
        if ops_private.principal() is null then
            perform ops_private.fail(401, 'unauthorized', 'this call needs an authenticated principal (a JWT with sub)');
        end if;
        perform ops_private.fail(403, 'forbidden',
            p_fn || ' is for the alert deliverer (service_role): members read alerts with list_alerts');
    end if;
end
$$;

-- =============================================================================================
-- ops: destinations
-- =============================================================================================
create function ops.create_alert_destination(workspace_id text, name text, type text, url text,
                                             headers jsonb default '{}'::jsonb,
                                             description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', create_alert_destination.workspace_id, true);
    v_row ops.alert_destinations;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    perform ops_private.check_alert_name('name', create_alert_destination.name);
    perform ops_private.check_alert_destination(create_alert_destination.type, create_alert_destination.url,
                                                coalesce(create_alert_destination.headers, '{}'::jsonb));
    if create_alert_destination.description is not null and length(create_alert_destination.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    insert into ops.alert_destinations (workspace_id, name, type, url, headers, description, created_by, created_at)
    values (v_ws, create_alert_destination.name, create_alert_destination.type, create_alert_destination.url,
            coalesce(create_alert_destination.headers, '{}'::jsonb),
            nullif(create_alert_destination.description, ''), ops_private.uid(), ops_private.now())
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'an alert destination named ' || create_alert_destination.name || ' exists in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_alert_destination', v_ws, 'alert_destination', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type,
                           'url_is_reference', ops_private.is_secret_reference(v_row.url),
                           'headers', (select coalesce(jsonb_agg(k order by k), '[]'::jsonb)
                                       from jsonb_object_keys(v_row.headers) k)));
    return ops_private.alert_destination_json(v_row);
end
$$;

create function ops.list_alert_destinations(workspace_id text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_alert_destinations.workspace_id, true);
begin
    perform ops_private.alert_workspace(v_ws, array['developer', 'admin']);
    return (select coalesce(jsonb_agg(ops_private.alert_destination_json(d) order by d.name), '[]'::jsonb)
            from ops.alert_destinations d where d.workspace_id = v_ws);
end
$$;

create function ops.delete_alert_destination(workspace_id text, name text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws    uuid := ops_private.uuid_arg('workspace_id', delete_alert_destination.workspace_id, true);
    v_row   ops.alert_destinations;
    v_rules text;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    if delete_alert_destination.name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required', jsonb_build_object('argument', 'name'));
    end if;
    select * into v_row from ops.alert_destinations d
    where d.workspace_id = v_ws and d.name = delete_alert_destination.name for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'alert destination ' || left(delete_alert_destination.name, 64) || ' not found in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    select string_agg(r.name, ', ' order by r.name) into v_rules
    from ops.alert_rules r where r.destination_id = v_row.id;
    if v_rules is not null then
        perform ops_private.fail(409, 'conflict',
            'alert destination ' || v_row.name || ' is used by rules ' || left(v_rules, 300)
            || ': delete them first (control-room alerts rules delete)',
            jsonb_build_object('argument', 'name'));
    end if;
    delete from ops.alert_destinations d where d.id = v_row.id;   -- its alerts go with it
    perform ops_private.audit('delete_alert_destination', v_ws, 'alert_destination', v_row.name,
        jsonb_build_object('id', v_row.id, 'type', v_row.type));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

-- =============================================================================================
-- ops: rules
-- =============================================================================================
create function ops.create_alert_rule(workspace_id text, name text, event text, destination text,
                                      threshold integer default null, filters jsonb default '{}'::jsonb,
                                      enabled boolean default true, description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws      uuid := ops_private.uuid_arg('workspace_id', create_alert_rule.workspace_id, true);
    v_filters jsonb := coalesce(create_alert_rule.filters, '{}'::jsonb);
    v_dest    uuid;
    v_key     text;
    v_row     ops.alert_rules;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    perform ops_private.check_alert_name('name', create_alert_rule.name);
    if create_alert_rule.event is null or create_alert_rule.event not in
       ('run_failed', 'phase_dead_lettered', 'schedule_tick_failed', 'lease_expiries', 'slo_breached') then
        perform ops_private.fail(400, 'invalid_argument',
            'event must be one of run_failed, phase_dead_lettered, schedule_tick_failed, lease_expiries,'
            || ' slo_breached, got ' || coalesce(quote_literal(left(create_alert_rule.event, 64)), 'nothing'),
            jsonb_build_object('argument', 'event'));
    end if;
    if create_alert_rule.event = 'lease_expiries' then
        if create_alert_rule.threshold is null or create_alert_rule.threshold not between 1 and 1000000 then
            perform ops_private.fail(400, 'invalid_argument',
                'threshold is required for lease_expiries: the number of lease expiries in an hour (1-1000000)'
                || ' that raises the alert',
                jsonb_build_object('argument', 'threshold'));
        end if;
    elsif create_alert_rule.threshold is not null then
        perform ops_private.fail(400, 'invalid_argument',
            'threshold is only for lease_expiries rules (the expiries per hour that raise the alert)',
            jsonb_build_object('argument', 'threshold'));
    end if;
    perform ops_private.check_object('filters', v_filters);
    perform ops_private.check_size('filters', v_filters, 4096);
    for v_key in select jsonb_object_keys(v_filters) loop
        if v_key not in ('spec_slug', 'job', 'labels') then
            perform ops_private.fail(400, 'invalid_argument',
                'filters.' || left(v_key, 64) || ' is not a filter: use spec_slug, job or labels',
                jsonb_build_object('argument', 'filters.' || left(v_key, 64)));
        end if;
    end loop;
    if (v_filters ? 'spec_slug' and jsonb_typeof(v_filters -> 'spec_slug') <> 'string')
       or (v_filters ? 'job' and jsonb_typeof(v_filters -> 'job') <> 'string') then
        perform ops_private.fail(400, 'invalid_argument', 'filters.spec_slug and filters.job are strings',
                                 jsonb_build_object('argument', 'filters'));
    end if;
    if v_filters ? 'labels' and jsonb_typeof(v_filters -> 'labels') <> 'object' then
        perform ops_private.fail(400, 'invalid_argument',
            'filters.labels must be an object of labels a run must carry', jsonb_build_object('argument', 'filters.labels'));
    end if;
    if v_filters <> '{}'::jsonb and create_alert_rule.event not in ('run_failed', 'phase_dead_lettered') then
        perform ops_private.fail(400, 'invalid_argument',
            'filters apply to run_failed and phase_dead_lettered rules only',
            jsonb_build_object('argument', 'filters'));
    end if;
    if create_alert_rule.description is not null and length(create_alert_rule.description) > 1000 then
        perform ops_private.fail(400, 'invalid_argument', 'description must be at most 1000 characters',
                                 jsonb_build_object('argument', 'description'));
    end if;
    if create_alert_rule.destination is null then
        perform ops_private.fail(400, 'invalid_argument', 'destination is required (an alert destination''s name)',
                                 jsonb_build_object('argument', 'destination'));
    end if;
    select d.id into v_dest from ops.alert_destinations d
    where d.workspace_id = v_ws and d.name = create_alert_rule.destination;
    if v_dest is null then
        perform ops_private.fail(404, 'not_found',
            'alert destination ' || left(create_alert_rule.destination, 64) || ' not found in this workspace:'
            || ' create it with `control-room alerts destinations create`',
            jsonb_build_object('argument', 'destination'));
    end if;
    insert into ops.alert_rules (workspace_id, name, event, threshold, filters, destination_id, enabled,
                                 description, created_by, created_at)
    values (v_ws, create_alert_rule.name, create_alert_rule.event, create_alert_rule.threshold, v_filters,
            v_dest, coalesce(create_alert_rule.enabled, true), nullif(create_alert_rule.description, ''),
            ops_private.uid(), ops_private.now())
    on conflict (workspace_id, name) do nothing
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(409, 'conflict',
            'an alert rule named ' || create_alert_rule.name || ' exists in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('create_alert_rule', v_ws, 'alert_rule', v_row.name,
        jsonb_build_object('id', v_row.id, 'event', v_row.event, 'destination', create_alert_rule.destination,
                           'enabled', v_row.enabled));
    return ops_private.alert_rule_json(v_row);
end
$$;

create function ops.list_alert_rules(workspace_id text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_alert_rules.workspace_id, true);
begin
    perform ops_private.alert_workspace(v_ws, array['developer', 'admin']);
    return (select coalesce(jsonb_agg(ops_private.alert_rule_json(r) order by r.name), '[]'::jsonb)
            from ops.alert_rules r where r.workspace_id = v_ws);
end
$$;

create function ops.delete_alert_rule(workspace_id text, name text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws  uuid := ops_private.uuid_arg('workspace_id', delete_alert_rule.workspace_id, true);
    v_row ops.alert_rules;
begin
    perform ops_private.alert_workspace(v_ws, array['admin']);
    if delete_alert_rule.name is null then
        perform ops_private.fail(400, 'invalid_argument', 'name is required', jsonb_build_object('argument', 'name'));
    end if;
    delete from ops.alert_rules r where r.workspace_id = v_ws and r.name = delete_alert_rule.name
    returning * into v_row;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found',
            'alert rule ' || left(delete_alert_rule.name, 64) || ' not found in this workspace',
            jsonb_build_object('argument', 'name'));
    end if;
    perform ops_private.audit('delete_alert_rule', v_ws, 'alert_rule', v_row.name,
        jsonb_build_object('id', v_row.id, 'event', v_row.event));
    return jsonb_build_object('id', v_row.id, 'workspace_id', v_ws, 'name', v_row.name, 'deleted', true);
end
$$;

-- =============================================================================================
-- ops: the outbox, read by members and delivered by service_role
-- =============================================================================================
create function ops.list_alerts(workspace_id text, state text default null, "limit" integer default 50)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_ws uuid := ops_private.uuid_arg('workspace_id', list_alerts.workspace_id, true);
begin
    perform ops_private.alert_workspace(v_ws, array['viewer', 'developer', 'admin']);
    if list_alerts.state is not null and list_alerts.state not in ('pending', 'delivering', 'delivered', 'failed') then
        perform ops_private.fail(400, 'invalid_argument',
            'state must be one of pending, delivering, delivered, failed, got ' || quote_literal(left(list_alerts.state, 64)),
            jsonb_build_object('argument', 'state'));
    end if;
    if list_alerts."limit" is null or list_alerts."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    return (select coalesce(jsonb_agg(ops_private.alert_json(a) order by a.created_at desc, a.id desc), '[]'::jsonb)
            from (select * from ops.alerts a
                  where a.workspace_id = v_ws and (list_alerts.state is null or a.state = list_alerts.state)
                  order by a.created_at desc, a.id desc
                  limit list_alerts."limit") a);
end
$$;

-- Pending alerts that are due, and delivering ones whose lease expired (a deliverer that died:
-- at least once), leased for lease_seconds, oldest first, SKIP LOCKED.
create function ops.claim_alerts("limit" integer default 20, lease_seconds integer default 60)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now    timestamptz := ops_private.now();
    v_result jsonb;
begin
    perform ops_private.require_service_role('claim_alerts');
    if claim_alerts."limit" is null or claim_alerts."limit" not between 1 and 500 then
        perform ops_private.fail(400, 'invalid_argument', 'limit must be between 1 and 500',
                                 jsonb_build_object('argument', 'limit'));
    end if;
    if claim_alerts.lease_seconds is null or claim_alerts.lease_seconds not between 5 and 3600 then
        perform ops_private.fail(400, 'invalid_argument', 'lease_seconds must be between 5 and 3600',
                                 jsonb_build_object('argument', 'lease_seconds'));
    end if;
    with due as (
        select a.id from ops.alerts a
        where (a.state = 'pending' and a.next_attempt_at <= v_now)
           or (a.state = 'delivering' and a.lease_expires_at <= v_now)
        order by a.next_attempt_at, a.id
        limit claim_alerts."limit"
        for update skip locked
    ), leased as (
        update ops.alerts a
        set state = 'delivering', lease_expires_at = v_now + make_interval(secs => claim_alerts.lease_seconds)
        from due where a.id = due.id
        returning a.*
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'id', l.id, 'workspace_id', l.workspace_id,
               'workspace', ops_private.workspace_slug(l.workspace_id),
               'rule', l.rule_name, 'event', l.event, 'subject', l.subject, 'payload', l.payload,
               'created_at', l.created_at, 'attempt', l.attempts + 1, 'max_attempts', l.max_attempts,
               'lease_expires_at', l.lease_expires_at,
               'destination', jsonb_build_object('name', d.name, 'type', d.type, 'url', d.url,
                                                 'headers', d.headers))
             order by l.next_attempt_at, l.id), '[]'::jsonb)
    into v_result
    from leased l join ops.alert_destinations d on d.id = l.destination_id;
    return v_result;
end
$$;

create function ops.record_alert_delivery(alert_id text, ok boolean, http_status integer default null,
                                          error text default null, duration_ms integer default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_now timestamptz := ops_private.now();
    v_id  uuid;
    v_row ops.alerts;
    v_err text;
begin
    perform ops_private.require_service_role('record_alert_delivery');
    v_id := ops_private.uuid_arg('alert_id', record_alert_delivery.alert_id, true);
    if record_alert_delivery.ok is null then
        perform ops_private.fail(400, 'invalid_argument', 'ok is required (true or false)',
                                 jsonb_build_object('argument', 'ok'));
    end if;
    if record_alert_delivery.http_status is not null and record_alert_delivery.http_status not between 100 and 599 then
        perform ops_private.fail(400, 'invalid_argument', 'http_status must be between 100 and 599',
                                 jsonb_build_object('argument', 'http_status'));
    end if;
    if record_alert_delivery.duration_ms is not null and record_alert_delivery.duration_ms < 0 then
        perform ops_private.fail(400, 'invalid_argument', 'duration_ms must be at least 0',
                                 jsonb_build_object('argument', 'duration_ms'));
    end if;
    select * into v_row from ops.alerts a where a.id = v_id for update;
    if v_row.id is null then
        perform ops_private.fail(404, 'not_found', 'alert ' || v_id::text || ' not found',
                                 jsonb_build_object('argument', 'alert_id'));
    end if;
    if v_row.state <> 'delivering' then
        perform ops_private.fail(409, 'conflict',
            'alert ' || v_id::text || ' is ' || v_row.state || ', not delivering: claim it with claim_alerts first',
            jsonb_build_object('argument', 'alert_id', 'state', v_row.state));
    end if;
    v_err := nullif(ops_private.alert_message(record_alert_delivery.error), '');
    insert into ops.alert_deliveries (alert_id, attempt, workspace_id, at, ok, http_status, error, duration_ms)
    values (v_row.id, v_row.attempts + 1, v_row.workspace_id, v_now, record_alert_delivery.ok,
            record_alert_delivery.http_status, v_err, record_alert_delivery.duration_ms);
    update ops.alerts a
    set attempts = a.attempts + 1,
        lease_expires_at = null,
        state = case when record_alert_delivery.ok then 'delivered'
                     when a.attempts + 1 >= a.max_attempts then 'failed'
                     else 'pending' end,
        delivered_at = case when record_alert_delivery.ok then v_now end,
        next_attempt_at = case when record_alert_delivery.ok or a.attempts + 1 >= a.max_attempts then a.next_attempt_at
                               else v_now + make_interval(secs => ops_private.alert_backoff_seconds(a.attempts + 1)) end,
        last_error = case when record_alert_delivery.ok then a.last_error
                          else coalesce(v_err, 'HTTP ' || record_alert_delivery.http_status::text, 'failed') end
    where a.id = v_row.id
    returning * into v_row;
    return ops_private.alert_json(v_row);
end
$$;

-- =============================================================================================
-- grants: the API roles call the functions; anon calls nothing; the helpers are private
-- =============================================================================================
revoke execute on function ops.create_alert_destination(text, text, text, text, jsonb, text),
                           ops.list_alert_destinations(text),
                           ops.delete_alert_destination(text, text),
                           ops.create_alert_rule(text, text, text, text, integer, jsonb, boolean, text),
                           ops.list_alert_rules(text),
                           ops.delete_alert_rule(text, text),
                           ops.list_alerts(text, text, integer),
                           ops.claim_alerts(integer, integer),
                           ops.record_alert_delivery(text, boolean, integer, text, integer),
                           ops_private.is_secret_reference(text),
                           ops_private.check_alert_name(text, text),
                           ops_private.check_alert_destination(text, text, jsonb),
                           ops_private.alert_destination_json(ops.alert_destinations),
                           ops_private.alert_rule_json(ops.alert_rules),
                           ops_private.alert_json(ops.alerts),
                           ops_private.alert_filters_match(jsonb, ops.runs),
                           ops_private.raise_alerts(uuid, text, jsonb, jsonb, ops.runs, text, bigint),
                           ops_private.alert_message(text),
                           ops_private.workspace_slug(uuid),
                           ops_private.alert_run_failed(),
                           ops_private.alert_phase_dead_lettered(),
                           ops_private.alert_lease_expiries(),
                           ops_private.alert_schedule_tick_failed(),
                           ops_private.alert_backoff_seconds(integer),
                           ops_private.alert_workspace(uuid, text[]),
                           ops_private.require_service_role(text)
    from public, anon, authenticated, service_role;
grant execute on function ops.create_alert_destination(text, text, text, text, jsonb, text),
                          ops.list_alert_destinations(text),
                          ops.delete_alert_destination(text, text),
                          ops.create_alert_rule(text, text, text, text, integer, jsonb, boolean, text),
                          ops.list_alert_rules(text),
                          ops.delete_alert_rule(text, text),
                          ops.list_alerts(text, text, integer),
                          ops.claim_alerts(integer, integer),
                          ops.record_alert_delivery(text, boolean, integer, text, integer)
    to authenticated, service_role;
