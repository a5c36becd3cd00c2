# One image for every role (producer, worker, writer, Flower). The CUDA build of torch comes from
# the base image; `pip install .` keeps it (torch>=2.4 is already satisfied).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY launch ./launch
COPY common ./common
COPY producer ./producer
COPY consumers ./consumers
COPY writer ./writer
COPY tools ./tools
RUN pip install --no-cache-dir . && useradd --create-home comix
USER comix
# Celery's warm shutdown on `docker compose stop`: finish the batch at hand, re-queue nothing lost
ENV REMAP_SIGTERM=SIGQUIT PYTHONUNBUFFERED=1
ENTRYPOINT ["comix-embed"]
