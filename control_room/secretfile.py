"""Secret files (the JWT signing secret, the embedded PostgreSQL's password, the stack file,
the local stack's principals): created 0600 with O_EXCL in a private directory, never through
a symlink, never chmod'ed after the fact.

A private directory is one only its owner may list, enter or write: mode 0700. One exception
is kept when found: 0710 (its group may pass through it to a path it knows, not list it),
which is how the state directory is shared with the embedded server's system user when the
stack runs as root (control_room/local.py). Any other group or other bit is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["ensure_private_dir", "read_secret_file", "write_secret_file"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

GROUP_TRAVERSE = 0o010
"""The one group/other bit a private directory may keep: group search (see the module)."""


def ensure_private_dir(path: Path) -> Path:
    """`path` as a directory only its owner may list or write (0700, or 0710 when it is so
    already), created if missing. A symlink, a non-directory or a directory of another user
    is refused (`PermissionError`)."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise PermissionError(f"{path} is not a directory") from None
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError:
        # ELOOP (a symlink) or ENOTDIR
        raise PermissionError(f"{path} is not a directory (a symlink is refused)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):
            raise PermissionError(f"{path} is not a directory")
        if info.st_uid != os.geteuid():
            raise PermissionError(f"{path} belongs to another user (uid {info.st_uid})")
        loose = info.st_mode & 0o077
        if loose not in (0, GROUP_TRAVERSE):
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_secret_file(path: Path, value: str, *, replace: bool = True) -> None:
    """Write `value` to `path`, readable by its owner only: a new file with a random name
    made 0600 with O_EXCL|O_NOFOLLOW (a pre-existing file or symlink is never opened), then
    renamed over `path` (a symlink at `path` is replaced, never followed).

    `replace=False`: only when nothing is at `path` yet (`FileExistsError` otherwise, even
    for a dangling symlink), atomically, so that of two processes making the same secret at
    once exactly one wins and the other reads the winner's."""
    path = Path(path)
    ensure_private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            # link(2) never follows nor replaces what is at `path`
            os.link(temporary, path, follow_symlinks=False)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def read_secret_file(path: Path) -> str:
    """The text of a secret file. Refused (`PermissionError`) when it is a symlink, not a
    regular file, another user's, or readable or writable by others."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError as exc:
        if path.is_symlink():
            raise PermissionError(f"{path} is a symlink: a secret file must be a real "
                                  "file") from None
        raise exc
    with os.fdopen(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise PermissionError(f"{path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise PermissionError(
                f"{path} may be read by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                f"make it 0600 (chmod 600 {path})")
        return handle.read()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | _DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
