"""Run by `comix-embed worker` in a throwaway process: can this worker load its model?

Prints one JSON line, a `PreflightReport` (model identity and key, device, visible GPU count), or
the error on stderr with exit status 2. It also reads under each image root once, so that a worker
whose endpoint, credentials or bucket are wrong fails at start, naming the root and the reason.
Doing this outside the Celery parent keeps torch, CUDA and the object-storage clients (none of them
fork-safe) out of the process that forks.
"""

from __future__ import annotations

import sys

import msgspec

from comix_embed.common.errors import EXIT_OK, EXIT_USAGE, UsageError
from comix_embed.common.messages import ModelIdentity, decode_json, encode_json


class PreflightReport(msgspec.Struct, kw_only=True):
    """What the throwaway process found: the checkpoint, its model's identity and queue key, the
    device the worker will use, and how many GPUs it sees (0 on CPU)."""

    checkpoint: str
    identity: ModelIdentity
    model_key: str
    device: str
    gpus: int

    @classmethod
    def decode(cls, line: str) -> PreflightReport:
        return decode_json(line, cls, "worker preflight report")


def main() -> int:
    import torch

    from comix_embed.common.inputs.paths import ImageResolver
    from comix_embed.common.inputs.reading import check_remote_roots
    from comix_embed.common.model.checkpoint import load_model
    from comix_embed.common.model.embed import resolve_device
    from comix_embed.common.model.identity import make_identity, model_key
    from comix_embed.common.model.tokenizer import load_tokenizer
    from comix_embed.consumers.settings import WorkerSettings

    settings = WorkerSettings.from_env()
    try:
        if settings.image_roots:
            check_remote_roots(ImageResolver(settings.image_roots).roots)
        device = resolve_device(settings.device)
        loaded = load_model(settings.checkpoint, "cpu", trust=settings.trust_checkpoint)
        tokenizer = load_tokenizer(settings.tokenizer, settings.checkpoint)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    identity = make_identity(
        loaded.sha256, loaded.config.d, settings.encoder_mode, tokenizer.identity, tokenizer.legacy_identity
    )
    report = PreflightReport(
        checkpoint=settings.checkpoint,
        identity=identity,
        model_key=model_key(identity),
        device=str(device),
        gpus=torch.cuda.device_count() if device.type == "cuda" else 0,
    )
    print(encode_json(report).decode())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
