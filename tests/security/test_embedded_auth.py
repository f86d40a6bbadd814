"""Issue 10, item 5: the embedded PostgreSQL ran with `--auth=trust` (any local user of the
machine connected as superuser; `COPY ... TO PROGRAM` ran). Now every login needs the
generated password (scram-sha-256), the server listens on 127.0.0.1 only with no Unix
socket, the password is kept 0600 in the 0700 state directory and is never printed, and a
trust cluster of an older version is migrated on its next start, stopped or running.

Slow: these start real servers (one shared by most tests, one per migration test)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from control_room.local import (
    HOST,
    NO_PASSFILE,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    conninfo_url,
    redact,
    scram_verifier,
    without_password,
)
from tests.executor.harness import REPO

pytestmark = pytest.mark.slow

IS_ROOT = os.geteuid() == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def refused(url: str) -> str:
    """The error text of a login to `url` that must fail (no ~/.pgpass, no PGPASSWORD)."""
    env_password = os.environ.pop("PGPASSWORD", None)
    try:
        with pytest.raises(psycopg.OperationalError) as failure:
            psycopg.connect(url, connect_timeout=5, passfile=NO_PASSFILE).close()
    finally:
        if env_password is not None:
            os.environ["PGPASSWORD"] = env_password
    return str(failure.value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    state = tmp_path_factory.mktemp("embedded-auth") / "state"
    embedded = EmbeddedPostgres(state)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="module")
def url(server: EmbeddedPostgres) -> str:
    found = server.url
    assert found is not None
    return found


def test_without_the_password_a_login_fails_and_with_it_succeeds(server: EmbeddedPostgres,
                                                                 url: str) -> None:
    port = port_of(url)
    assert server.password and server.password in url
    assert "no password supplied" in refused(conninfo_url(port))
    assert "password authentication failed" in refused(conninfo_url(port, password="wrong"))
    for database in ("postgres", "template1"):
        assert "password authentication failed" in refused(
            conninfo_url(port, database, password="x" + (server.password or "")))
    with psycopg.connect(url) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
        # the password is stored as a SCRAM verifier, never in clear or md5
        stored = conn.execute(
            "select rolpassword from pg_authid where rolname = 'postgres'").fetchone()
        assert stored is not None and str(stored[0]).startswith("SCRAM-SHA-256$4096:")
        assert conn.execute("show password_encryption").fetchone() == ("scram-sha-256",)
        rules = conn.execute("select type, auth_method from pg_hba_file_rules").fetchall()
        assert rules and {method for _, method in rules} == {"scram-sha-256"}
        assert {kind for kind, _ in rules} == {"local", "host"}


def test_it_listens_on_loopback_only_and_has_no_unix_socket(url: str) -> None:
    port = port_of(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("show listen_addresses").fetchone() == (HOST,)
        assert conn.execute("show unix_socket_directories").fetchone() == ("",)
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:      # 0A: LISTEN
                listening.add(address)
    assert listening == {"0100007F"}, listening                   # 127.0.0.1, little-endian
    sockets = [line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
               if line.split()[-1].endswith(f".s.PGSQL.{port}")]
    assert sockets == []


def test_the_password_is_kept_0600_in_the_private_state_dir(server: EmbeddedPostgres) -> None:
    assert server.password_file.parent == server.state_dir
    assert mode(server.password_file) == 0o600
    assert server.password_file.read_text().strip() == server.password
    info = server.state_dir.lstat()
    if IS_ROOT:
        # the server's system user may pass through (to pgdata/, log/), never list it
        import grp

        assert stat.S_IMODE(info.st_mode) == 0o710
        assert grp.getgrgid(info.st_gid).gr_name == "control_room_pg"
        assert server.password_file.stat().st_uid == 0
    else:
        assert stat.S_IMODE(info.st_mode) == 0o700
    assert mode(server.pgdata) == 0o700
    # initdb's temporary password file is gone, and no log holds the password
    assert not [p for p in server.state_dir.iterdir() if p.name.startswith(".initdb-")]
    assert server.password
    for log in server.log_dir.iterdir():
        assert server.password not in log.read_text(errors="replace"), log


def test_the_url_never_shows_its_password(server: EmbeddedPostgres, url: str) -> None:
    password = server.password
    assert password
    assert password not in repr(server.status())
    shown = redact(url)
    assert password not in shown
    assert shown == f"postgresql://postgres:***@{HOST}:{port_of(url)}/postgres"
    keyword = f"host={HOST} port=1 user=postgres password={password} dbname=x"
    assert redact(keyword) == f"host={HOST} port=1 user=postgres password=*** dbname=x"
    assert redact(f"password='{password} x' dbname=y") == "password=*** dbname=y"
    assert redact(f"postgresql://{HOST}/x?password={password}&sslmode=disable") == (
        f"postgresql://{HOST}/x?password=***&sslmode=disable")
    plain = without_password(url)
    assert password not in plain and "password" not in plain


def test_the_cli_works_through_the_password_and_never_prints_it(server: EmbeddedPostgres) -> None:
    """`status`, `migrate` on the running embedded server (not configured: found in the
    state directory), as a user runs them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
    password = server.password
    assert password
    for args in (["status"], ["migrate"], ["status"]):
        result = subprocess.run(
            [sys.executable, "-m", "control_room", *args, "--state-dir", str(server.state_dir)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr
    assert server.status().running            # left running: this command did not start it


def test_the_local_stack_uses_the_password_and_never_shows_it(
        server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """`up`'s LocalStack on the embedded server (found running): it connects with the
    password, and neither its progress lines nor the files it writes hold it."""
    from control_room.localstack import PRINCIPALS_FILE, LocalStack
    from control_room.settings import load_settings

    for name in ("CONTROL_ROOM_DATABASE_URL", "CONTROL_ROOM_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    password = server.password
    assert password
    said: list[str] = []
    settings = load_settings(state_dir=server.state_dir, port=0)
    with LocalStack(settings, workers=0, log=said.append) as stack:
        assert password in stack.database_url
        assert stack.info is not None
        files = [server.state_dir / name for name in ("stack.json", PRINCIPALS_FILE)]
        for path in files:
            assert mode(path) == 0o600
            assert password not in path.read_text(), path
    assert said and not [line for line in said if password in line]
    assert server.status().running                # not started here: left running


def test_the_verifier_logs_in(url: str, server: EmbeddedPostgres) -> None:
    """scram_verifier() is what PostgreSQL itself computes: a role given it logs in with the
    password (and a wrong salt or password does not)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop role if exists verifier_check")
        conn.execute(f"create role verifier_check login password '{scram_verifier('pw-1')}'")
    port = port_of(url)
    base = f"postgresql://verifier_check:{{}}@{HOST}:{port}/postgres"
    psycopg.connect(base.format("pw-1"), passfile=NO_PASSFILE).close()
    assert "password authentication failed" in refused(base.format("pw-2"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop role verifier_check")


def test_a_lost_password_file_is_refused_clearly(tmp_path: Path, server: EmbeddedPostgres) -> None:
    """A password cluster whose password file is gone cannot be let in (nor given a new
    password without one): start() says what to do."""
    other = EmbeddedPostgres(server.state_dir)
    other.password_file.rename(tmp_path / "kept")
    try:
        with pytest.raises(EmbeddedPostgresError, match=r"requires a password but its file "
                                                        r".* is missing: restore it"):
            other.start()
    finally:
        (tmp_path / "kept").rename(other.password_file)


# ---------------------------------------------------------------- an older version's cluster


def make_trust_cluster(state: Path) -> EmbeddedPostgres:
    """What the previous version made: initdb --auth=trust, no password file."""
    old = EmbeddedPostgres(state)
    with old._locked():
        old._prepare()
        old._run(["initdb", "-D", str(old.pgdata), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-locale", "--no-instructions"],
                 log=old.log_dir / "initdb.log")
    assert not old.password_file.exists() and old._hba_trusts()
    return old


def start_like_the_old_version(old: EmbeddedPostgres) -> int:
    from control_room.local import _free_port

    port = _free_port()
    with old._locked():
        old._prepare()
        old._run(["pg_ctl", "-D", str(old.pgdata), "-l", str(old.log_file), "-w", "-o",
                  f"-c listen_addresses={HOST} -c port={port} -c unix_socket_directories=''",
                  "start"])
    return port


def test_a_stopped_trust_cluster_is_migrated_on_start(tmp_path: Path) -> None:
    old = make_trust_cluster(tmp_path / "state")
    port = start_like_the_old_version(old)
    with psycopg.connect(conninfo_url(port), autocommit=True, passfile=NO_PASSFILE) as conn:
        conn.execute("create table kept (x int)")       # anyone got in, without a password
    old.stop()

    server = EmbeddedPostgres(tmp_path / "state")
    try:
        url = server.start()
        assert server.password and server.password in url
        assert mode(server.password_file) == 0o600
        assert not server._hba_trusts()
        assert "no password supplied" in refused(conninfo_url(port_of(url)))
        with psycopg.connect(url) as conn:
            assert conn.execute("select to_regclass('public.kept') is not null").fetchone() == (
                True,)
            methods = {r[0] for r in conn.execute("select auth_method from pg_hba_file_rules")}
            assert methods == {"scram-sha-256"}
    finally:
        server.stop()
    # the next start is an ordinary one, with the same password
    again = EmbeddedPostgres(tmp_path / "state")
    try:
        assert again.start() == conninfo_url(port_of(again.url or ""), password=server.password)
    finally:
        again.stop()


def test_a_running_trust_server_is_migrated_without_a_restart(tmp_path: Path) -> None:
    old = make_trust_cluster(tmp_path / "state")
    port = start_like_the_old_version(old)
    pid = old.status().pid
    try:
        psycopg.connect(conninfo_url(port), passfile=NO_PASSFILE).close()     # trust, today
        server = EmbeddedPostgres(tmp_path / "state")
        url = server.start()
        assert not server.started_here and server.status().pid == pid
        assert server.password and port_of(url) == port
        assert "no password supplied" in refused(conninfo_url(port))
        assert "password authentication failed" in refused(conninfo_url(port, password="x"))
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        EmbeddedPostgres(tmp_path / "state").stop()
