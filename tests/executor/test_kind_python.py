"""The kind protocol and registry, and the python kind against real spawned subprocesses
(entrypoints in `tests.executor.sample_entrypoints`). Each subprocess costs a spawn (about
0.3-1 s), so each case starts at most one."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from executor.kinds import (
    KINDS,
    Connection,
    DatasetBlocked,
    EventLevel,
    KindOptions,
    OutputFile,
    PhaseCancelled,
    PhaseContext,
    PhaseError,
    PhaseResult,
    PhaseTimeout,
    SchemaBlocked,
    TerminalPhaseError,
    TransientPhaseError,
    UnknownKindError,
    as_phase_error,
    kind_for,
    register_kind,
)
from executor.kinds.python import MAX_OUTPUT_LINES, PythonKind, parse_entrypoint
from executor.kinds.python.spares import SparePool

SAMPLES = "tests.executor.sample_entrypoints"


@dataclass
class Recorder:
    """The worker's side of emit/progress: records every call in order."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    on_event: dict[str, threading.Event] = field(default_factory=dict)

    def emit(
        self,
        type: str,
        message: str,
        level: EventLevel = "info",
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append(("event", type, message, level, payload))
        if type in self.on_event:
            self.on_event[type].set()

    def progress(self, value: float | Mapping[str, Any]) -> None:
        self.calls.append(("progress", value))

    def payload(self, type: str) -> Mapping[str, Any]:
        for call in self.calls:
            if call[0] == "event" and call[1] == type:
                payload: Mapping[str, Any] = call[4]
                return payload
        raise AssertionError(f"no {type} event in {self.calls}")


def make_ctx(
    tmp_path: Path,
    recorder: Recorder,
    entrypoint: object,
    args: Mapping[str, Any] | None = None,
    timeout_s: float | None = 60.0,
    cancel: threading.Event | None = None,
) -> PhaseContext:
    params: dict[str, Any] = {"entrypoint": entrypoint}
    if args is not None:
        params["args"] = dict(args)
    return PhaseContext(
        run_id="run-1",
        phase="load",
        attempt=2,
        kind="python",
        params=params,
        inputs={"extract": {"rows": 5}},
        git_sha="abc123",
        input_manifest={"extract": {"digest": "blake3:" + "0" * 64}},
        output_dir=tmp_path / "out",
        emit=recorder.emit,
        progress=recorder.progress,
        connections={
            "warehouse": Connection("warehouse", "postgres", {"password": "s3cret"}),
        },
        cancel=cancel or threading.Event(),
        timeout_s=timeout_s,
    )


def process_gone(pid: int) -> bool:
    """No such process, or a zombie (killed; waiting for a parent that may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return process_gone(pid)


# -- the protocol and the registry ----------------------------------------------------------


def test_registry_knows_the_python_kind() -> None:
    assert KINDS["python"] is PythonKind
    kind = kind_for("python")
    assert isinstance(kind, PythonKind)
    assert kind.NAME == "python"
    assert not kind.CONNECTION_TYPES
    with pytest.raises(UnknownKindError, match=r"unknown phase kind 'nope'.*python"):
        kind_for("nope")


def test_register_kind_checks_names() -> None:
    class Echo:
        NAME: ClassVar[str] = "test-echo"
        CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset({"postgres"})

        def run(self, ctx: PhaseContext) -> PhaseResult:
            return PhaseResult(output_manifest=dict(ctx.params))

    class Other(Echo):
        pass

    class Nameless:
        CONNECTION_TYPES: ClassVar[frozenset[str]] = frozenset()

        def run(self, ctx: PhaseContext) -> PhaseResult:
            return PhaseResult()

    try:
        assert register_kind(Echo) is Echo
        assert register_kind(Echo) is Echo  # the same class again: fine
        assert isinstance(kind_for("test-echo"), Echo)
        with pytest.raises(ValueError, match="already registered"):
            register_kind(Other)
        with pytest.raises(TypeError, match="no NAME"):
            register_kind(Nameless)  # type: ignore[type-var]
    finally:
        KINDS.pop("test-echo", None)


def test_error_classes_and_unknown_errors_are_transient() -> None:
    assert TerminalPhaseError("x").retryable is False
    assert TransientPhaseError("x").retryable is True
    assert PhaseTimeout("x").retryable is False
    assert PhaseTimeout("x").reason == "timeout"
    assert isinstance(PhaseTimeout("x"), TerminalPhaseError)
    assert PhaseCancelled("x").reason == "cancelled"
    terminal = TerminalPhaseError("no")
    assert as_phase_error(terminal) is terminal
    wrapped = as_phase_error(KeyError("k"))
    assert isinstance(wrapped, TransientPhaseError)
    assert wrapped.error_type == "KeyError"
    assert "KeyError" in str(wrapped)


def test_connection_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, Recorder(), f"{SAMPLES}:succeed")
    assert "s3cret" not in repr(ctx)
    assert "s3cret" not in repr(ctx.connections["warehouse"])


# -- the python kind: no subprocess needed --------------------------------------------------


@pytest.mark.parametrize(
    "entrypoint",
    ["no_colon", "a.b:", ":fn", "a b:fn", "mod:fn:extra", "1mod:fn", 42, None],
)
def test_malformed_entrypoints_fail_terminally_without_a_process(
    tmp_path: Path, entrypoint: object
) -> None:
    with pytest.raises(TerminalPhaseError, match="entrypoint"):
        PythonKind().run(make_ctx(tmp_path, Recorder(), entrypoint))
    assert parse_entrypoint("pkg.mod:Cls.method") == ("pkg.mod", "Cls.method")


def test_args_must_be_an_object(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, Recorder(), f"{SAMPLES}:succeed")
    ctx = dataclasses.replace(ctx, params={"entrypoint": "m:f", "args": [1]})
    with pytest.raises(TerminalPhaseError, match="args must be a JSON object"):
        PythonKind().run(ctx)


def test_already_cancelled_phase_starts_nothing(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PhaseCancelled):
        PythonKind().run(make_ctx(tmp_path, Recorder(), f"{SAMPLES}:succeed", cancel=cancel))


# -- the python kind: real subprocesses -----------------------------------------------------


def test_success_returns_manifest_events_progress_and_outputs(tmp_path: Path) -> None:
    recorder = Recorder()
    ctx = make_ctx(tmp_path, recorder, f"{SAMPLES}:succeed", args={"limit": 3})
    started = time.monotonic()
    result = PythonKind().run(ctx)
    # the entrypoint left a non-daemon thread sleeping 60 s: the phase did not wait for it
    assert time.monotonic() - started < 30

    manifest = result.output_manifest
    child_pid = manifest.pop("pid")
    assert child_pid != os.getpid()
    assert manifest == {
        "args": {"limit": 3},
        "inputs": {"extract": {"rows": 5}},
        "run_id": "run-1",
        "phase": "load",
        "attempt": 2,
        "git_sha": "abc123",
        "connection_type": "postgres",
    }
    assert recorder.calls == [
        ("event", "LOG", "starting", "info", {"n": 1}),
        ("progress", 0.25),
        ("event", "LOG", "halfway", "warning", None),
        ("progress", {"rows": 10, "of": 20}),
        ("event", "LOG", "done", "info", {"n": 3}),
    ]
    out = tmp_path / "out"
    assert result.outputs == [
        OutputFile(out / "parts" / "rows.csv", "parts/rows.csv", "text/csv"),
        OutputFile(out / "result.json", "result.json", "application/json"),
    ]
    assert all(output.role == "output" for output in result.outputs)
    assert wait_gone(child_pid)


def test_processes_left_behind_by_a_successful_entrypoint_are_killed(tmp_path: Path) -> None:
    result = PythonKind().run(make_ctx(tmp_path, Recorder(), f"{SAMPLES}:leave_grandchild"))
    assert wait_gone(result.output_manifest["grandchild"])
    assert result.outputs == []


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    recorder = Recorder()
    ctx = make_ctx(tmp_path, recorder, f"{SAMPLES}:sleep_with_grandchild", timeout_s=4.0)
    started = time.monotonic()
    with pytest.raises(PhaseTimeout, match="timeout of 4 s") as caught:
        PythonKind().run(ctx)
    elapsed = time.monotonic() - started
    assert 4.0 <= elapsed < 20
    assert caught.value.reason == "timeout"
    assert caught.value.retryable is False
    pids = recorder.payload("PIDS")
    assert wait_gone(pids["child"])
    assert wait_gone(pids["grandchild"])


def test_cancellation_stops_a_sleeping_entrypoint_promptly(tmp_path: Path) -> None:
    cancel = threading.Event()
    recorder = Recorder(on_event={"READY": threading.Event()})
    ctx = make_ctx(tmp_path, recorder, f"{SAMPLES}:sleep_forever", cancel=cancel)
    cancelled_at: list[float] = []

    def cancel_when_ready() -> None:
        if recorder.on_event["READY"].wait(30):
            cancelled_at.append(time.monotonic())
            cancel.set()

    threading.Thread(target=cancel_when_ready, daemon=True).start()
    with pytest.raises(PhaseCancelled):
        PythonKind().run(ctx)
    assert cancelled_at, "the entrypoint never reported READY"
    assert time.monotonic() - cancelled_at[0] < 1.0
    assert wait_gone(recorder.payload("READY")["child"])


def test_an_exception_is_transient_with_type_message_and_traceback(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, Recorder(), f"{SAMPLES}:raise_value_error", args={"value": 7})
    with pytest.raises(TransientPhaseError, match="raised ValueError: bad value 7") as caught:
        PythonKind().run(ctx)
    assert caught.value.retryable is True
    assert caught.value.error_type == "ValueError"
    assert caught.value.detail is not None
    assert "Traceback" in caught.value.detail
    assert "raise_value_error" in caught.value.detail


def test_terminal_phase_error_stays_terminal(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, Recorder(), f"{SAMPLES}:raise_terminal")
    with pytest.raises(TerminalPhaseError, match="the input can never work") as caught:
        PythonKind().run(ctx)
    assert type(caught.value) is TerminalPhaseError
    assert caught.value.retryable is False
    assert caught.value.error_type == "TerminalPhaseError"


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("tests.executor.no_such_module:fn", "module 'tests.executor.no_such_module' not found"),
        (f"{SAMPLES}:no_such_function", "has no attribute 'no_such_function'"),
        (f"{SAMPLES}:NOT_CALLABLE", "is not callable"),
    ],
)
def test_bad_entrypoints_are_terminal(tmp_path: Path, entrypoint: str, message: str) -> None:
    with pytest.raises(TerminalPhaseError, match=message):
        PythonKind().run(make_ctx(tmp_path, Recorder(), entrypoint))


def test_a_child_exiting_without_a_result_is_transient(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(TransientPhaseError, match="exited with code 3 without a result"):
        PythonKind().run(make_ctx(tmp_path, recorder, f"{SAMPLES}:exit_abruptly"))
    assert recorder.calls == [("event", "LOG", "about to exit", "info", None)]


def test_a_non_json_return_value_is_terminal(tmp_path: Path) -> None:
    with pytest.raises(TerminalPhaseError, match="not JSON-serialisable") as caught:
        PythonKind().run(make_ctx(tmp_path, Recorder(), f"{SAMPLES}:return_unserialisable"))
    assert caught.value.retryable is False


def test_phase_errors_share_a_base() -> None:
    for cls in (TerminalPhaseError, TransientPhaseError, PhaseTimeout, PhaseCancelled):
        assert issubclass(cls, PhaseError)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (PID 1 in a container may not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_phase_dies_with_a_worker_killed_outright(tmp_path: Path) -> None:
    """SIGKILL leaves the worker no chance to clean up: the phase's process group must still
    die, or it would write beside the attempt another worker makes after the lease expires."""
    script = textwrap.dedent('''
        import tempfile, threading
        from pathlib import Path
        from executor.kinds import PhaseContext, kind_for
        def emit(type, message, level="info", payload=None):
            if type == "READY":
                print(payload["pid"], flush=True)
        kind_for("python").run(PhaseContext(
            run_id="r", phase="p", attempt=1, kind="python",
            params={"entrypoint": "tests.executor.worker_entrypoints:sleep_long"}, inputs={},
            git_sha=None, input_manifest={}, output_dir=Path(tempfile.mkdtemp()), emit=emit,
            progress=lambda value: None, cancel=threading.Event(), timeout_s=None))
    ''')
    repo = Path(__file__).resolve().parents[2]
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 10
        while not _dead(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _dead(child)
    finally:
        if worker.poll() is None:
            worker.kill()


# -- tables through the catalog's rules, and the child's output -----------------------------

CATALOG = "tests.executor.catalog_entrypoints"


def test_write_table_adds_its_entry_to_the_manifest_s_tables(tmp_path: Path) -> None:
    table = tmp_path / "lake" / "gold" / "items"
    ctx = make_ctx(tmp_path, Recorder(), f"{CATALOG}:write_and_declare",
                   args={"name": "gold.items", "table": str(table)})
    tables = PythonKind().run(ctx).output_manifest["tables"]
    assert tables[0] == {"name": "declared.elsewhere", "uri": "/nowhere"}
    entry = tables[1]
    assert (entry["name"], entry["uri"], entry["version"], entry["rows"], entry["layer"]) == (
        "gold.items", str(table), 0, 2, "gold")
    assert entry["schema_change"]["change"] == "INITIAL"
    assert entry["schema_change"]["schema"] == [
        {"name": "id", "type": "int64", "nullable": True},
        {"name": "sku", "type": "string", "nullable": True}]


def test_schema_blocked_crosses_the_process_boundary_with_its_details(tmp_path: Path) -> None:
    table = tmp_path / "items"
    ctx = make_ctx(tmp_path, Recorder(), f"{CATALOG}:write_twice",
                   args={"name": "silver.items", "table": str(table)})
    with pytest.raises(SchemaBlocked, match=r"silver\.items: column id narrowed") as caught:
        PythonKind().run(ctx)
    error = caught.value
    assert (error.retryable, error.reason, error.error_type) == (
        False, "schema_blocked", "SchemaBlocked")
    assert (error.table, error.uri) == ("silver.items", str(table))
    assert error.changes == [{"column": "id", "change": "narrowed", "old_type": "int64",
                              "new_type": "int32"}]
    assert error.schema is not None and error.schema[0] == {
        "name": "id", "type": "int32", "nullable": True}
    assert "unblock" in error.message


def test_a_blocked_dataset_is_refused_before_the_table_is_touched(tmp_path: Path) -> None:
    table = tmp_path / "items"
    ctx = make_ctx(tmp_path, Recorder(), f"{CATALOG}:write_twice",
                   args={"name": "silver.items", "table": str(table)})
    ctx = dataclasses.replace(ctx, datasets={"silver.items": "blocked"})
    with pytest.raises(DatasetBlocked, match=r"dataset silver\.items is blocked") as caught:
        PythonKind().run(ctx)
    assert (caught.value.table, caught.value.uri, caught.value.retryable) == (
        "silver.items", str(table), False)
    assert not table.exists()


def test_stdout_and_stderr_lines_become_log_events(tmp_path: Path) -> None:
    recorder = Recorder()
    PythonKind().run(make_ctx(tmp_path, recorder, f"{CATALOG}:chatter", args={"lines": 3}))
    by_stream: dict[str, list[tuple[str, str]]] = {"stdout": [], "stderr": []}
    for call in recorder.calls:
        assert call[:2] == ("event", "LOG"), call
        by_stream[call[4]["stream"]].append((call[2], call[3]))
    assert by_stream == {
        "stdout": [("line 0", "info"), ("line 1", "info"), ("line 2", "info"),
                   ("no newline", "info")],
        "stderr": [("to stderr", "warning")],
    }


def test_output_is_capped_then_announced_once(tmp_path: Path) -> None:
    recorder = Recorder()
    lines = MAX_OUTPUT_LINES + 100
    PythonKind().run(make_ctx(tmp_path, recorder, f"{CATALOG}:chatter", args={"lines": lines}))
    logs = [call for call in recorder.calls if call[:2] == ("event", "LOG")]
    truncated = [call for call in logs if call[4].get("truncated")]
    assert len(truncated) == 1
    assert truncated[0][3] == "warning" and truncated[0][4]["limit"] == MAX_OUTPUT_LINES
    lines_sent = [call[2] for call in logs if not call[4].get("truncated")]
    # the cap counts both streams, read by two threads: the one stderr line may arrive
    # among the first MAX_OUTPUT_LINES or after them; stdout's come in order, from the first
    assert len(lines_sent) == MAX_OUTPUT_LINES
    stdout_sent = [line for line in lines_sent if line != "to stderr"]
    assert stdout_sent == [f"line {i}" for i in range(len(stdout_sent))]
    assert len(stdout_sent) in (MAX_OUTPUT_LINES, MAX_OUTPUT_LINES - 1)


def test_phases_run_in_spare_processes_started_ahead(tmp_path: Path) -> None:
    """A phase takes a process started (and warmed with pyarrow, deltalake...) before it was
    needed; a replacement is started in the background; closing the pool ends the spares."""
    spares = SparePool(1)
    try:
        first = spares.take()                      # none waiting: started now
        assert wait_for_spare(spares)
        [waiting] = spares.waiting()
        spare_pid = waiting.process.pid
        assert wait_until(lambda: os.getpgid(spare_pid) == spare_pid)   # leads its group
        assert spares.take() is waiting            # the next phase gets it
        first.spec_writer.close()                  # never given a spec: it just exits
        waiting.spec_writer.close()
        assert wait_gone(first.process.pid) and wait_gone(spare_pid)
        assert wait_for_spare(spares)              # replaced again
        [replacement] = spares.waiting()
    finally:
        spares.close()
    replacement.process.join(10)
    assert replacement.process.exitcode == 0 and spares.waiting() == []

    # through a started kind: the phase's process is the spare that waited
    kind = PythonKind()
    kind.start(KindOptions(python_spares=1))
    try:
        kind.spares.take().spec_writer.close()     # make sure one is being started
        assert wait_for_spare(kind.spares)
        waiting_pid = kind.spares.waiting()[0].process.pid
        recorder = Recorder()
        result = kind.run(make_ctx(tmp_path, recorder, f"{SAMPLES}:succeed"))
        assert result.output_manifest["pid"] == waiting_pid
        assert wait_for_spare(kind.spares)         # and it was replaced
        replaced = kind.spares.waiting()[0].process
    finally:
        kind.close()
    replaced.join(10)
    assert replaced.exitcode == 0 and kind.spares.waiting() == []


def test_a_kind_that_is_not_started_keeps_no_spares(tmp_path: Path) -> None:
    """Without `start`, a phase starts its own process and nothing waits afterwards."""
    kind = PythonKind()
    result = kind.run(make_ctx(tmp_path, Recorder(), f"{SAMPLES}:succeed"))
    assert result.output_manifest["pid"] > 0
    assert kind.spares.size == 0 and kind.spares.waiting() == []


def wait_until(check: Any, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def wait_for_spare(spares: SparePool, within: float = 30.0) -> bool:
    return wait_until(lambda: bool(spares.waiting()), within)
