"""The web UI on a big workspace, timed in real headless Chromium (Playwright).

    python bench/ui.py [--runs 10000] [--phases 1000] [--events 100000] [--samples 5]

A database of its own, seeded as the superuser with SQL (generate_series; rows inserted in
their initial states and moved through the state machine's triggers, so the schema's checks
all hold): a workspace with `--runs` finished runs of three phases (9 in 10 succeeded), and one
running run with `--phases` phases (a layered DAG, most succeeded) and `--events` events.
Then `control-room serve` in a process of its own serves the built UI (`make ui`), an admin
signs in through the login page, and Debian's /usr/bin/chromium measures:

- time to interactive of the runs list (navigation until the first page of `run-row`s) and of
  the big run's detail (until its `dag-node`s render; then its `event-row`s);
- a filter click (the state filter; the events' level filter) until the rows re-render;
- live lag: `append_events` sent through the gateway -> its `event-row` on screen;
- requests per page view (`page.on("request")` from navigation until 0.5 s without a new one);
- the JS heap (CDP Performance.getMetrics after a forced GC) and DOM nodes with the first page
  of events, after scrolling through 5,000 of them and after 15,000 more: flat (the last two
  equal) when the log is virtualized and server-paged.

Goals (issue 13): run detail interactive < 1.5 s, filter < 200 ms, live lag < 1 s, memory
flat in the number of events. The table prints each figure beside its goal, with the load.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from common import own_database  # bench/common.py (run as python bench/<script>.py)
from worker_latency import gateway

from control_room.db.migrate import migrate
from control_room.gateway.auth import mint_token
from control_room.settings import default_migrations_dir

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHROMIUM = os.environ.get("CONTROL_ROOM_CHROMIUM", "/usr/bin/chromium")
STATIC_INDEX = REPO / "control_room" / "gateway" / "static" / "index.html"
PASSWORD = "bench password of the ui"
BOUND_MS = 120_000

SEED_RUNS = """
insert into ops.runs (workspace_id, env, spec_slug, git_sha, labels, input_manifest,
                      request_digest, created_by, created_at, updated_at)
select %(ws)s, 'dev', (array['orders', 'billing', 'odoo_medallion', 'crm'])[1 + i %% 4],
       substr(md5(i::text), 1, 12),
       jsonb_build_object('team', (array['data', 'bi', 'ops'])[1 + i %% 3]),
       jsonb_build_object('params', jsonb_build_object('n', i)),
       md5('bench' || i), %(by)s,
       now() - make_interval(secs => i * 60), now() - make_interval(secs => i * 60)
from generate_series(1, %(n)s) as i
"""
SEED_RUN_PHASES = """
insert into ops.phases (run_id, workspace_id, name, ordinal, kind, depends_on, state,
                        max_attempts, timeout_seconds, retry_backoff_seconds,
                        retry_backoff_max_seconds, queued_at)
select r.id, r.workspace_id, p.name, p.ordinal, p.kind, p.deps, 'queued', 1, 300, 2, 60,
       r.created_at
from ops.runs r
cross join (values ('extract', 0, 'python', '{}'::text[]), ('silver', 1, 'sql', '{extract}'),
                   ('gold', 2, 'sql', '{silver}')) as p(name, ordinal, kind, deps)
where r.workspace_id = %(ws)s
"""
# through the state machine: queued -> running -> succeeded (or failed), as the triggers allow
FINISH_RUNS = """
update ops.phases set state = 'running', attempt = 1, started_at = queued_at
where workspace_id = %(ws)s;
update ops.phases ph
set state = case when ph.name = 'gold' and hashtext(ph.run_id::text) %% 10 = 0
                 then 'failed' else 'succeeded' end,
    finished_at = ph.started_at + make_interval(secs => 5 + ph.ordinal * 7),
    error = case when ph.name = 'gold' and hashtext(ph.run_id::text) %% 10 = 0
                 then jsonb_build_object('message', 'division by zero', 'reason', 'error') end
where ph.workspace_id = %(ws)s;
update ops.runs set state = 'running', started_at = created_at where workspace_id = %(ws)s;
update ops.runs r
set state = case when hashtext(r.id::text) %% 10 = 0 then 'failed' else 'succeeded' end,
    finished_at = r.created_at + interval '40 seconds', updated_at = r.created_at
where r.workspace_id = %(ws)s;
"""
BIG_RUN = """
insert into ops.runs (workspace_id, env, spec_slug, git_sha, labels, request_digest, created_by)
values (%(ws)s, 'dev', 'big_dag', 'b16da9b16da9', '{"size": "1000 phases"}', md5('big'), %(by)s)
returning id
"""
# a layered DAG: 40 phases a layer, each depending on one or two of the layer before
BIG_PHASES = """
insert into ops.phases (run_id, workspace_id, name, ordinal, kind, depends_on, state,
                        max_attempts, timeout_seconds, retry_backoff_seconds,
                        retry_backoff_max_seconds, queued_at)
select %(run)s, %(ws)s, format('p%%s', lpad(i::text, 4, '0')), i,
       (array['python', 'sql'])[1 + i %% 2],
       case when i < 40 then '{}'::text[]
            else array[format('p%%s', lpad((i / 40 * 40 - 40 + i %% 40)::text, 4, '0'))]
                 || case when (i * 7) %% 40 <> i %% 40
                         then array[format('p%%s', lpad((i / 40 * 40 - 40 + (i * 7) %% 40)::text,
                                                        4, '0'))]
                         else '{}'::text[] end end,
       'queued', 1, 300, 2, 60, now() - interval '1 hour'
from generate_series(0, %(n)s - 1) as i
"""
BIG_FINISH = """
update ops.runs set state = 'running', started_at = now() - interval '1 hour' where id = %(run)s;
update ops.phases set state = 'running', attempt = 1,
       started_at = now() - interval '1 hour' + make_interval(secs => ordinal * 3)
where run_id = %(run)s and ordinal < %(n)s - 20;
update ops.phases set state = 'succeeded', finished_at = started_at + interval '3 seconds'
where run_id = %(run)s and ordinal < %(n)s - 30;
"""
BIG_EVENTS = """
insert into ops.run_events (run_id, seq, event_id, workspace_id, phase, attempt, ts, recorded_at,
                            level, type, message, payload)
select %(run)s, i, gen_random_uuid(), %(ws)s, format('p%%s', lpad((i %% %(phases)s)::text, 4, '0')),
       1, now() - interval '1 hour' + make_interval(secs => i * 0.03),
       now() - interval '1 hour' + make_interval(secs => i * 0.03),
       (array['info', 'info', 'info', 'debug', 'warning', 'error'])[1 + i %% 6],
       (array['LOG', 'LOG', 'LOG', 'PROGRESS', 'LOG', 'LOG'])[1 + i %% 6],
       format('row batch %%s of phase p%%s: %%s rows merged', i, i %% %(phases)s, i * 7 %% 1000),
       jsonb_build_object('batch', i)
from generate_series(1, %(n)s) as i;
update ops.runs set last_event_seq = %(n)s where id = %(run)s;
"""


def seed(url: str, ws: str, by: str, runs: int, phases: int, events: int) -> str:
    """The workspace's runs and the big run (its id), committed."""
    with psycopg.connect(url) as conn:
        args = {"ws": ws, "by": by, "n": runs}
        conn.execute(SEED_RUNS, args)
        conn.execute(SEED_RUN_PHASES, args)
        for statement in FINISH_RUNS.split(";\n"):
            if statement.strip():
                conn.execute(statement, args)
        row = conn.execute(BIG_RUN, args).fetchone()
        assert row is not None
        run = str(row[0])
        big = {"ws": ws, "run": run, "n": phases, "phases": phases}
        conn.execute(BIG_PHASES, big)
        for statement in BIG_FINISH.split(";\n"):
            if statement.strip():
                conn.execute(statement, big)
        for statement in BIG_EVENTS.split(";\n"):
            if statement.strip():
                conn.execute(statement, {**big, "n": events})
        conn.commit()
        conn.execute("analyze ops.runs")
        conn.execute("analyze ops.phases")
        conn.execute("analyze ops.run_events")
    return run


# ------------------------------------------------------------------------------ browser

def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def heap(cdp: Any) -> tuple[float, int]:
    """JS heap used (MB) after a forced GC, and the document's DOM nodes."""
    cdp.send("HeapProfiler.collectGarbage")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["JSHeapUsedSize"] / 1e6, int(metrics["Nodes"])


class Requests:
    """Requests the page makes, counted from `start()`."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.urls: list[str] = []
        self.last = time.monotonic()
        page.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        self.urls.append(request.url)
        self.last = time.monotonic()

    def start(self) -> None:
        self.urls.clear()

    @property
    def count(self) -> int:
        return len(self.urls)

    def settle(self, quiet_s: float = 0.5, bound_s: float = 30.0) -> None:
        """Until the page made no new request for `quiet_s`. Playwright's "networkidle" never
        comes: the change feed is one request that stays open."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() - self.last < quiet_s and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)


SCROLLER = """() => {
  let el = document.querySelector('[data-testid="event-row"]');
  while (el && el !== document.body) {
    const style = getComputedStyle(el);
    if (/(auto|scroll)/.test(style.overflowY) && el.scrollHeight > el.clientHeight) {
      el.setAttribute('data-bench-scroller', '1');
      return true;
    }
    el = el.parentElement;
  }
  return false;
}"""
SEQS = """() => [...document.querySelectorAll('[data-testid="event-row"]')]
  .map(e => Number(e.dataset.seq)).filter(n => !Number.isNaN(n))"""


def scroll_through(page: Any, want: int, bound_s: float = 240) -> tuple[int, float]:
    """Scroll the event log until `want` distinct seqs have been on screen; (seen, seconds)."""
    if not page.evaluate(SCROLLER):
        raise RuntimeError("no scrollable container around the event rows")
    first = page.evaluate(SEQS)
    downward = not first or min(first) < 50_000      # the log opens at its head or its tail
    seen: set[int] = set(first)
    start = time.monotonic()
    stalled = 0
    while len(seen) < want and time.monotonic() - start < bound_s:
        before = len(seen)
        page.evaluate("""(down) => { const s = document.querySelector('[data-bench-scroller]');
                          s.scrollTop += (down ? 1 : -1) * s.clientHeight * 3; }""", downward)
        page.wait_for_timeout(30)
        seen.update(page.evaluate(SEQS))
        stalled = stalled + 1 if len(seen) == before else 0
        if stalled > 200:
            break
    return len(seen), time.monotonic() - start


def run_rows_all(state: str) -> str:
    return f"""() => {{ const rows = [...document.querySelectorAll('[data-testid="run-row"]')];
        return rows.length > 0 && rows.every(r => r.dataset.state === '{state}'); }}"""


def measure(base: str, admin_email: str, workspace_id: str, big_run: str, token: str,
            samples: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        context = browser.new_context(base_url=base, viewport={"width": 1400, "height": 900})
        context.set_default_timeout(BOUND_MS)
        page = context.new_page()
        requests = Requests(page)
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")

        page.goto("/login")
        page.get_by_test_id("login-email").fill(admin_email)
        page.get_by_test_id("login-password").fill(PASSWORD)
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("user-email").wait_for()

        # runs list: navigation -> the first page of rows
        tti, counts = [], []
        for _ in range(samples):
            requests.start()
            tti.append(timed(lambda: (page.goto("/runs"),
                                      page.get_by_test_id("run-row").nth(9).wait_for())))
            requests.settle()
            counts.append(requests.count)
        out["runs_tti"] = tti
        out["runs_requests"] = statistics.median(counts)

        # the state filter: click -> every row shown is of that state
        clicks = []
        for state in ["failed", "succeeded"] * samples:
            clicks.append(timed(lambda s=state: (
                page.get_by_test_id("filter-state").select_option(s),
                page.wait_for_function(run_rows_all(s), polling="raf"))))
        out["filter_runs"] = clicks

        # run detail: navigation -> its DAG's nodes, then the events tab -> its rows
        detail, nodes_at, counts = [], [], []
        for _ in range(samples):
            requests.start()
            detail.append(timed(lambda: (page.goto(f"/runs/{big_run}"),
                                         page.get_by_test_id("dag-node").first.wait_for())))
            requests.settle()
            counts.append(requests.count)
            nodes_at.append(page.get_by_test_id("dag-node").count())
        out["detail_tti"] = detail
        out["detail_requests"] = statistics.median(counts)
        out["dag_nodes"] = max(nodes_at)
        events_tab, counts = [], []
        for _ in range(samples):
            page.goto(f"/runs/{big_run}")
            page.get_by_test_id("dag-node").first.wait_for()
            requests.settle()
            requests.start()
            events_tab.append(timed(lambda: (page.get_by_test_id("tab-events").click(),
                                             page.get_by_test_id("event-row").nth(5).wait_for())))
            requests.settle()
            counts.append(requests.count)
        out["events_tti"] = events_tab
        out["events_requests"] = statistics.median(counts)

        # the events' level filter: click -> only error rows
        level = page.get_by_test_id("events-filter-level")
        only_errors = """() => {
            const rows = [...document.querySelectorAll('[data-testid="event-row"]')];
            return rows.length > 0 && rows.every(r => /error/i.test(r.textContent || '')); }"""
        tag = level.evaluate("e => e.tagName")
        clicks = []
        for _ in range(samples):
            if tag == "SELECT":
                clicks.append(timed(lambda: (level.select_option("error"),
                                             page.wait_for_function(only_errors, polling="raf"))))
                level.select_option("")
            else:
                box = level.locator("input[value=error], label:has-text('error')").first
                clicks.append(timed(lambda b=box: (b.click(), page.wait_for_function(
                    only_errors, polling="raf"))))
                box.click()
            page.get_by_test_id("event-row").nth(5).wait_for()
        out["filter_events"] = clicks

        # memory: the first page of events, then after scrolling through 20,000
        page.goto(f"/runs/{big_run}")
        page.get_by_test_id("tab-events").click()
        page.get_by_test_id("event-row").nth(5).wait_for()
        requests.settle()
        out["heap_first"] = heap(cdp)
        # 5,000 events: well past the window the log keeps (8 pages of 200), then 15,000 more
        out["scrolled_mid"] = scroll_through(page, 5_000)
        requests.settle()
        out["heap_mid"] = heap(cdp)
        out["scrolled"] = scroll_through(page, 15_000)
        requests.settle()
        out["heap_scrolled"] = heap(cdp)

        # live lag: append_events through the gateway -> the row on screen (the log's tail)
        page.goto(f"/runs/{big_run}")
        page.get_by_test_id("tab-events").click()
        page.get_by_test_id("event-row").nth(5).wait_for()
        page.get_by_test_id("events-filter-text").fill("bench-live")
        lags = []
        with httpx.Client(base_url=base, timeout=30, headers={
                "Authorization": f"Bearer {token}", "Content-Profile": "ops"}) as http:
            for n in range(max(samples, 5) * 2):
                marker = f"bench-live-{n}-{secrets.token_hex(3)}"
                page.wait_for_timeout(300)
                start = time.perf_counter()
                response = http.post("/rest/v1/rpc/append_events", json={
                    "run_id": big_run, "events": [{
                        # a run-level event: a phase's would need its live lease token
                        "event_id": str(uuid.uuid4()), "type": "BENCH_LIVE", "level": "info",
                        "message": marker}]})
                response.raise_for_status()
                try:
                    page.wait_for_function(
                        f"""() => [...document.querySelectorAll('[data-testid="event-row"]')]
                            .some(r => (r.textContent || '').includes('{marker}'))""",
                        polling="raf", timeout=30_000)
                except Exception:
                    rows = page.get_by_test_id("event-row").all_text_contents()
                    status = page.get_by_test_id("live-status").get_attribute("data-state")
                    sys.exit(f"live lag: {marker} not on screen after 30 s (feed {status}; "
                             f"{len(rows)} rows: {rows[-3:]})")
                lags.append((time.perf_counter() - start) * 1000)
        out["live_lag"] = lags
        out["live_status"] = page.get_by_test_id("live-status").get_attribute("data-state")
        browser.close()
    return out


def table(figures: dict[str, Any], seeded: str) -> str:
    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values):,.0f} ms, max {max(values):,.0f} ms"

    heap_first, nodes_first = figures["heap_first"]
    heap_mid, nodes_mid = figures["heap_mid"]
    heap_scrolled, nodes_scrolled = figures["heap_scrolled"]
    seen_mid, seconds_mid = figures["scrolled_mid"]
    seen, seconds = figures["scrolled"]
    seen += seen_mid
    growth = heap_scrolled / heap_mid if heap_mid else float("nan")
    rows = [
        ("runs list interactive", ms(figures["runs_tti"]), "-",
         f"{figures['runs_requests']:.0f} requests per view"),
        ("run detail interactive (DAG)", ms(figures["detail_tti"]), "< 1,500 ms",
         f"{figures['dag_nodes']} dag-nodes, {figures['detail_requests']:.0f} requests"),
        ("events tab (first rows)", ms(figures["events_tti"]), "-",
         f"{figures['events_requests']:.0f} requests per switch"),
        ("runs state filter click", ms(figures["filter_runs"]), "< 200 ms", ""),
        ("events level filter click", ms(figures["filter_events"]), "< 200 ms", ""),
        ("live lag (append_events -> row)", ms(figures["live_lag"]), "< 1,000 ms",
         f"live-status {figures['live_status']}"),
        ("JS heap, first page of events", f"{heap_first:.1f} MB", "-", f"{nodes_first} DOM nodes"),
        (f"JS heap after {seen_mid:,} events scrolled", f"{heap_mid:.1f} MB", "-",
         f"{nodes_mid} DOM nodes; {seconds_mid:.0f} s scrolling"),
        (f"JS heap after {seen:,} events scrolled", f"{heap_scrolled:.1f} MB",
         "flat", f"x{growth:.2f} of the line above; {nodes_scrolled} DOM nodes; "
                 f"{seconds:.0f} s more scrolling"),
    ]
    load = os.getloadavg()
    lines = [seeded, f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
                     f"({os.cpu_count()} cpus)", "",
             "| measure | figure | goal | notes |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--phases", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    if not STATIC_INDEX.is_file():
        sys.exit("the web UI is not built: run `make ui`")
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"no Chromium at {CHROMIUM} (apt-get install chromium, or CONTROL_ROOM_CHROMIUM)")
    from control_room.users import create_user

    secret = secrets.token_urlsafe(32)
    with own_database(args.admin_url, "bench_ui") as url, \
            tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        migrate(url, default_migrations_dir())
        email = f"bench.{secrets.token_hex(3)}@example.com"
        admin_id = str(create_user(url, email, PASSWORD, name="Bench"))
        with gateway(url, secret, Path(tmp) / "gateway.log") as base:
            token = mint_token(secret, role="authenticated", sub=admin_id, ttl_seconds=7200)
            created = httpx.post(f"{base}/rest/v1/rpc/create_workspace",
                                 json={"slug": "bench-ui", "name": "Bench UI", "env": "dev"},
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Profile": "ops"}, timeout=30)
            created.raise_for_status()
            workspace_id = created.json()["id"]
            start = time.monotonic()
            big_run = seed(url, workspace_id, admin_id, args.runs, args.phases, args.events)
            seeded = (f"seeded {args.runs:,} runs of 3 phases and one run of {args.phases:,} "
                      f"phases and {args.events:,} events in {time.monotonic() - start:.1f} s")
            print(seeded, flush=True)
            figures = measure(base, email, workspace_id, big_run, token, args.samples)
    print(table(figures, seeded))


if __name__ == "__main__":
    main()
