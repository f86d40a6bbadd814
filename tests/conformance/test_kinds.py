"""Runs the conformance suite (tests/conformance/kinds.py) against every kind: each case once
per kind, with a PhaseContext built by hand, real Delta tables and the kinds' real engines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.digests import blob_digest, table_digest
from executor.errors import as_phase_error
from executor.kinds import (
    KINDS,
    DatasetBlocked,
    PhaseCancelled,
    PhaseResult,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
)
from executor.tables import OutsideLake
from tests.conformance.kinds import CASES, DRIVERS, Driver, Shape, SparkDriver
from tests.executor.dbt_projects import Recorder, make_ctx

PAIRS = [(kind, case) for kind in DRIVERS for case in CASES]
SLOW_KINDS = frozenset({"spark"})
"""Kinds whose cases start a JVM: marked slow (they still run in CI)."""


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_kinds() -> Iterator[None]:
    """The spark driver's one started kind (its warm JVM) is stopped after the module."""
    yield
    if SparkDriver.shared is not None:
        SparkDriver.shared.close()  # type: ignore[attr-defined]
        SparkDriver.shared = None


@pytest.fixture()
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    root.mkdir()
    return root


def driver_for(kind: str, tmp_path: Path) -> Driver:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    driver = DRIVERS[kind](code_dir=code)
    driver.prepare()
    return driver


def run(driver: Driver, tmp_path: Path, lake: Path, params: dict[str, Any], *,
        name: str = "out", recorder: Recorder | None = None, **ctx_args: Any) -> PhaseResult:
    ctx = make_ctx(tmp_path / name, params, kind=driver.kind, recorder=recorder,
                   code_dir=driver.code_dir, lake_root=lake, **ctx_args)
    return driver.make().run(ctx)


def test_every_registered_kind_has_a_driver() -> None:
    assert set(DRIVERS) == set(KINDS)
    for driver in DRIVERS.values():
        assert set(driver.cannot) <= set(CASES)
        assert all(reason.strip() for reason in driver.cannot.values())


@pytest.mark.parametrize(("kind", "case"), [
    pytest.param(k, c, id=f"{k}-{c}", marks=[pytest.mark.slow] if k in SLOW_KINDS else [])
    for k, c in PAIRS])
def test_conformance(kind: str, case: str, tmp_path: Path, lake: Path) -> None:
    driver = driver_for(kind, tmp_path)
    if case in driver.cannot:
        # said once, in the driver; the test still proves the reason is there
        assert driver.cannot[case]
        return
    globals()[f"case_{case}"](driver, tmp_path, lake)


def case_success(driver: Driver, tmp_path: Path, lake: Path) -> None:
    recorder = Recorder()
    uri = str(lake / "gold" / "amounts")
    result = run(driver, tmp_path, lake, driver.write(uri, "gold.amounts", "v1"),
                 recorder=recorder)
    [entry] = result.output_manifest["tables"]
    assert (entry["name"], entry["uri"], entry["rows"]) == ("gold.amounts", uri, 3)
    assert entry["digest"] == table_digest(uri, entry["version"]).digest
    assert entry["schema_change"]["change"] == "INITIAL"
    assert result.outputs and all(o.path.is_file() for o in result.outputs)
    assert recorder.events, "a kind reports what it does as events"
    assert recorder.progress and recorder.progress[-1] == 1.0


def case_schema_evolution(driver: Driver, tmp_path: Path, lake: Path) -> None:
    uri = str(lake / "gold" / "amounts")
    changes = []
    shapes: tuple[Shape, ...] = ("v1", "v2")
    for step, shape in enumerate(shapes):
        result = run(driver, tmp_path, lake, driver.write(uri, "gold.amounts", shape),
                     name=f"out{step}")
        [entry] = result.output_manifest["tables"]
        changes.append(entry["schema_change"]["change"])
    assert changes == ["INITIAL", "NON_BREAKING"]
    with pytest.raises(SchemaBlocked) as raised:
        run(driver, tmp_path, lake, driver.write(uri, "gold.amounts", "v3"), name="out2")
    assert (raised.value.table, raised.value.uri) == ("gold.amounts", uri)
    assert sorted((c["column"], c["change"]) for c in raised.value.changes) == [
        ("amount", "removed"), ("note", "removed")]
    assert not raised.value.retryable
    versions_before = table_digest(uri).version
    # a blocked dataset is not written at all; an accepted one takes the change
    with pytest.raises(DatasetBlocked):
        run(driver, tmp_path, lake, driver.write(uri, "gold.amounts", "v3"), name="out3",
            datasets={"gold.amounts": "blocked"})
    assert table_digest(uri).version == versions_before
    result = run(driver, tmp_path, lake, driver.write(uri, "gold.amounts", "v3"), name="out4",
                 datasets={"gold.amounts": "accepted"})
    [entry] = result.output_manifest["tables"]
    assert entry["schema_change"]["change"] == "BREAKING"
    assert [column["name"] for column in entry["schema_change"]["schema"]] == ["id"]


def _stopped(driver: Driver, tmp_path: Path, lake: Path, **ctx_args: Any) -> float:
    started = time.monotonic()
    run(driver, tmp_path, lake, driver.slow(lake), **ctx_args)
    return time.monotonic() - started      # not reached: the caller expects a raise


def case_cancel(driver: Driver, tmp_path: Path, lake: Path) -> None:
    cancel = threading.Event()
    timer = threading.Timer(1.5, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(PhaseCancelled):
            _stopped(driver, tmp_path, lake, cancel=cancel, timeout_s=300)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15, "a cancelled phase stops within seconds"


def case_timeout(driver: Driver, tmp_path: Path, lake: Path) -> None:
    started = time.monotonic()
    with pytest.raises(PhaseTimeout) as raised:
        _stopped(driver, tmp_path, lake, timeout_s=2)
    assert time.monotonic() - started < 15
    assert raised.value.reason == "timeout" and not raised.value.retryable


def case_terminal_error(driver: Driver, tmp_path: Path, lake: Path) -> None:
    with pytest.raises(Exception) as raised:
        run(driver, tmp_path, lake, driver.terminal(lake))
    error = as_phase_error(raised.value)
    assert isinstance(error, TerminalPhaseError) and not error.retryable, error


def case_transient_error(driver: Driver, tmp_path: Path, lake: Path) -> None:
    with pytest.raises(Exception) as raised:
        run(driver, tmp_path, lake, driver.transient(lake))
    error = as_phase_error(raised.value)
    assert error.retryable, f"{type(raised.value).__name__}: {raised.value}"


def case_rebuild(driver: Driver, tmp_path: Path, lake: Path) -> None:
    digests = []
    files = []
    for build in ("first", "second"):
        uri = str(lake / build / "amounts")
        result = run(driver, tmp_path, lake, driver.write(uri, "gold.amounts", "v2"),
                     name=build)
        [entry] = result.output_manifest["tables"]
        digests.append(entry["digest"])
        files.append({o.name: blob_digest(o.path) for o in result.outputs
                      if o.name in driver.identical_files})
    assert digests[0] == digests[1]
    assert files[0] == files[1] and set(files[0]) == set(driver.identical_files)


def case_lake_confinement(driver: Driver, tmp_path: Path, lake: Path) -> None:
    outside = tmp_path / "elsewhere" / "amounts"
    with pytest.raises(TerminalPhaseError) as raised:
        run(driver, tmp_path, lake, driver.write(str(outside), "gold.amounts", "v1"))
    # OutsideLake itself, or (python: raised in the phase's process) its terminal message
    assert isinstance(raised.value, OutsideLake) or driver.kind == "python"
    assert "is outside the workspace lake" in raised.value.message
    assert not outside.exists()


def case_code_confinement(driver: Driver, tmp_path: Path, lake: Path) -> None:
    (tmp_path / "outside.sql").write_text("select 1 as x")
    with pytest.raises(TerminalPhaseError) as raised:
        run(driver, tmp_path, lake, driver.outside_code(lake))
    assert "run's code" in raised.value.message or "checkout" in raised.value.message
