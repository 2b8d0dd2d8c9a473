#!/usr/bin/env bash
# Put checkov (PyPI; the chart and Dockerfile scanner, run offline with --skip-download) into
# DIR/checkov-venv with a DIR/checkov link, unless checkov is already on PATH. Its own venv:
# checkov pins many libraries that must not change the project's.
set -euo pipefail
dir="$(realpath -m "${1:-.tools}")"
version="3.3.30"
if command -v checkov >/dev/null 2>&1 || [ -x "$dir/checkov" ]; then
  exit 0
fi
mkdir -p "$dir"
python3 -m venv "$dir/checkov-venv"
"$dir/checkov-venv/bin/python" -m pip install --quiet "checkov==$version"
ln -sf "$dir/checkov-venv/bin/checkov" "$dir/checkov"
"$dir/checkov" --version
