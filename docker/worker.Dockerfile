# A freshtune worker: the package and its pinned stack on a CUDA runtime, running a Prefect
# worker that picks up refresh and training runs from a work pool.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t freshtune-worker .
# Run (GPU):  docker run --gpus all -e PREFECT_API_URL=... -e MLFLOW_TRACKING_URI=... freshtune-worker
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG WORK_POOL=gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FRESHTUNE_HOME=/cache/freshtune \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    WORK_POOL=${WORK_POOL}

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# The CUDA build of torch first (PyPI's default wheel), then the project's pinned stack.
RUN pip install "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY freshtune ./freshtune
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
COPY expectations ./expectations
# [gpu]: bitsandbytes (train.quantization=nf4) and liger-kernel (train.liger_kernel).
RUN pip install -e ".[gpu]" && useradd --create-home --uid 1000 freshtune \
    && mkdir -p /cache/freshtune && chown freshtune /cache/freshtune
USER freshtune
# FRESHTUNE_HOME is this worker's cache of the artifact store (workers share no folder); the
# base model is converted into it at build time, so a fresh container starts warm.
RUN freshtune models fetch smollm2
VOLUME ["/cache/freshtune"]

HEALTHCHECK --interval=60s --timeout=10s CMD python -c "import flows.refresh" || exit 1
CMD ["sh", "-c", "prefect worker start --pool \"$WORK_POOL\" --type process"]
