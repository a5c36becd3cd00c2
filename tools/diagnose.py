"""`comix-embed diagnose Z`: check a store against its contract (spec/store.md), read only.

The users' checking scripts printed statistics of the first rows (research/comic-analysis.md
§5.4); on a store written in random order that cannot tell "not written yet" from "lost" (§6.3
item 1). This tool checks what the store claims against what it holds, one line per check (OK,
WARN or FAIL), then a verdict:

- layout: every array of the schema, its shape, dtype and dimension names; the dimension
  coordinates; committed_rows <= registered_rows <= capacity.
- zarr-vs-xarray: the store opened with `zarr.open_group(mode="r")` and with
  `xarray.open_zarr(consolidated=False)` has the same variables, shapes and dtypes, and exactly
  the same committed `page_embeddings`, `status` and `page_id` values.
- manifests: each manifest parses, agrees with itself and with its job file (rows, page ids);
  no two claim the same rows; their contiguous prefix covers exactly `committed_rows`. A missing
  manifest inside the prefix, or a `committed_rows` the manifests do not cover, is a FAIL.
  Manifests past a gap are normal while a job runs ("committed out of order, waiting for batch
  N"): reported, not an error.
- manifest-rows: each manifest's page ids are the store's rows, its status counts are the
  store's `status` values.
- page-ids: no page id twice among the registered rows; every row holds the page its job file
  gave it.
- values: over every row a manifest covers (and the committed prefix): no NaN or Inf in the
  float arrays; ok and full_page rows have a non-zero page embedding (the users' search drops
  rows with L2 <= 1e-6); failed rows hold zeros in every float array and an error; committed rows
  have a status. Rows past the manifests that hold a status are reported (a writer writing
  them, or a killed one whose next start clears them).
- panel-masks: valid slots are the leading ones; for ok and full_page rows the mask sum equals
  the panel count of the job file (1 for a full_page row).
- leftovers: temporary files (zarr's `*.partial`, our `.*.tmp`, a `.<store>.creating` folder),
  manifests moved aside as `.corrupt`, batches `inflight.json` names that never got a
  manifest. While a writer runs these exist for an instant (WARN); with no writer running a
  temporary file is something a crash left that nobody cleaned: FAIL.
- audit: the audit log agrees with the store. The writer writes each row's record once, after
  the batch's manifest, and never commits a batch twice, so: a record naming a row no manifest
  covers, or whose page id, status, page L2 or mask sum differ from the store, is a FAIL (the
  L2 is what makes a row changed after its commit visible); a covered row without a record is a
  WARN (a writer killed between a manifest and its audit lines loses those lines; the manifest
  is the truth); several records for one row (a batch committed again after its manifest was
  lost) are a WARN and the last one is compared.

Exit status 0 when no check FAILs (warnings allowed), 1 otherwise (a store whose root metadata,
manifest folder or job files cannot even be read included), 2 when there is no store.
Nothing is written: the store is opened read only, and whether a writer runs is read from
/proc/locks rather than by taking its lock.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.jobs import Job, load_jobs
from comix_embed.common.manifests import INFLIGHT_NAME, committed_prefix, is_temporary, manifest_rows, scan_manifests
from comix_embed.common.results import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_NAMES, STATUS_OK
from comix_embed.common.store import read_attrs, resolve_store, row_arrays

FLOAT_ARRAYS = ("page_embeddings", "panel_embeddings", "attention_weights", "panel_coordinates")
SCAN_ARRAYS = (*FLOAT_ARRAYS, "panel_mask", "error")
COMPARED = ("page_embeddings", "status", "page_id")  # zarr and xarray must agree on these exactly
EMBEDDED = (STATUS_OK, STATUS_FULL_PAGE)
ZERO_L2 = 1e-6  # the users' search tools keep rows with L2 above this
L2_TOLERANCE = 1e-6  # the audit log rounds L2 to 6 decimals
BLOCK_ROWS = 16 * config.CHUNK_ROWS  # rows read at once: whole chunks, bounded memory
LISTED = 5  # rows or batches named per problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zarr", metavar="Z", help="the store (.zarr) or the output folder holding it")


# --- results ---


@dataclass
class Check:
    """One check's outcome: its problems by severity and informative notes."""

    name: str
    fails: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "FAIL" if self.fails else "WARN" if self.warns else "OK"

    def line(self) -> str:
        detail = "; ".join(self.fails + self.warns + self.notes)
        return f"{self.level:<4}  {self.name:<14}  {detail}"


def plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def listed(items: Iterable[Any], limit: int = LISTED) -> str:
    """`a, b, c and 4 more`: enough to find the rows without flooding the line."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- what the store holds, read once ---


@dataclass
class Store:
    """The store's attributes, manifests, job files and small per-row columns."""

    path: Path
    output_dir: Path
    attrs: dict[str, Any]
    group: zarr.Group
    capacity: int
    rows: int  # rows worth reading: registered, committed or claimed by a manifest
    manifests: dict[int, dict[str, Any]]
    bad_manifests: list[str]
    jobs: list[Job]
    page_ids: np.ndarray
    status: np.ndarray
    writer_running: bool

    @property
    def committed(self) -> int:
        return int(self.attrs.get("committed_rows", 0))

    @property
    def registered(self) -> int:
        return int(self.attrs.get("registered_rows", 0))

    def covered_rows(self) -> np.ndarray:
        """Rows a manifest covers, within what the arrays hold."""
        mask = np.zeros(self.rows, dtype=bool)
        for manifest in self.manifests.values():
            start, end = manifest_rows(manifest)
            mask[start : min(end, self.rows)] = True
        return mask

    def batch_of(self, batch_id: int) -> tuple[Job, tuple[int, int]] | None:
        """The job file that has this batch, and the batch's rows (None when no job has it)."""
        for job in self.jobs:
            try:
                return job, job.batch(batch_id)
            except KeyError:
                continue
        return None


def writer_running(output_dir: Path) -> bool:
    """Whether a process holds the writer's lock, read from /proc/locks without taking it.

    Taking the lock, even for an instant, could make a writer starting then refuse to start.
    Without /proc/locks the pid the writer recorded is tested instead.
    """
    lock = output_dir / config.WRITER_LOCK_NAME
    try:
        st = lock.stat()
    except FileNotFoundError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as fh:
            return any("FLOCK" in line.split() and key in line.split() for line in fh)
    except OSError:
        return _pid_alive(lock.read_text().strip())


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def load_store(path: Path) -> Store:
    attrs = read_attrs(path)
    group = zarr.open_group(path, mode="r")
    lengths = [group[name].shape[0] for name in row_arrays() if name in group]
    capacity = min(lengths, default=0)
    manifests, bad_files = scan_manifests(path)
    bad = list(bad_files.values())
    claimed = max((manifest_rows(m)[1] for m in manifests.values()), default=0)
    attr_rows = max(int(attrs.get("registered_rows", 0)), int(attrs.get("committed_rows", 0)))
    rows = min(capacity, max(attr_rows, claimed))

    def column(name: str, fill: Any) -> np.ndarray:
        return group[name][:rows] if name in group else np.full(rows, fill)

    return Store(
        path=path,
        output_dir=path.parent,
        attrs=attrs,
        group=group,
        capacity=capacity,
        rows=rows,
        manifests=manifests,
        bad_manifests=bad,
        jobs=load_jobs(path.parent),
        page_ids=np.asarray(column("page_id", ""), dtype=object),
        status=np.asarray(column("status", 0), dtype=np.int16),
        writer_running=writer_running(path.parent),
    )


# --- one pass over the rows ---


@dataclass
class RowFacts:
    """Per-row facts of the scanned rows (those a manifest covers, and the committed prefix)."""

    rows: np.ndarray
    l2: np.ndarray
    nonfinite: dict[str, np.ndarray]  # array name -> rows' flags
    float_nonzero: np.ndarray
    mask_sum: np.ndarray
    mask_leading: np.ndarray
    has_error: np.ndarray
    xarray_diff: dict[str, list[int]]  # variable -> committed rows where zarr and xarray differ

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Positions of `rows` (all scanned) in the facts' arrays."""
        return np.searchsorted(self.rows, rows)


def scan_ranges(wanted: np.ndarray) -> list[tuple[int, int]]:
    """Blocks of at most BLOCK_ROWS rows spanning the wanted rows; (0, 0) when there are none."""
    blocks = []
    for start in range(0, len(wanted), BLOCK_ROWS):
        part = np.flatnonzero(wanted[start : start + BLOCK_ROWS])
        if len(part):
            blocks.append((start + int(part[0]), start + int(part[-1]) + 1))
    return blocks or [(0, 0)]


def scan_rows(s: Store, ds: Any) -> RowFacts | None:
    """Read the scanned rows block by block; None when an array the scan needs is missing."""
    if any(name not in s.group for name in SCAN_ARRAYS):
        return None
    wanted = s.covered_rows()
    wanted[: min(s.committed, s.rows)] = True
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    diff: dict[str, list[int]] = defaultdict(list)
    for start, end in scan_ranges(wanted):
        block = {name: s.group[name][start:end] for name in SCAN_ARRAYS}
        keep = wanted[start:end]
        for key, value in block_facts(block).items():
            parts[key].append(value[keep])
        parts["rows"].append(np.arange(start, end)[keep])
        if ds is not None and start < s.committed:
            compare_block(s, ds, block, start, min(end, s.committed), diff)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return RowFacts(
        rows=cat["rows"],
        l2=cat["l2"],
        nonfinite={n: cat[f"nonfinite:{n}"] for n in FLOAT_ARRAYS},
        float_nonzero=cat["float_nonzero"],
        mask_sum=cat["mask_sum"],
        mask_leading=cat["mask_leading"],
        has_error=cat["has_error"],
        xarray_diff=dict(diff),
    )


def block_facts(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vectorised per-row facts of one block of rows."""
    n = len(block["page_embeddings"])
    flat = {name: block[name].reshape(n, int(np.prod(block[name].shape[1:]))) for name in FLOAT_ARRAYS}
    mask = block["panel_mask"].astype(bool)
    counts = mask.sum(axis=1)
    leading = np.arange(mask.shape[1])[None, :] < counts[:, None]
    facts = {
        "l2": np.linalg.norm(block["page_embeddings"].astype(np.float64), axis=1),
        "float_nonzero": np.any([(f != 0).any(axis=1) for f in flat.values()], axis=0),
        "mask_sum": counts,
        "mask_leading": (mask == leading).all(axis=1),
        "has_error": np.array([bool(str(e).strip()) for e in block["error"]], dtype=bool),
    }
    facts.update({f"nonfinite:{name}": ~np.isfinite(f).all(axis=1) for name, f in flat.items()})
    return facts


def compare_block(
    s: Store, ds: Any, block: dict[str, np.ndarray], start: int, end: int, diff: dict[str, list[int]]
) -> None:
    """Rows [start, end) (committed) as xarray reads them against zarr's, bit for bit."""
    n = end - start
    ours = {
        "page_embeddings": block["page_embeddings"][:n],
        "status": s.status[start:end].astype(np.int8),
        "page_id": s.page_ids[start:end],
    }
    for name in COMPARED:
        theirs = ds[name].isel(page_id=slice(start, end)).values
        differs = rows_differ(ours[name], theirs)
        diff[name].extend((start + np.flatnonzero(differs)).tolist())


def rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: any element different (floats by their bits, so NaN equals the same NaN)."""
    if a.shape != b.shape or dtype_label(a.dtype) != dtype_label(b.dtype):
        return np.ones(len(a), dtype=bool)
    if a.dtype.kind == "f":
        unsigned = np.dtype(f"u{a.itemsize}")
        a, b = np.ascontiguousarray(a).view(unsigned), np.ascontiguousarray(b).view(unsigned)
    elif a.dtype.kind in "OTU":
        a, b = a.astype(object), b.astype(object)
    return (a != b).reshape(len(a), int(np.prod(a.shape[1:]))).any(axis=1)


# --- the checks ---


def check_layout(s: Store) -> Check:
    check = Check("layout")
    d, p = int(s.attrs.get("embedding_dim", 0)), int(s.attrs.get("max_panels", 0))
    lengths = set()
    for name, spec in row_arrays().items():
        if name not in s.group:
            check.fails.append(f"array {name} is missing")
            continue
        arr = s.group[name]
        lengths.add(arr.shape[0])
        check.fails += array_problems(name, arr, spec.shape(arr.shape[0], d, p), spec.dtype, ("page_id", *spec.dims))
    if len(lengths) > 1:
        problem = f"page_id arrays have different lengths {sorted(lengths)} (grown one after another)"
        (check.warns if s.writer_running else check.fails).append(problem)
    for name, size in (("panel_id", p), ("embedding_dim", d), ("coord_dim", 4)):
        if name not in s.group or not np.array_equal(s.group[name][:], np.arange(size)):
            check.fails.append(f"dimension coordinate {name} is not 0..{size - 1}")
    if not 0 <= s.committed <= s.registered <= s.capacity:
        check.fails.append(
            f"committed_rows {s.committed} <= registered_rows {s.registered} <= capacity {s.capacity} does not hold"
        )
    if s.attrs.get("schema_version") != config.SCHEMA_VERSION:
        check.warns.append(f"schema_version {s.attrs.get('schema_version')!r}, this tool knows {config.SCHEMA_VERSION}")
    if not check.fails:
        check.notes.append(
            f"{len(row_arrays())} page arrays of {s.capacity} rows, d={d}, {p} panel slots, dtypes and shapes as specified"
        )
    return check


def array_problems(name: str, arr: zarr.Array, shape: tuple[int, ...], dtype: str, dims: tuple[str, ...]) -> list[str]:
    problems = []
    if tuple(arr.shape) != shape:
        problems.append(f"{name} has shape {tuple(arr.shape)}, expected {shape}")
    if dtype_label(arr.dtype) != dtype:
        problems.append(f"{name} has dtype {arr.dtype}, expected {dtype}")
    if tuple(arr.metadata.dimension_names or ()) != dims:
        problems.append(f"{name} has dimension names {arr.metadata.dimension_names}, expected {dims}")
    return problems


def dtype_label(dtype: Any) -> str:
    """The schema's dtype name: strings of any numpy flavour are "str"."""
    dtype = np.dtype(dtype)
    return "str" if dtype.kind in "OTU" else str(dtype)


def open_xarray(path: Path) -> tuple[Any, str]:
    """The whole store as xarray opens it, or the reason it does not open."""
    import xarray as xr

    try:
        return xr.open_zarr(path, consolidated=False), ""
    except Exception as exc:  # any failure to open is the finding itself
        return None, f"{type(exc).__name__}: {exc}"


def check_xarray(s: Store, ds: Any, error: str, facts: RowFacts | None) -> Check:
    check = Check("zarr-vs-xarray")
    if ds is None:
        check.fails.append(f"xarray.open_zarr(consolidated=False) fails: {error}")
        return check
    ours = {name for name, _ in s.group.arrays()}
    theirs = set(ds.variables)
    if ours != theirs:
        check.fails.append(f"variables only in zarr: {sorted(ours - theirs)}, only in xarray: {sorted(theirs - ours)}")
    for name in sorted(ours & theirs):
        arr, var = s.group[name], ds.variables[name]
        if tuple(arr.shape) != tuple(var.shape) or dtype_label(arr.dtype) != dtype_label(var.dtype):
            check.fails.append(f"{name}: zarr {tuple(arr.shape)} {arr.dtype}, xarray {tuple(var.shape)} {var.dtype}")
    for name, rows in (facts.xarray_diff if facts else {}).items():
        if rows:
            check.fails.append(f"{name} differs between zarr and xarray in rows {listed(rows)}")
    if not check.fails:
        check.notes.append(
            f"{len(ours)} variables, same shapes and dtypes; "
            f"committed {', '.join(COMPARED)} identical ({min(s.committed, s.rows)} rows)"
        )
    return check


def check_manifests(s: Store) -> Check:
    check = Check("manifests")
    check.fails += s.bad_manifests
    check.fails += manifest_job_problems(s)
    check.fails += overlap_problems(s.manifests)
    ranges = {b: manifest_rows(m) for b, m in s.manifests.items()}
    next_batch, rows = committed_prefix(ranges)
    if rows < s.committed:
        check.fails.append(
            f"committed_rows is {s.committed} but the manifests' contiguous prefix ends at row {rows}: "
            f"{gap_reason(s, next_batch, rows)}"
        )
    elif rows > s.committed:
        problem = (
            f"committed_rows {s.committed} lags the manifests' prefix ({rows} rows); a writer's next start repairs it"
        )
        (check.notes if s.writer_running else check.warns).append(problem)
    later = sorted(b for b in s.manifests if b > next_batch)
    if later and rows >= s.committed:
        spans = listed(f"{b} (rows {ranges[b][0]}-{ranges[b][1] - 1})" for b in later)
        which = plural(len(later), "batch", "batches")
        check.notes.append(f"{which} {spans} committed out of order, waiting for batch {next_batch}")
    first = "batch 0 covers" if next_batch == 1 else f"batches 0-{next_batch - 1} cover"
    prefix = f"{first} rows 0-{rows - 1}" if next_batch else "no batch 0"
    check.notes.insert(0, f"{len(s.manifests)} manifests; {prefix}")
    if s.committed < s.registered and not later:
        check.notes.append(f"rows {s.committed}-{s.registered - 1} not committed yet (next: batch {next_batch})")
    return check


def gap_reason(s: Store, batch_id: int, prefix_end: int) -> str:
    """Why the prefix of manifests stops at `batch_id`: its manifest is missing, or misplaced."""
    if batch_id in s.manifests:
        return f"batch {batch_id}'s manifest starts at row {manifest_rows(s.manifests[batch_id])[0]}, not {prefix_end}"
    found = s.batch_of(batch_id)
    where = f"rows {found[1][0]}-{found[1][1] - 1}" if found else "rows unknown: no job file has it"
    return f"batch {batch_id} ({where}) has no manifest"


def manifest_job_problems(s: Store) -> list[str]:
    """Each manifest against its job file: the batch's rows, job and page ids."""
    problems = []
    for batch_id, manifest in sorted(s.manifests.items()):
        found = s.batch_of(batch_id)
        if found is None:
            problems.append(f"batch {batch_id} belongs to no job file")
            continue
        job, expected = found
        if manifest_rows(manifest) != expected or manifest.get("job") != job.job_id:
            problems.append(
                f"batch {batch_id} claims rows {manifest_rows(manifest)} of {manifest.get('job')}, "
                f"its job file says {expected} of {job.job_id}"
            )
        elif list(manifest["page_ids"]) != [job.page(r).page_id for r in range(*expected)]:
            problems.append(
                f"batch {batch_id}'s page ids differ from {job.job_id}'s rows {expected[0]}-{expected[1] - 1}"
            )
    return problems


def overlap_problems(manifests: dict[int, dict[str, Any]]) -> list[str]:
    """Two manifests claiming the same rows."""
    spans = sorted((*manifest_rows(m), b) for b, m in manifests.items())
    problems = []
    for (_s1, e1, b1), (s2, e2, b2) in zip(spans, spans[1:]):
        if s2 < e1:
            problems.append(f"batches {b1} and {b2} both claim rows {s2}-{min(e1, e2) - 1}")
    return problems


def check_manifest_rows(s: Store) -> Check:
    check = Check("manifest-rows")
    for batch_id, manifest in sorted(s.manifests.items()):
        start, end = manifest_rows(manifest)
        if end > s.rows:
            check.fails.append(f"batch {batch_id} claims rows up to {end - 1}, the store holds {s.rows}")
            continue
        stored = [str(x) for x in s.page_ids[start:end]]
        wrong = [start + i for i, (a, b) in enumerate(zip(stored, manifest["page_ids"])) if a != b]
        if wrong:
            check.fails.append(f"batch {batch_id}: page_id of rows {listed(wrong)} differs from its manifest")
        counts = dict(Counter(STATUS_NAMES.get(int(v), str(int(v))) for v in s.status[start:end]))
        if counts != dict(manifest.get("statuses", {})):
            check.fails.append(
                f"batch {batch_id}: statuses in the store {counts}, in its manifest {manifest.get('statuses')}"
            )
    if not check.fails:
        check.notes.append(f"page ids and status counts of {len(s.manifests)} manifests match the store's rows")
    return check


def check_page_ids(s: Store) -> Check:
    check = Check("page-ids")
    registered = [str(x) for x in s.page_ids[: s.registered]]
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, page_id in enumerate(registered):
        rows_of[page_id].append(row)
    duplicates = {pid: rows for pid, rows in rows_of.items() if len(rows) > 1 and pid}
    for pid, rows in list(duplicates.items())[:LISTED]:
        check.fails.append(f"page id {pid!r} is in rows {listed(rows)}")
    if len(duplicates) > LISTED:
        check.fails.append(f"{len(duplicates) - LISTED} more page ids are repeated")
    if rows_of.get(""):
        check.fails.append(f"registered rows {listed(rows_of[''])} have no page id")
    check.fails += job_row_problems(s, registered)
    if not check.fails:
        check.notes.append(f"{len(registered)} registered page ids, unique, each in the row its job file gave it")
    return check


def job_row_problems(s: Store, registered: list[str]) -> list[str]:
    """Every registered job's file exists and its pages sit in its rows."""
    files = {j.job_id: j for j in s.jobs}
    problems = []
    for record in s.attrs.get("jobs", []):
        job = files.get(record["job_id"])
        if job is None:
            problems.append(f"{record['job_id']} is registered but its job file is gone")
            continue
        wrong = [
            r for r in range(job.start_row, job.end_row) if r >= len(registered) or registered[r] != job.page(r).page_id
        ]
        if wrong:
            problems.append(f"rows {listed(wrong)} do not hold the page {job.job_id} gave them")
    return problems


def check_values(s: Store, facts: RowFacts | None) -> Check:
    check = Check("values")
    if facts is None:
        check.fails.append(f"not checked: the store lacks some of {', '.join(SCAN_ARRAYS)}")
        return check
    status = s.status[facts.rows]
    for name, flags in facts.nonfinite.items():
        if flags.any():
            check.fails.append(f"NaN or Inf in {name} of rows {listed(facts.rows[flags])}")
    embedded = np.isin(status, EMBEDDED)
    failed = status == STATUS_FAILED
    flagged = [
        (embedded & (facts.l2 <= ZERO_L2), f"ok/full_page rows with a zero page embedding (L2 <= {ZERO_L2})"),
        (failed & facts.float_nonzero, "failed rows with non-zero floats"),
        (failed & ~facts.has_error, "failed rows without an error"),
        (
            (facts.rows < s.committed) & ~np.isin(status, (*EMBEDDED, STATUS_FAILED)),
            "committed rows with no status (never written)",
        ),
    ]
    for rows_flag, what in flagged:
        if rows_flag.any():
            check.fails.append(f"{what}: rows {listed(facts.rows[rows_flag])}")
    stray = np.flatnonzero(~s.covered_rows() & (s.status != 0) & (np.arange(s.rows) >= s.committed))
    if len(stray):
        problem = (
            f"rows {listed(stray)} hold data but no manifest covers them "
            "(being written, or left by a killed writer whose next start clears them)"
        )
        (check.notes if s.writer_running else check.warns).append(problem)
    if not check.fails:
        counts = Counter(STATUS_NAMES.get(int(v), str(int(v))) for v in status)
        check.notes.insert(
            0,
            f"{len(facts.rows)} rows checked ({dict(counts)}): no NaN/Inf, embedded rows non-zero, failed rows zero with an error",
        )
    return check


def check_masks(s: Store, facts: RowFacts | None) -> Check:
    check = Check("panel-masks")
    if facts is None:
        check.fails.append("not checked: arrays missing")
        return check
    status = s.status[facts.rows]
    embedded = np.isin(status, EMBEDDED)
    scattered = embedded & ~facts.mask_leading
    if scattered.any():
        check.fails.append(f"valid slots are not the leading ones in rows {listed(facts.rows[scattered])}")
    expected = expected_panels(s)[facts.rows]
    expected = np.where(status == STATUS_FULL_PAGE, 1, expected)
    known = embedded & (expected >= 0)
    wrong = known & (facts.mask_sum != expected)
    for i in np.flatnonzero(wrong)[:LISTED]:
        check.fails.append(
            f"row {facts.rows[i]}: panel_mask sum {facts.mask_sum[i]}, the job file says {expected[i]} panels"
        )
    if wrong.sum() > LISTED:
        check.fails.append(f"{int(wrong.sum()) - LISTED} more rows whose mask sum differs")
    unknown = embedded & ~known
    if unknown.any():
        check.warns.append(f"no panel count known for rows {listed(facts.rows[unknown])} (no job file)")
    if not check.fails:
        check.notes.insert(
            0, f"mask sums of {int(known.sum())} embedded rows equal their pages' panel counts, valid slots leading"
        )
    return check


def expected_panels(s: Store) -> np.ndarray:
    """Per row, the panel count its job file recorded (-1 when unknown)."""
    counts = np.full(s.rows, -1, dtype=np.int64)
    for job in s.jobs:
        end = min(job.end_row, s.rows)
        if job.start_row < end:
            counts[job.start_row : end] = [p.panel_count for p in job.pages[: end - job.start_row]]
    return counts


def check_leftovers(s: Store) -> Check:
    check = Check("leftovers")
    temps = temporary_files(s.path)
    creating = s.path.with_name(f".{s.path.name}.creating")
    if creating.exists():
        temps.append(str(creating))
    if temps:
        problem = f"temporary files {listed(temps)}"
        if s.writer_running:
            check.warns.append(problem + " (a writer is running: may be its writes in progress)")
        else:
            check.fails.append(
                problem + " left by a killed process; no writer is running (a writer's start removes them)"
            )
    folder = s.path / config.MANIFEST_GROUP
    corrupt = sorted(p.name for p in folder.glob("*.corrupt")) if folder.is_dir() else []
    if corrupt:
        check.warns.append(f"manifests moved aside as unreadable: {listed(corrupt)} (their batches were owed again)")
    pending = [b for b, _, _ in inflight_batches(folder) if b not in s.manifests]
    if pending:
        problem = f"inflight.json names batches {listed(pending)} without manifest"
        if s.writer_running:
            check.notes.append(problem + " (being written)")
        else:
            check.warns.append(problem + ": a writer was killed writing them; its next start clears their rows")
    if not check.fails and not check.warns:
        check.notes.insert(0, "no temporary files")
    return check


def temporary_files(store: Path) -> list[str]:
    """Files a writer's recovery would delete (common.manifests.is_temporary)."""
    found = []
    for folder, _, files in os.walk(store):
        found += [os.path.relpath(os.path.join(folder, n), store) for n in files if is_temporary(n)]
    return sorted(found)


def inflight_batches(folder: Path) -> list[tuple[int, int, int]]:
    try:
        with open(folder / INFLIGHT_NAME, encoding="utf-8") as fh:
            return [tuple(r) for r in json.load(fh)["batches"]]  # type: ignore[misc]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def check_audit(s: Store, facts: RowFacts | None) -> Check:
    check = Check("audit")
    path = s.output_dir / config.AUDIT_LOG_NAME
    covered = s.covered_rows()
    if not path.is_file():
        if covered.any():
            check.warns.append(f"no audit log at {path}")
        return check
    records, unreadable = read_audit(path)
    if unreadable:
        check.warns.append(f"{unreadable} audit lines are not JSON records (torn by a crash)")
    stray = sorted(r for r in records if not (0 <= r < s.rows and covered[r]))
    if stray:
        check.fails.append(f"the audit log says rows {listed(stray)} were committed but no manifest covers them")
    repeated = sorted(r for r, recs in records.items() if len(recs) > 1)
    if repeated:
        check.warns.append(
            f"rows {listed(repeated)} have several audit records (batch committed again); the last is compared"
        )
    if facts is not None:
        check.fails += audit_mismatches(s, facts, records)
    missing = [int(r) for r in np.flatnonzero(covered) if int(r) not in records]
    if missing:
        check.warns.append(
            f"committed rows {listed(missing)} have no audit record (lost by a writer killed after their manifest)"
        )
    if not check.fails and not check.warns:
        check.notes.append(
            f"{len(records)} records, one per committed row, same page, status, L2 and mask sum as the store"
        )
    return check


def read_audit(path: Path) -> tuple[dict[int, list[dict[str, Any]]], int]:
    """Audit records by row, and how many lines could not be read."""
    records: dict[int, list[dict[str, Any]]] = defaultdict(list)
    unreadable = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[int(record["row"])].append(record)
            except (ValueError, KeyError, TypeError):
                unreadable += 1
    return dict(records), unreadable


def audit_mismatches(s: Store, facts: RowFacts, records: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Rows whose last audit record disagrees with the store."""
    scanned = set(facts.rows.tolist())
    rows = np.array(sorted(r for r in records if r in scanned), dtype=np.int64)
    problems: dict[str, list[int]] = defaultdict(list)
    for row, pos in zip(rows.tolist(), facts.at(rows).tolist()):
        rec = records[row][-1]
        if rec.get("page_id") != str(s.page_ids[row]):
            problems["page id"].append(row)
        if rec.get("status") != STATUS_NAMES.get(int(s.status[row]), str(int(s.status[row]))):
            problems["status"].append(row)
        if not abs(float(rec.get("emb_l2", -1.0)) - facts.l2[pos]) <= L2_TOLERANCE:
            problems["page embedding L2"].append(row)
        if int(rec.get("mask_sum", -1)) != int(facts.mask_sum[pos]):
            problems["mask sum"].append(row)
    return [
        f"{what} differs from the audit record in rows {listed(bad)} (changed after commit?)"
        for what, bad in problems.items()
    ]


# --- command ---


def diagnose(path: Path) -> tuple[Store | None, list[Check]]:
    """Every check of the store at `path`, in the order they are printed.

    A store whose attributes, manifests or job files cannot be read gets a single failed check.
    """
    try:
        s = load_store(path)
    except Exception as exc:  # whatever stops reading the store is the finding itself
        return None, [Check("store", fails=[f"cannot read {path}: {type(exc).__name__}: {exc}"])]
    ds, error = open_xarray(path)
    facts = scan_rows(s, ds)
    checks = [
        check_layout(s),
        check_xarray(s, ds, error, facts),
        check_manifests(s),
        check_manifest_rows(s),
        check_page_ids(s),
        check_values(s, facts),
        check_masks(s, facts),
        check_leftovers(s),
        check_audit(s, facts),
    ]
    return s, checks


def verdict(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.level == "FAIL"]
    warned = [c.name for c in checks if c.level == "WARN"]
    if failed:
        return f"verdict: FAIL ({len(failed)} of {len(checks)} checks failed: {', '.join(failed)})"
    if warned:
        return f"verdict: OK with warnings ({', '.join(warned)})"
    return f"verdict: OK ({len(checks)} checks passed)"


def run(args: argparse.Namespace) -> int:
    path = resolve_store(args.zarr)
    s, checks = diagnose(path)
    if s is None:
        print(f"{path}: unreadable")
    else:
        writer = "a writer is running" if s.writer_running else "no writer running"
        print(f"{path}: {s.committed} of {s.registered} registered rows committed, capacity {s.capacity}, {writer}")
    for check in checks:
        print(check.line())
    print(verdict(checks))
    return 1 if any(c.level == "FAIL" for c in checks) else 0
