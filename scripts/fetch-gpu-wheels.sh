#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the cp312 wheels scripts/gpu-check.sh needs on a GPU machine
# whose image has torch 2.11 and most of the scientific stack but no PyPI access: kornia and its
# Rust extension, boto3 and its own needs, jsonschema and its own needs. Versions are the ones the
# local venv tests with (pass PYTHON=... to read them from another interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${DEST:-.whl}
PACKAGES=(kornia kornia_rs boto3 botocore s3transfer jmespath jsonschema referencing rpds-py
          jsonschema-specifications)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)

version_of() {
  "$PYTHON" -c 'import sys; from importlib.metadata import version; print(version(sys.argv[1]))' "$1"
}

platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
mkdir -p "$DEST"
for name in "${PACKAGES[@]}"; do
  pin="$name==$(version_of "$name")"
  echo "fetching $pin" >&2
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DEST" "$pin"
done
ls -l "$DEST" >&2
