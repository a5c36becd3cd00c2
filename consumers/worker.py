"""`comix-embed worker`: a Celery worker that embeds batches, one process per device.

The checkpoint and tokenizer are checked first in a short-lived process (a clear error and exit
status 2 instead of a pool that keeps dying), then the Celery worker runs: prefork pool of one
process, one task reserved at a time, task events on. `--device auto` with several visible GPUs
starts one worker per GPU (each sees only its own through CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
from pathlib import Path

from comix_embed.common import config
from comix_embed.common.child import cli_argv, module_argv
from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.common.inputs.paths import ImageResolver
from comix_embed.common.inputs.reading import add_remote_arguments
from comix_embed.common.locks import try_lock
from comix_embed.common.model.identity import describe, queue_name
from comix_embed.common.model.options import TRUST_FLAG, add_model_arguments
from comix_embed.consumers.preflight import PreflightReport
from comix_embed.consumers.settings import WorkerSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (every visible GPU, else CPU), cpu, cuda, cuda:N")
    parser.add_argument(
        "--image-root",
        action="append",
        default=[],
        help="image root(s): folders, s3://bucket/prefix/, https://host/prefix/, in the producer's order "
        "(default: the producer's, carried by each task)",
    )
    add_remote_arguments(parser)
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--name", help="worker node name (default comix-<device>-<pid>@<host>)")
    parser.add_argument("--exact-decode", action="store_true", help="full-resolution JPEG decoding (slower)")
    parser.add_argument("--decode-threads", type=int, default=0, help="image decoding threads per process")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads per process")
    parser.add_argument("--encode-batch", type=int, default=256, help="panels per encoder call")
    parser.add_argument(
        "--gpu-claim-dir",
        type=Path,
        help="folder shared by the workers of one host: each claims one free GPU there (docker compose --scale)",
    )
    parser.add_argument("--loglevel", default="INFO")
    # `run` checks the model once itself and passes an explicit device and the model's key
    parser.add_argument("--checked", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-key", help=argparse.SUPPRESS)


def preflight(settings: WorkerSettings) -> PreflightReport:
    """Load checkpoint and tokenizer in a throwaway process; their identity and the GPU count."""
    env = {**os.environ, **settings.to_env()}
    proc = subprocess.run(module_argv("comix_embed.consumers.preflight"), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise UsageError(lines[-1] if lines else f"worker preflight failed ({proc.returncode})")
    return PreflightReport.decode(proc.stdout.strip().splitlines()[-1])


def celery_argv(name: str, loglevel: str, queue: str) -> list[str]:
    return [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        f"--queues={queue}",
        f"--hostname={name}",
        "--task-events",
        f"--loglevel={loglevel}",
        "--without-gossip",
    ]


def run(args: argparse.Namespace) -> int:
    if args.broker:
        os.environ[config.BROKER_URL.name] = args.broker
    settings = WorkerSettings(
        checkpoint=str(args.checkpoint.resolve()),
        tokenizer=str(args.tokenizer.resolve()) if args.tokenizer else None,
        device=args.device,
        image_roots=ImageResolver(args.image_root).texts() if args.image_root else [],
        encoder_mode=args.encoder_mode,
        fast_decode=not args.exact_decode,
        decode_threads=args.decode_threads,
        torch_threads=args.torch_threads,
        encode_batch=args.encode_batch,
        trust_checkpoint=args.trust_checkpoint,
    )
    if args.checked:
        if not args.model_key:
            raise UsageError("--checked needs --model-key")
        return _start_celery(args, settings, args.device, args.model_key)
    info = preflight(settings)
    identity = info.identity
    print(
        f"model: {info.checkpoint}: {describe(identity)}; tokenizer {identity.tokenizer}; "
        f"device {info.device}; queue {queue_name(identity)}",
        flush=True,
    )
    host = socket.gethostname()
    device = info.device
    if args.gpu_claim_dir and info.gpus:
        gpu = claim_gpu(args.gpu_claim_dir, info.gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        device = "cuda:0"
        print(f"claimed GPU {gpu} of {info.gpus} in {args.gpu_claim_dir}", flush=True)
    elif args.device == "auto" and info.gpus > 1:
        return _one_worker_per_gpu(args, info.gpus, host)
    return _start_celery(args, settings, device, info.model_key)


def _start_celery(args: argparse.Namespace, settings: WorkerSettings, device: str, key: str) -> int:
    """Become the Celery worker (this process is its parent; the pool forks from it)."""
    host = socket.gethostname()
    settings.device = device
    settings.model_key = key
    os.environ.update(settings.to_env())
    name = (args.name or f"comix-{settings.device.replace(':', '')}-{os.getpid()}@{host}").replace("%h", host)
    os.environ[config.WORKER_NAME.name] = name
    # Import torch and transformers once here, before the pool forks, so each pool process starts
    # in a fraction of a second. Nothing here touches CUDA or runs a torch op (not fork-safe).
    import comix_embed.common.model.embed  # noqa: F401
    from comix_embed.common.celery_app import configure

    configure(args.broker).worker_main(celery_argv(name, args.loglevel, f"{config.EMBED_QUEUE}.{settings.model_key}"))
    return EXIT_OK


_claims: list = []  # lock files held for the life of the process


def claim_gpu(folder: Path, gpus: int) -> int:
    """Lock the first free `gpu-N.lock` in `folder`; the kernel frees it when this process dies.

    Replicas of one compose service all see every GPU of their host; sharing this folder (a
    volume) lets each take a different one, and a restarted replica takes back a free one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for gpu in range(gpus):
        fh = try_lock(folder / f"gpu-{gpu}.lock")
        if fh is not None:
            _claims.append(fh)
            return gpu
    raise UsageError(f"all {gpus} GPUs of this host are claimed in {folder}: more worker replicas than GPUs")


def worker_command(args: argparse.Namespace, device: str, name: str | None) -> list[str]:
    """The command line of one `comix-embed worker` process with `args`' settings on `device`."""
    argv = cli_argv("worker", "--checkpoint", str(args.checkpoint), "--device", device)
    if args.tokenizer:
        argv += ["--tokenizer", str(args.tokenizer)]
    for root in args.image_root:
        argv += ["--image-root", str(root)]
    # never --broker: its URL may hold a password, and a command line is visible to every user of
    # the machine; children get it through COMIX_BROKER_URL (set by `run` and by `worker` itself).
    # Nor --endpoint-url or --anonymous: they reach children through the environment as well
    # (AWS_ENDPOINT_URL_S3, COMIX_S3_ANONYMOUS), and AWS credentials only ever do.
    if name:
        argv += ["--name", name]
    if args.exact_decode:
        argv.append("--exact-decode")
    if args.trust_checkpoint:
        argv.append(TRUST_FLAG)
    argv += ["--encoder-mode", args.encoder_mode, "--encode-batch", str(args.encode_batch)]
    argv += ["--decode-threads", str(args.decode_threads), "--torch-threads", str(args.torch_threads)]
    if getattr(args, "model_key", None):
        argv += ["--model-key", args.model_key]
    return argv + ["--loglevel", args.loglevel]


def _one_worker_per_gpu(args: argparse.Namespace, gpus: int, host: str) -> int:
    """One child `worker` per GPU; signals are passed on to them."""
    children = [
        subprocess.Popen(
            worker_command(args, "cuda:0", f"comix-gpu{gpu}-{os.getpid()}@{host}"),
            env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)},
        )
        for gpu in range(gpus)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return max(child.wait() for child in children)
