"""The artifact stores: one suite run against the local directory store and the S3 store (on
moto's S3 server), plus what is particular to each and the URL factory."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import blake3
import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.server import ThreadedMotoServer

from executor.artifacts import (
    ArtifactNotFoundError,
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    StoredBlob,
    artifact_store_from_url,
    blob_relative_path,
    read_blob,
    verify_blob,
)


class _Credentials(TypedDict):
    access_key_id: str
    secret_access_key: str
    region: str


S3_CREDENTIALS = _Credentials(access_key_id="test", secret_access_key="test", region="us-east-1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running_moto_server() -> Iterator[str]:
    """moto's S3 server in a thread on a free port; yields its endpoint URL."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint


def _new_bucket(endpoint: str) -> str:
    bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    return bucket


class Writes:
    """Counts the writes that reach a store's storage (new local files, S3 PUTs)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.s3_writes = 0
        if isinstance(store, S3ArtifactStore):
            for operation in ("PutObject", "CreateMultipartUpload"):
                store.client.meta.events.register(
                    f"before-call.s3.{operation}", self._count_s3
                )

    def _count_s3(self, **_: Any) -> None:
        self.s3_writes += 1

    def state(self, digest: str) -> object:
        """Something that changes whenever the blob is (re)written."""
        if isinstance(self.store, LocalArtifactStore):
            info = self.store.path_for(digest).stat()
            return (info.st_ino, info.st_mtime_ns)
        return self.s3_writes


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return S3ArtifactStore(
        _new_bucket(endpoint),
        "lake/artifacts",
        endpoint_url=endpoint,
        addressing_style="path",
        multipart_threshold=8 * 1024 * 1024,
        **S3_CREDENTIALS,
    )


def _expected_digest(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


# --- the suite every store passes ------------------------------------------------------------


def test_put_bytes_names_the_blob_by_its_blake3_digest(store: ArtifactStore) -> None:
    data = b'{"rows": 3}'
    blob = store.put_bytes(data, "application/json")
    assert blob == StoredBlob(
        _expected_digest(data), store.uri_for(blob.digest), len(data), "application/json"
    )
    assert blob.uri.endswith(blob_relative_path(blob.digest))
    hex_digest = blob.digest.removeprefix("blake3:")
    assert blob.uri.endswith(f"/blobs/blake3/{hex_digest[:2]}/{hex_digest[2:4]}/{hex_digest}")
    assert store.exists(blob.digest)
    with store.open(blob.digest) as file:
        assert file.read() == data
    assert verify_blob(store, blob.digest)


def test_the_same_bytes_are_stored_once_and_never_rewritten(store: ArtifactStore) -> None:
    writes = Writes(store)
    first = store.put_bytes(b"same bytes", "text/plain")
    before = writes.state(first.digest)
    second = store.put_bytes(bytearray(b"same bytes"), "text/plain")
    third = store.put_bytes(memoryview(b"same bytes"))
    assert first.digest == second.digest == third.digest
    assert first.uri == second.uri == third.uri
    assert writes.state(first.digest) == before
    assert list(store.list_digests()) == [first.digest]


def test_put_file_and_put_stream_give_the_put_bytes_digest(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "report.json"
    path.write_bytes(data)
    from_file = store.put_file(path)
    assert from_file.digest == _expected_digest(data)
    assert from_file.size_bytes == len(data)
    assert from_file.media_type == "application/json"
    writes = Writes(store)
    before = writes.state(from_file.digest)
    with open(path, "rb") as stream:
        from_stream = store.put_stream(stream, "application/json")
    from_bytes = store.put_bytes(data)
    assert from_stream.digest == from_bytes.digest == from_file.digest
    assert writes.state(from_file.digest) == before
    assert read_blob(store, from_file.digest) == data
    assert list(store.list_digests()) == [from_file.digest]


def test_a_large_file_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    """Over the S3 store's multipart threshold (8 MiB here): a multipart upload."""
    data = os.urandom(9 * 1024 * 1024 + 5)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    blob = store.put_file(path, "application/vnd.apache.parquet")
    assert blob.digest == _expected_digest(data)
    assert blob.media_type == "application/vnd.apache.parquet"
    with store.open(blob.digest) as file:
        assert file.read(10) == data[:10]
        assert file.read() == data[10:]


def test_empty_blob(store: ArtifactStore) -> None:
    blob = store.put_bytes(b"")
    assert blob.digest == _expected_digest(b"")
    assert blob.size_bytes == 0
    assert read_blob(store, blob.digest) == b""


def test_missing_blob(store: ArtifactStore) -> None:
    digest = _expected_digest(b"never stored")
    assert not store.exists(digest)
    with pytest.raises(ArtifactNotFoundError):
        store.open(digest)
    with pytest.raises(FileNotFoundError):  # ArtifactNotFoundError is one
        read_blob(store, digest)
    assert not verify_blob(store, digest)
    assert list(store.list_digests()) == []


@pytest.mark.parametrize("digest", ["sha256:" + "0" * 64, "blake3:" + "0" * 63, "blake3:ABC"])
def test_malformed_digests_are_refused(store: ArtifactStore, digest: str) -> None:
    with pytest.raises(ValueError, match="not a blake3 digest"):
        store.exists(digest)
    with pytest.raises(ValueError, match="not a blake3 digest"):
        store.open(digest)


def test_concurrent_puts_of_the_same_bytes_store_one_blob(store: ArtifactStore) -> None:
    data = os.urandom(256 * 1024)
    results: list[StoredBlob] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            results.append(store.put_bytes(data))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {blob.digest for blob in results} == {_expected_digest(data)}
    assert list(store.list_digests()) == [_expected_digest(data)]
    assert read_blob(store, _expected_digest(data)) == data


def test_list_digests_lists_every_blob(store: ArtifactStore) -> None:
    digests = {store.put_bytes(f"blob {i}".encode()).digest for i in range(5)}
    assert set(store.list_digests()) == digests


def test_the_store_is_an_artifact_store(store: ArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)


# --- local store ------------------------------------------------------------------------------


def test_local_blob_layout_is_read_only_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    blob = store.put_bytes(b"x" * 1000)
    hex_digest = blob.digest.removeprefix("blake3:")
    path = tmp_path / "blobs" / "blake3" / hex_digest[:2] / hex_digest[2:4] / hex_digest
    assert store.path_for(blob.digest) == path
    assert blob.uri == path.as_uri()
    assert path.read_bytes() == b"x" * 1000
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    store.put_bytes(b"x" * 1000)
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 1000)
    store.put_file(source)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_local_store_without_fsync(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path, fsync=False)
    assert read_blob(store, store.put_bytes(b"quick").digest) == b"quick"


# --- S3 store ---------------------------------------------------------------------------------


def test_s3_object_key_content_type_and_metadata(s3_endpoint: str) -> None:
    bucket = _new_bucket(s3_endpoint)
    store = S3ArtifactStore(
        bucket, "/a/b/", endpoint_url=s3_endpoint, addressing_style="path", **S3_CREDENTIALS
    )
    blob = store.put_bytes(b"<html/>", "text/html")
    key = "a/b/" + blob_relative_path(blob.digest)
    assert blob.uri == f"s3://{bucket}/{key}"
    head = store.client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "text/html"
    assert head["Metadata"] == {"digest": blob.digest}


def test_s3_store_without_prefix(s3_endpoint: str) -> None:
    bucket = _new_bucket(s3_endpoint)
    store = S3ArtifactStore(bucket, endpoint_url=s3_endpoint, **S3_CREDENTIALS)
    blob = store.put_bytes(b"root")
    assert blob.uri == f"s3://{bucket}/{blob_relative_path(blob.digest)}"
    assert list(store.list_digests()) == [blob.digest]


def test_s3_conditional_put_losing_a_race_is_not_an_error(s3_endpoint: str) -> None:
    """Two writers both saw the blob missing: the second PUT gets 412 and succeeds."""
    store = S3ArtifactStore(
        _new_bucket(s3_endpoint), "p", endpoint_url=s3_endpoint, addressing_style="path",
        **S3_CREDENTIALS,
    )
    first = store.put_bytes(b"raced")
    store.exists = lambda digest: False  # type: ignore[method-assign]
    assert store.put_bytes(b"raced") == first
    assert read_blob(store, first.digest) == b"raced"


def test_s3_store_without_conditional_writes_falls_back_to_plain_puts(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """A store answering 501 to `If-None-Match` (as some S3-compatible ones do)."""
    store = S3ArtifactStore(
        _new_bucket(s3_endpoint), "p", endpoint_url=s3_endpoint, addressing_style="path",
        **S3_CREDENTIALS,
    )
    refused: list[str] = []

    def refuse_conditional_puts(params: dict[str, Any], **_: Any) -> Any:
        if "If-None-Match" not in params["headers"]:
            return None  # let the request through
        refused.append(params["url_path"])
        error = {"Code": "NotImplemented", "Message": "If-None-Match is not supported"}
        response = AWSResponse(params["url"], 501, {}, None)
        return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 501}}

    store.client.meta.events.register("before-call.s3.PutObject", refuse_conditional_puts)
    first = store.put_bytes(b"plain put")
    assert len(refused) == 1
    assert read_blob(store, first.digest) == b"plain put"
    path = tmp_path / "f.txt"
    path.write_bytes(b"a file, plain put too")
    second = store.put_file(path)
    assert len(refused) == 1  # the store remembers
    assert read_blob(store, second.digest) == b"a file, plain put too"


# --- factory ----------------------------------------------------------------------------------


def test_factory_local_urls(tmp_path: Path) -> None:
    from_url = artifact_store_from_url((tmp_path / "a").as_uri())
    assert isinstance(from_url, LocalArtifactStore)
    assert from_url.root == tmp_path / "a"
    from_path = artifact_store_from_url(str(tmp_path / "b"), fsync=False)
    assert isinstance(from_path, LocalArtifactStore)
    assert from_path.root == tmp_path / "b"
    assert not from_path.fsync
    assert read_blob(from_url, from_url.put_bytes(b"a").digest) == b"a"


def test_factory_s3_url(s3_endpoint: str) -> None:
    bucket = _new_bucket(s3_endpoint)
    made = artifact_store_from_url(
        f"s3://{bucket}/runs/artifacts", endpoint_url=s3_endpoint, addressing_style="path",
        **S3_CREDENTIALS,
    )
    assert isinstance(made, S3ArtifactStore)
    assert (made.bucket, made.prefix) == (bucket, "runs/artifacts")
    blob = made.put_bytes(b"via url")
    assert blob.uri.startswith(f"s3://{bucket}/runs/artifacts/blobs/blake3/")
    assert read_blob(made, blob.digest) == b"via url"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("file:///tmp/x", {"endpoint_url": "http://s3"}, "S3 options"),
        ("/tmp/x", {"region": "eu-west-1"}, "S3 options"),
        ("file://otherhost/x", {}, "another host"),
        ("gs://bucket/x", {}, "unsupported"),
        ("s3:///x", {}, "no bucket"),
        ("", {}, "empty"),
    ],
)
def test_factory_refuses(url: str, options: dict[str, str], message: str) -> None:
    factory: Callable[..., ArtifactStore] = artifact_store_from_url
    with pytest.raises(ValueError, match=message):
        factory(url, **options)
