# The control plane: FastAPI on uvicorn. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t alignd-api .
# The API imports the trainer's typed configs (pydantic) and scores reward models on request,
# so it carries the CPU build of torch (a few hundred MB instead of several GB).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ALIGND_DATA_DIR=/data

WORKDIR /app
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY trainer ./trainer
COPY migrations ./migrations
COPY cli ./cli
RUN pip install .

RUN useradd --create-home --uid 1000 alignd && mkdir -p /data && chown alignd /data
USER alignd
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# Migrations run once per start; Alembic takes a lock, so several replicas are safe.
CMD ["sh", "-c", "alignd migrate && alignd serve --host 0.0.0.0 --port 8000"]
