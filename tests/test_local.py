"""The embedded PostgreSQL server (slow: it runs initdb and starts real servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from control_room.local import EmbeddedPostgres, _port_is_free

pytestmark = pytest.mark.slow


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie left for its parent to reap does not count)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def test_start_reuse_stop(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "state")
    assert not server.status().running
    try:
        url = server.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.execute("create table kept (x int)")
        first = server.status()
        assert first.running and first.pid is not None and first.url == url

        # A second start, also from another object, reuses the running server.
        assert server.start() == url
        assert EmbeddedPostgres(tmp_path / "state").start() == url
        assert server.status().pid == first.pid
    finally:
        server.stop()
    assert not server.status().running
    assert first.pid is not None and not pid_alive(first.pid)
    server.stop()  # stopping a stopped server is a no-op

    # The data directory, and the port when still free, are reused on the next start (tests
    # running beside this one may have taken the port meanwhile: then another is chosen).
    again = EmbeddedPostgres(tmp_path / "state")
    old_port = int(url.rsplit(":", 1)[1].split("/")[0])
    port_was_free = _port_is_free(old_port)
    try:
        url = again.start()
        if port_was_free:
            assert int(url.rsplit(":", 1)[1].split("/")[0]) == old_port
        with psycopg.connect(url) as conn:
            assert conn.execute("select to_regclass('public.kept') is not null").fetchone() == (
                True,
            )
    finally:
        again.stop()
    assert (tmp_path / "state" / "log" / "postgres.log").exists()
    assert (tmp_path / "state" / "port").read_text().strip() == url.rsplit(":", 1)[1].split("/")[0]


def test_context_manager_leaves_no_server(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "state") as server:
        url = server.url
        assert url is not None
        pid = server.status().pid
        assert pid is not None
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_setting('server_version_num')::int / 10000")\
                .fetchone() == (18,)
    assert not server.status().running
    assert not pid_alive(pid)

    with pytest.raises(RuntimeError), EmbeddedPostgres(tmp_path / "state") as server:
        pid = server.status().pid
        raise RuntimeError("boom")
    assert pid is not None and not pid_alive(pid)


def test_cli_migrate_with_bad_url_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "control_room", "migrate", "--check",
         "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot connect to 127.0.0.1:1/nowhere")
    assert "Traceback" not in result.stderr
