"""The kind registry: kind names -> "module:Class", imported only when a kind is used.

The spec loader and the CLI need the names (`name in KINDS`, `sorted(KINDS)`); only a worker
that runs a kind imports its module (duckdb, deltalake...). A new built-in kind is one line of
`BUILTIN_KINDS`; a kind defined elsewhere is added with `register_kind` (a class) or
`KINDS.add(name, "module:Class")`. See docs/kinds.md ("The registry").
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TypeVar

from executor.kinds.base import Kind

__all__ = [
    "BUILTIN_KINDS",
    "KINDS",
    "KindRegistry",
    "UnknownKindError",
    "kind_for",
    "kind_names",
    "load_kind",
    "register_kind",
]

BUILTIN_KINDS: Mapping[str, str] = {
    "python": "executor.kinds.python:PythonKind",
    "sql": "executor.kinds.sql:SqlKind",
}
"""The kinds every worker has, by name: where each kind's class is."""


class UnknownKindError(KeyError):
    """No kind is registered under this name, or its module cannot be imported."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:       # KeyError's own quotes the message
        return self.message


K = TypeVar("K", bound=type[Kind])


def _target(cls: type[Kind]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class KindRegistry(MutableMapping[str, type[Kind]]):
    """Kind classes by name, each imported the first time it is looked up.

    Membership, iteration and `len` never import a kind; `registry[name]` (and `get`) does,
    raising `UnknownKindError` (a `KeyError`) for a name nobody registered or a target that
    cannot be imported. `registry[name] = cls` registers a class (see `register_kind`)."""

    def __init__(self, targets: Mapping[str, str]) -> None:
        self._targets: dict[str, str] = dict(targets)
        self._loaded: dict[str, type[Kind]] = {}
        self._lock = threading.RLock()

    def add(self, name: str, target: str) -> None:
        """Register the kind `name` as `"package.module:Class"`, imported on first use."""
        module, sep, attr = target.partition(":")
        if not name or not sep or not module or not attr:
            raise ValueError(f"kind {name!r}: target {target!r} is not 'package.module:Class'")
        with self._lock:
            existing = self._targets.get(name)
            if existing is not None and existing != target:
                raise ValueError(f"kind {name!r} is already registered as {existing}")
            self._targets[name] = target

    def target(self, name: str) -> str:
        """Where the kind `name` lives (`"module:Class"`), without importing it."""
        try:
            return self._targets[name]
        except KeyError:
            raise self._unknown(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._targets))

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, name: str) -> type[Kind]:
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is not None:
                return loaded
            target = self.target(name)
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise UnknownKindError(f"phase kind {name!r} ({target}) cannot be imported: "
                                       f"{type(exc).__name__}: {exc}") from exc
            found: object = module
            for part in attr.split("."):
                found = getattr(found, part, None)
            if not isinstance(found, type):
                raise UnknownKindError(f"phase kind {name!r}: {target} is not a class")
            # importing the module may have registered it (`@register_kind`)
            cls = self._loaded.get(name) or self._checked(found)
            if name != cls.NAME:
                raise UnknownKindError(f"phase kind {name!r}: {target} is named {cls.NAME!r}")
            self._loaded[name] = cls
            return cls

    def __setitem__(self, name: str, cls: type[Kind]) -> None:
        with self._lock:
            checked = self._checked(cls)
            if name != checked.NAME:
                raise ValueError(f"{cls.__qualname__}.NAME is {checked.NAME!r}, not {name!r}")
            loaded = self._loaded.get(name)
            if loaded is not None and loaded is not cls:
                raise ValueError(f"kind {name!r} is already registered by {loaded.__qualname__}")
            existing = self._targets.get(name)
            if loaded is None and existing is not None and existing != _target(cls):
                raise ValueError(f"kind {name!r} is already registered as {existing}")
            self._targets[name] = existing or _target(cls)
            self._loaded[name] = cls

    def __delitem__(self, name: str) -> None:
        with self._lock:
            del self._targets[name]
            self._loaded.pop(name, None)

    @staticmethod
    def _checked(cls: type[Kind]) -> type[Kind]:
        name = getattr(cls, "NAME", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} has no NAME")
        if not isinstance(getattr(cls, "CONNECTION_TYPES", None), frozenset):
            raise TypeError(f"{cls.__qualname__}.CONNECTION_TYPES must be a frozenset")
        return cls

    def _unknown(self, name: str) -> UnknownKindError:
        known = ", ".join(sorted(self._targets)) or "none"
        return UnknownKindError(f"unknown phase kind {name!r} (registered: {known})")


KINDS = KindRegistry(BUILTIN_KINDS)
"""The registered kinds: `name in KINDS` and `sorted(KINDS)` import nothing."""


def kind_names() -> list[str]:
    """The registered kinds' names, sorted (no kind is imported)."""
    return sorted(KINDS)


def load_kind(name: str) -> type[Kind]:
    """The class of the kind `name`, its module imported now; `UnknownKindError` otherwise."""
    return KINDS[name]


def kind_for(name: str) -> Kind:
    """A fresh instance of the kind `name` (not started: see `executor.kinds.base.Startable`)."""
    return load_kind(name)()


def register_kind(cls: K) -> K:
    """Register a kind class under its `NAME` (usable as a class decorator). Registering a
    second class under a taken name is an error; registering the same class again is not
    (nor is a built-in kind's module registering the class its target names)."""
    name = getattr(cls, "NAME", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} has no NAME")
    KINDS[name] = cls
    return cls
