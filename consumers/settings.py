"""What a worker process needs to build its Embedder, passed through the environment.

The `worker` command sets these before Celery forks its pool; each pool process reads them once
when it starts. Passing them this way keeps torch (and CUDA) out of the Celery parent process,
which must never initialise CUDA before forking.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from comix_embed.common import config

PREFIX = "COMIX_WORKER_"
READY_NAME_ENV = config.WORKER_NAME_ENV  # the node name, under which a loaded pool process reports ready


def ready_key(name: str) -> str:
    """Redis key a worker sets once its model is loaded (`run` waits for it before timing)."""
    return f"comix:ready:{name}"


@dataclass
class WorkerSettings:
    checkpoint: str
    tokenizer: str | None = None
    device: str = "auto"
    image_roots: list[str] = field(default_factory=list)
    encoder_mode: str = "fused"
    fast_decode: bool = True
    decode_threads: int = 0  # 0: as many as the process's share of cores
    torch_threads: int = 0  # 0: leave torch's default
    encode_batch: int = 256
    trust_checkpoint: bool = False  # --trust-checkpoint: full unpickling allowed
    model_key: str = ""  # the key of the model whose queue the worker consumes; each process checks it

    def to_env(self) -> dict[str, str]:
        return {PREFIX + "SETTINGS": json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> WorkerSettings:
        raw = os.environ.get(PREFIX + "SETTINGS")
        if not raw:
            raise RuntimeError(f"{PREFIX}SETTINGS is not set: start workers with `comix-embed worker`")
        return cls(**json.loads(raw))

    def roots(self) -> list[Path]:
        return [Path(r) for r in self.image_roots]
