"""What the browser tests (and bench/ui.py) share: the real stack behind the web UI and a real
headless Chromium driving it.

The stack: a database, the real gateway on a real port serving the built UI
(`control_room/gateway/static/`, `make ui`), a real `control-room worker` process with the
python and sql kinds, a workspace with an admin, a developer and a viewer who sign in with
passwords (`control_room.users.create_user`), and the job `ui_orders` (tests/ui/ui_orders.yaml)
registered with `control-room jobs register`.

The browser is Debian's chromium (`/usr/bin/chromium`, installed by .ci/run; another build with
CONTROL_ROOM_CHROMIUM) driven by Playwright; no browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from control_room.gateway.auth import mint_token
from tests.contract.conftest import SERVICE, HttpContract, user
from tests.helpers import TEST_JWT_SECRET, running_gateway

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

REPO = Path(__file__).resolve().parents[2]
STATIC_INDEX = REPO / "control_room" / "gateway" / "static" / "index.html"
SPEC = Path(__file__).with_name("ui_orders.yaml")
JOB = "ui_orders"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("CONTROL_ROOM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
BOUND = 60.0                # seconds: generous for anything that should take one or two
UI_BOUND_MS = 30_000        # milliseconds: how long a locator waits for the UI
PASSWORD = "correct horse battery staple"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def require_built_ui() -> None:
    """Fail (never skip) when the UI is not built: the browser tests need it."""
    if not STATIC_INDEX.is_file():
        raise AssertionError(
            f"the web UI is not built ({STATIC_INDEX.relative_to(REPO)} is missing): "
            "run `make ui` (needs npm)")


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(
            f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does) or set "
            "CONTROL_ROOM_CHROMIUM")


def wait_for(what: str, check: Callable[[], Any], bound: float = BOUND) -> Any:
    deadline = time.monotonic() + bound
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Person:
    email: str
    role: str
    principal_id: str


@dataclass
class Stack:
    url: str                         # the gateway's base URL (the UI is at /)
    db_url: str
    tmp: Path
    workspace_id: str
    workspace_slug: str
    admin: Person
    developer: Person
    viewer: Person
    executor_token: str
    http: httpx.Client
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def rest_url(self) -> str:
        return f"{self.url}/rest/v1"

    # --- the API, as the people of the workspace ------------------------------------------
    def sign_in(self, person: Person) -> dict[str, Any]:
        """`POST /auth/v1/token?grant_type=password`: the session (access and refresh token)."""
        response = self.http.post("/auth/v1/token", params={"grant_type": "password"},
                                  json={"email": person.email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()
        return session

    def token(self, person: Person) -> str:
        """A signed-in access token of `person` (one session per person, kept)."""
        if person.email not in self._tokens:
            self._tokens[person.email] = self.sign_in(person)["access_token"]
        return self._tokens[person.email]

    def forget(self, person: Person) -> None:
        """Sign in afresh next time (the kept session was ended)."""
        self._tokens.pop(person.email, None)

    def rpc(self, fn: str, args: dict[str, Any], *, token: str) -> httpx.Response:
        return self.http.post(f"/rest/v1/rpc/{fn}", json=args,
                              headers={"Authorization": f"Bearer {token}",
                                       "Content-Profile": "ops"})

    def call(self, fn: str, args: dict[str, Any], person: Person | None = None) -> Any:
        response = self.rpc(fn, args, token=self.token(person or self.developer))
        assert response.status_code < 300, f"{fn}: {response.status_code} {response.text}"
        return response.json()

    def launch(self, **params: Any) -> str:
        """A run of the job (as the developer) with these params; its id."""
        run = self.call("create_job_run", {"workspace_id": self.workspace_id, "job": JOB,
                                           "params": params,
                                           "idempotency_key": str(uuid.uuid4())})
        return str(run["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("get_run", {"run_id": run_id}, self.viewer)
        return result

    def wait_state(self, run_id: str, *states: str, bound: float = BOUND) -> dict[str, Any]:
        run: dict[str, Any] = wait_for(
            f"run {run_id} to be {'/'.join(states)}",
            lambda: (r if (r := self.run(run_id))["state"] in states else None), bound)
        return run

    def events(self, run_id: str) -> list[dict[str, Any]]:
        page = self.call("list_events", {"run_id": run_id, "after": 0, "limit": 1000},
                         self.viewer)
        events: list[dict[str, Any]] = page["events"]
        return events

    def worker_log(self) -> str:
        return "\n".join((self.tmp / f"worker-{n}.log").read_text()
                         for n in range(len(self.processes)))


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True, text=True,
                          capture_output=True).stdout.strip()


def _create_user(db_url: str, email: str, memberships: list[tuple[str, str]]) -> str:
    from control_room.users import create_user
    return str(create_user(db_url, email, PASSWORD, name=email.split("@")[0].title(),
                           memberships=memberships))


def gateway_settings(tmp: Path) -> dict[str, Any]:
    """The gateway's settings for the stack: quick claims, blobs where the worker puts them."""
    from control_room.settings import Settings

    options: dict[str, Any] = {"claim_poll_seconds": 0.5, "pool_max_size": 8}
    # the artifact store the gateway serves from (section B: the executor's setting, shared)
    for name in ("artifacts_url", "artifact_store_url", "artifacts"):
        if name in Settings.model_fields:
            options[name] = (tmp / "blobs").as_uri()
            break
    return options


@contextlib.contextmanager
def running_stack(db_url: str, tmp: Path, *, worker: bool = True) -> Iterator[Stack]:
    """The whole stack over `db_url` (a fresh clone of the migrated template)."""
    require_built_ui()
    tmp.mkdir(parents=True, exist_ok=True)
    with running_gateway(db_url, **gateway_settings(tmp)) as url, \
            httpx.Client(base_url=url, timeout=30) as http, \
            psycopg.connect(db_url) as conn:
        service = HttpContract(conn, http)
        tag = secrets.token_hex(3)
        admin_email = f"ada.{tag}@example.com"
        admin_id = _create_user(db_url, admin_email, [])
        admin_token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=admin_id,
                                 ttl_seconds=3600)
        slug = f"ui-{tag}"
        created = http.post("/rest/v1/rpc/create_workspace",
                            json={"slug": slug, "name": "Lakehouse UI", "env": "dev"},
                            headers={"Authorization": f"Bearer {admin_token}",
                                     "Content-Profile": "ops"})
        assert created.status_code < 300, created.text
        workspace_id = str(created.json()["id"])
        dev_email, viewer_email = f"dev.{tag}@example.com", f"vic.{tag}@example.com"
        dev_id = _create_user(db_url, dev_email, [(workspace_id, "developer")])
        viewer_id = _create_user(db_url, viewer_email, [(workspace_id, "viewer")])
        executor = user("exec").pinned(workspace_id)
        service.call("add_member", {"workspace_id": workspace_id,
                                    "principal_id": str(executor.sub), "role": "executor"},
                     as_=SERVICE)
        stack = Stack(url=url, db_url=db_url, tmp=tmp, workspace_id=workspace_id,
                      workspace_slug=slug, admin=Person(admin_email, "admin", admin_id),
                      developer=Person(dev_email, "developer", dev_id),
                      viewer=Person(viewer_email, "viewer", viewer_id),
                      executor_token=service.token(executor), http=http)
        register_job(stack)
        try:
            if worker:
                start_worker(stack)
            yield stack
        finally:
            for process in stack.processes:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=15)


def cli_env(stack: Stack, token: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "CONTROL_ROOM_GATEWAY_URL": stack.rest_url,
            "CONTROL_ROOM_TOKEN": token, "CONTROL_ROOM_WORKSPACE": stack.workspace_id,
            "CONTROL_ROOM_STATE_DIR": str(stack.tmp / "state")}


def register_job(stack: Stack) -> None:
    """`control-room jobs register` of tests/ui/ui_orders.yaml, as the developer."""
    done = subprocess.run(
        [sys.executable, "-m", "control_room.cli", "jobs", "register", "--spec", str(SPEC),
         "--git-sha", _git_head(), "--owner", stack.developer.email, "--json"],
        env=cli_env(stack, stack.token(stack.developer)), cwd=REPO, text=True,
        capture_output=True, timeout=120)
    assert done.returncode == 0, f"jobs register: {done.stdout}\n{done.stderr}"


def start_worker(stack: Stack) -> subprocess.Popen[str]:
    """`control-room worker --kinds python,sql` (heartbeats every 2 s: cancels land fast)."""
    env = {**cli_env(stack, stack.executor_token),
           "CONTROL_ROOM_ARTIFACTS_URL": (stack.tmp / "blobs").as_uri(),
           "CONTROL_ROOM_WORKER_DIR": str(stack.tmp / "work"),
           "CONTROL_ROOM_WORKER_LEASE_SECONDS": "6",
           "CONTROL_ROOM_WORKER_GRACE_SECONDS": "1"}
    env.pop("CONTROL_ROOM_WORKSPACE", None)
    log = stack.tmp / f"worker-{len(stack.processes)}.log"
    with log.open("w") as out:
        process: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, "-m", "control_room.cli", "worker", "--kinds", "python,sql"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
    stack.processes.append(process)
    return process


# ------------------------------------------------------------------------------ browser

@contextlib.contextmanager
def chromium() -> Iterator[tuple[Playwright, Browser]]:
    """Playwright driving the system Chromium, headless."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield playwright, browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot under test-artifacts/screenshots/ (CI keeps the folder)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def publish_screenshot(source: Path, name: str) -> None:
    """Copy a screenshot to docs/screenshots/ (the README shows it)."""
    target = REPO / "docs" / "screenshots" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def sign_in_page(page: Page, person: Person, password: str = PASSWORD) -> None:
    """Sign in through the login page; wait for the shell to show the person's email."""
    page.goto("/login")
    page.get_by_test_id("login-email").fill(person.email)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("user-email").filter(has_text=person.email).wait_for(
        timeout=UI_BOUND_MS)


def by_testid(page: Page, name: str, **attributes: str) -> Any:
    """The elements of a data-testid with these data-* attributes (data_run_id -> data-run-id)."""
    selector = f'[data-testid="{name}"]' + "".join(
        f'[{key.replace("_", "-")}="{value}"]' for key, value in attributes.items())
    return page.locator(selector)


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)[:4000]
