"""Throwaway PostgreSQL databases for tests: admin server, migrated template, clones.

Every database a test uses is created here with a unique `crtest_<random>` name and
dropped afterwards. The migrated template is built once per session; each test gets a
clone of it (`create database X template Y`), which is much faster than migrating.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from control_room.db.migrate import migrate
from control_room.settings import default_migrations_dir

SYSTEM_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_URL_ENV = "CONTROL_ROOM_TEST_ADMIN_URL"
REPO_MIGRATIONS = default_migrations_dir()


def server_answers(url: str, timeout: int = 3) -> bool:
    """Whether a server accepts a connection at `url`."""
    try:
        with psycopg.connect(url, connect_timeout=timeout) as conn:
            conn.execute("select 1")
    except psycopg.Error:
        return False
    return True


def admin_url_from_env() -> str | None:
    return os.environ.get(ADMIN_URL_ENV) or None


def unique_name(suffix: str = "") -> str:
    """`crtest_<random>[_suffix]`: a database name no other test run will pick."""
    name = f"crtest_{secrets.token_hex(5)}"
    return f"{name}_{suffix}" if suffix else name


def database_url(admin_url: str, dbname: str) -> str:
    """`admin_url` pointed at another database of the same server."""
    params: dict[str, Any] = conninfo_to_dict(admin_url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _admin(admin_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(admin_url, autocommit=True, connect_timeout=10)


def create_database(admin_url: str, name: str | None = None, *, template: str | None = None) -> str:
    """Create a database (optionally cloned from `template`); return its name."""
    name = name or unique_name()
    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" template {}").format(sql.Identifier(template))
    with _admin(admin_url) as conn:
        conn.execute(statement)
    return name


def drop_database(admin_url: str, name: str) -> None:
    """Terminate the database's connections and drop it (no error if it is gone)."""
    with _admin(admin_url) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = %s and pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def temporary_database(admin_url: str, *, template: str | None = None,
                       suffix: str = "") -> Iterator[str]:
    """A fresh database for the block (a clone of `template` if given); yields its URL.

    It is dropped behind the block, by `drop_behind` (its connections are terminated first)."""
    name = create_database(admin_url, unique_name(suffix), template=template)
    try:
        yield database_url(admin_url, name)
    finally:
        drop_behind(admin_url, name)


_DROPPERS: list[concurrent.futures.ThreadPoolExecutor] = []
_DROPS: list[concurrent.futures.Future[None]] = []


def _quiet_drop(admin_url: str, name: str) -> None:
    with contextlib.suppress(Exception):   # a database left behind is no test's failure
        drop_database(admin_url, name)


def drop_behind(admin_url: str, name: str) -> None:
    """Drop `name` in a background thread: a drop waits for a checkpoint (0.2 s idle, 5 to 20 s
    after a test wrote a lot under load), which no test needs to wait for. `finish_drops()`
    waits for them all (the session's `pg_admin_url` does, before its server may stop)."""
    if not _DROPPERS:
        _DROPPERS.append(concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="drop-behind"))
    _DROPS.append(_DROPPERS[0].submit(_quiet_drop, admin_url, name))


def finish_drops() -> None:
    """Wait for every `drop_behind` drop."""
    while _DROPS:
        _DROPS.pop().result()


class ClonePool:
    """Clones of a template made ahead of time and dropped afterwards, off the test's clock.

    A clone (`create database ... template`) takes ≈ 0.1 s and a drop ≈ 0.15 s of mostly
    waiting on PostgreSQL (a drop asks for a checkpoint): a test that needs a fresh database
    takes one that is ready and hands it back to be dropped. One thread per pytest worker makes
    the next clones; the used ones are dropped by a few threads of their own, concurrently, so
    that their checkpoints are shared (five drops at once take about what one takes) and no
    clone waits behind a drop. `close()` drops every database the pool still holds.
    """

    DROPPERS = 4

    def __init__(self, admin_url: str, template: str, *, ready: int = 2) -> None:
        self.admin_url = admin_url
        self.template = template
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._work: queue.Queue[str | None] = queue.Queue()    # None: stop
        self._drops = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.DROPPERS, thread_name_prefix="clone-pool-drop")
        self._thread = threading.Thread(target=self._run, name="clone-pool", daemon=True)
        self._thread.start()
        for _ in range(ready):
            self._work.put("clone")

    def _run(self) -> None:
        while self._work.get() is not None:
            try:
                self._ready.put(create_database(self.admin_url, unique_name(),
                                                template=self.template))
            except BaseException as exc:  # handed to the test that waits for a clone
                self._ready.put(exc)

    def take(self) -> str:
        """The name of a fresh clone (waits for one), and a replacement started."""
        self._work.put("clone")
        got = self._ready.get(timeout=120)
        if isinstance(got, BaseException):
            raise got
        return got

    def give_back(self, name: str) -> None:
        """Drop `name` in the background (its connections are terminated first)."""
        self._drops.submit(self._drop, name)

    def _drop(self, name: str) -> None:
        with contextlib.suppress(Exception):   # a database left behind is no test's failure
            drop_database(self.admin_url, name)

    def close(self) -> None:
        self._work.put(None)
        self._thread.join(timeout=120)
        self._drops.shutdown(wait=True)
        while not self._ready.empty():
            got = self._ready.get_nowait()
            if isinstance(got, str):
                drop_database(self.admin_url, got)


def create_template(admin_url: str, migrations_dir: Path = REPO_MIGRATIONS) -> str:
    """A new `crtest_<random>_tpl` database with every migration applied; returns its name.

    Clone it with `create_database(admin_url, template=name)`; drop it with
    `drop_database(admin_url, name)`. It must have no open connection while being cloned.
    """
    name = create_database(admin_url, unique_name("tpl"))
    try:
        migrate(database_url(admin_url, name), migrations_dir)
    except BaseException:
        drop_database(admin_url, name)
        raise
    return name


@contextlib.contextmanager
def template_database(admin_url: str, migrations_dir: Path = REPO_MIGRATIONS) -> Iterator[str]:
    """`create_template` for the duration of a block; yields the template's name."""
    name = create_template(admin_url, migrations_dir)
    try:
        yield name
    finally:
        drop_database(admin_url, name)


# ------------------------------------------------------------------------------ gateway

TEST_JWT_SECRET = "test-secret-of-the-control-room-gateway-0123456789"


@contextlib.contextmanager
def running_gateway(db_url: str, **settings: Any) -> Iterator[str]:
    """The real gateway on a real port over `db_url`; yields its base URL.

    Signs with TEST_JWT_SECRET and honours the test clock header.
    """
    from control_room.gateway.app import create_app
    from control_room.settings import load_settings

    options: dict[str, Any] = {"pool_min_size": 1, "pool_max_size": 4}
    options.update(settings)
    app = create_app(load_settings(**options), database_url=db_url, jwt_secret=TEST_JWT_SECRET,
                     test_clock=True)
    with serving_promptly(app) as url:
        yield url


@contextlib.contextmanager
def serving_promptly(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """`control_room.gateway.app.serving` (uvicorn in a thread, the same lifespan), but a stop
    takes milliseconds, not 0.1 to 0.25 s: uvicorn looks at `should_exit` every 0.1 s and then
    sleeps 0.1 s for connections to close whether any is open or not. Hundreds of tests start
    and stop a gateway each."""
    import asyncio
    import socket

    import uvicorn

    class Server(uvicorn.Server):
        asked: asyncio.Event | None = None
        loop: asyncio.AbstractEventLoop | None = None

        async def main_loop(self) -> None:
            self.asked = asyncio.Event()
            self.loop = asyncio.get_running_loop()
            counter = 0
            while not await self.on_tick(counter):      # True once should_exit is set
                counter = (counter + 1) % 864000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.asked.wait(), 0.1)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()
            deadline = time.monotonic() + 30
            while ((self.server_state.connections or self.server_state.tasks)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.002)
            for server in self.servers:
                await server.wait_closed()
            await self.lifespan.shutdown()

        def stop(self) -> None:
            self.should_exit = True
            if self.loop is not None and self.asked is not None:
                self.loop.call_soon_threadsafe(self.asked.set)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.002)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        gateway = getattr(app.state, "gateway", None)
        if gateway is not None:
            gateway.feed.close_threadsafe()     # open change feeds would hold the shutdown up
        server.stop()
        thread.join(timeout=30)
        sock.close()
