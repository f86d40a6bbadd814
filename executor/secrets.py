"""Secret references of workspace connections (`env:NAME`, `file:/path`), the policy a process
resolves them under (`CONTROL_ROOM_SECRET_ALLOW`), and the masking of resolved values.

A worker (and `control-room connections test`) resolves a reference only when its own policy
allows it: `env:PREFIX` entries allow environment variables whose name starts with PREFIX,
`file:/dir` entries allow regular files whose real path (symlinks resolved) lies under the
real path of `/dir`. Nothing is allowed when the policy is unset; `CONTROL_ROOM_*` variables
(the worker's token, the gateway's settings) never resolve; files under /proc, /sys and /dev
only when an entry names a directory there. Errors name the reference and the missing
policy entry, never a value. docs/kinds.md ("Connections").

Standard library only: the CLI imports it without the data plane.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MASK",
    "MAX_SECRET_BYTES",
    "MIN_MASKED_CHARS",
    "POLICY_VARIABLE",
    "RESERVED_ENV_PREFIX",
    "Masker",
    "SecretError",
    "SecretPolicy",
    "child_environment",
    "mask_logs",
    "parse_reference",
    "resolve_secrets",
]

POLICY_VARIABLE = "CONTROL_ROOM_SECRET_ALLOW"
RESERVED_ENV_PREFIX = "CONTROL_ROOM_"
MAX_SECRET_BYTES = 64 * 1024
MIN_MASKED_CHARS = 4
"""Shorter values are not masked (masking `a` would blank every `a` of every message)."""
MASK = "***"
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class SecretError(ValueError):
    """A reference that is malformed, refused by the policy, or cannot be read. The message
    names the reference, never a value."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def parse_reference(reference: str) -> tuple[str, str]:
    """(`env`, NAME) or (`file`, /absolute/path) of a reference; SecretError otherwise."""
    if not isinstance(reference, str):
        raise SecretError(f"a secret reference must be a string, not {type(reference).__name__}")
    scheme, _, target = reference.partition(":")
    if scheme == "env" and _ENV_NAME.match(target):
        return "env", target
    if scheme == "file" and target.startswith("/") and "\0" not in target:
        return "file", target
    shown = reference if len(reference) <= 80 else reference[:77] + "..."
    raise SecretError(f"malformed secret reference {shown!r}: use env:NAME or "
                      "file:/absolute/path")


def _inside(path: str, directory: str) -> bool:
    return path != directory and os.path.commonpath([path, directory]) == directory


def _pseudo(path: str) -> str | None:
    for root in PSEUDO_FILESYSTEMS:
        if path == root or path.startswith(root + "/"):
            return root
    return None


@dataclass(frozen=True)
class SecretPolicy:
    """What a process may resolve: `env_prefixes` and `file_dirs` (absolute, as given)."""

    env_prefixes: tuple[str, ...] = ()
    file_dirs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> SecretPolicy:
        """The policy of `CONTROL_ROOM_SECRET_ALLOW`'s value: comma-separated `env:PREFIX`
        and `file:/dir` entries (empty or None: nothing). ValueError naming a bad entry."""
        prefixes: list[str] = []
        dirs: list[str] = []
        for raw in (text or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            scheme, _, target = entry.partition(":")
            if scheme == "env":
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target):
                    raise ValueError(f"{POLICY_VARIABLE}: {entry!r} is not env:PREFIX (a "
                                     "variable name's first letters)")
                if target.startswith(RESERVED_ENV_PREFIX):
                    raise ValueError(f"{POLICY_VARIABLE}: {entry!r} would allow "
                                     f"{RESERVED_ENV_PREFIX}* variables, which never resolve")
                prefixes.append(target)
            elif scheme == "file":
                if not target.startswith("/"):
                    raise ValueError(f"{POLICY_VARIABLE}: {entry!r} is not file:/absolute/dir")
                dirs.append(os.path.normpath(target))
            else:
                raise ValueError(f"{POLICY_VARIABLE}: {entry!r} is not env:PREFIX or "
                                 "file:/dir")
        return cls(tuple(dict.fromkeys(prefixes)), tuple(dict.fromkeys(dirs)))

    def describe(self) -> str:
        """The policy as `CONTROL_ROOM_SECRET_ALLOW` would say it (`unset`: empty)."""
        entries = [f"env:{p}" for p in self.env_prefixes] + [f"file:{d}" for d in self.file_dirs]
        return ",".join(entries) or "unset"

    def allows_env(self, name: str) -> bool:
        """Whether the variable `name` may be resolved (never `CONTROL_ROOM_*`)."""
        return not name.startswith(RESERVED_ENV_PREFIX) and any(
            name.startswith(prefix) for prefix in self.env_prefixes)

    def resolve(self, reference: str, environ: Mapping[str, str] | None = None) -> str:
        """The value `reference` points at, when the policy allows it (SecretError: why
        not, and which entry is missing)."""
        scheme, target = parse_reference(reference)
        if scheme == "env":
            return self._env(reference, target, os.environ if environ is None else environ)
        return self._file(reference, target)

    def _refused(self, reference: str, why: str) -> SecretError:
        return SecretError(f"{reference} is refused by this process's {POLICY_VARIABLE} "
                           f"({self.describe()}): {why}")

    def _env(self, reference: str, name: str, environ: Mapping[str, str]) -> str:
        if name.startswith(RESERVED_ENV_PREFIX):
            raise self._refused(reference, f"{RESERVED_ENV_PREFIX}* variables are the "
                                           "process's own settings and never resolve")
        if not self.allows_env(name):
            raise self._refused(reference, f"no env: entry is a prefix of {name} (add "
                                           f"env:{name} or a prefix of it)")
        value = environ.get(name)
        if value is None:
            raise SecretError(f"{reference}: the environment has no variable {name}")
        return value

    def _allowing_dir(self, real: str) -> str | None:
        for directory in self.file_dirs:
            allowed = os.path.realpath(directory)
            if not _inside(real, allowed):
                continue
            pseudo = _pseudo(real)
            if pseudo is not None and _pseudo(allowed) != pseudo:
                continue        # file:/ does not open /proc: an entry must name it
            return allowed
        return None

    def _file(self, reference: str, path: str) -> str:
        real = os.path.realpath(path)
        shown = path if real == path else f"{path} (really {real})"
        if not self.file_dirs:
            raise self._refused(reference, "no file: entry allows any file")
        allowed = self._allowing_dir(real)
        if allowed is None:
            where = (f"; {_pseudo(real)} is never allowed by a directory outside it"
                     if _pseudo(real) else "")
            raise self._refused(reference, f"{shown} is in no allowed directory (add "
                                           f"file:{os.path.dirname(real)} or move the file)"
                                           f"{where}")
        try:
            fd = os.open(real, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise SecretError(f"{reference}: {exc.strerror or 'cannot be opened'}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecretError(f"{reference}: {shown} is not a regular file")
            opened = _opened_path(fd)
            if opened is not None and not _inside(opened, allowed):
                raise self._refused(reference, f"{shown} changed while it was opened")
            if info.st_size > MAX_SECRET_BYTES:
                raise SecretError(f"{reference}: larger than {MAX_SECRET_BYTES} bytes")
            data = b""
            while len(data) <= MAX_SECRET_BYTES:
                chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise SecretError(f"{reference}: {exc.strerror or 'cannot be read'}") from None
        finally:
            os.close(fd)
        if len(data) > MAX_SECRET_BYTES:
            raise SecretError(f"{reference}: larger than {MAX_SECRET_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"{reference}: not UTF-8 text") from None
        return text.removesuffix("\n").removesuffix("\r")


def _opened_path(fd: int) -> str | None:
    """The path the kernel opened for `fd` (Linux), to catch a swap after `realpath`."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def resolve_secrets(secrets: Mapping[str, str], policy: SecretPolicy, *,
                    environ: Mapping[str, str] | None = None,
                    masker: Masker | None = None) -> dict[str, str]:
    """Every field's value of a connection's `secrets` ({field: reference}), resolved under
    `policy`; each value is added to `masker` as soon as it is read. SecretError naming the
    field and the reference."""
    values: dict[str, str] = {}
    for field_name, reference in secrets.items():
        try:
            value = policy.resolve(reference, environ)
        except SecretError as exc:
            raise SecretError(f"secret {field_name}: {exc.message}") from None
        if masker is not None:
            masker.add([value])
        values[str(field_name)] = value
    return values


def child_environment(environ: Mapping[str, str], policy: SecretPolicy) -> dict[str, str]:
    """`environ` without what a phase's child process must not see: `CONTROL_ROOM_*` (the
    worker's token) and every variable the policy would resolve (an env secret reaches a
    phase only through its connection)."""
    return {name: value for name, value in environ.items()
            if not name.startswith(RESERVED_ENV_PREFIX)
            and not any(name.startswith(prefix) for prefix in policy.env_prefixes)}


# ----------------------------------------------------------------------------------- masking


class Masker:
    """The secret values one attempt resolved, replaced by `***` in what it sends."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            found = set(self._values) | {v for v in values if len(v) >= MIN_MASKED_CHARS}
            self._values = tuple(sorted(found, key=len, reverse=True))

    @property
    def values(self) -> tuple[str, ...]:
        return self._values

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        for value in self._values:
            encoded = value.encode("utf-8")
            if encoded in data:
                data = data.replace(encoded, MASK.encode())
        return data

    def json(self, value: Any) -> Any:
        """A JSON value with every string (keys too) masked."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        return value


class _ActiveSecrets(logging.Filter):
    """A logging filter masking the values of every attempt in progress (its `Masker`)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._maskers: dict[int, Masker] = {}

    def register(self, masker: Masker) -> None:
        with self._lock:
            self._maskers[id(masker)] = masker

    def unregister(self, masker: Masker) -> None:
        with self._lock:
            self._maskers.pop(id(masker), None)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            maskers = list(self._maskers.values())
        if not any(maskers):
            return True
        everything = Masker(v for m in maskers for v in m.values)
        try:
            message = record.getMessage()
        except Exception:       # a bad format: leave it to the handler
            return True
        masked = everything.text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = everything.text(record.exc_text)
        return True


ACTIVE = _ActiveSecrets()
_MASKED_LOGGERS = ("executor.worker", "executor", "control_room.contract.client")


def mask_logs() -> _ActiveSecrets:
    """Install the masking filter on the loggers of the worker and its client (idempotent);
    answers the registry attempts add their `Masker` to."""
    for name in _MASKED_LOGGERS:
        logger = logging.getLogger(name)
        if ACTIVE not in logger.filters:
            logger.addFilter(ACTIVE)
    return ACTIVE
