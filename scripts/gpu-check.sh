#!/usr/bin/env bash
# One prepared check of gistnet on a CUDA machine (Python 3.12, torch 2.11, no PyPI): prints one
# JSON line per measurement on stdout, logs under $LOG_DIR (default $OUT/gpu-check or a temp dir).
#
#   scripts/fetch-gpu-wheels.sh        # here, where PyPI is reachable: fills .whl/
#   scripts/gpu-check.sh               # there: installs .whl/ into /tmp/site, then runs the checks
#
# Steps, most valuable first: the environment; `gistnet demo --device cuda`; the paper's full job
# (142 synthetic 224 px images, both ResNets, $EPOCHS epochs, batch 32) with compile
# reduce-overhead on a cold then a warm compile cache, then with compile off; `gistnet bench`;
# one SIGTERM-and-resume on CUDA. A step that fails prints "ok": false and the rest still run.
# DRY_RUN=1 runs the same steps on CPU with tiny sizes (to test the script where there is no GPU;
# tests/test_gpu_check.py runs it in the suite with DRY_COMPILE=off: torch.compile on a CPU took
# 13 min per job on the shared 2-core machine). The work folder is made under $TMPDIR (or /tmp).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
DRY_RUN=${DRY_RUN:-0}
EPOCHS=${EPOCHS:-200}
SITE=${SITE:-/tmp/site}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gistnet-gpu-check.XXXXXX")
LOG_DIR=${LOG_DIR:-${OUT:-$WORK}/gpu-check}
mkdir -p "$LOG_DIR"

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu; SIZE=32; EPOCHS=${DRY_EPOCHS:-1}; COMPILED=${DRY_COMPILE:-default}; BENCH=(--batch-size 4 --image-size 32 --steps 2 --warmup 1 --workers 1)
  N_GIST=12; N_LM=12; DEMO_SIZE=32; DEMO_EPOCHS=1; RESUME_EPOCHS=3; MODELS=${MODELS:-resnet34}
else
  DEVICE=cuda; SIZE=224; COMPILED=reduce-overhead; BENCH=(--steps 30 --warmup 10 --workers 8)
  N_GIST=69; N_LM=73; DEMO_SIZE=64; DEMO_EPOCHS=3; RESUME_EPOCHS=6
fi
MODELS=${MODELS:-resnet34,resnet50}

emit() {  # emit NAME KEY=VALUE... -> one JSON line (values that parse as JSON stay typed)
  python3 - "$@" <<'PY'
import json, sys
record = {"name": sys.argv[1]}
for pair in sys.argv[2:]:
    key, _, value = pair.partition("=")
    try:
        record[key] = json.loads(value)
    except ValueError:
        record[key] = value
print(json.dumps(record), flush=True)
PY
}

gistnet() { python3 -m gistnet "$@"; }

timed() {  # timed NAME COMMAND... -> runs it, logs to $LOG_DIR/NAME.log, emits seconds and exit code
  local name=$1; shift
  local start end rc
  start=$(date +%s.%N)
  "$@" >"$LOG_DIR/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  emit "$name" ok="$([ $rc -eq 0 ] && echo true || echo false)" exit_code=$rc \
    seconds="$(python3 -c "print(round($end - $start, 1))")" log="$LOG_DIR/$name.log"
  return $rc
}

install_wheels() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { emit install ok=false; exit 1; }
    export PYTHONPATH="$SITE:$REPO/job${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$REPO/job${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

environment() {
  python3 - <<'PY'
import json, torch, torchvision
import gistnet, kornia
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps({"name": "environment", "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "kornia": kornia.__version__, "gistnet": gistnet.__version__, "gpu": gpu}), flush=True)
PY
}

job_summary() {  # job_summary NAME RUN_DIR -> per model: total and first-epoch training seconds
  python3 - "$1" "$2" <<'PY'
import json, sys
from pathlib import Path
name, run = sys.argv[1], Path(sys.argv[2])
report = json.loads((run / "report.json").read_text())
for model, result in report["models"].items():
    history = result["history"]
    print(json.dumps({"name": f"{name}/{model}", "epochs": len(history),
                      "train_and_val_seconds": round(sum(r["seconds"] for r in history), 1),
                      "first_epoch_seconds": round(history[0]["seconds"], 1),
                      "later_epoch_seconds": round(sum(r["seconds"] for r in history[1:]) / max(1, len(history) - 1), 3),
                      "img_per_s_after_first_epoch": round(sum(r["images"] for r in history[1:])
                                                           / max(1e-9, sum(r["seconds"] for r in history[1:])), 1),
                      "val_accuracy": history[-1]["val_accuracy"]}), flush=True)
PY
}

full_job() {  # full_job NAME COMPILE OUTPUT RUN_ID
  timed "$1" gistnet train --data "$WORK/paper-data" --output "$3" --run-id "$4" --device "$DEVICE" --models "$MODELS" \
      --compile "$2" --epochs "$EPOCHS" --batch-size 32 --image-size "$SIZE" --checkpoint-every 0 \
    && job_summary "$1" "$3/$4"
}

kill_and_resume() {
  local out=$WORK/resume data=$WORK/paper-data pid rc
  local args=(train --data "$data" --output "$out" --run-id r --device "$DEVICE" --models resnet34 --epochs "$RESUME_EPOCHS"
              --image-size "$SIZE" --checkpoint-every 1 --compile off)
  # python itself in the background, not the gistnet() function: a function runs in a subshell,
  # whose PID would take the SIGTERM (exit 143) while gistnet trained on, orphaned.
  python3 -m gistnet "${args[@]}" >"$LOG_DIR/resume-first.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    grep -qs '"key"' "$out/r/resnet34/checkpoint.json" && break  # a checkpoint, not the lease's stub
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  timed resume-second gistnet "${args[@]}"
  emit kill-and-resume first_exit_code=$rc expected_first_exit_code=8 \
    resumed_from_epoch="$(python3 -c "import json; print(json.load(open('$out/r/resnet34/result.json'))['resumed_from_epoch'])" 2>/dev/null || echo null)"
}

install_wheels
environment
timed demo gistnet demo --device "$DEVICE" --output "$WORK/demo" --epochs "$DEMO_EPOCHS" --image-size "$DEMO_SIZE" --models "$MODELS"
timed synth gistnet synth --output "$WORK/paper-data" --n-gist "$N_GIST" --n-lm "$N_LM" --image-size "$SIZE"
full_job paper-job-compiled-cold-cache "$COMPILED" "$WORK/runs-compiled" cold
full_job paper-job-compiled-warm-cache "$COMPILED" "$WORK/runs-compiled" warm
full_job paper-job-eager off "$WORK/runs-eager" eager
gistnet bench --device "$DEVICE" --models "$MODELS" --json "${BENCH[@]}" 2>"$LOG_DIR/bench.log" || emit bench ok=false
kill_and_resume
emit finished work="$WORK" logs="$LOG_DIR"
