"""Content-addressed artifact stores: a local directory (the default) or any S3-compatible
store. How blobs are written and what S3 needs: docs/artifacts.md.
"""

from __future__ import annotations

import contextlib
import io
import mimetypes
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol, cast, runtime_checkable

from executor.digests import (
    DIGEST_PREFIX,
    BytesLike,
    PathLike,
    Readable,
    blob_digest,
    digest_hex,
    format_digest,
    stream_digest,
)

DEFAULT_MEDIA_TYPE = "application/octet-stream"
BLOB_DIR = "blobs/blake3"
S3_MULTIPART_THRESHOLD = 64 * 1024 * 1024
S3_MULTIPART_CHUNK = 16 * 1024 * 1024

AddressingStyle = Literal["auto", "path", "virtual"]


class ArtifactNotFoundError(FileNotFoundError):
    """No blob with this digest in the store."""


@dataclass(frozen=True)
class StoredBlob:
    digest: str
    uri: str
    size_bytes: int
    media_type: str = DEFAULT_MEDIA_TYPE


@runtime_checkable
class ArtifactStore(Protocol):
    """What every artifact store does. Implementations are safe to share between threads."""

    def put_bytes(self, data: BytesLike, media_type: str = DEFAULT_MEDIA_TYPE) -> StoredBlob:
        """Store bytes (once); the blob's digest, URI and size."""
        ...

    def put_file(self, path: PathLike, media_type: str | None = None) -> StoredBlob:
        """Store a file's content (once); the media type is guessed from the name if None.
        The file must not change while it is being stored."""
        ...

    def put_stream(self, stream: Readable | IO[bytes],
                   media_type: str = DEFAULT_MEDIA_TYPE) -> StoredBlob:
        """Store everything read from a binary stream (once)."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """A readable binary file of the blob; ArtifactNotFoundError if absent."""
        ...

    def exists(self, digest: str) -> bool: ...

    def uri_for(self, digest: str) -> str:
        """Where the blob with this digest lives (or would live)."""
        ...

    def list_digests(self) -> Iterator[str]:
        """Every stored blob's digest (no order promised)."""
        ...


def blob_relative_path(digest: str) -> str:
    """`blobs/blake3/ab/cd/<hex>`: where a blob lives under a store's root or prefix."""
    hex_digest = digest_hex(digest)
    return f"{BLOB_DIR}/{hex_digest[0:2]}/{hex_digest[2:4]}/{hex_digest}"


def read_blob(store: ArtifactStore, digest: str) -> bytes:
    with store.open(digest) as file:
        return file.read()


def verify_blob(store: ArtifactStore, digest: str) -> bool:
    """Whether the stored bytes still hash to their digest (False if absent)."""
    try:
        with store.open(digest) as file:
            return blob_digest(file) == digest
    except ArtifactNotFoundError:
        return False


def _guess_media_type(path: PathLike) -> str:
    guessed, _ = mimetypes.guess_type(os.fspath(path))
    return guessed or DEFAULT_MEDIA_TYPE


def _size_of(data: BytesLike) -> int:
    return memoryview(data).nbytes


# ---------------------------------------------------------------------------------------------
# Local directory


class LocalArtifactStore:
    """Blobs under a local directory: `<root>/blobs/blake3/ab/cd/<hex>`, temp files in
    `<root>/tmp` (same file system, so the final rename is atomic).

    `fsync=True` (the default) flushes a new blob and its directory before it is visible as
    stored, so that a registered digest survives a crash.
    """

    def __init__(self, root: PathLike, *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.fsync = fsync
        self._tmp = self.root / "tmp"

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def path_for(self, digest: str) -> Path:
        return self.root / blob_relative_path(digest)

    def uri_for(self, digest: str) -> str:
        return self.path_for(digest).as_uri()

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path_for(digest), "rb")
        except FileNotFoundError as error:
            raise ArtifactNotFoundError(f"no blob {digest} in {self.root}") from error

    def list_digests(self) -> Iterator[str]:
        base = self.root / BLOB_DIR
        if not base.is_dir():
            return
        for path in base.glob("??/??/*"):
            name = path.name
            if len(name) == 64 and path.parent.parent.name == name[0:2] \
                    and path.parent.name == name[2:4]:
                yield format_digest(name)

    def put_bytes(self, data: BytesLike, media_type: str = DEFAULT_MEDIA_TYPE) -> StoredBlob:
        digest = blob_digest(data)
        size = _size_of(data)
        if not self.exists(digest):
            with self._temp_file() as (fd, tmp_path):
                view = memoryview(data).cast("B")
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                self._publish(fd, tmp_path, digest)
        return StoredBlob(digest, self.uri_for(digest), size, media_type)

    def put_file(self, path: PathLike, media_type: str | None = None) -> StoredBlob:
        with open(path, "rb", buffering=0) as file:
            return self.put_stream(file, media_type or _guess_media_type(path))

    def put_stream(self, stream: Readable | IO[bytes],
                   media_type: str = DEFAULT_MEDIA_TYPE) -> StoredBlob:
        # One pass: hash while copying into a temp file, then move it into place.
        with self._temp_file() as (fd, tmp_path):
            with open(fd, "wb", buffering=0, closefd=False) as sink:
                result = stream_digest(stream, sink=sink)
            if not self.exists(result.digest):
                self._publish(fd, tmp_path, result.digest)
        return StoredBlob(result.digest, self.uri_for(result.digest), result.size_bytes,
                          media_type)

    @contextlib.contextmanager
    def _temp_file(self) -> Iterator[tuple[int, str]]:
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=self._tmp, prefix="blob-", suffix=".tmp")
        try:
            yield fd, tmp_path
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)

    def _publish(self, fd: int, tmp_path: str, digest: str) -> None:
        """Make a complete temp file the blob, unless another writer got there first."""
        if self.fsync:
            os.fsync(fd)
        os.fchmod(fd, 0o444)
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            # A hard link never replaces an existing blob (rename would).
            os.link(tmp_path, final)
        except FileExistsError:
            return
        except OSError:
            # A file system without hard links: rename (same bytes if a writer raced us).
            if final.exists():
                return
            os.replace(tmp_path, final)
        if self.fsync:
            _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# S3-compatible object stores


class _BodyReader(io.RawIOBase):
    """A raw file over a botocore StreamingBody (so that `open` gives a real BinaryIO)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data: bytes = self._body.read(view.nbytes)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _error_code(error: Exception) -> tuple[str, int]:
    response: dict[str, Any] = getattr(error, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3ArtifactStore:
    """Blobs in an S3-compatible bucket (AWS S3, MinIO, Supabase Storage's S3 endpoint, ...),
    at `<prefix>/blobs/blake3/ab/cd/<hex>`.

    `addressing_style="path"` for stores without virtual-host buckets (MinIO, Supabase,
    local servers). `client` replaces the boto3 client built from the other options.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        addressing_style: AddressingStyle | None = None,
        multipart_threshold: int = S3_MULTIPART_THRESHOLD,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 artifact store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self._conditional_put = True
        if client is None:
            client = _s3_client(
                endpoint_url=endpoint_url,
                region=region,
                access_key_id=access_key_id,
                secret_access_key=secret_access_key,
                session_token=session_token,
                addressing_style=addressing_style,
            )
        self.client = client

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key_for(self, digest: str) -> str:
        relative = blob_relative_path(digest)
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def uri_for(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(digest)}"

    def exists(self, digest: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_for(digest))
        except Exception as error:
            code, status = _error_code(error)
            if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def open(self, digest: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key_for(digest))
        except Exception as error:
            code, status = _error_code(error)
            if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                raise ArtifactNotFoundError(f"no blob {digest} in {self!r}") from error
            raise
        return cast(BinaryIO, io.BufferedReader(_BodyReader(response["Body"]), 1024 * 1024))

    def list_digests(self) -> Iterator[str]:
        base = f"{self.prefix}/{BLOB_DIR}/" if self.prefix else f"{BLOB_DIR}/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                name = str(item["Key"]).rsplit("/", 1)[-1]
                digest = DIGEST_PREFIX + name
                with contextlib.suppress(ValueError):
                    if self.key_for(digest) == item["Key"]:
                        yield digest

    def put_bytes(self, data: BytesLike, media_type: str = DEFAULT_MEDIA_TYPE) -> StoredBlob:
        digest = blob_digest(data)
        size = _size_of(data)
        if not self.exists(digest):
            body = data if isinstance(data, bytes | bytearray) else bytes(data)
            self._put_object(digest, body, size, media_type)
        return StoredBlob(digest, self.uri_for(digest), size, media_type)

    def put_file(self, path: PathLike, media_type: str | None = None) -> StoredBlob:
        media_type = media_type or _guess_media_type(path)
        before = os.stat(path)
        digest = blob_digest(path)
        size = before.st_size
        if not self.exists(digest):
            if size <= self.multipart_threshold:
                with open(path, "rb") as body:
                    self._put_object(digest, body, size, media_type)
            else:
                self._upload_multipart(digest, path, media_type)
            after = os.stat(path)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                self.client.delete_object(Bucket=self.bucket, Key=self.key_for(digest))
                raise RuntimeError(f"{os.fspath(path)} changed while it was being stored")
        return StoredBlob(digest, self.uri_for(digest), size, media_type)

    def put_stream(self, stream: Readable | IO[bytes],
                   media_type: str = DEFAULT_MEDIA_TYPE) -> StoredBlob:
        # The key is the digest, known only at the end: spool to a temp file first.
        with tempfile.NamedTemporaryFile(prefix="cr-blob-", suffix=".tmp") as spool:
            stream_digest(stream, sink=spool)
            spool.flush()
            return self.put_file(spool.name, media_type)

    def _put_object(self, digest: str, body: Any, size: int, media_type: str) -> None:
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key_for(digest),
            "Body": body,
            "ContentLength": size,
            "ContentType": media_type,
            "Metadata": {"digest": digest},
        }
        if self._conditional_put:
            try:
                self.client.put_object(**arguments, IfNoneMatch="*")
                return
            except Exception as error:
                code, status = _error_code(error)
                if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return  # another writer stored it first: same bytes
                if status != 501 and code not in ("NotImplemented", "InvalidArgument"):
                    raise
                self._conditional_put = False  # the store does not do conditional writes
                if hasattr(body, "seek"):
                    body.seek(0)
        self.client.put_object(**arguments)

    def _upload_multipart(self, digest: str, path: PathLike, media_type: str) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=S3_MULTIPART_CHUNK,
        )
        self.client.upload_file(
            os.fspath(path),
            self.bucket,
            self.key_for(digest),
            ExtraArgs={"ContentType": media_type, "Metadata": {"digest": digest}},
            Config=config,
        )


def _s3_client(
    *,
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    addressing_style: AddressingStyle | None,
) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region,
    )
    s3_config: dict[str, Any] = {}
    if addressing_style is not None:
        s3_config["addressing_style"] = addressing_style
    config = Config(
        s3=s3_config or None,
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": 5},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


# ---------------------------------------------------------------------------------------------
# From a URL


def artifact_store_from_url(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    addressing_style: AddressingStyle | None = None,
    fsync: bool = True,
) -> ArtifactStore:
    """`file:///dir` or a plain path -> LocalArtifactStore; `s3://bucket[/prefix]` ->
    S3ArtifactStore with the S3 options (which a local URL refuses)."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"no bucket in {url!r}")
        return S3ArtifactStore(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            addressing_style=addressing_style,
        )
    s3_options = (endpoint_url, region, access_key_id, secret_access_key, session_token,
                  addressing_style)
    if any(option is not None for option in s3_options):
        raise ValueError(f"S3 options given for a local artifact store: {url!r}")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"a file URL names another host: {url!r}")
        return LocalArtifactStore(urllib.request.url2pathname(parsed.path), fsync=fsync)
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a path (or a drive letter)
        if not url:
            raise ValueError("an empty artifact store location")
        return LocalArtifactStore(url, fsync=fsync)
    raise ValueError(f"unsupported artifact store URL scheme {scheme!r}: {url!r}")
