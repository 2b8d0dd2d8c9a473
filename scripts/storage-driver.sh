#!/usr/bin/env bash
# Which containers/storage driver the image build uses here: overlay when buildah can commit and
# mount an overlay layer on this machine (every cached layer is then a diff, so buildah's layer
# cache is cheap), else vfs (works anywhere, but every layer is a full copy). Prints the name.
# Overlay images live in their own root (scripts/storage-overlay.conf), probed here.
#
#   scripts/storage-driver.sh     # overlay | vfs; STORAGE_DRIVER set in the environment wins
set -uo pipefail
CONTAINERS_STORAGE_CONF="$(cd "$(dirname "$0")" && pwd)/storage-overlay.conf"
export CONTAINERS_STORAGE_CONF
if [ -n "${STORAGE_DRIVER:-}" ]; then echo "$STORAGE_DRIVER"; exit 0; fi
probe() {
  local ctr image="localhost/gistnet-overlay-probe:1" file
  command -v buildah >/dev/null 2>&1 || return 1
  file="$(mktemp)" && echo probe >"$file" || return 1
  ctr="$(buildah --storage-driver overlay from scratch 2>/dev/null)" || { rm -f "$file"; return 1; }
  buildah --storage-driver overlay copy "$ctr" "$file" /probe >/dev/null 2>&1 \
    && buildah --storage-driver overlay commit -q --rm "$ctr" "$image" >/dev/null 2>&1 \
    && ctr="$(buildah --storage-driver overlay from "$image" 2>/dev/null)" \
    && [ "$(cat "$(buildah --storage-driver overlay mount "$ctr")/probe" 2>/dev/null)" = probe ]
  local ok=$?
  buildah --storage-driver overlay rm "$ctr" >/dev/null 2>&1
  buildah --storage-driver overlay rmi -f "$image" >/dev/null 2>&1
  rm -f "$file"
  return $ok
}
if probe; then echo overlay; else echo vfs; fi
