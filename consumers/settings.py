"""What a worker process needs to build its Embedder, passed through the environment.

The `worker` command sets these before Celery forks its pool; each pool process reads them once
when it starts. Passing them this way keeps torch (and CUDA) out of the Celery parent process,
which must never initialise CUDA before forking. They travel as one JSON `WorkerSettings`,
decoded with the field at fault named when a value does not fit.
"""

from __future__ import annotations

import msgspec

from comix_embed.common import config
from comix_embed.common.broker import keys
from comix_embed.common.messages import decode_json, encode_json


def ready_key(name: str) -> str:
    """Redis key a worker sets once its model is loaded (`run` waits for it before timing)."""
    return keys.READY.format(name=name)


class WorkerSettings(msgspec.Struct, kw_only=True):
    """A worker's model, device and decoding settings, the same for each of its pool processes."""

    checkpoint: str
    tokenizer: str | None = None
    device: str = "auto"
    image_roots: list[str] = msgspec.field(default_factory=list)
    encoder_mode: str = "fused"
    fast_decode: bool = True
    decode_threads: int = 0  # 0: as many as the process's share of cores
    torch_threads: int = 0  # 0: leave torch's default
    encode_batch: int = 256
    trust_checkpoint: bool = False  # --trust-checkpoint: full unpickling allowed
    model_key: str = ""  # the key of the model whose queue the worker consumes; each process checks it

    def to_env(self) -> dict[str, str]:
        return {config.WORKER_SETTINGS.name: encode_json(self).decode()}

    @classmethod
    def from_env(cls) -> WorkerSettings:
        """The settings `comix-embed worker` set; MalformedMessage names the field at fault."""
        raw = config.WORKER_SETTINGS.text()
        if raw is None:
            raise RuntimeError(f"{config.WORKER_SETTINGS.name} is not set: start workers with `comix-embed worker`")
        return decode_json(raw, cls, config.WORKER_SETTINGS.name)

    def roots(self) -> list[str]:
        """The worker's image roots, as given (folders, s3:// and https:// prefixes)."""
        return list(self.image_roots)
