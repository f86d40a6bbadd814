"""A python phase dies with its worker, at once: a SIGKILLed worker's phase process must not
live on and do its side effect beside the attempt another worker makes after the lease
expires (tests/chaos/test_worker_killed.py found one orphan that did, in the 0.2 s of the old
parent-polling watch). The worker here is a small driver process that takes a phase process
from the real SparePool and sends it a real ChildSpec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PHASE = '''
import os
import time


def run(ctx):
    # the side effect, again and again: one line naming this process's parent (the worker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fd = os.open(ctx.args["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{os.getppid()}\\n".encode())
        os.close(fd)
        time.sleep(0.001)
    return {}
'''

DRIVER = '''
import sys, time
from pathlib import Path
from executor.kinds.python.context import ChildSpec
from executor.kinds.python.spares import SparePool

code, ledger, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
child = SparePool(0).take()
child.spec_writer.send(ChildSpec(
    entrypoint="lifeline_phase:run", run_id="r", phase="p", attempt=1, params={},
    args={"ledger": ledger}, inputs={}, input_manifest={}, git_sha=None, output_dir=out,
    timeout_s=None, connections={}, code_dir=code))
print(child.process.pid, flush=True)
time.sleep(120)
'''


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")          # exited (a zombie nobody reaped yet counts as gone)


def test_a_sigkilled_workers_phase_does_nothing_after_the_worker_died(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "lifeline_phase.py").write_text(textwrap.dedent(PHASE))
    ledger = tmp_path / "ledger.txt"
    out = tmp_path / "out"
    out.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(code), str(ledger), str(out)], cwd=REPO,
        stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        child = int(driver.stdout.readline())
        deadline = time.monotonic() + 60
        while not ledger.exists() or len(ledger.read_text().split()) < 20:
            assert time.monotonic() < deadline and driver.poll() is None, "the phase never ran"
            time.sleep(0.01)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(child):
            assert time.monotonic() < deadline, "the phase process outlived its worker"
            time.sleep(0.01)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    lines = ledger.read_text().split()
    assert len(lines) >= 20
    # every execution of the side effect happened while the worker lived
    assert set(lines) == {str(driver.pid)}, sorted(set(lines))
