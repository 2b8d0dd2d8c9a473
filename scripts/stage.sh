#!/usr/bin/env bash
# Where `make test` and `make image-test` spend their time: each stage runs through this script.
#
#   scripts/stage.sh NAME COMMAND...   # run COMMAND; print "== stage NAME: N s (exit C)" and record it
#   scripts/stage.sh --summary         # every stage recorded since the last --reset, and the total
#   scripts/stage.sh --reset           # forget the recorded stages (make test starts with it)
#
# Stages are recorded in $STAGE_LOG (default .stage-times, git-ignored), one "name<TAB>seconds<TAB>exit"
# line each, so `make test` then `make image-test` (what .ci/run does) sum up together.
set -uo pipefail
LOG=${STAGE_LOG:-.stage-times}
case "${1:-}" in
  --reset) rm -f "$LOG"; exit 0 ;;
  --summary)
    [ -f "$LOG" ] || exit 0
    echo "== time per stage"
    awk -F'\t' '{ printf "  %-14s %6d s (exit %s)\n", $1, $2, $3; total += $2 }
                END { printf "  %-14s %6d s (%d min %d s)\n", "total", total, total / 60, total % 60 }' "$LOG"
    exit 0 ;;
  "") echo "usage: stage.sh NAME COMMAND... | --summary | --reset" >&2; exit 2 ;;
esac
name=$1; shift
start=$(date +%s)
"$@"
rc=$?
seconds=$(( $(date +%s) - start ))
printf '%s\t%s\t%s\n' "$name" "$seconds" "$rc" >>"$LOG"
echo "== stage $name: $seconds s (exit $rc)"
exit "$rc"
