"""Throughput: the system against the same work without it, the device's bound, and the old way.

    python -m benchmarks.throughput [--size tiny|base] [--pages N] [--device auto|cpu|cuda]
                                    [--workers N] [--batch-size 8] [--baseline-pages 32] [--json]

On one synthetic corpus of real-size JPEG pages (made once, kept with --keep DIR), in one run:
- pipeline:   `comix-embed run` (private Redis, workers, writer), timed from the moment every
              worker has its model loaded until the last page is committed;
- direct:     the embedding function called in-process on the same pages, decoding included,
              the same number of processes, threads and devices, writing nothing;
- model_only: the encoders alone on inputs decoded beforehand (the device's bound);
- baseline:   the users' old way: one process, batches of 8, full decoding in the loop, all 12
              slots through both encoders in fp32, text padded to 128, per-page zero-then-write
              into 1000-row compressed chunks (on the first --baseline-pages pages).
Also: each speed-up step measured alone (reduced-size decoding; skipping padded slots), the time
per stage, and on CUDA the cosine of bf16 outputs against fp32.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from benchmarks.old_way import OldPatternStore, old_collate, old_page_inputs
from comix_embed.common.child import cli_argv
from comix_embed.common.inputs.listfile import read_list
from comix_embed.common.inputs.pages import PageTask
from comix_embed.common.inputs.paths import ImageResolver
from comix_embed.common.messages import decode_json
from comix_embed.common.model.checkpoint import load_model
from comix_embed.common.model.embed import Embedder, EmbedSettings, resolve_device
from comix_embed.common.model.preprocess import prepare_page
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.producer.plan import assign_rows, plan_pages
from comix_embed.run import RunStats
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.sample.corpus import make_sample
from tests.reference import reference_embed


def prepare_inputs(work: Path, size: str, pages: int) -> tuple[Path, Path]:
    corpus, ckpt = work / f"corpus-{pages}", work / f"model-{size}.pt"
    if not (corpus / "list.txt").exists():
        make_sample(corpus, pages=pages, seed=0)
    if not ckpt.exists():
        init_checkpoint(ckpt, size=size, seed=0)
    return corpus, ckpt


def page_tasks(corpus: Path) -> list[PageTask]:
    return assign_rows(plan_pages(read_list(corpus / "list.txt", corpus), ImageResolver([corpus / "images"])), 0)


def worker_layout(device: str, workers: int | None) -> tuple[list[str], int]:
    """Devices of the worker processes and threads per process, as `comix-embed run` chooses them."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        n = workers or torch.cuda.device_count()
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)], max(1, (os.cpu_count() or 2) // n)
    n = workers or max(1, os.cpu_count() or 1)
    return ["cpu"] * n, max(1, (os.cpu_count() or 2) // n)


# ---- pipeline ----


def timed_run(
    out: Path, ckpt: Path, batch: int, source: list[str], extra: list[str], env: dict[str, str] | None = None
) -> tuple[dict, str]:
    """`comix-embed run` of `source` (its --list and --image-root options) into `out`: its figures
    (RunStats, as a dict) and what it printed. Shared with benchmarks/remote.py."""
    stats = out / "stats.json"
    argv = cli_argv("run", "--checkpoint", str(ckpt), *source, "--output-dir", str(out / "store"))
    argv += ["--batch-size", str(batch), "--stats-json", str(stats), *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return msgspec.structs.asdict(decode_json(stats.read_bytes(), RunStats, str(stats))), proc.stdout


def measure_pipeline(corpus: Path, ckpt: Path, work: Path, workers: int, device: str, batch: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="pipeline-", dir=work))
    source = ["--list", str(corpus / "list.txt"), "--image-root", str(corpus / "images")]
    figures, _ = timed_run(out, ckpt, batch, source, ["--workers", str(workers), "--device", device])
    return figures


# ---- direct ----


def _direct_process(ckpt: str, root: str, device: str, threads: int, fast: bool, batches: list, barrier, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    tasks = [[PageTask.from_json(t) for t in b] for b in batches]
    emb = Embedder(
        load_model(Path(ckpt), device),
        load_tokenizer(None, Path(ckpt)),
        ImageResolver([Path(root)]),
        device,
        EmbedSettings(fast_decode=fast, decode_threads=threads),
    )
    emb.warm_up()  # as a worker does before it takes tasks
    barrier.wait()
    t0 = time.time()
    stages: dict[str, float] = {}
    for b in tasks:
        _, st = emb.embed(b)
        for k, v in st.items():
            stages[k] = stages.get(k, 0.0) + v
    queue.put((t0, time.time(), sum(len(b) for b in tasks), stages))
    emb.close()


def measure_direct(corpus: Path, ckpt: Path, devices: list[str], threads: int, batch: int, fast: bool = True) -> dict:
    tasks = page_tasks(corpus)
    batches = [[t.to_json() for t in tasks[i : i + batch]] for i in range(0, len(tasks), batch)]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(len(devices)), ctx.Queue()
    procs = [
        ctx.Process(
            target=_direct_process,
            args=(str(ckpt), str(corpus / "images"), dev, threads, fast, batches[i :: len(devices)], barrier, queue),
        )
        for i, dev in enumerate(devices)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    start, end = min(r[0] for r in results), max(r[1] for r in results)
    pages = sum(r[2] for r in results)
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r[3].items():
            stages[k] = stages.get(k, 0.0) + v
    return {"pages": pages, "seconds": end - start, "pages_per_s": pages / (end - start), "stages": stages}


# ---- model only ----


def prepared_pages(corpus: Path, tasks: list[PageTask], fast: bool) -> list:
    return [prepare_page(t.spec, (corpus / "images" / t.image).read_bytes(), t.image, fast) for t in tasks if t.spec]


def measure_model_only(corpus: Path, ckpt: Path, device: str, pages: list, tasks: list[PageTask]) -> dict:
    """Encoders (and pooling) alone over pages decoded beforehand; plus the bf16 check on CUDA."""
    import torch

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    emb = Embedder(load_model(ckpt, device), load_tokenizer(None, ckpt), ImageResolver([corpus / "images"]), device)
    chunks, chunk, crops = [], [], 0
    for i, p in enumerate(pages):
        chunk.append((i, p))
        crops += len(p.crops)
        if crops >= emb.settings.encode_batch:
            chunks.append(chunk)
            chunk, crops = [], 0
    if chunk:
        chunks.append(chunk)
    arrays = emb.empty_arrays(len(pages))
    stats = {k: 0.0 for k in ("tokenize", "encode")}
    emb._encode_chunk(chunks[0][:1], emb.empty_arrays(len(pages)), dict(stats))  # warm-up
    t0 = time.perf_counter()
    for c in chunks:
        emb._encode_chunk(c, arrays, stats)
    seconds = time.perf_counter() - t0
    out = {"pages": len(pages), "seconds": seconds, "pages_per_s": len(pages) / seconds}
    if emb.device.type == "cuda":
        emb.settings.amp = False
        fp32 = emb.empty_arrays(len(pages))
        for c in chunks:
            emb._encode_chunk(c, fp32, dict(stats))
        out["bf16_vs_fp32_min_cosine"] = min_cosine(arrays, fp32)
    # skipping padded slots, measured alone: the original's all-slots pass on the same inputs
    sub = pages[: min(len(pages), 32)]
    model = emb.model
    if emb.device.type == "cpu":
        t0 = time.perf_counter()
        reference_embed(model, emb.tokenizer, sub)
        out["all_slots_pages_per_s"] = len(sub) / (time.perf_counter() - t0)
    emb.close()
    return out


def min_cosine(a: dict, b: dict) -> float:
    def cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
        keep = (nx > 0) & (ny > 0)
        return (x * y).sum(-1)[keep] / (nx * ny)[keep]

    mask = a["panel_mask"]
    return float(
        min(
            cos(a["page_embeddings"], b["page_embeddings"]).min(),
            cos(a["panel_embeddings"][mask], b["panel_embeddings"][mask]).min(),
        )
    )


def decode_tolerance(corpus: Path, ckpt: Path, device: str, tasks: list[PageTask]) -> float:
    """Min cosine between outputs from reduced-size and from full-size decoding, same pages."""
    loaded, tok = load_model(ckpt, device), load_tokenizer(None, ckpt)
    outputs = []
    for fast in (True, False):
        emb = Embedder(
            loaded, tok, ImageResolver([corpus / "images"]), device, EmbedSettings(fast_decode=fast, amp=False)
        )
        outputs.append(emb.embed(tasks)[0])
        emb.close()
    return min_cosine(*outputs)


# ---- the old way ----


def measure_baseline(corpus: Path, ckpt: Path, work: Path, tasks: list[PageTask]) -> dict:
    """The users' old way, stage by stage: page inputs built one by one (full decode, 12 slots,
    text padded to 128), the all-slots fp32 forward, per-page zero-then-write into 1000-row
    compressed chunks."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_model(ckpt, "cpu")
    tok = load_tokenizer(None, ckpt).tokenizer
    emb = Embedder(loaded, load_tokenizer(None, ckpt), ImageResolver([corpus / "images"]))
    store = OldPatternStore(Path(tempfile.mkdtemp(prefix="old-", dir=work)) / "old.zarr", loaded.config.d)
    store.fill(500, emb.empty_arrays(500))  # the store part-way through its first chunk, as in a real run
    stages = {"decode_crop": 0.0, "encode": 0.0, "write": 0.0}
    row = 500
    t0 = time.perf_counter()
    for i in range(0, len(tasks), 8):
        batch = [(t.spec, t.image) for t in tasks[i : i + 8] if t.spec is not None]
        t1 = time.perf_counter()
        inputs = old_collate([old_page_inputs(spec, corpus / "images" / image, tok) for spec, image in batch])
        t2 = time.perf_counter()
        with torch.no_grad():
            panels, page, attention, order = loaded.model.forward_all_slots(
                "fused", inputs["images"], inputs["input_ids"], inputs["attention_mask"], inputs["comp"], inputs["mask"]
            )
        t3 = time.perf_counter()
        for j in range(len(batch)):
            row_arrays = {k: v[0] for k, v in emb.empty_arrays(1).items()}
            row_arrays.update(
                {
                    "panel_embeddings": panels[j].numpy(),
                    "page_embeddings": page[j].numpy(),
                    "attention_weights": attention[j].numpy(),
                    "reading_order": order[j].numpy().astype(np.int16),
                    "panel_mask": inputs["mask"][j].numpy(),
                    "status": np.int8(1),
                }
            )
            store.write_page(row, row_arrays)
            row += 1
        stages["decode_crop"] += t2 - t1
        stages["encode"] += t3 - t2
        stages["write"] += time.perf_counter() - t3
    seconds = time.perf_counter() - t0
    emb.close()
    pages_done = row - 500
    return {
        "pages": pages_done,
        "seconds": seconds,
        "pages_per_s": pages_done / seconds,
        "stages_ms": {k: round(1000 * v / pages_done, 2) for k, v in stages.items()},
    }


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--baseline-pages", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=2, help="pipeline/direct measured alternately this many times (best kept)"
    )
    parser.add_argument("--keep", type=Path, help="work folder to keep (corpus and checkpoint reused)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="comix-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, ckpt = prepare_inputs(work, args.size, args.pages)
    devices, threads = worker_layout(args.device, args.workers)
    tasks = page_tasks(corpus)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print

    log(
        f"corpus: {args.pages} pages in {corpus}; model: {args.size}; workers: {len(devices)} x {devices[0]}, {threads} threads each"
    )
    # pipeline and direct alternate, best of --rounds each: the machine is shared and noisy
    pipeline_runs, direct_runs = [], []
    for _ in range(args.rounds):
        pipeline_runs.append(
            measure_pipeline(
                corpus, ckpt, work, len(devices), devices[0] if devices[0] == "cpu" else "auto", args.batch_size
            )
        )
        log(f"pipeline   {pipeline_runs[-1]['pages_per_s']:8.2f} pages/s")
        direct_runs.append(measure_direct(corpus, ckpt, devices, threads, args.batch_size))
        log(f"direct     {direct_runs[-1]['pages_per_s']:8.2f} pages/s")
    pipeline = max(pipeline_runs, key=lambda r: r["pages_per_s"])
    direct = max(direct_runs, key=lambda r: r["pages_per_s"])
    direct_exact = measure_direct(corpus, ckpt, devices, threads, args.batch_size, fast=False)
    log(f"direct, full-size decoding {direct_exact['pages_per_s']:8.2f} pages/s")
    resolved = str(resolve_device(devices[0]))
    model_only = measure_model_only(corpus, ckpt, resolved, prepared_pages(corpus, tasks, True), tasks)
    log(f"model_only {model_only['pages_per_s']:8.2f} pages/s")
    tolerance = decode_tolerance(corpus, ckpt, resolved, tasks[:24])
    log(f"reduced-size decoding vs full: min cosine {tolerance:.5f}")
    baseline = measure_baseline(corpus, ckpt, work, tasks[: args.baseline_pages])
    log(f"baseline   {baseline['pages_per_s']:8.2f} pages/s")

    n = direct["pages"]
    stages_ms = {
        k: round(1000 * v / n, 2)
        for k, v in direct["stages"].items()
        if k in ("read", "decode_crop", "tokenize", "encode")
    }
    stages_ms["write"] = round(1000 / writer_pages_per_s(work, ckpt), 3)
    figures = {
        "device": device_name(args.device),
        "size": args.size,
        "pages": args.pages,
        "workers": len(devices),
        "threads_per_worker": threads,
        "batch_size": args.batch_size,
        "rounds": {
            "pipeline": [round(r["pages_per_s"], 2) for r in pipeline_runs],
            "direct": [round(r["pages_per_s"], 2) for r in direct_runs],
        },
        "pipeline_pages_per_s": round(pipeline["pages_per_s"], 3),
        "direct_pages_per_s": round(direct["pages_per_s"], 3),
        "model_only_pages_per_s": round(model_only["pages_per_s"], 3),
        "baseline_pages_per_s": round(baseline["pages_per_s"], 3),
        "efficiency": round(pipeline["pages_per_s"] / direct["pages_per_s"], 3),
        "speedup": round(pipeline["pages_per_s"] / baseline["pages_per_s"], 2),
        "stages": stages_ms,
        "baseline_stages": baseline["stages_ms"],
        "steps": {
            "reduced_size_decoding_gain": round(direct["pages_per_s"] / direct_exact["pages_per_s"], 3),
            "skip_padded_slots_gain": round(model_only["pages_per_s"] / model_only["all_slots_pages_per_s"], 3)
            if "all_slots_pages_per_s" in model_only
            else None,
        },
        "bf16_vs_fp32_min_cosine": model_only.get("bf16_vs_fp32_min_cosine"),
        "reduced_decoding_vs_full_min_cosine": round(tolerance, 6),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"\ndevice: {figures['device']}")
        for key in ("pipeline", "direct", "model_only", "baseline"):
            print(f"  {key:<11} {figures[key + '_pages_per_s']:9.2f} pages/s")
        print(f"  efficiency  {figures['efficiency']:9.3f}  (pipeline / direct: what the queue and writer cost)")
        print(f"  speedup     {figures['speedup']:9.2f}x (pipeline / baseline)")
        print("  stages (ms per page, summed over threads): " + ", ".join(f"{k} {v}" for k, v in stages_ms.items()))
        print("  baseline stages (ms per page): " + ", ".join(f"{k} {v}" for k, v in baseline["stages_ms"].items()))
        print("  steps: " + ", ".join(f"{k} {v}x" for k, v in figures["steps"].items() if v))
        print(f"  reduced-size decoding vs full-size: min cosine {tolerance:.5f}")
        if figures["bf16_vs_fp32_min_cosine"] is not None:
            print(f"  bf16 vs fp32: min cosine {figures['bf16_vs_fp32_min_cosine']:.5f}")
    return 0


def writer_pages_per_s(work: Path, ckpt: Path) -> float:
    """The writer's cost per page for this model's d, batch 8 (synthetic results, like benchmarks/writer.py)."""
    from comix_embed.writer.commit import StoreWriter
    from tests import synthetic

    d = load_model(ckpt).config.d
    out = Path(tempfile.mkdtemp(prefix="writer-", dir=work))
    job, _ = synthetic.plan(out, synthetic.make_pages(800), 8)
    assert job is not None
    results = [synthetic.make_result(job, b, synthetic.model_info(d=d)) for b, _, _ in job.batches()]
    with StoreWriter(out) as writer:
        writer.commit(results[:1])
        t0 = time.perf_counter()
        for r in results[1:]:
            writer.commit([r])
        return (800 - 8) / (time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
