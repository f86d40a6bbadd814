"""Secret files (the JWT signing secret, the embedded PostgreSQL's password, connection
secrets of the local stack): created 0600 with O_EXCL in a 0700 directory, never through a
symlink, never chmod'ed after the fact."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["ensure_private_dir", "read_secret_file", "write_secret_file"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def ensure_private_dir(path: Path) -> Path:
    """`path` as a directory only its owner may enter (0700), created if missing. A symlink
    or a directory of another user is refused (`PermissionError`)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not os.path.isdir(path) or os.path.islink(path):
        raise PermissionError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_secret_file(path: Path, value: str) -> None:
    """Write `value` to `path`, readable by its owner only: a new file made 0600 with O_EXCL
    (a pre-existing temporary or symlink is never followed), then renamed over `path`."""
    path = Path(path)
    ensure_private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_secret_file(path: Path) -> str:
    """The text of a secret file, refused (`PermissionError`) when it is a symlink or others
    may read it."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8") as handle:
        if os.fstat(handle.fileno()).st_mode & 0o077:
            raise PermissionError(f"{path} may be read by others: make it 0600")
        return handle.read()
