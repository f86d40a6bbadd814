"""`control-room demo` end to end, as a newcomer runs it (small scale): the embedded
PostgreSQL, the generated Odoo database, the gateway, worker processes, the medallion spec,
the gold KPIs read back from the warehouse's `gold` schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.executor.harness import REPO


def demo(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
    return subprocess.run(
        [sys.executable, "-m", "control_room", "demo", "--state-dir", str(state), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.timeout(420)
def test_the_demo_runs_the_odoo_pipeline_end_to_end(tmp_path: Path) -> None:
    result = demo(tmp_path / "state", "--scale", "0.01", "--days", "10", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "succeeded"
    assert summary["source"]["rows"]["sale_order_line"] > 100
    kpis = summary["kpis"]
    assert {"revenue", "receivables_ageing", "order_invoice_lag", "freshness",
            "publications"} <= set(kpis["tables"])
    assert kpis["revenue_by_month"] and all(m["revenue"] > 0 for m in kpis["revenue_by_month"])
    assert kpis["order_to_invoice_lag"][0]["confirmed_orders"] > 0
    names = {(a["phase"], a["name"]) for a in summary["artifacts"]}
    assert ("gold_revenue", "result_manifest.json") in names
    assert ("quality", "quality_report.json") in names
    assert all(a["digest"].startswith("blake3:") for a in summary["artifacts"])
    assert Path(summary["lake"], "gold", "revenue", "_delta_log").is_dir()
    assert not (tmp_path / "state" / "stack.json").exists()     # the stack stopped
    # the phases reached the databases through the workspace's registered connections, their
    # password a file: reference the local workers' policy allows (a 0600 file)
    for name in ("odoo", "warehouse"):
        secret = tmp_path / "state" / "connection-secrets" / name
        assert secret.stat().st_mode & 0o777 == 0o600


def test_the_demo_refuses_a_bad_scale_with_exit_2(tmp_path: Path) -> None:
    result = demo(tmp_path, "--scale", "0")
    assert result.returncode == 2
    assert "--scale" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(300)
def test_the_demo_stops_when_its_workers_die(tmp_path: Path) -> None:
    """A run nobody can execute is not watched forever: the demo notices its dead workers
    and exits 1 naming them."""
    import signal
    import time

    from tests.executor.harness import wait_for
    from tests.test_cli_up import alive_children

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_room", "demo", "--state-dir", str(state),
         "--scale", "0.01", "--days", "3", "--json"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        wait_for("the stack", (state / "stack.json").exists, bound=180)
        workers = [line for line in alive_children(proc.pid) if " worker" in line]
        assert workers, alive_children(proc.pid)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and os.getsid(int(entry.name)) == proc.pid:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if " worker" in cmdline:
                    os.kill(int(entry.name), signal.SIGKILL)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, stderr[-2000:]
    assert "worker" in stderr and "exited" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    assert time.monotonic() - started < 120


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_continuous_demo_keeps_ingesting_and_reports_freshness_until_ctrl_c(
        tmp_path: Path) -> None:
    """`demo --continuous`: after the first run, the medallion as a job (schedule, sensor, SLO)
    while the source advances; each step prints gold's freshness; Ctrl-C stops it cleanly."""
    import signal
    import threading
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_ROOM_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "control_room", "demo", "--state-dir", str(tmp_path / "state"),
         "--scale", "0.01", "--days", "3", "--continuous", "--advance-every", "3"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline:
            steps = [line for line in lines if "gold freshness" in line]
            if len(steps) >= 3:
                break
            assert process.poll() is None, "".join(lines)[-3000:]
            time.sleep(1)
        else:
            raise AssertionError("no freshness lines: " + "".join(lines)[-3000:])
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(120)
        reader.join(10)
    text = "".join(lines)
    assert "Continuous ingestion: job odoo_medallion version 1, schedule odoo-every-5m" in text
    # a step: the simulated day, the rows it changed, the job's freshness state and lag / SLO
    assert any(" / 15.0 min" in line and ("ok " in line or "unknown" in line) for line in steps)
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    assert not (tmp_path / "state" / "stack.json").exists()     # the stack stopped
