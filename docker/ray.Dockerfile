# syntax=docker/dockerfile:1
# Ray head and GPU worker image: Ray + CUDA PyTorch + ktg. One image for both
# roles; the command (`ray start --head ...` or `ray start --address ...`) picks.
#
# Build from the repository root:
#   docker build -f docker/ray.Dockerfile -t ktg-ray:0.1.0 .
#
# Search jobs run `ktg search` on the head (the Ray job driver) and train the
# trials on the workers, so both need the package, the database driver and
# torch. Nothing secret is baked in: KTG_STORAGE comes from the environment.

ARG RAY_VERSION=2.60.0

# -- 1. build the ktg wheel (no dependencies), so the final image holds no source tree
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ktg ./ktg
COPY search ./search
COPY api ./api
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- 2. runtime: the official Ray image for Python 3.11 with CUDA. It brings the
# NVIDIA runtime libraries, wget (used by KubeRay's default probes) and the
# non-root user `ray` (uid 1000, gid 100) that KubeRay expects.
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ARG RAY_VERSION
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# The CUDA build of PyTorch bundles its own CUDA runtime; the host only needs a
# driver new enough for it (CUDA 13.0: NVIDIA driver >= 580). For an older
# driver, build with another variant, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The shared volume (study output, teacher cache) is mounted at /var/lib/ktg by
# compose and Kubernetes; owning the mount point makes a fresh named volume
# start out writable by `ray` (uid 1000, gid 100, the same ids as the API image).
USER root
RUN mkdir -p /var/lib/ktg && chown 1000:100 /var/lib/ktg
USER ray

RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# Pin ray to the base image's version so the ktg requirement (ray>=2.40) never
# upgrades it behind the cluster's back. The wheel is bind-mounted from stage 1,
# so it leaves no layer behind.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir "ray[default,tune]==${RAY_VERSION}" /tmp/wheels/*.whl

WORKDIR /home/ray
# No EXPOSE on purpose: the dashboard (8265) is also the Ray Jobs API, which runs
# whatever command it is sent. It must stay inside the private network (compose
# network / cluster), so nothing invites `docker run -P` to publish it.
