"""The kind registry is lazy (names without imports, a kind's module on first use) and the
modules phase code imports start nothing and load no data library."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from executor.kinds import (
    KINDS,
    KindRegistry,
    PhaseContext,
    PhaseResult,
    UnknownKindError,
    load_kind,
)
from executor.kinds.python import PythonKind
from executor.kinds.sql import SqlKind
from tests.executor.harness import REPO

DATA_LIBRARIES = ("duckdb", "deltalake", "pyarrow", "polars")

PROBE = """
DATA = {data}
import json, os, sys, threading
for name in sys.argv[1:]:
    __import__(name)
children = []
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/children") as f:
        children += f.read().split()
print(json.dumps({
    "data": sorted(m for m in sys.modules if m.split(".")[0] in DATA),
    "kinds": sorted(m for m in sys.modules if m.startswith(("executor.kinds.python",
                                                            "executor.kinds.sql"))),
    "control_room": sorted(m for m in sys.modules if m.startswith("control_room")
                           and not m.startswith("control_room.contract")),
    "threads": threading.active_count(),
    "os_threads": len(os.listdir("/proc/self/task")),
    "children": children,
}))
""".replace("{data}", repr(DATA_LIBRARIES))


def probe(*modules: str) -> dict[str, Any]:
    """What importing `modules` in a fresh interpreter loaded and started."""
    done = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_importing_the_registry_and_the_sdk_loads_and_starts_nothing() -> None:
    found = probe("executor.kinds", "executor.kinds.registry", "executor.sdk")
    assert found["data"] == []
    assert found["control_room"] == ["control_room"]     # and its contract package only
    assert (found["threads"], found["os_threads"], found["children"]) == (1, 1, [])
    # the sdk brings the python kind's context, not its sql sibling
    assert not [m for m in found["kinds"] if m.startswith("executor.kinds.sql")]


def test_kind_names_import_no_kind() -> None:
    code = ("import sys; from executor.kinds import KINDS, kind_names; "
            "assert 'sql' in KINDS and 'python' in KINDS and 'nope' not in KINDS; "
            "assert kind_names() == sorted(KINDS) == ['dbt', 'python', 'spark', 'sql', 'trino']; "
            "print(sorted(m for m in sys.modules if m.startswith('executor.kinds.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['executor.kinds.base', 'executor.kinds.registry']"


def test_the_spec_loader_imports_no_data_library() -> None:
    found = probe("control_room.specs")
    assert found["data"] == [] and found["kinds"] == []


def test_load_kind_imports_the_kind_on_first_use() -> None:
    assert load_kind("python") is PythonKind
    assert load_kind("sql") is SqlKind
    assert KINDS["sql"] is SqlKind
    assert KINDS.target("sql") == "executor.kinds.sql:SqlKind"
    with pytest.raises(UnknownKindError, match=r"unknown phase kind 'nope' \(registered: "
                                               r"dbt, python, spark, sql, trino\)") as raised:
        load_kind("nope")
    assert isinstance(raised.value, KeyError)
    assert str(raised.value).startswith("unknown phase kind")     # no KeyError quotes


class Echo:
    NAME: ClassVar[str] = "echo"
    CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset()

    def run(self, ctx: PhaseContext) -> PhaseResult:
        return PhaseResult(output_manifest=dict(ctx.params))


def test_a_registry_of_targets() -> None:
    registry = KindRegistry({"echo": f"{__name__}:Echo",
                             "gone": "tests.executor.no_such_module:Kind",
                             "notaclass": f"{__name__}:DATA_LIBRARIES",
                             "misnamed": f"{__name__}:Misnamed"})
    assert sorted(registry) == ["echo", "gone", "misnamed", "notaclass"] and len(registry) == 4
    assert registry["echo"] is Echo
    assert registry.get("nope") is None
    with pytest.raises(UnknownKindError, match=r"phase kind 'gone' \(tests.executor.no_such"
                                               r"_module:Kind\) cannot be imported"):
        registry["gone"]
    with pytest.raises(UnknownKindError, match="is not a class"):
        registry["notaclass"]
    with pytest.raises(UnknownKindError, match="is named 'misnamed-really'"):
        registry["misnamed"]
    registry.add("echo", f"{__name__}:Echo")            # the same again: fine
    with pytest.raises(ValueError, match="already registered"):
        registry.add("echo", f"{__name__}:Other")
    with pytest.raises(ValueError, match=r"not 'package\.module:Class'"):
        registry.add("bad", "no-colon")
    del registry["echo"]
    assert "echo" not in registry
    registry["echo"] = Echo                              # a class, registered directly
    assert registry["echo"] is Echo and registry.target("echo") == f"{__name__}:Echo"


class Misnamed(Echo):
    NAME: ClassVar[str] = "misnamed-really"
