"""`control-room connections`: a workspace's named connections (docs/cli.md), registered in
ops with non-secret config and secret references (`env:NAME`, `file:/path`), never values.

`test` resolves the references in this process's own environment, under the same policy a
worker applies (`CONTROL_ROOM_SECRET_ALLOW`, executor/secrets.py), makes a real connection
and records the outcome (`record_connection_test`). A message never carries a secret value:
every resolved value is masked before it is printed or recorded.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, get_args

import typer
from rich.table import Table

from control_room.cli.common import (
    EXIT_FAILED,
    BadInput,
    Gateway,
    JsonOut,
    StateDir,
    Token,
    Workspace,
    err,
    fail,
    gateway,
    guard,
    new_app,
    out,
    pairs,
    when,
)
from control_room.cli.display import dump
from control_room.contract.vocabulary import ConnectionType

app = new_app("Connections of a workspace: create, update (rotate), list, show, delete, test.")

TYPES: tuple[str, ...] = get_args(ConnectionType)
"""The contract's connection types, in its order."""
DEFAULT_TIMEOUT = 10.0

Name = Annotated[str, typer.Argument(help="The connection's name (1-63 lower-case letters, "
                                          "digits or _).", show_default=False)]
ConfigOption = Annotated[list[str] | None, typer.Option(
    "--config", help="KEY=VALUE: a non-secret config field (repeatable), e.g. "
                     "dsn=postgresql://user@host:5432/db. A value that is a JSON number, "
                     "boolean, object or array is stored as such.")]
SecretOption = Annotated[list[str] | None, typer.Option(
    "--secret", help="FIELD=REFERENCE: a secret field by reference (repeatable), "
                     "env:NAME or file:/absolute/path; the value itself is never sent.")]
Description = Annotated[str | None, typer.Option(
    "--description", help="What the connection is for (update: \"\" clears it).")]
Timeout = Annotated[float, typer.Option(
    "--timeout", min=0.5, max=300, help="Seconds the test connection may take.")]


def _config(values: list[str] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, text in pairs("--config", values).items():
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        found[key] = parsed if isinstance(parsed, int | float | bool | dict | list) else text
    return found


def _secrets(values: list[str] | None) -> dict[str, str]:
    from executor.secrets import SecretError, parse_reference

    found = pairs("--secret", values)
    for field_name, reference in found.items():
        try:
            parse_reference(reference)
        except SecretError as exc:
            raise BadInput(f"--secret {field_name}: {exc.message}") from None
    return found


def _check_type(kind: str) -> str:
    if kind not in TYPES:
        raise BadInput(f"--type must be one of {', '.join(TYPES)}, not {kind!r}")
    return kind


def _print_connection(connection: Any) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("name", connection.name)
    table.add_row("type", connection.type)
    table.add_row("version", str(connection.version))
    if connection.description:
        table.add_row("description", connection.description)
    for key, value in sorted(connection.config.items()):
        table.add_row(f"config.{key}", value if isinstance(value, str) else json.dumps(value))
    for key, reference in sorted(connection.secrets.items()):
        table.add_row(f"secret.{key}", reference)
    table.add_row("updated", when(connection.updated_at))
    test = connection.last_test
    table.add_row("last test", "-" if test is None else
                  f"{'ok' if test.ok else 'FAILED'} at {when(test.at)}: {test.message or ''}")
    out.print(table)


@app.command("create")
def create_command(
    name: Name,
    kind: Annotated[str, typer.Option("--type", help=f"One of {', '.join(TYPES)}.",
                                      show_default=False)],
    config: ConfigOption = None,
    secret: SecretOption = None,
    description: Description = None,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Register a connection of the workspace (admin): its type, non-secret config and
    secret references. Specs name it (`connections: [NAME]`); workers resolve it."""
    with guard():
        values, secrets = _config(config), _secrets(secret)
        with gateway(gateway_url, token, workspace, state_dir) as target:
            created = target.client.create_connection(
                target.workspace_id(), name, _check_type(kind), config=values,
                secrets=secrets, description=description)
        if as_json:
            out.print_json(data=dump(created))
        else:
            out.print(f"connection {created.name} created ({created.type}, version "
                      f"{created.version})", markup=False)


@app.command("update")
def update_command(
    name: Name,
    config: ConfigOption = None,
    secret: SecretOption = None,
    description: Description = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="The given --config and --secret replace all of the connection's "
                          "(default: merged over them, field by field).")] = False,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Change a connection (admin): a new `--secret FIELD=REFERENCE` rotates that secret. A
    change is a new version; workers read it at their next claim."""
    with guard():
        values, secrets = _config(config), _secrets(secret)
        if not (config or secret or description is not None):
            raise BadInput("nothing to change: give --config, --secret or --description")
        with gateway(gateway_url, token, workspace, state_dir) as target:
            ws = target.workspace_id()
            new_config: dict[str, Any] | None = values if config else None
            new_secrets: dict[str, str] | None = secrets if secret else None
            if not replace and (config or secret):
                current = target.client.get_connection(ws, name)
                new_config = {**{k: v for k, v in current.config.items() if k not in secrets},
                              **values}
                new_secrets = {**{k: v for k, v in current.secrets.items() if k not in values},
                               **secrets}
            updated = target.client.update_connection(ws, name, config=new_config,
                                                      secrets=new_secrets,
                                                      description=description)
        if as_json:
            out.print_json(data=dump(updated))
        else:
            out.print(f"connection {updated.name} updated (version {updated.version})",
                      markup=False)


@app.command("list")
def list_command(
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The workspace's connections (any member): type, config keys, secret references."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.list_connections(target.workspace_id())
    if as_json:
        out.print_json(data=dump(found))
        return
    if not found:
        out.print("No connections.")
        return
    table = Table("name", "type", "version", "secrets", "last test", "description")
    for c in found:
        test = c.last_test
        table.add_row(c.name, c.type, str(c.version),
                      ", ".join(f"{k}={v}" for k, v in sorted(c.secrets.items())) or "-",
                      "-" if test is None else f"{'ok' if test.ok else 'failed'} {when(test.at)}",
                      c.description or "")
    out.print(table)


@app.command("show")
def show_command(
    name: Name,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One connection: its config, secret references (never values) and last test."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        found = target.client.get_connection(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(found))
    else:
        _print_connection(found)


@app.command("delete")
def delete_command(
    name: Name,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a connection and its secret references (admin). Phases that name it fail
    when they run."""
    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        deleted = target.client.delete_connection(target.workspace_id(), name)
    if as_json:
        out.print_json(data=dump(deleted))
    else:
        out.print(f"connection {deleted.name} deleted", markup=False)


# ------------------------------------------------------------------------------------ test

@dataclass(frozen=True)
class Probe:
    """What a test found: `ok`, and a message that names what was checked."""

    ok: bool
    message: str


class ShapeError(ValueError):
    """The connection's config cannot be tested as it is (a missing or malformed field)."""


def _text(config: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        if required:
            raise ShapeError(f"config.{key} is required")
        return None
    if not isinstance(value, str):
        raise ShapeError(f"config.{key} must be a string")
    return value


def _url(config: Mapping[str, Any], key: str = "url") -> str:
    import urllib.parse

    url = _text(config, key)
    assert url is not None
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ShapeError(f"config.{key} must be an http(s) URL")
    return url


def probe_postgres(config: Mapping[str, Any], timeout: float) -> Probe:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    dsn = _text(config, "dsn")
    assert dsn is not None
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ShapeError(f"config.dsn is not a Postgres conninfo: {exc}") from None
    where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/" \
            f"{params.get('dbname') or params.get('user') or ''}"
    kwargs: dict[str, Any] = {"connect_timeout": max(1, round(timeout))}
    if config.get("password") is not None:
        kwargs["password"] = str(config["password"])
    try:
        with psycopg.connect(dsn, autocommit=True, **kwargs) as conn:
            conn.execute("select set_config('statement_timeout', %s, false)",
                         [str(int(timeout * 1000))])
            row = conn.execute("select 1").fetchone()
    except psycopg.Error as exc:
        return Probe(False, f"postgres {where}: {str(exc).strip() or type(exc).__name__}")
    if row != (1,):
        return Probe(False, f"postgres {where}: select 1 answered {row!r}")
    return Probe(True, f"postgres {where}: connected, select 1 answered 1")


def probe_s3(config: Mapping[str, Any], timeout: float) -> Probe:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = _text(config, "bucket")
    endpoint = _text(config, "endpoint_url", required=False)
    prefix = _text(config, "prefix", required=False) or ""
    client = boto3.client(
        "s3", endpoint_url=endpoint,
        region_name=_text(config, "region", required=False) or "us-east-1",
        aws_access_key_id=config.get("access_key_id"),
        aws_secret_access_key=config.get("secret_access_key"),
        aws_session_token=config.get("session_token"),
        config=Config(connect_timeout=timeout, read_timeout=timeout,
                      retries={"max_attempts": 1}))
    where = f"s3://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=5)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return Probe(False, f"{where}: {error.get('Code', 'error')}: "
                            f"{error.get('Message', str(exc))}")
    except BotoCoreError as exc:
        return Probe(False, f"{where}: {exc}")
    count = int(listed.get("KeyCount", 0))
    more = " or more" if listed.get("IsTruncated") else ""
    return Probe(True, f"{where}: listed, {count}{more} object(s)")


def probe_trino(config: Mapping[str, Any], timeout: float) -> Probe:
    """`select 1` through Trino's client protocol: POST /v1/statement, then GET each nextUri
    until the query is done; its data must be [[1]]."""
    import httpx

    base = _url(config).rstrip("/")
    headers = {"X-Trino-User": _text(config, "user", required=False) or "control-room",
               "X-Trino-Source": "control-room connections test"}
    for key, header in (("catalog", "X-Trino-Catalog"), ("schema", "X-Trino-Schema")):
        value = _text(config, key, required=False)
        if value:
            headers[header] = value
    auth = None
    if config.get("password") is not None:
        auth = httpx.BasicAuth(headers["X-Trino-User"], str(config["password"]))
    deadline = time.monotonic() + timeout
    data: list[Any] = []
    state = "?"
    try:
        with httpx.Client(timeout=timeout, auth=auth, headers=headers) as http:
            answer = http.post(f"{base}/v1/statement", content="select 1")
            while True:
                if answer.status_code in (502, 503, 504):     # the protocol says: retry
                    time.sleep(0.05)
                    answer = http.get(str(answer.request.url))
                    continue
                if answer.status_code != 200:
                    return Probe(False, f"trino {base}: HTTP {answer.status_code} "
                                        f"{answer.reason_phrase}")
                body = answer.json()
                if not isinstance(body, dict):
                    return Probe(False, f"trino {base}: not a Trino answer")
                data.extend(body.get("data") or [])
                state = str((body.get("stats") or {}).get("state", state))
                error = body.get("error")
                if isinstance(error, dict):
                    return Probe(False, f"trino {base}: query failed: "
                                        f"{error.get('errorName', 'error')}: "
                                        f"{error.get('message', '')}")
                next_uri = body.get("nextUri")
                if not next_uri:
                    break
                if time.monotonic() > deadline:
                    return Probe(False, f"trino {base}: select 1 still {state} after "
                                        f"{timeout:g} s")
                answer = http.get(str(next_uri))
    except (httpx.HTTPError, ValueError) as exc:
        return Probe(False, f"trino {base}: {type(exc).__name__}: {exc}")
    if data != [[1]]:
        return Probe(False, f"trino {base}: select 1 answered {json.dumps(data)[:200]}")
    return Probe(True, f"trino {base}: select 1 answered 1 (state {state})")


def probe_http(config: Mapping[str, Any], timeout: float) -> Probe:
    import httpx

    url = _url(config)
    headers: dict[str, str] = {}
    auth: httpx.BasicAuth | None = None
    if config.get("token") is not None:
        headers["Authorization"] = f"Bearer {config['token']}"
    elif config.get("password") is not None:
        auth = httpx.BasicAuth(_text(config, "user", required=False) or "",
                               str(config["password"]))
    try:
        answer = httpx.get(url, headers=headers, auth=auth, timeout=timeout,
                           follow_redirects=True)
    except httpx.HTTPError as exc:
        return Probe(False, f"GET {url}: {type(exc).__name__}: {exc}")
    ok = 200 <= answer.status_code < 300
    return Probe(ok, f"GET {url}: HTTP {answer.status_code} {answer.reason_phrase}")


_SPARK_MASTER = re.compile(r"^(local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?|yarn|"
                           r"(spark|mesos|k8s)://\S+)$")


def probe_spark(config: Mapping[str, Any], timeout: float) -> Probe:
    master = _text(config, "master")
    assert master is not None
    if not _SPARK_MASTER.match(master):
        raise ShapeError("config.master must be local, local[N], yarn, spark://host:port, "
                         "mesos://... or k8s://...")
    conf = config.get("conf", {})
    if not isinstance(conf, dict) or not all(isinstance(v, str | int | float | bool)
                                             for v in conf.values()):
        raise ShapeError("config.conf must be an object of spark.* settings")
    bad = sorted(k for k in conf if not str(k).startswith("spark."))
    if bad:
        raise ShapeError(f"config.conf keys must start with spark. ({', '.join(bad)})")
    return Probe(True, f"spark: config checked (master {master}, {len(conf)} conf "
                       "setting(s)); no Spark session was started")


def probe_dbt_profile(config: Mapping[str, Any], timeout: float) -> Probe:
    profile = _text(config, "profile")
    target = _text(config, "target", required=False)
    profiles_dir = _text(config, "profiles_dir", required=False)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", profile or ""):
        raise ShapeError("config.profile must be a dbt profile name")
    if target is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", target):
        raise ShapeError("config.target must be a dbt target name")
    checked = f"profile {profile}" + (f", target {target}" if target else "")
    if profiles_dir is not None:
        if not os.path.isabs(profiles_dir):
            raise ShapeError("config.profiles_dir must be an absolute path")
        found = os.path.isfile(os.path.join(profiles_dir, "profiles.yml"))
        checked += f", {profiles_dir}/profiles.yml {'found' if found else 'not found here'}"
    return Probe(True, f"dbt-profile: config checked ({checked}); dbt was not run")


PROBES: dict[str, Callable[[Mapping[str, Any], float], Probe]] = {
    "postgres": probe_postgres, "s3": probe_s3, "trino": probe_trino, "http": probe_http,
    "spark": probe_spark, "dbt-profile": probe_dbt_profile,
}


def probe_connection(kind: str, config: Mapping[str, Any], timeout: float) -> Probe:
    """A real connection of type `kind` with its resolved `config` (ShapeError: the config
    cannot be tested)."""
    probe = PROBES.get(kind)
    if probe is None:
        raise ShapeError(f"connections of type {kind!r} cannot be tested")
    return probe(config, timeout)


@app.command("test")
def test_command(
    name: Name,
    timeout: Timeout = DEFAULT_TIMEOUT,
    record: Annotated[bool, typer.Option(
        "--record/--no-record", help="Record the outcome in the connection "
                                     "(record_connection_test; developer or admin).")] = True,
    workspace: Workspace = None,
    gateway_url: Gateway = None,
    token: Token = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Resolve the connection's secret references here, under this process's
    CONTROL_ROOM_SECRET_ALLOW (as a worker would), connect for real and record the outcome:
    Postgres `select 1`, S3 list the bucket, Trino `select 1`, HTTP GET of its url (2xx);
    spark and dbt-profile: their config is checked. Exit 1 when the connection fails."""
    from executor.secrets import (
        POLICY_VARIABLE,
        Masker,
        SecretError,
        SecretPolicy,
        resolve_secrets,
    )

    with guard(), gateway(gateway_url, token, workspace, state_dir) as target:
        try:
            policy = SecretPolicy.parse(os.environ.get(POLICY_VARIABLE))
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        ws = target.workspace_id()
        found = target.client.get_connection(ws, name)
        masker = Masker()
        try:
            values = resolve_secrets(found.secrets, policy, masker=masker)
        except SecretError as exc:
            raise BadInput(f"connection {name!r}: {exc.message}; this command resolves "
                           f"references under its own {POLICY_VARIABLE}, as a worker "
                           "does") from None
        resolved = {**found.config, **values}
        started = time.monotonic()
        try:
            probe = probe_connection(found.type, resolved, timeout)
        except ShapeError as exc:
            raise BadInput(f"connection {name!r}: {exc}") from None
        message = " ".join(masker.text(probe.message).split())[:480]
        seconds = time.monotonic() - started
        recorded = None
        if record:
            recorded = target.client.record_connection_test(ws, name, probe.ok, message)
    if as_json:
        out.print_json(data={"name": name, "type": found.type, "ok": probe.ok,
                             "message": message, "seconds": round(seconds, 3),
                             "recorded": recorded is not None})
    elif probe.ok:
        out.print(f"connection {name}: ok ({seconds:.2f} s): {message}", markup=False)
    if not probe.ok:
        if as_json:
            raise typer.Exit(EXIT_FAILED)
        fail(f"connection {name}: {message}", EXIT_FAILED)
    if not as_json and not record:
        err.print("(not recorded: --no-record)", markup=False)
