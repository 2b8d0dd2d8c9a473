# syntax=docker/dockerfile:1
# gistnet: CUDA runtime image running the `gistnet` batch job.
#
#   docker build -t gistnet:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# BAKE_IMAGENET_WEIGHTS=true downloads torchvision's ImageNet ResNet-34/50 weights at build
# time into /opt/gistnet/weights/ (safetensors) for clusters without internet access; the
# job itself never downloads anything. Point train.init_weights at them to use them.
# torch 2.14.1 wheels carry their own CUDA 13.0 libraries; the base supplies the matching
# CUDA 13.0 runtime and driver compatibility. Base pinned by tag and digest.
# checkov:skip=CKV_DOCKER_7:The base is pinned by tag and digest in ARG CUDA_BASE, which checkov cannot resolve
# checkov:skip=CKV_DOCKER_2:A batch job has no liveness to report; Kubernetes Job status and exit codes do that
ARG CUDA_BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04@sha256:c3fde347d52d578c84fd644bc177bc7ec333feaf11550d990da4084d7612e4c7

# One stage, ordered from what changes least to what changes most, so a layer cache (docker's,
# buildah's --layers: make image-test uses it) rebuilds only what a change touches:
#   1. the system packages and the venv, 2. torch and its CUDA libraries (GBs),
#   3. the other dependencies, keyed by pyproject.toml alone (read from it, installed without
#      the project), 4. the project itself, --no-deps: a change under job/ rebuilds this layer only.
# The version, revision and creation date change on every build: their ARGs and LABELs come last,
# so they do not invalidate the layers above. (A build stage copied into a runtime stage would
# re-copy the whole venv, GBs, on every code change, and need a second venv's worth of disk.)
FROM ${CUDA_BASE} AS runtime
ARG BAKE_IMAGENET_WEIGHTS=false
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 gistnet \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin gistnet \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 kornia==0.9.0
# The dependencies and the mlflow extra (mlflow-skinny: the tracking and registry client only, no
# server; pandas, which mlflow.pytorch imports) as pyproject.toml states them, so that
# tracking.mlflow_uri / MLFLOW_TRACKING_URI work in the shipped image. torch's pins are met above.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["mlflow"]))' >/tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY job ./job
COPY scripts/bake_imagenet_weights.py ./scripts/
# The project alone: its dependencies and its mlflow extra are the layer above. (DL3013: this is
# the local project and its extra, whose versions pyproject.toml states; hadolint reads
# ".[extra]" as a package.)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[mlflow]" --no-deps \
 && pip check \
 && mkdir -p /opt/gistnet/weights \
 && if [ "${BAKE_IMAGENET_WEIGHTS}" = "true" ]; then \
      python scripts/bake_imagenet_weights.py /opt/gistnet/weights; \
    fi \
 && rm -rf /src
# Everything writable lives under /tmp (an emptyDir in Kubernetes), so the root filesystem
# can be read-only.
ENV PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch
USER 10001:10001
WORKDIR /tmp
EXPOSE 9090
ENTRYPOINT ["gistnet"]
CMD ["train", "--metrics-port", "9090"]
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="gistnet" \
      org.opencontainers.image.description="Train and audit EUS image classifiers (GIST vs leiomyoma)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/gistnet/gistnet" \
      org.opencontainers.image.licenses="Apache-2.0"
