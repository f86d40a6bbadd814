"""Issue 10, item 5/6: the state directory is 0700 and every secret file in it (the JWT signing
secret, the stack file with its tokens, the local stack's principals) is created 0600 with
O_EXCL, never through a symlink and never chmod'ed after the fact. Planted symlinks (at the
temporary names the old code used, at the next random temporary name, at the target itself)
are never followed: their targets stay untouched."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from control_room.cli import app
from control_room.gateway.auth import local_secret
from control_room.secretfile import ensure_private_dir, read_secret_file, write_secret_file
from control_room.stack import Stack, StackFileError, load_stack, write_stack

VICTIM_TEXT = "do not touch\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the state directory that a planted symlink points at."""
    path = tmp_path / "victim"
    path.write_text(VICTIM_TEXT)
    path.chmod(0o644)
    return path


def assert_untouched(victim: Path) -> None:
    assert victim.read_text() == VICTIM_TEXT
    assert mode(victim) == 0o644


@pytest.fixture(autouse=True)
def loose_umask() -> object:
    """The modes must not depend on the caller's umask: the most permissive one."""
    old = os.umask(0)
    yield None
    os.umask(old)


# ---------------------------------------------------------------- the private directory


def test_a_new_state_dir_is_0700(tmp_path: Path) -> None:
    state = ensure_private_dir(tmp_path / "a" / "state")
    assert state.is_dir() and mode(state) == 0o700


def test_an_old_0755_state_dir_is_made_0700(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    ensure_private_dir(state)
    assert mode(state) == 0o700


def test_group_traverse_is_kept_but_nothing_else(tmp_path: Path) -> None:
    """0710 is how the embedded server's system user passes through when root runs it."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o710)
    ensure_private_dir(state)
    assert mode(state) == 0o710
    state.chmod(0o711)
    ensure_private_dir(state)
    assert mode(state) == 0o700


def test_a_symlinked_or_non_directory_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PermissionError, match="symlink"):
        ensure_private_dir(link)
    assert mode(real) == 0o755                  # the symlink's target keeps its mode
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(PermissionError, match="not a directory"):
        ensure_private_dir(a_file)


# ---------------------------------------------------------------- secret files


def test_a_secret_file_is_0600_under_any_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret"
    write_secret_file(path, "s3cr3t\n")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert read_secret_file(path) == "s3cr3t\n"
    write_secret_file(path, "rotated\n")
    assert mode(path) == 0o600 and read_secret_file(path) == "rotated\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]   # no temporary left


def test_a_symlink_at_the_next_temporary_name_is_not_followed(
        tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = ensure_private_dir(tmp_path / "state")
    monkeypatch.setattr("secrets.token_hex", lambda n=None: "0" * 16)
    for name in ("jwt_secret", "stack.json", "local-principals.json", "postgres_password"):
        planted = state / f".{name}.{'0' * 16}.tmp"
        planted.symlink_to(victim)
        with pytest.raises(FileExistsError):
            write_secret_file(state / name, "s3cr3t")
        assert planted.is_symlink()
        assert not (state / name).exists()
    assert_untouched(victim)


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path, victim: Path) -> None:
    state = ensure_private_dir(tmp_path / "state")
    target = state / "secret"
    target.symlink_to(victim)
    write_secret_file(target, "s3cr3t")
    assert not target.is_symlink() and mode(target) == 0o600
    assert target.read_text() == "s3cr3t"
    assert_untouched(victim)


def test_an_exclusive_write_never_replaces_anything(tmp_path: Path, victim: Path) -> None:
    state = ensure_private_dir(tmp_path / "state")
    dangling = state / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    linked = state / "linked"
    linked.symlink_to(victim)
    for target in (dangling, linked):
        with pytest.raises(FileExistsError):
            write_secret_file(target, "s3cr3t", replace=False)
        assert target.is_symlink()
    assert not (tmp_path / "nowhere").exists()
    assert_untouched(victim)
    assert sorted(p.name for p in state.iterdir()) == ["dangling", "linked"]


def test_reading_refuses_symlinks_loose_modes_and_fifos(tmp_path: Path, victim: Path) -> None:
    state = ensure_private_dir(tmp_path / "state")
    link = state / "link"
    link.symlink_to(victim)
    with pytest.raises(PermissionError, match="symlink"):
        read_secret_file(link)
    loose = state / "loose"
    loose.write_text("s3cr3t")
    loose.chmod(0o640)
    with pytest.raises(PermissionError, match=r"may be read by others \(mode 0640\).*chmod 600"):
        read_secret_file(loose)
    fifo = state / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(PermissionError, match="not a regular file"):
        read_secret_file(fifo)                  # and it does not block waiting for a writer


# ---------------------------------------------------------------- the JWT signing secret


def test_the_jwt_secret_is_created_0600_in_a_0700_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = local_secret(state)
    assert len(secret) >= 48
    assert mode(state) == 0o700 and mode(state / "jwt_secret") == 0o600
    assert local_secret(state) == secret
    assert sorted(p.name for p in state.iterdir()) == ["jwt_secret"]


def test_the_jwt_secret_never_follows_the_old_tmp_symlink(tmp_path: Path, victim: Path) -> None:
    """The old code wrote `jwt_secret.tmp` (0644, then chmod): a symlink planted there made
    it write the secret into the symlink's target."""
    state = ensure_private_dir(tmp_path / "state")
    for old in ("jwt_secret.tmp", ".jwt_secret.tmp"):
        (state / old).symlink_to(victim)
    secret = local_secret(state)
    assert_untouched(victim)
    assert VICTIM_TEXT.strip() != secret
    assert (state / "jwt_secret.tmp").is_symlink()
    assert mode(state / "jwt_secret") == 0o600


def test_a_symlinked_or_readable_jwt_secret_is_refused(tmp_path: Path, victim: Path) -> None:
    state = ensure_private_dir(tmp_path / "state")
    (state / "jwt_secret").symlink_to(victim)
    with pytest.raises(PermissionError, match="symlink"):
        local_secret(state)
    assert_untouched(victim)
    (state / "jwt_secret").unlink()
    (state / "jwt_secret").write_text("x" * 64)
    (state / "jwt_secret").chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        local_secret(state)
    assert mode(state / "jwt_secret") == 0o644        # refused, not silently repaired


def test_an_empty_jwt_secret_is_replaced(tmp_path: Path) -> None:
    state = ensure_private_dir(tmp_path / "state")
    fd = os.open(state / "jwt_secret", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    secret = local_secret(state)
    assert secret and (state / "jwt_secret").read_text().strip() == secret


def test_processes_making_the_jwt_secret_at_once_agree(tmp_path: Path) -> None:
    state = tmp_path / "state"
    found: list[str] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        found.append(local_secret(state))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert (state / "jwt_secret").read_text().strip() == found[0]


def test_the_cli_makes_a_0700_state_dir_and_a_0600_jwt_secret(tmp_path: Path) -> None:
    state = tmp_path / "fresh" / "state"
    result = CliRunner().invoke(app, ["token", "create", "--service", "--json",
                                      "--state-dir", str(state)], env={})
    assert result.exit_code == 0, result.stderr
    assert mode(state) == 0o700 and mode(state / "jwt_secret") == 0o600


# ---------------------------------------------------------------- the stack file


def a_stack(tmp_path: Path) -> Stack:
    return Stack(gateway_url="http://127.0.0.1:1/rest/v1", token=SecretStr("operator-token"),
                 executor_token=SecretStr("executor-token"),
                 workspace_id="00000000-0000-0000-0000-000000000001", workspace_slug="local",
                 lake=tmp_path / "lake", artifacts=tmp_path / "artifacts",
                 ui_url="http://127.0.0.1:1/")


def test_the_stack_file_is_0600_and_never_follows_a_symlink(tmp_path: Path,
                                                            victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "stack.tmp").symlink_to(victim)        # the old code's temporary name
    (state / "stack.json").symlink_to(victim)
    path = write_stack(state, a_stack(tmp_path))
    assert_untouched(victim)
    assert mode(state) == 0o700 and mode(path) == 0o600 and not path.is_symlink()
    document = json.loads(path.read_text())
    assert document["token"] == "operator-token"
    assert document["executor_token"] == "executor-token"
    loaded = load_stack(state)
    assert loaded is not None and loaded.token.get_secret_value() == "operator-token"


def test_a_stack_file_others_may_read_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = write_stack(state, a_stack(tmp_path))
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="may be read by others"):
        load_stack(state)
    path.chmod(0o600)
    path.write_text("not json")
    with pytest.raises(StackFileError):
        load_stack(state)


# ---------------------------------------------------------------- the local stack's files


def test_the_local_stack_writes_its_files_0600_in_a_0700_state_dir(
        db_url: str, tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`control-room up`'s files, through the real LocalStack (gateway, principals, tokens)
    over the test database; no workers."""
    from control_room.localstack import PRINCIPALS_FILE, LocalStack
    from control_room.settings import load_settings

    monkeypatch.delenv("CONTROL_ROOM_JWT_SECRET", raising=False)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / PRINCIPALS_FILE).symlink_to(victim)
    (state / "local-principals.tmp").symlink_to(victim)
    settings = load_settings(state_dir=state, database_url=db_url, port=0)
    with LocalStack(settings, workers=0) as stack:
        assert stack.info is not None
        assert mode(state) == 0o700
        for name in ("stack.json", PRINCIPALS_FILE, "jwt_secret"):
            assert mode(state / name) == 0o600, name
            assert not (state / name).is_symlink(), name
        principals = json.loads((state / PRINCIPALS_FILE).read_text())
        assert principals["workspace_id"] == stack.info.workspace_id
        assert load_stack(state) == stack.info
    assert_untouched(victim)
    assert not (state / "stack.json").exists()          # removed when the stack stops
