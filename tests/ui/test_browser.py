"""The web UI in real headless Chromium against the real gateway, PostgreSQL and a worker.

People sign in with passwords (tests/ui/harness.py builds the stack); every page of the UI is
visited and screenshotted under test-artifacts/screenshots/ (the run detail and health pages
are copied to docs/screenshots/ for the README). Nothing here is skipped: without a built UI
(`make ui`) or without Chromium every test fails saying so.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.ui.harness import (
    JOB,
    PASSWORD,
    UI_BOUND_MS,
    Stack,
    by_testid,
    chromium,
    publish_screenshot,
    running_stack,
    screenshot,
    sign_in_page,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)
LIVE_BOUND_MS = 90_000          # a run of three phases on a busy machine, shown live
# expect()'s own default is 5 s: a bound, not a goal; under CI's load a page may take longer
expect.set_options(timeout=UI_BOUND_MS)


@pytest.fixture(scope="module")
def stack(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(module_db_url, tmp_path_factory.mktemp("ui-stack")) as the_stack:
        yield the_stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as (_, the_browser):
        yield the_browser


@pytest.fixture
def context(browser: Browser, stack: Stack) -> Iterator[BrowserContext]:
    the_context = browser.new_context(base_url=stack.url, viewport={"width": 1400, "height": 900})
    the_context.set_default_timeout(UI_BOUND_MS)
    try:
        yield the_context
    finally:
        the_context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="module")
def ok_run(stack: Stack) -> str:
    """A succeeded run of the job (made through the API; the UI launches its own)."""
    run_id = stack.launch(orders=9)
    run = stack.wait_state(run_id, "succeeded", "failed", "cancelled", bound=120)
    assert run["state"] == "succeeded", (run, stack.worker_log()[-3000:])
    return run_id


@pytest.fixture(scope="module")
def failed_run(stack: Stack) -> str:
    """A failed run whose repair succeeds (its extract fails only the first time)."""
    run_id = stack.launch(mode="fail_once", marker=uuid.uuid4().hex)
    run = stack.wait_state(run_id, "succeeded", "failed", "cancelled", bound=120)
    assert run["state"] == "failed", (run, stack.worker_log()[-3000:])
    return run_id


def run_state(page: Page) -> str:
    return str(page.get_by_test_id("run-state").get_attribute("data-state"))


# ------------------------------------------------------------------------------ sign-in


def test_sign_in_with_a_password(stack: Stack, page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))        # signed out: the login page
    screenshot(page, "login")
    page.get_by_test_id("login-email").fill(stack.developer.email)
    page.get_by_test_id("login-password").fill("not the password at all")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_be_visible()
    expect(page.get_by_test_id("user-email")).to_have_count(0)

    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("user-email")).to_have_text(re.compile(
        re.escape(stack.developer.email)))
    workspaces = page.get_by_test_id("workspace-select")
    expect(workspaces.locator("option", has_text=stack.workspace_slug)).to_have_count(1)
    expect(page.get_by_test_id("nav-runs")).to_be_visible()
    expect(page.get_by_test_id("nav-audit")).to_have_count(0)        # admins only


# ------------------------------------------------------------------------------ runs


def test_launch_a_job_with_params_and_watch_it_succeed_without_a_reload(
        stack: Stack, page: Page) -> None:
    sign_in_page(page, stack.developer)
    page.get_by_test_id("nav-jobs").click()
    by_testid(page, "job-row", data_slug=JOB).get_by_role("link", name=JOB).click()
    expect(page).to_have_url(re.compile(rf"/jobs/{JOB}$"))
    expect(page.get_by_test_id("job-version").first).to_be_visible()
    form = page.get_by_test_id("job-launch")
    expect(form.get_by_test_id("param-orders")).to_be_visible()
    form.get_by_test_id("param-orders").fill("1.5")              # orders is an integer
    form.get_by_test_id("job-launch-submit").click()
    # validated like the CLI: refused in the form (its message, or the browser's own check)
    refused = page.get_by_test_id("job-launch-error").or_(page.locator(
        '[data-testid="param-orders"]:invalid'))
    expect(refused.first).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/jobs/{JOB}$"))
    form.get_by_test_id("param-orders").fill("7")
    form.get_by_test_id("job-launch-submit").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    run_id = page.url.rsplit("/", 1)[1]

    page.evaluate("window.__no_reload_marker = 'still the same page'")
    first = run_state(page)
    seen = {first}
    deadline_ms = LIVE_BOUND_MS
    while run_state(page) != "succeeded" and deadline_ms > 0:
        page.wait_for_timeout(100)
        deadline_ms -= 100
        seen.add(run_state(page))
    assert run_state(page) == "succeeded", (seen, stack.run(run_id)["state"])
    assert first != "succeeded" and len(seen) >= 2, seen      # it changed while we watched
    assert page.evaluate("window.__no_reload_marker") == "still the same page"
    expect(by_testid(page, "dag-node", data_state="succeeded")).to_have_count(3)

    run = stack.run(run_id)
    assert run["state"] == "succeeded"
    assert run["input_manifest"]["params"]["orders"] == 7
    assert run["job"]["slug"] == JOB


def test_the_runs_list_filters_by_state_and_the_grid_shows_phases(
        stack: Stack, page: Page, ok_run: str, failed_run: str) -> None:
    sign_in_page(page, stack.developer)
    page.get_by_test_id("nav-runs").click()
    expect(by_testid(page, "run-row", data_run_id=ok_run)).to_have_count(1)
    expect(by_testid(page, "run-row", data_run_id=failed_run)).to_have_count(1)
    page.get_by_test_id("filter-state").select_option("failed")
    expect(by_testid(page, "run-row", data_run_id=ok_run)).to_have_count(0)
    expect(by_testid(page, "run-row", data_run_id=failed_run)).to_have_attribute(
        "data-state", "failed")
    states = page.get_by_test_id("run-row").evaluate_all(
        "rows => rows.map(row => row.dataset.state)")
    assert states and set(states) == {"failed"}, states

    page.goto(f"/runs/grid?job={JOB}")
    cell = by_testid(page, "grid-cell", data_run_id=failed_run, data_phase="extract")
    expect(cell).to_have_attribute("data-state", "failed")
    expect(by_testid(page, "grid-cell", data_run_id=ok_run, data_phase="gold")).to_have_attribute(
        "data-state", "succeeded")


def test_an_artifact_preview_and_a_sql_output(stack: Stack, page: Page, ok_run: str) -> None:
    sign_in_page(page, stack.developer)
    page.goto(f"/runs/{ok_run}")
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "succeeded")

    page.get_by_test_id("tab-artifacts").click()
    summary = page.locator('[data-testid="artifact-row"][data-name*="extract_summary.json"]')
    expect(summary).to_have_count(1)
    digest = summary.get_attribute("data-digest")
    assert digest, "an artifact row names its digest"
    download = summary.get_by_test_id("artifact-download")
    algorithm, hexdigest = digest.split(":", 1)
    expect(download).to_have_attribute("href", re.compile(
        rf"/artifacts/v1/{stack.workspace_id}/{algorithm}(:|%3A){hexdigest}$"))
    summary.get_by_test_id("artifact-preview").click()
    panel = page.get_by_test_id("artifact-preview-panel")
    expect(panel).to_contain_text("bronze.orders")
    expect(panel).to_contain_text('"rows"')

    page.get_by_test_id("tab-sql").click()
    silver = by_testid(page, "sql-output", data_phase="silver")
    expect(silver.get_by_test_id("sql-query")).to_contain_text("where status = 'paid'")
    preview = silver.get_by_test_id("sql-preview")
    expect(preview).to_contain_text("customer")
    expect(preview.locator("tbody tr").first).to_be_visible()
    gold = by_testid(page, "sql-output", data_phase="gold")
    expect(gold.get_by_test_id("sql-preview")).to_contain_text("revenue")


def test_cancel_a_running_run(stack: Stack, page: Page) -> None:
    run_id = stack.launch(mode="sleep")
    wait_for("the sleeping phase to say READY",
             lambda: any(e["type"] == "READY" for e in stack.events(run_id)), 120)
    sign_in_page(page, stack.developer)
    page.goto(f"/runs/{run_id}")
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "running")
    expect(page.get_by_test_id("run-repair")).to_have_count(0)   # not while it runs
    page.get_by_test_id("run-cancel").click()
    expect(page.get_by_test_id("run-state")).to_have_attribute(
        "data-state", "cancelled", timeout=LIVE_BOUND_MS)
    expect(page.get_by_test_id("run-cancel")).to_have_count(0)
    assert stack.run(run_id)["state"] == "cancelled"


def test_repair_a_failed_run(stack: Stack, page: Page, failed_run: str) -> None:
    sign_in_page(page, stack.developer)
    page.goto(f"/runs/{failed_run}")
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "failed")
    expect(page.get_by_test_id("phase-error").first).to_contain_text("failing once on purpose")
    expect(by_testid(page, "dag-node", data_phase="extract")).to_have_attribute(
        "data-state", "failed")
    screenshot(page, "run-detail-failed")
    page.get_by_test_id("run-repair").click()

    def child() -> str | None:
        with psycopg.connect(stack.db_url) as conn:
            row = conn.execute("select id::text from ops.runs where parent_run_id = %s",
                               (failed_run,)).fetchone()
        return row[0] if row else None

    child_id: str = wait_for("the repair run", child)
    if not page.url.endswith(child_id):              # the UI may stay on the parent
        page.goto(f"/runs/{child_id}")
    expect(page.get_by_test_id("run-state")).to_have_attribute(
        "data-state", "succeeded", timeout=LIVE_BOUND_MS)
    assert stack.run(child_id)["state"] == "succeeded"


def test_a_viewer_sees_no_actions_and_the_server_refuses_them(
        stack: Stack, page: Page, failed_run: str) -> None:
    sign_in_page(page, stack.viewer)
    page.goto(f"/runs/{failed_run}")
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "failed")
    expect(page.get_by_test_id("tab-graph")).to_be_visible()
    for action in ("run-cancel", "run-repair", "run-retry"):
        expect(page.get_by_test_id(action)).to_have_count(0)
    expect(page.get_by_test_id("nav-audit")).to_have_count(0)

    # forced from the browser with the viewer's own session: the server says no
    session = page.request.post("/auth/v1/token?grant_type=password",
                                data={"email": stack.viewer.email, "password": PASSWORD})
    assert session.status == 200, session.text()
    token = session.json()["access_token"]
    for fn, args in (("repair_run", {"run_id": failed_run}),
                     ("retry_run", {"run_id": failed_run}),
                     ("create_job_run", {"workspace_id": stack.workspace_id, "job": JOB})):
        refused = page.request.post(f"/rest/v1/rpc/{fn}", data=args,
                                    headers={"Authorization": f"Bearer {token}",
                                             "Content-Profile": "ops"})
        assert refused.status == 403, (fn, refused.status, refused.text())
    with psycopg.connect(stack.db_url) as conn:
        row = conn.execute("select count(*) from ops.runs where parent_run_id = %s "
                           "and created_by = %s", (failed_run, stack.viewer.principal_id)
                           ).fetchone()
    assert row is not None and row[0] == 0


# ------------------------------------------------------------------------------ sessions


def test_sign_out_refuses_the_old_token(stack: Stack, page: Page) -> None:
    with page.expect_response(lambda r: "/auth/v1/token" in r.url and r.status == 200) as got:
        sign_in_page(page, stack.developer)
    token = got.value.json()["access_token"]
    assert stack.rpc("list_workspaces", {}, token=token).status_code == 200
    with page.expect_response(lambda r: "/auth/v1/logout" in r.url) as logout:
        page.get_by_test_id("sign-out").click()
    assert logout.value.status == 204
    expect(page.get_by_test_id("login-email")).to_be_visible()
    expect(page.get_by_test_id("user-email")).to_have_count(0)
    refused = stack.rpc("list_workspaces", {}, token=token)
    assert refused.status_code == 401, refused.text
    page.goto("/runs")                                       # still signed out
    expect(page.get_by_test_id("login-email")).to_be_visible()


def test_an_expired_session_shows_the_login_page_with_the_message(
        stack: Stack, page: Page) -> None:
    with page.expect_response(lambda r: "/auth/v1/token" in r.url and r.status == 200) as got:
        sign_in_page(page, stack.developer)
    token = got.value.json()["access_token"]
    # the session ends elsewhere (signed out everywhere): this page's token and refresh token
    # are refused from now on
    try:
        ended = stack.http.post("/auth/v1/logout", params={"scope": "global"},
                                headers={"Authorization": f"Bearer {token}"})
        assert ended.status_code == 204, ended.text
    finally:
        stack.forget(stack.developer)      # the token the stack kept was of that session too
    # the next read is refused; the page may already have noticed (its change feed reconnects
    # with the ended session) and left the shell, in which case there is nothing to click
    with contextlib.suppress(PlaywrightTimeout):
        page.get_by_test_id("nav-jobs").click(timeout=5_000)
    expect(page.get_by_test_id("login-email")).to_be_visible()
    message = page.get_by_test_id("login-message")
    expect(message).to_contain_text(re.compile("session expired", re.IGNORECASE))
    screenshot(page, "expired-session")


def test_a_run_that_does_not_exist(stack: Stack, page: Page) -> None:
    sign_in_page(page, stack.viewer)
    page.goto(f"/runs/{uuid.uuid4()}")
    expect(page.get_by_test_id("state-not-found")).to_be_visible()
    expect(page.get_by_test_id("run-state")).to_have_count(0)
    screenshot(page, "run-not-found")


def test_the_gateway_going_down_is_shown(browser: Browser, stack: Stack, ok_run: str,
                                          tmp_path: Path) -> None:
    from tests.helpers import running_gateway
    from tests.ui.harness import gateway_settings

    with running_gateway(stack.db_url, **gateway_settings(stack.tmp)) as url:
        context = browser.new_context(base_url=url)
        context.set_default_timeout(UI_BOUND_MS)
        page = context.new_page()
        sign_in_page(page, stack.viewer)
        page.get_by_test_id("nav-runs").click()
        expect(page.get_by_test_id("run-row").first).to_be_visible()
    try:
        # the gateway is gone: the next read fails and the page says so plainly
        page.get_by_test_id("nav-jobs").click()
        expect(page.get_by_test_id("state-gateway-down")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("live-status")).not_to_have_attribute("data-state", "live")
        screenshot(page, "gateway-down")
    finally:
        context.close()


# ------------------------------------------------------------------------------ every page


def test_every_page_renders_and_is_screenshotted(
        stack: Stack, page: Page, ok_run: str, failed_run: str) -> None:
    sign_in_page(page, stack.admin)
    expect(page.get_by_test_id("nav-audit")).to_be_visible()
    shots: dict[str, Path] = {}

    def shot(name: str) -> None:
        page.wait_for_timeout(500)      # charts and layouts settle (the feed never idles)
        shots[name] = screenshot(page, name)

    page.get_by_test_id("nav-runs").click()
    expect(by_testid(page, "run-row", data_run_id=ok_run)).to_be_visible()
    shot("runs")
    page.goto(f"/runs/grid?job={JOB}")
    expect(by_testid(page, "grid-cell", data_run_id=ok_run).first).to_be_visible()
    shot("runs-grid")

    page.goto(f"/runs/{ok_run}")
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "succeeded")
    tabs: dict[str, tuple[str, int]] = {
        "graph": ("dag-node", 3), "gantt": ("gantt-bar", 3), "events": ("event-row", 5),
        "artifacts": ("artifact-row", 3), "sql": ("sql-output", 2),
        "lineage": ("", 0), "manifests": ("", 0)}
    for tab, (element, at_least) in tabs.items():
        page.get_by_test_id(f"tab-{tab}").click()
        if element:
            expect(page.get_by_test_id(element).nth(at_least - 1)).to_be_visible()
        shot(f"run-detail-{tab}")
    publish_screenshot(shots["run-detail-graph"], "run-detail.png")

    page.get_by_test_id("nav-jobs").click()
    expect(by_testid(page, "job-row", data_slug=JOB)).to_be_visible()
    shot("jobs")
    by_testid(page, "job-row", data_slug=JOB).get_by_role("link", name=JOB).click()
    expect(page.get_by_test_id("job-launch")).to_be_visible()
    shot("job-detail")

    page.get_by_test_id("nav-datasets").click()
    silver = by_testid(page, "dataset-row", data_name="silver.orders")
    expect(silver).to_be_visible()
    shot("datasets")
    silver.get_by_role("link", name="silver.orders").click()
    expect(page.get_by_test_id("schema-version").first).to_be_visible()
    expect(page.get_by_test_id("dataset-runs")).to_be_visible()
    shot("dataset-detail")

    page.get_by_test_id("nav-health").click()
    expect(page.get_by_test_id("health-queue-depth")).to_be_visible()
    expect(page.get_by_test_id("chart").first).to_be_visible()
    shot("health")
    publish_screenshot(shots["health"], "health.png")

    page.get_by_test_id("nav-audit").click()
    expect(page.get_by_test_id("audit-row").first).to_be_visible()
    shot("audit")

    for name, path in shots.items():
        assert path.stat().st_size > 5_000, f"{name}: an empty screenshot?"
