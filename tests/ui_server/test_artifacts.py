"""Artifact content and previews over the real gateway, from the blobs the executor's store
wrote: only for members, no way out of the store through the digest, a preview per format,
and an S3 store answering with a presigned URL."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from control_room.gateway.artifacts import BlobStore, blob_relative_path
from control_room.settings import load_settings
from executor.artifacts import LocalArtifactStore
from executor.artifacts import blob_relative_path as executor_blob_path
from tests.contract.conftest import phase
from tests.helpers import running_gateway

from .conftest import Site, claim, create_run


def register(site: Site, data: bytes, name: str, media_type: str) -> str:
    stored = LocalArtifactStore(site.artifacts, fsync=False).put_bytes(data, media_type)
    run = create_run(site, [phase("make")], spec="ui.artifacts")
    lease = claim(site, run["id"])
    site.http.call("register_artifact", {"lease_token": lease["lease_token"],
                                         "digest": stored.digest, "uri": stored.uri,
                                         "size_bytes": stored.size_bytes,
                                         "media_type": media_type, "name": name},
                   as_=site.world.exec1)
    return stored.digest


def parquet_bytes(rows: int) -> bytes:
    table = pa.table({"id": list(range(rows)), "name": [f"n{i}" for i in range(rows)],
                      "amount": [i * 1.5 for i in range(rows)]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_the_layout_is_the_executors() -> None:
    digest = "blake3:" + "0123456789abcdef" * 4
    assert blob_relative_path(digest) == executor_blob_path(digest)


def test_members_download_others_get_404(site: Site) -> None:
    w = site.world
    data = b'{"orders": 3}'
    digest = register(site, data, "summary.json", "application/json")
    with httpx.Client(base_url=site.url) as client:
        path = f"/artifacts/v1/{w.w1}/{digest}"
        ok = client.get(path, headers=site.headers(w.viewer1))
        assert ok.status_code == 200 and ok.content == data
        assert ok.headers["content-disposition"].startswith('attachment; filename="summary.json"')
        assert ok.headers["x-content-type-options"] == "nosniff"
        other = client.get(path, headers=site.headers(w.admin2))
        assert other.status_code == 404 and other.json()["hint"] == "not_found"
        elsewhere = client.get(f"/artifacts/v1/{w.w2}/{digest}", headers=site.headers(w.admin2))
        assert elsewhere.status_code == 404
        assert client.get(path).status_code == 401
        assert client.get(f"{path}/preview", headers=site.headers(w.admin2)).status_code == 404
        unknown = "blake3:" + "f" * 64
        assert client.get(f"/artifacts/v1/{w.w1}/{unknown}",
                          headers=site.headers(w.viewer1)).status_code == 404


@pytest.mark.parametrize("digest", [
    "blake3:..%2F..%2F..%2Fetc%2Fpasswd", "..%2F..%2Fjwt_secret", "blake3:" + "A" * 64,
    "blake3:" + "0" * 63, "sha256:" + "0" * 64, "%2E%2E",
])
def test_no_path_traversal_through_the_digest(site: Site, digest: str) -> None:
    with httpx.Client(base_url=site.url) as client:
        for suffix in ("", "/preview"):
            answer = client.get(f"/artifacts/v1/{site.world.w1}/{digest}{suffix}",
                                headers=site.headers(site.world.viewer1))
            assert answer.status_code in (400, 404), (digest, answer.status_code)
            assert "root:" not in answer.text
            assert answer.headers["content-type"].startswith("application/json")


def preview(site: Site, digest: str, rows: int = 50) -> Any:
    with httpx.Client(base_url=site.url) as client:
        answer = client.get(f"/artifacts/v1/{site.world.w1}/{digest}/preview",
                            params={"rows": rows}, headers=site.headers(site.world.viewer1))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_previews_by_format(site: Site) -> None:
    doc = {"rows": [{"id": i} for i in range(3)]}
    j = preview(site, register(site, json.dumps(doc).encode(), "out.json", "application/json"))
    assert (j["format"], j["truncated"], json.loads(j["text"])) == ("json", False, doc)
    assert j["size"] == len(json.dumps(doc))

    csv_data = "id,name\n" + "".join(f"{i},n{i}\n" for i in range(300))
    c = preview(site, register(site, csv_data.encode(), "out.csv", "text/csv"), rows=10)
    assert (c["format"], c["columns"], c["rows"][:2], len(c["rows"]), c["truncated"]) == (
        "csv", ["id", "name"], [["0", "n0"], ["1", "n1"]], 10, True)

    big = ("line of text\n" * 10000).encode()                 # 130 KB
    t = preview(site, register(site, big, "run.log", "text/plain"))
    assert t["format"] == "text" and t["truncated"] is True
    assert len(t["text"].encode()) == 64 * 1024

    p = preview(site, register(site, parquet_bytes(500), "orders.parquet",
                               "application/vnd.apache.parquet"), rows=20)
    assert (p["format"], p["columns"], len(p["rows"]), p["truncated"]) == (
        "parquet", ["id", "name", "amount"], 20, True)
    assert p["rows"][3] == [3, "n3", 4.5]
    small = preview(site, register(site, parquet_bytes(5), "few.parquet",
                                   "application/octet-stream"))
    assert (small["format"], len(small["rows"]), small["truncated"]) == ("parquet", 5, False)

    b = preview(site, register(site, bytes(range(256)) * 4, "blob.bin",
                               "application/octet-stream"))
    assert b["format"] == "binary" and "text" not in b and "rows" not in b

    with httpx.Client(base_url=site.url) as client:
        bad = client.get(f"/artifacts/v1/{site.world.w1}/{b['digest']}/preview",
                         params={"rows": 201}, headers=site.headers(site.world.viewer1))
        assert bad.status_code == 400 and "rows" in bad.json()["message"]


def test_an_s3_store_answers_a_presigned_url_valid_60_seconds(
        site: Site, module_db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    digest = register(site, b"in the bucket", "data.txt", "text/plain")
    assert BlobStore.from_settings(load_settings(artifacts_url="s3://lake/arts")).key(digest) \
        == "arts/" + blob_relative_path(digest)
    with running_gateway(module_db_url, artifacts_url="s3://lake/arts", ui_dir=tmp_path) as url, \
            httpx.Client(base_url=url) as client:
        answer = client.get(f"/artifacts/v1/{site.world.w1}/{digest}",
                            headers=site.headers(site.world.viewer1))
        assert answer.status_code == 302
        location = answer.headers["location"]
        assert "lake" in location and blob_relative_path(digest) in location
        assert "X-Amz-Expires=60" in location and "attachment" in location
        assert "example-secret" not in location
        hidden = client.get(f"/artifacts/v1/{site.world.w1}/{digest}",
                            headers=site.headers(site.world.admin2))
        assert hidden.status_code == 404 and "location" not in hidden.headers
    assert uuid.UUID(site.world.w1)
