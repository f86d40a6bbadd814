"""`/metrics` shows each caller only what it may see, and needs a token beyond loopback.

On loopback without a metrics token, anyone reads the aggregates (no workspace label). A
service_role JWT or the metrics token reads everything, per-workspace series included; a
member's JWT reads only its workspaces' series. When the gateway listens on another address
(or a metrics token is configured), an anonymous scrape is a 401.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.contract.conftest import SERVICE, HttpContract, Principal, World, make_world, new_run
from tests.contract.conftest import phase as spec_phase
from tests.helpers import running_gateway

METRICS_TOKEN = "metrics-token-of-the-tests-0123456789abcdef"


@contextmanager
def gateway(conn: psycopg.Connection[Any], db_url: str,
            **settings: Any) -> Iterator[HttpContract]:
    with running_gateway(db_url, **settings) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        yield HttpContract(conn, client)


@pytest.fixture
def world(conn: psycopg.Connection[Any], db_url: str) -> World:
    """A run in each workspace: w1 has a queued and a waiting phase, w2 one queued phase."""
    with gateway(conn, db_url) as contract:
        world = make_world(contract)
        new_run(contract, world.w1, [spec_phase("a"), spec_phase("b", "python", "a")],
                as_=world.dev1)
        new_run(contract, world.w2, [spec_phase("c")], as_=world.dev2)
    return world


def scrape(contract: HttpContract, who: Principal | None = None, *,
           bearer: str | None = None) -> httpx.Response:
    headers = {}
    if who is not None:
        headers["Authorization"] = f"Bearer {contract.token(who)}"
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return contract.client.get("/metrics", headers=headers)


def series(response: httpx.Response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert response.status_code == 200, response.text
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def workspaces_seen(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {dict(labels)["workspace"] for _, labels in found if "workspace" in dict(labels)}


def has_aggregates(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
    return any(name == "control_room_queue_depth" for name, _ in found)


def refused(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details", "hint"} and body["hint"] == "unauthorized"
    assert "control_room_" not in response.text
    return body


def test_on_loopback_anyone_reads_the_aggregates_but_no_workspace(
        conn: psycopg.Connection[Any], db_url: str, world: World) -> None:
    with gateway(conn, db_url) as contract:
        found = series(scrape(contract))
        assert has_aggregates(found)
        assert found[("control_room_phases", (("state", "queued"),))] == 2.0
        assert workspaces_seen(found) == set()
        assert "w1" not in scrape(contract).text


def test_service_role_reads_every_workspace(conn: psycopg.Connection[Any], db_url: str,
                                            world: World) -> None:
    with gateway(conn, db_url) as contract:
        found = series(scrape(contract, SERVICE))
        assert has_aggregates(found)
        assert workspaces_seen(found) == {"w1", "w2"}
        w1_queued = ("control_room_workspace_phases", (("state", "queued"), ("workspace", "w1")))
        w1_waiting = ("control_room_workspace_phases", (("state", "waiting"),
                                                        ("workspace", "w1")))
        assert (found[w1_queued], found[w1_waiting]) == (1.0, 1.0)
        assert found[("control_room_workspace_queue_depth", (("workspace", "w2"),))] == 1.0


def test_a_member_reads_only_its_workspaces(conn: psycopg.Connection[Any], db_url: str,
                                            world: World) -> None:
    with gateway(conn, db_url) as contract:
        assert workspaces_seen(series(scrape(contract, world.viewer1))) == {"w1"}
        assert workspaces_seen(series(scrape(contract, world.dev2))) == {"w2"}
    with gateway(conn, db_url, host="0.0.0.0") as contract:
        found = series(scrape(contract, world.viewer1))
        assert workspaces_seen(found) == {"w1"}
        assert not has_aggregates(found), "beyond loopback a member sees its workspaces only"


def test_a_revoked_member_reads_no_workspace(conn: psycopg.Connection[Any], db_url: str,
                                             world: World) -> None:
    with gateway(conn, db_url) as contract:
        robot = contract.call("create_principal", {"name": "scraper"})
        contract.call("add_member", {"workspace_id": world.w1, "principal_id": robot["id"],
                                     "role": "viewer"})
        member = Principal("authenticated", uuid.UUID(robot["id"]), "scraper")
        assert workspaces_seen(series(scrape(contract, member))) == {"w1"}
        contract.call("revoke_principal", {"principal_id": robot["id"]})
        response = scrape(contract, member)
        if response.status_code == 401:
            refused(response)
        else:
            assert workspaces_seen(series(response)) == set()


def test_beyond_loopback_an_anonymous_scrape_is_refused(conn: psycopg.Connection[Any],
                                                        db_url: str, world: World) -> None:
    with gateway(conn, db_url, host="0.0.0.0") as contract:
        body = refused(scrape(contract))
        assert body["code"] == "PGRST302"
        assert "WWW-Authenticate" in scrape(contract).headers
        refused(scrape(contract, bearer="not-a-jwt"))
        found = series(scrape(contract, SERVICE))
        assert has_aggregates(found) and workspaces_seen(found) == {"w1", "w2"}


def test_the_metrics_token_reads_everything_and_closes_loopback(
        conn: psycopg.Connection[Any], db_url: str, world: World) -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        with gateway(conn, db_url, host=host, metrics_token=METRICS_TOKEN) as contract:
            found = series(scrape(contract, bearer=METRICS_TOKEN))
            assert has_aggregates(found) and workspaces_seen(found) == {"w1", "w2"}
            refused(scrape(contract))
            refused(scrape(contract, bearer=METRICS_TOKEN[:-1] + "x"))
            assert workspaces_seen(series(scrape(contract, world.viewer2))) == {"w2"}


def test_a_forged_token_is_refused_even_on_loopback(conn: psycopg.Connection[Any],
                                                    db_url: str, world: World) -> None:
    from control_room.gateway.auth import mint_token

    forged = mint_token("another-secret-" + "x" * 32, role="service_role")
    with gateway(conn, db_url) as contract:
        refused(scrape(contract, bearer=forged))
