"""Hashing throughput: the artifact store beside raw blake3, and table digests in rows/s.

    python bench/hashing.py [--size-mib 512] [--rows 1000000] [--repeat 3] [--dir DIR]

Blobs: one buffer of random bytes (and a file of the same bytes, read from the page cache
after a first warm read), hashed in the same run by

- raw blake3 on one thread and with `max_threads=blake3.AUTO` (all cores), and hashlib's
  sha256 for scale;
- `blob_digest` of the buffer, and of the file (streamed in 8 MiB chunks);
- `LocalArtifactStore.put_bytes` / `put_file` of a new blob (hash + write a temp file +
  rename; with the default fsync and without), and of a blob already stored (hash + stat).

Tables: a Delta table of N rows (int64 id, string category and name, float64 amount with
nulls and NaN, timestamp, bool, decimal) written once with deltalake; `table_digest` of it
sorted by every column and by the primary key, and `arrow_table_digest` of the rows already
in memory (no read). Figures are the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake
from rich.console import Console
from rich.table import Table

from executor.artifacts import LocalArtifactStore
from executor.digests import arrow_table_digest, blob_digest, table_digest

MIB = 1024 * 1024


@dataclass
class Timing:
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(repeat: int, run: Callable[[], Any], setup: Callable[[], Any] | None = None,
            teardown: Callable[[], Any] | None = None) -> Timing:
    seconds = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
        if teardown is not None:
            teardown()
    return Timing(seconds)


class FreshStore:
    """A new, empty local store per repetition (so each put writes a new blob)."""

    def __init__(self, base: Path, fsync: bool) -> None:
        self.base = base
        self.fsync = fsync
        self.store = LocalArtifactStore(base / "store", fsync=fsync)

    def reset(self) -> None:
        shutil.rmtree(self.base / "store", ignore_errors=True)
        self.store = LocalArtifactStore(self.base / "store", fsync=self.fsync)


def bench_blobs(size: int, repeat: int, work: Path) -> list[tuple[str, Timing]]:
    data = os.urandom(size)
    path = work / "blob.bin"
    path.write_bytes(data)
    expected = "blake3:" + blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
    assert blob_digest(path) == expected  # also warms the page cache

    results: list[tuple[str, Timing]] = []

    def add(name: str, timing: Timing) -> None:
        results.append((name, timing))

    add("raw blake3, 1 thread", measure(repeat, lambda: blake3.blake3(data).digest()))
    add("raw blake3, max_threads=AUTO", measure(
        repeat, lambda: blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()))
    add("hashlib.sha256 (for scale)", measure(repeat, lambda: hashlib.sha256(data).digest()))
    add("blob_digest(bytes)", measure(repeat, lambda: blob_digest(data)))
    add("blob_digest(path), 8 MiB chunks", measure(repeat, lambda: blob_digest(path)))

    for fsync in (True, False):
        label = "fsync" if fsync else "no fsync"
        fresh = FreshStore(work / f"bytes-{label}", fsync)
        add(f"put_bytes, new blob ({label})",
            measure(repeat, lambda f=fresh: f.store.put_bytes(data), setup=fresh.reset))
        fresh = FreshStore(work / f"file-{label}", fsync)
        add(f"put_file, new blob ({label})",
            measure(repeat, lambda f=fresh: f.store.put_file(path), setup=fresh.reset))
    stored = LocalArtifactStore(work / "existing")
    assert stored.put_bytes(data).digest == expected
    add("put_bytes, blob already stored", measure(repeat, lambda: stored.put_bytes(data)))
    add("put_file, blob already stored", measure(repeat, lambda: stored.put_file(path)))
    return results


def mixed_rows(count: int) -> Any:
    ids = pa.array(range(count), pa.int64())
    amount = pc.random(count, initializer=1)
    amount = pc.if_else(pc.equal(pc.bit_wise_and(ids, 63), 0), pa.scalar(None, pa.float64()),
                        amount)
    amount = pc.if_else(pc.equal(pc.bit_wise_and(ids, 127), 1), float("nan"), amount)
    return pa.table({
        "id": ids,
        "category": pc.binary_join_element_wise(
            "c", pc.cast(pc.bit_wise_and(ids, 7), pa.string()), ""),
        "name": pc.binary_join_element_wise(
            "customer-", pc.cast(pc.bit_wise_and(pc.multiply(ids, 7919), 65535), pa.string()),
            ""),
        "amount": amount,
        "at": pc.cast(pc.multiply(ids, 1_000_000), pa.timestamp("us", tz="UTC")),
        "flag": pc.greater(pc.random(count, initializer=2), 0.5),
        "price": pc.cast(pc.divide(pc.cast(pc.bit_wise_and(ids, 4095), pa.float64()), 100.0),
                         pa.decimal128(12, 2)),
    })


def bench_tables(rows: int, repeat: int, work: Path) -> list[tuple[str, Timing]]:
    data = mixed_rows(rows)
    location = work / "table"
    write_deltalake(location, data)
    return [
        ("table_digest, all columns", measure(repeat, lambda: table_digest(location))),
        ("table_digest, primary_key=\\[id]",
         measure(repeat, lambda: table_digest(location, primary_key=["id"]))),
        ("arrow_table_digest (in memory), all columns",
         measure(repeat, lambda: arrow_table_digest(data))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the temporary files go (default: the system temp dir)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    console = Console(width=110)
    with tempfile.TemporaryDirectory(prefix="cr-bench-hashing-", dir=args.dir) as tmp:
        work = Path(tmp)
        console.print(f"hashing {args.size_mib} MiB, best of {args.repeat}, "
                      f"{os.cpu_count()} cores ...")
        blobs = bench_blobs(size, args.repeat, work)
        console.print(f"table digests of {args.rows:,} rows ...")
        tables = bench_tables(args.rows, args.repeat, work)

    table = Table(title=f"blob hashing, {args.size_mib} MiB buffer / file "
                        f"(best of {args.repeat}; {os.cpu_count()} cores)")
    for column in ("what", "best s", "median s", "GB/s (best)", "GiB/s (best)"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for name, timing in blobs:
        table.add_row(name, f"{timing.best:.3f}", f"{timing.median:.3f}",
                      f"{size / timing.best / 1e9:.2f}", f"{size / timing.best / 2**30:.2f}")
    console.print(table)

    table = Table(title=f"table digests, {args.rows:,} rows x {len(mixed_rows(1).schema)} "
                        f"columns (best of {args.repeat})")
    for column in ("what", "best s", "median s", "rows/s (best)"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for name, timing in tables:
        table.add_row(name, f"{timing.best:.3f}", f"{timing.median:.3f}",
                      f"{args.rows / timing.best:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
