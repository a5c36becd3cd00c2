"""`comix-embed snapshot`: a consistent copy of a growing store, on disk or on S3, sent incrementally.

    comix-embed snapshot --zarr OUTPUT_DIR --to DEST [--verify] [--keep K]

DEST (a folder or `s3://bucket/prefix/`) holds `snapshots/<id>/`, each a whole output folder
holding the committed prefix at one moment (tools/snapshot/source.py), and `latest.json`, which
names the newest complete one and is replaced last (tools/snapshot/destination.py). Each snapshot
ends with its own `snapshot.json`: every file's size and SHA-256. A file whose SHA-256 the previous
snapshot already holds is not sent again; a live file whose size and modification time did not
change since is not even read. An interrupted snapshot leaves an unfinished folder that no pointer
names; the next run removes it and starts afresh, reusing what the previous complete snapshot holds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec
from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.errors import EXIT_FAILED, EXIT_OK, UsageError
from comix_embed.common.inputs.locations import parse_root
from comix_embed.common.inputs.reading import add_remote_arguments
from comix_embed.common.messages import decode_json, encode_json
from comix_embed.common.store.reading import resolve_store
from comix_embed.common.store.snapshots import POINTER_NAME, Pointer
from comix_embed.common.timestamps import utc_now
from comix_embed.tools.snapshot import format2
from comix_embed.tools.snapshot.destination import Destination, destination
from comix_embed.tools.snapshot.source import SourceFile, snapshot_files

POINTER = POINTER_NAME
CONTENTS = "snapshot.json"
SENDERS = 16  # files sent at once (object storage answers in tens of milliseconds)


class FileRecord(msgspec.Struct, kw_only=True):
    """One file of a snapshot: its size and SHA-256, and the live file's size and modification
    time when it was read (what lets the next snapshot skip reading an unchanged file)."""

    size: int
    sha256: str
    source_size: int = 0
    source_mtime_ns: int = 0


class SnapshotContents(msgspec.Struct, kw_only=True):
    """`snapshots/<id>/snapshot.json`, written last in its folder: the snapshot is complete."""

    id: str
    committed_rows: int
    created: str
    source: str
    files: dict[str, FileRecord]


@dataclass
class Sent:
    """What one snapshot cost: bytes sent, bytes reused from the previous snapshot, files of each."""

    bytes_sent: int = 0
    bytes_reused: int = 0
    files_sent: int = 0
    files_reused: int = 0

    def count(self, size: int, reused: bool) -> None:
        if reused:
            self.bytes_reused += size
            self.files_reused += 1
        else:
            self.bytes_sent += size
            self.files_sent += 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zarr", required=True, help="the store, or the output folder that holds it")
    parser.add_argument("--to", required=True, help="a folder, or s3://bucket/prefix/, that holds the snapshots")
    parser.add_argument("--verify", action="store_true", help="read every file back and compare its SHA-256")
    parser.add_argument("--keep", type=int, default=0, help="keep only the K newest snapshots (default: all)")
    parser.add_argument(
        "--format",
        type=int,
        choices=(3, 2),
        default=3,
        help="3: a snapshot of the store as it is (default); 2: a copy in the layout of generate_embeddings_zarr_v2 "
        "(Zarr format 2), for tools on zarr-python 2, written to a new local folder",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.keep < 0:
        raise UsageError("--keep must be 0 (keep all) or more")
    store = resolve_store(args.zarr)
    if args.format == 2:
        return _export_format2(store, args)
    output_dir = store.parent
    dest = destination(parse_root(args.to, "--to"))
    contents, sent = take_snapshot(output_dir, dest, verify=args.verify, progress=not args.no_progress)
    total = sum(f.size for f in contents.files.values())
    print(
        f"snapshot {contents.id}: {contents.committed_rows} committed rows, {len(contents.files)} files, "
        f"{total / 1e6:.1f} MB; sent {sent.bytes_sent / 1e6:.1f} MB in {sent.files_sent} files, reused "
        f"{sent.bytes_reused / 1e6:.1f} MB in {sent.files_reused} files; published as {dest}/{POINTER}",
        flush=True,
    )
    if args.keep:
        for old in prune(dest, contents.id, args.keep):
            print(f"removed snapshot {old} (--keep {args.keep})", flush=True)
    return EXIT_OK if contents.files else EXIT_FAILED


def _export_format2(store: Path, args: argparse.Namespace) -> int:
    to = parse_root(args.to, "--to")
    if not isinstance(to, Path):
        raise UsageError("--format 2 writes to a local folder (copy it to object storage afterwards if need be)")
    if args.keep or args.verify:
        raise UsageError("--keep and --verify belong to snapshots in format 3")
    rows = format2.export(store, to, progress=not args.no_progress)
    print(f"format-2 copy of {rows} committed rows written to {to / config.STORE_NAME}", flush=True)
    return EXIT_OK


def previous_snapshot(dest: Destination) -> SnapshotContents | None:
    """The snapshot `latest.json` names, None for a destination with none yet."""
    raw = dest.read(POINTER)
    if raw is None:
        return None
    pointer = decode_json(raw, Pointer, f"{dest}/{POINTER}")
    contents = dest.read(f"{pointer.path}{CONTENTS}")
    if contents is None:
        raise UsageError(f"{dest}/{POINTER} names {pointer.path}, which has no {CONTENTS}")
    return decode_json(contents, SnapshotContents, f"{dest}/{pointer.path}{CONTENTS}")


def take_snapshot(
    output_dir: Path, dest: Destination, verify: bool = False, progress: bool = False
) -> tuple[SnapshotContents, Sent]:
    """Copy the committed prefix of `output_dir`'s store now to a new snapshot, and publish it."""
    before = previous_snapshot(dest)
    ids = dest.snapshot_ids()
    for stale in ids:  # an interrupted snapshot: never published, started again
        if dest.read(f"snapshots/{stale}/{CONTENTS}") is None:
            dest.delete_snapshot(stale)
    new_id = f"{int(ids[-1]) + 1 if ids else 1:06d}"
    folder = f"snapshots/{new_id}/"
    n, files = snapshot_files(output_dir)
    by_sha = {}
    if before is not None:
        by_sha = {record.sha256: rel for rel, record in before.files.items()}
    sent = Sent()
    lock = threading.Lock()
    records: dict[str, FileRecord] = {}
    kill_after = config.SNAPSHOT_KILL_AFTER.get()
    bar = tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, desc="snapshot", disable=not progress)

    def one(file: SourceFile) -> None:
        old = before.files.get(file.rel) if before is not None else None
        unchanged = (  # a time of 0 is no time (a file changed moments before): never a match
            old is not None
            and file.path is not None
            and file.mtime_ns != 0
            and (old.source_size, old.source_mtime_ns) == (file.size, file.mtime_ns)
        )
        data = None if unchanged else file.read()
        sha = old.sha256 if unchanged and old is not None else hashlib.sha256(data or b"").hexdigest()
        size = old.size if unchanged and old is not None else len(data or b"")
        reused = sha in by_sha and before is not None
        if reused and before is not None:
            dest.reuse(f"snapshots/{before.id}/{by_sha[sha]}", folder + file.rel)
        else:
            dest.write(folder + file.rel, data if data is not None else file.read())
        with lock:
            sent.count(size, reused)
            records[file.rel] = FileRecord(size=size, sha256=sha, source_size=file.size, source_mtime_ns=file.mtime_ns)
            bar.update(file.size)
            done = len(records)
        if kill_after is not None and done >= kill_after:  # a test switch: killed here
            os.kill(os.getpid(), signal.SIGKILL)

    with ThreadPoolExecutor(SENDERS, thread_name_prefix="snapshot") as pool:
        list(pool.map(one, files))
    bar.close()
    contents = SnapshotContents(
        id=new_id, committed_rows=n, created=utc_now(), source=str(output_dir), files=dict(sorted(records.items()))
    )
    if verify:
        check_copy(dest, folder, contents)
    dest.write(folder + CONTENTS, encode_json(contents))
    dest.publish(
        POINTER, encode_json(Pointer(snapshot=new_id, path=folder, committed_rows=n, created=contents.created))
    )
    return contents, sent


def check_copy(dest: Destination, folder: str, contents: SnapshotContents) -> None:
    """Read every file of the snapshot back and compare its SHA-256 with what was sent."""
    wrong = []
    for rel, record in contents.files.items():
        data = dest.read(folder + rel)
        if data is None or hashlib.sha256(data).hexdigest() != record.sha256:
            wrong.append(rel)
    if wrong:
        raise UsageError(f"--verify: {len(wrong)} file(s) of {dest}/{folder} differ from what was sent: {wrong[:5]}")


def prune(dest: Destination, newest: str, keep: int) -> list[str]:
    """Remove complete snapshots older than the `keep` newest (never `newest`); their ids."""
    complete = [i for i in dest.snapshot_ids() if dest.read(f"snapshots/{i}/{CONTENTS}") is not None]
    old = [i for i in complete[: max(0, len(complete) - keep)] if i != newest]
    for snapshot_id in old:
        dest.delete_snapshot(snapshot_id)
    return old
