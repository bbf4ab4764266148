# A GPU worker: Celery + the trainer on CUDA. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t alignd-worker .
# Run with the NVIDIA container toolkit (`--gpus all`); one Celery process per GPU by default.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ALIGND_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3-pip git \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# The CUDA build of the same torch version the tests pin (CUDA 12.8 wheels).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY trainer ./trainer
COPY migrations ./migrations
COPY cli ./cli
# EXTRAS=integrations adds the W&B and MLflow clients for jobs' `integrations` (empty: leave them out).
ARG EXTRAS=integrations
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

RUN useradd --create-home --uid 1000 alignd && mkdir -p /data && chown alignd /data
USER alignd
VOLUME ["/data"]
CMD ["alignd", "worker"]
