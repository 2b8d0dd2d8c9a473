#!/usr/bin/env bash
# Run a locally built image's entrypoint the way the chart runs the pod, without a container
# runtime (podman's `run` cannot set rlimits in some sandboxes): the image's root filesystem
# bind-mounted read-only in a private mount namespace, a tmpfs on /tmp (the chart's emptyDir),
# the image's USER, Env, WorkingDir and Entrypoint, the host's network (loopback S3).
#
#   sudo scripts/run-image-readonly.sh -e AWS_ENDPOINT_URL -e AWS_ACCESS_KEY_ID=... \
#     localhost/gistnet:dev synth --output s3://b/data
#
# -e NAME passes the caller's NAME, -e NAME=VALUE sets it (as docker run -e); nothing else of
# the caller's environment reaches the job.
# Needs root, podman (to mount the image) and util-linux's unshare. The image is read from the
# vfs storage buildah wrote it to (scripts/build-image.sh).
set -euo pipefail
passed=()
while [ "${1:-}" = -e ]; do
  case "$2" in
    *=*) passed+=("$2") ;;
    *) if [ -n "${!2+x}" ]; then passed+=("$2=${!2}"); fi ;;
  esac
  shift 2
done
image="$1"
shift
podman=(podman --storage-driver "${STORAGE_DRIVER:-vfs}")
root="$(mktemp -d)"
rootfs="$("${podman[@]}" image mount "$image")"
trap '"${podman[@]}" image unmount "$image" >/dev/null; rmdir "$root" 2>/dev/null || true' EXIT
config="$("${podman[@]}" image inspect --format '{{json .Config}}' "$image")"
field() { python3 -c 'import json,sys; c=json.loads(sys.argv[1]); print(*(c.get(sys.argv[2]) or []), sep="\n")' \
  "$config" "$1"; }
user="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("User") or "")' "$config")"
workdir="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("WorkingDir") or "/")' "$config")"
mapfile -t env < <(field Env)
mapfile -t entrypoint < <(field Entrypoint)
if [ -z "$user" ] || [ "${user%%:*}" = 0 ] || [ "${user%%:*}" = root ]; then
  echo "run-image-readonly: the image's USER is '${user}', not a non-root UID" >&2
  exit 1
fi
# shellcheck disable=SC2016
unshare --mount -- sh -ec '
  root=$1 rootfs=$2 user=$3 workdir=$4; shift 4
  mount --make-rprivate /
  mount --bind "$rootfs" "$root"
  mount -o remount,bind,ro "$root"
  if touch "$root/.gistnet-write-probe" 2>/dev/null; then echo "root filesystem is writable" >&2; exit 1; fi
  mount -t tmpfs -o mode=1777,size=4g tmpfs "$root/tmp"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  exec chroot --userspec="$user" "$root" /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$workdir" "$@"
' sh "$root" "$rootfs" "$user" "$workdir" /usr/bin/env -i "${env[@]}" "${passed[@]}" "${entrypoint[@]}" "$@"
