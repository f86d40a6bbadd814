"""The kind registry: kind names -> "module:Class", imported only when a kind is used.

The spec loader and the CLI need the names (`name in KINDS`, `sorted(KINDS)`); only a worker
that runs a kind imports its module (duckdb, deltalake...). A new built-in kind is one line of
`BUILTIN_KINDS`; a kind defined elsewhere is added with `register_kind` (a class) or
`KINDS.add(name, "module:Class")`. See docs/kinds.md ("The registry").
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

from executor.kinds.base import Kind

__all__ = [
    "BUILTIN_KINDS",
    "KINDS",
    "KIND_EXTRAS",
    "PARAMS_SCHEMA_FILE",
    "KindRegistry",
    "MissingExtra",
    "UnknownKindError",
    "available_kinds",
    "kind_for",
    "kind_names",
    "load_kind",
    "missing_extra",
    "params_schema",
    "register_kind",
]

BUILTIN_KINDS: Mapping[str, str] = {
    "python": "executor.kinds.python:PythonKind",
    "sql": "executor.kinds.sql:SqlKind",
    "dbt": "executor.kinds.dbt:DbtKind",
    "spark": "executor.kinds.spark:SparkKind",
    "trino": "executor.kinds.trino:TrinoKind",
}
"""The kinds every worker has, by name: where each kind's class is."""

KIND_EXTRAS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "dbt": ("dbt", ("dbt.cli.main", "dbt.adapters.duckdb")),
    "spark": ("spark", ("pyspark", "py4j")),
}
"""Kinds whose engine is an optional dependency: name -> (the distribution's extra, the
modules that must be importable). `pip install 'lakehouse-control-room[EXTRA]'` adds them."""

PARAMS_SCHEMA_FILE = "params.schema.json"
"""The JSON Schema of a kind's params, beside its package's `__init__.py`: generated from the
kind's pydantic params model (`python -m executor.kinds.schemas`), read by the spec loader
without importing the kind."""


class UnknownKindError(KeyError):
    """No kind is registered under this name, or its module cannot be imported."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:       # KeyError's own quotes the message
        return self.message


class MissingExtra(UnknownKindError):
    """The kind's engine is an optional dependency that is not installed: `extra` says
    which extra of the distribution brings it."""

    def __init__(self, message: str, *, kind: str, extra: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.extra = extra


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(name: str) -> MissingExtra | None:
    """Why the kind `name` cannot run here (its extra is not installed), or None. Imports no
    kind (only the engine's top-level packages are located)."""
    if name not in KIND_EXTRAS:
        return None
    extra, modules = KIND_EXTRAS[name]
    absent = [module for module in modules if not _find(module)]
    if not absent:
        return None
    return MissingExtra(
        f"phase kind {name!r} needs the [{extra}] extra, which is not installed (no module "
        f"{absent[0]}): pip install 'lakehouse-control-room[{extra}]'", kind=name,
        extra=extra)


def params_schema(name: str) -> dict[str, Any] | None:
    """The JSON Schema of the kind `name`'s params (its package's `params.schema.json`), or
    None when the kind has none (a kind registered elsewhere may not). The kind's package is
    located, not imported."""
    target = KINDS.target(name)
    module = target.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / PARAMS_SCHEMA_FILE
        if path.is_file():
            schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return schema
    return None


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
                missing = missing_extra(name)
                if missing is not None:
                    raise missing from exc
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


def available_kinds() -> list[str]:
    """The registered kinds whose extra (if any) is installed, sorted: what a worker runs
    when it is not told (no kind is imported)."""
    return [name for name in sorted(KINDS) if missing_extra(name) is None]


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
