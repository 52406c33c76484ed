# syntax=docker/dockerfile:1
# The ktg HTTP API: `ktg serve` (FastAPI + uvicorn) on port 8000.
#
# Build from the repository root:
#   docker build -f docker/api.Dockerfile -t ktg-api:0.1.0 .
#
# The API only registers studies and submits them to Ray as jobs; training runs
# on the Ray image (docker/ray.Dockerfile). So this image takes the CPU build of
# PyTorch (about 1 GB instead of several GB of CUDA libraries).
#
# Nothing secret is baked in: the database URL (KTG_STORAGE) and the API tokens
# (KTG_API_TOKENS_FILE) come from the environment / a mounted secret at run time.

ARG PYTHON_VERSION=3.11

# -- 1. build the ktg wheel (no dependencies), so the final image holds no source tree
FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ktg ./ktg
COPY search ./search
COPY api ./api
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- 2. runtime
FROM python:${PYTHON_VERSION}-slim
# Keep in step with docker/ray.Dockerfile: the API talks to the Ray Jobs API of
# a cluster that runs this very Ray version.
ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Torch first, from the CPU index: the ktg wheel's torch requirement is then
# already met and pip does not pull the default (CUDA) build.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# The wheel is bind-mounted from stage 1, so it leaves no layer behind.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir "ray[default,tune]==${RAY_VERSION}" /tmp/wheels/*.whl

# Non-root. uid 1000 / gid 100 are the ids of the `ray` user in the Ray image, so
# files the API and the Ray containers write on the shared volume stay writable
# by both. /var/lib/ktg is where compose and Kubernetes mount that volume; owning
# it here makes a fresh named volume start out owned by this user.
RUN useradd --uid 1000 --gid 100 --create-home --shell /usr/sbin/nologin ktg \
    && mkdir -p /var/lib/ktg \
    && chown 1000:100 /var/lib/ktg
USER 1000:100
WORKDIR /home/ktg

EXPOSE 8000
# The slim image has no curl: probe with the interpreter that is there anyway.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["ktg", "serve", "--host", "0.0.0.0", "--port", "8000"]
