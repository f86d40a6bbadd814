"""The built web UI served by the gateway: assets cached for good, index.html never, the SPA
fallback outside the API's prefixes, the CSP, /ui-config.json, and the page without a build."""

from __future__ import annotations

from pathlib import Path

import httpx

from control_room.gateway.ui import CSP, ui_line
from control_room.settings import load_settings
from tests.helpers import running_gateway

from .conftest import Site


def test_assets_index_and_the_spa_fallback(site: Site) -> None:
    with httpx.Client(base_url=site.url) as client:
        asset = client.get("/assets/app-1a2b3c.js")
        assert asset.status_code == 200 and asset.text == "console.log('ui')"
        assert "immutable" in asset.headers["cache-control"]
        for path in ("/", "/runs", "/runs/8b0c9a43-0000-4000-8000-000000000000", "/health",
                     "/datasets/gold.revenue"):
            page = client.get(path, headers={"Accept": "text/html,application/xhtml+xml"})
            assert page.status_code == 200, path
            assert "<div id=root>" in page.text, path
            assert page.headers["cache-control"] == "no-cache"
            assert page.headers["content-security-policy"] == CSP
            assert page.headers["content-type"].startswith("text/html")
        assert client.get("/favicon.svg").text.startswith("<svg")
        assert client.get("/assets/missing.js").status_code == 404
        assert client.get("/assets/../index.html").status_code in (200, 404)   # normalized
        assert client.get("/assets/%2e%2e/index.html").status_code == 404
        config = client.get("/ui-config.json")
        assert config.json() == {"api_url": "", "auth_url": "", "anon_key": None}


def test_api_prefixes_never_fall_back_to_the_page(site: Site) -> None:
    with httpx.Client(base_url=site.url) as client:
        for path in ("/rest/v1/nothing", "/auth/v1/nothing", "/feed/v1/nothing",
                     "/artifacts/v1/x", "/ask/v1/nothing", "/mcp/x", "/metrics/x"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["hint"] == "not_found", path
        assert client.post("/runs").status_code == 404
        # /health is the probe's JSON, unless a browser navigates there (the UI's page)
        assert client.get("/health").headers["content-type"].startswith("application/json")
        assert client.get("/openapi.yaml").status_code == 200


def test_without_a_build_the_root_says_how_to_make_one(module_db_url: str,
                                                       tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    with running_gateway(module_db_url, ui_dir=empty) as url, httpx.Client(base_url=url) as c:
        page = c.get("/")
        assert page.status_code == 404
        assert "the web ui is not built: run <code>make ui</code>" in page.text.lower()
        assert page.headers["content-security-policy"] == CSP
        assert c.get("/rest/v1/").status_code == 200
    settings = load_settings(ui_dir=empty)
    assert ui_line(settings, "http://127.0.0.1:8787") == "UI: not built (make ui)"


def test_the_ui_line_names_the_url(site: Site) -> None:
    settings = load_settings(ui_dir=site.ui)
    assert ui_line(settings, "http://127.0.0.1:8787") == "UI: http://127.0.0.1:8787/"
    assert ui_line(settings, "http://127.0.0.1:8787/") == "UI: http://127.0.0.1:8787/"
