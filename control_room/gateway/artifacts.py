"""Artifact content and previews for members (docs/ui.md, "Server side").

`GET /artifacts/v1/{workspace_id}/{digest}`: the blob, as an attachment. The caller must see
the artifact: the gateway asks `list_artifacts` as the caller (row level security decides;
anyone else gets 404, exactly as for an artifact that does not exist). A local store's blob is
streamed; an S3 store answers 302 to a presigned GET valid 60 s.
`GET /artifacts/v1/{workspace_id}/{digest}/preview?rows=50`: JSON with the head of the
content: `text` for JSON and text (64 KiB at most), `columns` and `rows` for CSV and Parquet
(200 rows at most), nothing for binary.

The store is the workers' (`CONTROL_ROOM_ARTIFACTS_URL`, default `<state_dir>/artifacts`); its
layout, `blobs/blake3/ab/cd/<hex>` under the root or the bucket's prefix, is the one
executor/artifacts.py writes (the gateway does not import the executor; tests/ui_server checks
the two agree). boto3 and pyarrow are imported only when needed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from control_room.contract.errors import ContractError
from control_room.gateway.errors import GatewayError, contract_response
from control_room.settings import Settings

DIGEST = re.compile(r"^blake3:[0-9a-f]{64}$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
BLOB_DIR = "blobs/blake3"
TEXT_CAP = 64 * 1024
MAX_ROWS = 200
PARQUET_MAX_BYTES = 256 * 1024 * 1024
PRESIGN_SECONDS = 60


def blob_relative_path(digest: str) -> str:
    """`blobs/blake3/ab/cd/<hex>` (executor/artifacts.py's layout)."""
    hex_digest = digest.removeprefix("blake3:")
    return f"{BLOB_DIR}/{hex_digest[0:2]}/{hex_digest[2:4]}/{hex_digest}"


@dataclass(frozen=True)
class BlobStore:
    """Where blobs are read: a local root, or an S3 bucket and prefix."""

    root: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        url = settings.artifacts_url or str(settings.state_dir / "artifacts")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() == "s3":
            if not parsed.netloc:
                raise ValueError(f"no bucket in the artifact store URL {url!r}")
            return cls(bucket=parsed.netloc, prefix=parsed.path.strip("/"))
        if parsed.scheme.lower() == "file":
            return cls(root=Path(urllib.request.url2pathname(parsed.path)).absolute())
        if parsed.scheme:
            raise ValueError(f"unsupported artifact store URL scheme {parsed.scheme!r}")
        return cls(root=Path(url).absolute())

    def key(self, digest: str) -> str:
        relative = blob_relative_path(digest)
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def path(self, digest: str) -> Path:
        assert self.root is not None
        return self.root / blob_relative_path(digest)

    def _s3(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client("s3", config=Config(signature_version="s3v4"))

    def presigned(self, digest: str, filename: str) -> str:
        return str(self._s3().generate_presigned_url(
            "get_object", ExpiresIn=PRESIGN_SECONDS,
            Params={"Bucket": self.bucket, "Key": self.key(digest),
                    "ResponseContentDisposition": _disposition(filename)}))

    def head(self, digest: str, limit: int) -> bytes:
        """The first `limit` bytes (FileNotFoundError when absent)."""
        if self.root is not None:
            with open(self.path(digest), "rb") as file:
                return file.read(limit)
        try:
            answer = self._s3().get_object(Bucket=self.bucket, Key=self.key(digest),
                                           Range=f"bytes=0-{max(limit - 1, 0)}")
        except Exception as exc:
            raise FileNotFoundError(digest) from exc
        data: bytes = answer["Body"].read()
        return data


def _disposition(filename: str) -> str:
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:200] or "artifact"
    return (f"attachment; filename=\"{ascii_name}\"; "
            f"filename*=UTF-8''{urllib.parse.quote(filename[:200], safe='')}")


def _bad(message: str) -> GatewayError:
    return GatewayError(400, "PGRST100", message, hint="invalid_argument")


def _missing() -> GatewayError:
    return GatewayError(404, "PT404", "artifact not found", hint="not_found")


def _format(media_type: str, name: str, head: bytes) -> str:
    lowered = name.lower()
    if head[:4] == b"PAR1" or lowered.endswith(".parquet") or "parquet" in media_type:
        return "parquet"
    if "json" in media_type or lowered.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    if media_type in ("text/csv", "application/csv") or lowered.endswith(".csv"):
        return "csv"
    if b"\x00" in head[:8192]:
        return "binary"
    if media_type.startswith("text/") or lowered.endswith((".txt", ".log", ".sql", ".md")):
        return "text"
    try:
        head[:8192].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head[:8192]) - 4:      # not just a character cut at the end
            return "binary"
    return "text"


def _text(data: bytes, size: int) -> tuple[str, bool]:
    truncated = size > TEXT_CAP or len(data) > TEXT_CAP
    return data[:TEXT_CAP].decode("utf-8", errors="replace"), truncated


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _parquet(path: Path, rows: int) -> tuple[list[str], list[list[Any]], bool]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        columns = list(parquet.schema_arrow.names)
        total = parquet.metadata.num_rows
        out: list[list[Any]] = []
        for batch in parquet.iter_batches(batch_size=rows):
            for record in batch.to_pylist():
                out.append([_cell(record.get(c)) for c in columns])
            break
    return columns, out[:rows], total > len(out[:rows])


class ArtifactEndpoints:
    """`/artifacts/v1/...` of one gateway."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.store = BlobStore.from_settings(gateway.settings)

    async def content(self, request: Request) -> Response:
        try:
            item = await self._visible(request)
            digest = item["digest"]
            filename = str(item.get("name") or digest.replace(":", "-"))
            if self.store.bucket is not None:
                url = await anyio.to_thread.run_sync(self.store.presigned, digest, filename)
                return RedirectResponse(url, status_code=302,
                                        headers={"Cache-Control": "no-store"})
            path = self.store.path(digest)
            if not path.is_file():
                raise _missing()
            return FileResponse(path, media_type=str(item.get("media_type")
                                                     or "application/octet-stream"),
                                headers={"Content-Disposition": _disposition(filename),
                                         "X-Content-Type-Options": "nosniff",
                                         "Cache-Control": "private, no-cache"})
        except GatewayError as exc:
            return exc.response()
        except ContractError as exc:
            return contract_response(exc)

    async def preview(self, request: Request) -> Response:
        try:
            raw = request.query_params.get("rows", "50")
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_ROWS:
                raise _bad(f"rows must be an integer between 1 and {MAX_ROWS}")
            item = await self._visible(request)
            body = await anyio.to_thread.run_sync(self._preview, item, int(raw))
            return JSONResponse(body, headers={"Cache-Control": "private, no-cache",
                                               "X-Content-Type-Options": "nosniff"})
        except GatewayError as exc:
            return exc.response()
        except ContractError as exc:
            return contract_response(exc)

    def _preview(self, item: dict[str, Any], rows: int) -> dict[str, Any]:
        digest, size = str(item["digest"]), int(item.get("size_bytes") or 0)
        media_type, name = str(item.get("media_type") or ""), str(item.get("name") or "")
        try:
            head = self.store.head(digest, TEXT_CAP + 1)
        except FileNotFoundError:
            raise _missing() from None
        kind = _format(media_type, name, head)
        out: dict[str, Any] = {"digest": digest, "size": size, "format": kind,
                               "truncated": False}
        if kind == "parquet":
            if self.store.root is None or size > PARQUET_MAX_BYTES:
                out.update(format="binary", truncated=True)     # no local file to seek in
                return out
            try:
                columns, values, more = _parquet(self.store.path(digest), rows)
            except Exception:                 # not readable as Parquet after all
                out.update(format="binary")
                return out
            out.update(columns=columns, rows=values, truncated=more)
        elif kind == "csv":
            text, cut = _text(head, size)
            lines = text.splitlines()
            if cut and lines:
                lines = lines[:-1]            # the last line may be cut in the middle
            parsed = list(csv.reader(io.StringIO("\n".join(lines))))
            columns = parsed[0] if parsed else []
            out.update(columns=columns, rows=parsed[1:rows + 1],
                       truncated=cut or len(parsed) - 1 > rows)
        elif kind == "json":
            text, cut = _text(head, size)
            if not cut:
                with contextlib.suppress(ValueError):
                    text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)[:TEXT_CAP]
            out.update(text=text, truncated=cut)
        elif kind == "text":
            text, cut = _text(head, size)
            out.update(text=text, truncated=cut)
        return out

    async def _visible(self, request: Request) -> dict[str, Any]:
        """The caller's view of the artifact (404 for anyone who does not see it)."""
        workspace = request.path_params["workspace_id"]
        digest = request.path_params["digest"]
        if not UUID.match(workspace):
            raise _bad("workspace_id must be a UUID")
        if not DIGEST.match(digest):
            raise _bad("digest must be blake3: followed by 64 lower-case hex digits")
        caller = self.gateway.tokens.authenticate(request.headers.get("authorization"),
                                                  request.headers.get("apikey"))
        if caller.role == "anon":
            raise GatewayError(401, "PGRST302", "artifacts need a bearer token",
                               hint="unauthorized", bearer_error="invalid_request")
        page = await anyio.to_thread.run_sync(
            self.gateway._call, "list_artifacts",
            {"workspace_id": workspace, "digest": digest, "limit": 1}, caller, None)
        items = page.get("artifacts") if isinstance(page, dict) else None
        if not items:
            raise _missing()
        item: dict[str, Any] = items[0]
        return item
