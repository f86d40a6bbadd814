"""The change feed over the real gateway: a change within a second of an append_events commit,
coalesced per run, refused to non-members and bad tokens, ended at the token's exp."""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from control_room.gateway.auth import mint_token
from tests.contract.conftest import phase
from tests.helpers import TEST_JWT_SECRET

from .conftest import Site, append, claim, create_run


def events(site: Site, token: str, params: dict[str, str],
           out: queue.Queue[tuple[float, str, Any]]) -> threading.Thread:
    """Read the stream in a thread, putting (time, event, data) for each event; (t, 'end', None)
    when it closes."""

    def read() -> None:
        with httpx.Client(base_url=site.url, timeout=httpx.Timeout(30, read=60)) as client, \
                client.stream("GET", "/feed/v1/changes", params=params,
                              headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            name, data = "message", ""
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line.startswith(":"):
                    out.put((time.monotonic(), "comment", line))
                elif line == "":
                    if data:
                        out.put((time.monotonic(), name, json.loads(data)))
                    name, data = "message", ""
        out.put((time.monotonic(), "end", None))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def next_event(out: queue.Queue[tuple[float, str, Any]], name: str,
               timeout: float = 5) -> tuple[float, Any]:
    deadline = time.monotonic() + timeout
    while True:
        at, got, data = out.get(timeout=max(deadline - time.monotonic(), 0.01))
        if got == name:
            return at, data


def drain(out: queue.Queue[tuple[float, str, Any]]) -> Iterator[tuple[float, str, Any]]:
    while True:
        try:
            yield out.get_nowait()
        except queue.Empty:
            return


def test_a_change_arrives_within_a_second_of_the_commit(site: Site) -> None:
    w = site.world
    run = create_run(site, [phase("live")], spec="ui.feed")
    lease = claim(site, run["id"])
    out: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    events(site, site.http.token(w.viewer1), {"workspace_id": w.w1}, out)
    next_event(out, "ready")
    list(drain(out))
    before = time.monotonic()
    answer = append(site, run["id"], lease, {"type": "LOG", "message": "hello"})
    committed = time.monotonic()
    at, data = next_event(out, "change", timeout=5)
    while data["run_id"] != run["id"]:
        at, data = next_event(out, "change", timeout=5)
    assert at - committed < 1.0, f"the change came {at - committed:.3f} s after the commit"
    assert at >= before
    assert data == {"workspace_id": w.w1, "run_id": run["id"], "seq": answer["last_seq"]}

    # a burst of appends is at most one change per run per 100 ms
    list(drain(out))
    for i in range(10):
        append(site, run["id"], lease, {"type": "LOG", "message": f"burst {i}"})
    last = append(site, run["id"], lease, {"type": "LOG", "message": "last"})["last_seq"]
    seen: list[tuple[float, int]] = []
    while not seen or seen[-1][1] < last:
        at, data = next_event(out, "change")
        if data["run_id"] == run["id"]:
            seen.append((at, data["seq"]))
    assert len(seen) < 11
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert all(gap >= 0.09 for gap in gaps), gaps


def test_a_run_stream_gets_only_that_run(site: Site) -> None:
    w = site.world
    mine = create_run(site, [phase("one")], spec="ui.feed.run")
    other = create_run(site, [phase("one")], spec="ui.feed.other")
    out: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    events(site, site.http.token(w.viewer1), {"workspace_id": w.w1, "run_id": mine["id"]}, out)
    next_event(out, "ready")
    append(site, other["id"], claim(site, other["id"]), {"type": "LOG", "message": "x"})
    append(site, mine["id"], claim(site, mine["id"]), {"type": "LOG", "message": "y"})
    _, data = next_event(out, "change")
    assert data["run_id"] == mine["id"]
    time.sleep(0.3)
    assert all(d["run_id"] == mine["id"] for _, name, d in drain(out) if name == "change")


def test_refusals_are_json_like_the_rpc_errors(site: Site) -> None:
    w = site.world
    run = create_run(site, [phase("one")], spec="ui.feed.refused")
    with httpx.Client(base_url=site.url, timeout=10) as client:
        def get(params: dict[str, str], token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return client.get("/feed/v1/changes", params=params, headers=headers)

        refused = get({"workspace_id": w.w1}, site.http.token(w.admin2))      # not a member
        assert refused.status_code == 403 and refused.json()["hint"] == "forbidden"
        assert get({"workspace_id": w.w1}, None).status_code == 401
        bad = get({"workspace_id": w.w1}, "not.a.jwt")
        assert bad.status_code == 401 and bad.json()["hint"] == "unauthorized"
        forged = mint_token("another secret of at least thirty-two bytes", role="authenticated",
                            sub=str(w.viewer1.sub))
        assert get({"workspace_id": w.w1}, forged).status_code == 401
        expired = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(w.viewer1.sub),
                             ttl_seconds=-10)
        assert get({"workspace_id": w.w1}, expired).status_code == 401
        missing = get({}, site.http.token(w.viewer1))
        assert missing.status_code == 400 and "workspace_id" in missing.json()["message"]
        in_url = get({"workspace_id": w.w1, "access_token": site.http.token(w.viewer1)}, None)
        assert in_url.status_code == 400 and "URL" in in_url.json()["message"]
        hidden = get({"workspace_id": w.w2, "run_id": run["id"]}, site.http.token(w.admin2))
        assert hidden.status_code == 404                      # W1's run, seen from W2
        assert set(hidden.json()) == {"code", "message", "details", "hint"}


def test_the_stream_ends_at_the_tokens_expiry(site: Site) -> None:
    w = site.world
    token = mint_token(TEST_JWT_SECRET, role="authenticated", sub=str(w.viewer1.sub),
                       ttl_seconds=2)
    out: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    started = time.monotonic()
    thread = events(site, token, {"workspace_id": w.w1}, out)
    next_event(out, "ready")
    next_event(out, "expired", timeout=5)
    at, _ = next_event(out, "end", timeout=5)
    assert at - started < 4.5
    thread.join(timeout=5)
    assert not thread.is_alive()
