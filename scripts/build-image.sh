#!/usr/bin/env bash
# Build the image from the project's Dockerfile: with docker when a daemon answers, else with
# buildah (Debian package; chroot isolation and vfs storage, which work without a daemon,
# overlayfs or user namespaces).
#
#   scripts/build-image.sh [TAG]          # default gistnet:<version in pyproject.toml>
#   CUDA_BASE=localhost/gistnet-debian-base:bookworm scripts/build-image.sh localhost/gistnet:test
#
# With buildah, the host's CA bundle and pip configuration (/etc/ssl/certs/ca-certificates.crt,
# /etc/pip.conf, /etc/xdg/pip) are mounted read-only into the build's RUN steps when they
# exist, so a host that reaches PyPI through its own CA or mirror builds the same Dockerfile.
# LAYERS=true (make image-test sets it) keeps buildah's layer cache: a rebuild after a change
# under job/ reuses the base, torch and dependency layers (the Dockerfile orders them so) and
# rebuilds only the project's. Default false, as buildah's own default: under vfs every cached
# layer is a full copy of the image's tree (see docs/development.md#the-container-image).
# Prints the build's wall time and the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
tag="${1:-gistnet:$version}"
args=(--build-arg "VERSION=$version" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
      --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
if [ -n "${CUDA_BASE:-}" ]; then args+=(--build-arg "CUDA_BASE=$CUDA_BASE"); fi
start=$(date +%s)
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker build -t "$tag" "${args[@]}" .
  size="$(docker image inspect --format '{{.Size}}' "$tag")"
else
  if ! command -v buildah >/dev/null 2>&1; then
    echo "build-image: neither a docker daemon nor buildah; install one (Debian: apt-get install buildah)" >&2
    exit 1
  fi
  for path in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf /etc/xdg/pip; do
    if [ -e "$path" ]; then args+=(--volume "$path:$path:ro"); fi
  done
  # One observed vfs build of the 6.8 GB image (2026-11-27; an observation, not a benchmark
  # row) peaked at ~26 GB of disk: the container's root, the committed layer's blob and the
  # layer itself are each a full copy. The warning below leaves a margin over it.
  root="$(buildah --storage-driver "${STORAGE_DRIVER:-vfs}" info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)"
  while [ ! -d "$root" ]; do root="$(dirname "$root")"; done
  free_gb=$(( $(df -Pk "$root" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if [ "$free_gb" -lt 28 ]; then
    echo "build-image: warning: $free_gb GB free under $root; a buildah (vfs) build needs about 28 GB" >&2
  fi
  buildah --storage-driver "${STORAGE_DRIVER:-vfs}" bud --isolation chroot --layers="${LAYERS:-false}" \
    -t "$tag" "${args[@]}" .
  size="$(buildah --storage-driver "${STORAGE_DRIVER:-vfs}" inspect --type image --format '{{.Size}}' "$tag" 2>/dev/null \
    || podman --storage-driver "${STORAGE_DRIVER:-vfs}" image inspect --format '{{.Size}}' "$tag")"
fi
echo "build-image: $tag built in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
