# One image for every role (producer, worker, writer, Flower). The CUDA build of torch comes from
# the base image; `pip install .` keeps it (torch>=2.4 is already satisfied). BASE_IMAGE picks
# another base with Python 3.10+, pip and torch (compose.yaml passes COMIX_BASE_IMAGE): the CI
# test of the deployment builds one locally, where no registry is reachable.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}
WORKDIR /app
# The dependencies first, from pyproject.toml alone: a change of the code rebuilds only the layers
# after this one.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
# The build context as .dockerignore leaves it: pyproject.toml, README.md, comix_embed/ and the
# folders it links (comix_embed/common -> ../common, ...), which `pip install .` follows.
COPY . ./
# A numeric user (resolvable whatever the host's /etc/passwd says), and the GPU-claim folder
# made and owned by it here: a named volume mounted on /claims starts as a copy of it, so the
# workers can create their gpu-N.lock files there.
RUN pip install --no-cache-dir --no-deps . \
    && groupadd --gid 10001 comix \
    && useradd --uid 10001 --gid 10001 --create-home comix \
    && mkdir /claims \
    && chown 10001:10001 /claims
USER 10001:10001
# SIGTERM (`docker compose stop`, Kubernetes, systemd) reaches comix-embed, PID 1 here.
# A worker: Celery's warm shutdown, bounded. It takes no new batch and lets the batch at hand finish
#   for up to COMIX_WORKER_SHUTDOWN_S (30 s); a batch not finished by then is handed back to the
#   queue at once (sent again ahead of new ones) and the worker ends with Celery's cold shutdown.
#   A second SIGTERM hands it back at once the same way. Either way it exits 0. REMAP_SIGTERM is
#   not set: REMAP_SIGTERM=SIGQUIT would make the first SIGTERM a cold shutdown.
# The writer: finishes the commit under way, acknowledges only what it committed, gives its writer
#   lease back and exits 0.
# compose.yaml's stop_grace_period, 45 s, leaves 15 s above the 30 s before Docker sends SIGKILL.
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["comix-embed"]
