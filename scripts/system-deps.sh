#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (scripts/system-packages.txt, or the list
# given: scripts/image-packages.txt for `make image-test`) when they are missing, so `make test`
# on a fresh machine tests what CI tests. As non-root it only prints the one command to run, and
# fails.
set -euo pipefail
list=${1:-$(dirname "$0")/system-packages.txt}
[ -f "$list" ] || { echo "system-deps.sh: no package list $list" >&2; exit 2; }
mapfile -t packages < <(grep -v '^\s*#' "$list" | grep -v '^\s*$')
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# WITH_IMAGE=1 make test installs the suite's and the image's packages side by side: one apt-get
# at a time (a second would fail on dpkg's lock), at most 15 minutes' wait.
exec 9>/var/lock/gistnet-system-deps.lock
flock -w 900 9 || { echo "system-deps.sh: another apt-get held /var/lock/gistnet-system-deps.lock for 15 min" >&2; exit 1; }
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
