"""The server side of the web UI over the real gateway (HTTP, a real port, real PostgreSQL):
two workspaces (tests/contract/conftest.py's world), an artifact store and a fake built UI in
temporary directories."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.contract.conftest import SERVICE, HttpContract, Principal, World, make_world, phase
from tests.helpers import running_gateway

T0 = datetime(2031, 5, 1, 10, 0, tzinfo=UTC)


@dataclass
class Site:
    url: str
    http: HttpContract
    world: World
    artifacts: Path
    ui: Path

    def headers(self, who: Principal) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.http.token(who)}"}


@pytest.fixture(scope="module")
def site(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    ui = tmp_path_factory.mktemp("dist")
    (ui / "assets").mkdir()
    (ui / "index.html").write_text("<!doctype html><title>Control Room</title><div id=root>")
    (ui / "assets" / "app-1a2b3c.js").write_text("console.log('ui')")
    (ui / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    with psycopg.connect(module_db_url, autocommit=True) as conn, \
            running_gateway(module_db_url, artifacts_url=str(artifacts), ui_dir=ui) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        http = HttpContract(conn, client)
        yield Site(url, http, make_world(http), artifacts, ui)


def claim(site: Site, run_id: str, *, now: datetime | None = None,
          lease_seconds: int = 60) -> Any:
    w = site.world
    return site.http.call("claim_phase", {"run_id": run_id, "workspace_id": w.w1,
                                          "claim_id": str(uuid.uuid4()),
                                          "lease_seconds": lease_seconds},
                          as_=w.exec1, now=now)


def complete(site: Site, lease: Any, outcome: str = "succeeded", *,
             now: datetime | None = None, **extra: Any) -> Any:
    return site.http.call("complete_phase", {"lease_token": lease["lease_token"],
                                             "outcome": outcome, **extra},
                          as_=site.world.exec1, now=now)


def append(site: Site, run_id: str, lease: Any, *events: dict[str, Any],
           now: datetime | None = None) -> Any:
    batch = [{"event_id": str(uuid.uuid4()), **e} for e in events]
    return site.http.call("append_events", {"run_id": run_id, "lease_token": lease["lease_token"],
                                            "events": batch}, as_=site.world.exec1, now=now)


def create_run(site: Site, phases: list[dict[str, Any]], *, spec: str = "ui.demo",
               git_sha: str = "0123abcd", now: datetime | None = None,
               **extra: Any) -> Any:
    return site.http.call("create_run", {"workspace_id": site.world.w1, "spec_slug": spec,
                                         "git_sha": git_sha, "phases": phases, **extra},
                          as_=site.world.dev1, now=now)


__all__ = ["SERVICE", "T0", "Site", "append", "claim", "complete", "create_run", "phase",
           "timedelta"]
