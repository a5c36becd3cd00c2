"""Run by `comix-embed worker` in a throwaway process: can this worker load its model?

Prints one JSON line (model identity and key, device, visible GPU count) or the error on stderr with exit
status 2. Doing this outside the Celery parent keeps torch and CUDA out of the process that forks.
"""

from __future__ import annotations

import json
import sys

from comix_embed.common.errors import EXIT_OK, EXIT_USAGE, UsageError


def main() -> int:
    import torch

    from comix_embed.common.model.checkpoint import load_model
    from comix_embed.common.model.embed import resolve_device
    from comix_embed.common.model.identity import make_identity, model_key
    from comix_embed.common.model.tokenizer import load_tokenizer
    from comix_embed.consumers.settings import WorkerSettings

    settings = WorkerSettings.from_env()
    try:
        device = resolve_device(settings.device)
        loaded = load_model(settings.checkpoint, "cpu", trust=settings.trust_checkpoint)
        tokenizer = load_tokenizer(settings.tokenizer, settings.checkpoint)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    identity = make_identity(
        loaded.sha256, loaded.config.d, settings.encoder_mode, tokenizer.identity, tokenizer.legacy_identity
    )
    print(
        json.dumps(
            {
                "checkpoint": settings.checkpoint,
                "identity": identity.to_dict(),
                "model_key": model_key(identity),
                "device": str(device),
                "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
            }
        )
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
