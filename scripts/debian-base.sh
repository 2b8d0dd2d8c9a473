#!/usr/bin/env bash
# A local stand-in for the Dockerfile's CUDA base, for building and running the image where no
# container registry is reachable: Debian (debootstrap, minbase, with python3, python3-venv and
# ca-certificates) imported into buildah's storage as IMAGE. Skipped when IMAGE exists.
#
#   scripts/debian-base.sh [IMAGE]   # default localhost/gistnet-debian-base:bookworm; needs root
set -euo pipefail
image="${1:-localhost/gistnet-debian-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
if "${buildah[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  echo "debian-base: $image exists"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$work/rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
ctr="$("${buildah[@]}" from scratch)"
"${buildah[@]}" add "$ctr" "$work/rootfs.tar" / >/dev/null
"${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
"${buildah[@]}" commit --rm "$ctr" "$image" >/dev/null
echo "debian-base: $image made in $(( $(date +%s) - start )) s"
