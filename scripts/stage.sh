#!/usr/bin/env bash
# Where `make test` and `make image-test` spend their time: each stage runs through this script.
#
#   scripts/stage.sh NAME COMMAND...   # run COMMAND; print "== stage NAME: N s (exit C)" and record it
#   scripts/stage.sh --summary         # every stage recorded since the last --reset, their sum and the wall time
#   scripts/stage.sh --reset           # forget the recorded stages (make test starts with it)
#
# Stages are recorded in $STAGE_LOG (default .stage-times, git-ignored), one
# "name<TAB>seconds<TAB>exit<TAB>start<TAB>end" line each (epoch seconds), so `make test` then
# `make image-test` sum up together. Stages can overlap (WITH_IMAGE=1 make test builds the image
# beside the suite): the summary gives the sum of the stages and the wall time from the first
# stage's start to the last one's end.
set -uo pipefail
LOG=${STAGE_LOG:-.stage-times}
case "${1:-}" in
  --reset) rm -f "$LOG"; exit 0 ;;
  --summary)
    [ -f "$LOG" ] || exit 0
    echo "== time per stage"
    awk -F'\t' '{ printf "  %-14s %6d s (exit %s)\n", $1, $2, $3; total += $2
                  if (NR == 1 || $4 < first) first = $4; if ($5 > last) last = $5 }
                END { printf "  %-14s %6d s (%d min %d s)\n", "sum", total, total / 60, total % 60
                      wall = last - first
                      printf "  %-14s %6d s (%d min %d s)\n", "wall", wall, wall / 60, wall % 60 }' "$LOG"
    exit 0 ;;
  "") echo "usage: stage.sh NAME COMMAND... | --summary | --reset" >&2; exit 2 ;;
esac
name=$1; shift
start=$(date +%s)
"$@"
rc=$?
end=$(date +%s)
seconds=$(( end - start ))
printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$seconds" "$rc" "$start" "$end" >>"$LOG"
echo "== stage $name: $seconds s (exit $rc)"
exit "$rc"
