"""End-to-end runs of the whole pipeline on CPU with tiny images."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gistnet import config, pipeline
from gistnet.evidence import predictions
from gistnet.evidence import report
from gistnet.observe.metrics import RunMetrics
from gistnet.data.storage import LocalStore, sha256_file
from tests.conftest import NO_GALLERY, copy_tree, wait_until

pytestmark = pytest.mark.e2e

TINY = {"data.image_size": 32, "train.models": "resnet34", "train.batch_size": 16}


def tiny_config(data, out, run_id, **flags):
    return config.load_config(None, {"data.uri": str(data), "output.uri": str(out), "output.run_id": run_id,
                                     **TINY, **flags}, environ={})


def test_run_writes_everything_and_a_valid_report(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", "r1", **{"train.epochs": 2,
                      "train.models": "resnet34,resnet50", "train.checkpoint_every": 1})
    outcome = pipeline.run(cfg)
    run = tmp_path / "runs" / "r1"
    rep = json.loads((run / "report.json").read_text())
    report.validate(rep)
    assert rep == outcome.report
    assert rep["dataset"]["train"] == {"GIST": 16, "LM": 16} and rep["dataset"]["val"] == {"GIST": 4, "LM": 4}
    assert rep["dataset"]["train_augmented"] == {"GIST": 96, "LM": 96}
    for name in ("resnet34", "resnet50"):
        m = rep["models"][name]
        assert [h["epoch"] for h in m["history"]] == [1, 2]
        assert m["checkpoint"]["sha256"] == sha256_file(run / name / "model.safetensors")
        assert m["resumable_checkpoint"]["epoch"] == 2
        assert sum(m["confusion_matrix"].values()) == 8
        # only the newest checkpoint is kept
        assert sorted(p.name for p in (run / name).glob("checkpoint-epoch*.pt")) == ["checkpoint-epoch0002.pt"]
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 32 and len(split["val"]) == 8
    for png in ("training_curves.png", "roc.png", "augmentation_examples.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    assert "| called GIST |" in (run / "report.md").read_text()
    rows = predictions.read(LocalStore(run))
    assert sorted((r.model, r.key) for r in rows) == sorted((m, k) for m in ("resnet34", "resnet50")
                                                            for k in split["val"])
    assert {r.fold for r in rows} == {None}
    for name in ("resnet34", "resnet50"):
        positives = sum(r.label == "GIST" for r in rows if r.model == name)
        assert positives == rep["models"][name]["confusion_matrix"]["tp"] + rep["models"][name]["confusion_matrix"]["fn"]
    assert config.load_config(run / "config.yaml", environ={}) == cfg
    for name in ("resnet34", "resnet50"):
        assert rep["models"][name]["explain"]["images"] >= 1
        assert (run / f"gradcam-{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert rep["artifacts"][f"gradcam_{name}"].endswith(f"gradcam-{name}.png")
    html = (run / "report.html").read_text()
    # curves, ROC, reliability diagram, Fig 2, the decision curve and one Grad-CAM gallery per model
    assert html.count('src="data:image/png;base64,') == 7 and "| called GIST |" not in html
    assert "## To be filled by the authors" in (run / "checklist.md").read_text()
    assert {"report_html", "checklist"} <= set(rep["artifacts"])
    written = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    # report.json marks completion: every output before it; the documents made from it (report.md,
    # report.html, checklist.md) only after its compare-and-swap won (issue 29, item 12)
    documents = {"report.md", "report.html", "checklist.md"}
    assert all(t <= written["report.json"] for name, t in written.items() if name not in documents)
    assert all(written[name] >= written["report.json"] for name in documents)


def test_finished_run_is_a_no_op_unless_forced(tiny_runs, tmp_path):
    """A finished run (a copy of the session's ``tiny_runs`` run ``a``) run again with its own
    configuration is a no-op; --force trains it again, here with explain.enabled false: no
    Grad-CAM in its report or its folder."""
    run = copy_tree(tiny_runs / "a", tmp_path / "a")
    cfg = config.replace(config.load_config(run / "config.yaml", environ={}), output={"uri": str(tmp_path)})
    first = json.loads((run / "report.json").read_text())
    mtime = (run / "report.json").stat().st_mtime_ns
    again = pipeline.run(cfg)
    assert again.already_complete and again.report == first
    assert (run / "report.json").stat().st_mtime_ns == mtime
    for gallery in run.glob("gradcam-*"):  # the first training's
        gallery.unlink()
    forced = pipeline.run(config.replace(cfg, output={"force": True}, explain={"enabled": False}))
    assert not forced.already_complete
    assert (run / "report.json").stat().st_mtime_ns != mtime
    assert "explain" not in forced.report["models"]["resnet34"] and not list(run.glob("gradcam-*"))


def test_a_unit_finished_before_the_report_is_reused_not_retrained(tiny_runs, tmp_path, caplog):
    """A process that dies after its last unit's result.json and before report.json (a copy of
    ``tiny_runs`` run ``a`` without its report): the re-run trains nothing, says which unit it
    reuses, and writes the same report from the stored result."""
    run = copy_tree(tiny_runs / "a", tmp_path / "a")
    before = json.loads((run / "report.json").read_text())
    (run / "report.json").unlink()
    weights = sha256_file(run / "resnet34" / "model.safetensors")
    result = (run / "resnet34" / "result.json").read_bytes()
    cfg = config.replace(config.load_config(run / "config.yaml", environ={}), output={"uri": str(tmp_path)})
    again = pipeline.run(cfg)
    assert not again.already_complete and again.report["status"] == "complete"
    assert "resnet34: already trained in this run; reusing" in caplog.text and "epoch 1/" not in caplog.text
    assert sha256_file(run / "resnet34" / "model.safetensors") == weights
    assert (run / "resnet34" / "result.json").read_bytes() == result
    assert again.report["models"]["resnet34"]["metrics"] == before["models"]["resnet34"]["metrics"]
    assert json.loads((run / "report.json").read_text())["models"] == again.report["models"]


def test_resuming_with_a_different_config_is_refused(tiny_data, tmp_path):
    from gistnet.errors import ConfigError

    cfg = tiny_config(tiny_data, tmp_path, "r3", **{"train.epochs": 1, "augmentation.mode": "none"})
    LocalStore(tmp_path / "r3").write_bytes("config.yaml", config.replace(cfg, train={"epochs": 9}).to_yaml().encode())
    with pytest.raises(ConfigError, match=r"exists with a different configuration \(train\)"):
        pipeline.run(cfg)
    # how it runs may change on resume: device, checkpoint interval, download threads
    operational = config.replace(cfg, train={"device": "cpu", "checkpoint_every": 3, "checkpoint_interval_s": 60},
                                 data={"download_threads": 2})
    LocalStore(tmp_path / "r3").write_bytes("config.yaml", operational.to_yaml().encode())
    assert pipeline.run(cfg).report["status"] == "complete"


def _samples(metrics) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_each_stage_is_timed_where_it_happens(tiny_data, tmp_path, monkeypatch):
    """Checkpoint writes (2 s each here) are the checkpoint stage, not train; the final
    checkpoint and weights are upload; images/s counts the training steps only."""
    from gistnet.training import checkpoint

    created = []
    monkeypatch.setattr(pipeline, "RunMetrics", lambda stats: created.append(RunMetrics(stats)) or created[-1])
    for name in ("save_checkpoint", "save_weights"):
        real = getattr(checkpoint, name)

        def slow(*args, _real=real, **kwargs):
            time.sleep(2.0)
            return _real(*args, **kwargs)

        monkeypatch.setattr(checkpoint, name, slow)
    cfg = tiny_config(tiny_data, tmp_path, "t", **{"train.epochs": 2, "train.checkpoint_every": 1,
                                                    "augmentation.mode": "none"})
    history = pipeline.run(cfg).report["models"]["resnet34"]["history"]
    stage = {dict(k)["stage"]: v for (name, k), v in _samples(created[0]).items()
             if name == "gistnet_stage_duration_seconds" and dict(k)["model"] in ("", "resnet34")}
    assert stage["checkpoint"] >= 2.0  # the checkpoint after epoch 1
    assert stage["upload"] >= 4.0  # the final checkpoint and the weights
    epochs = sum(h["seconds"] for h in history)
    assert epochs <= stage["train"] < epochs + 1.0, (stage, history)  # no checkpoint time in train
    assert {"load", "augmentation", "evaluate", "report"} <= set(stage)
    last = history[-1]
    assert [h["images"] for h in history] == [32, 32] and last["train_seconds"] < last["seconds"]
    rate = _samples(created[0])[("gistnet_images_per_second", (("model", "resnet34"),))]
    assert rate == pytest.approx(last["images"] / last["train_seconds"])


def test_a_training_set_smaller_than_one_batch_is_refused_before_training(tiny_data, tmp_path):
    from gistnet.errors import DataError

    cfg = tiny_config(tiny_data, tmp_path, "small", **{"train.batch_size": 64, "augmentation.mode": "none"})
    message = "has 32 images, fewer than one batch of train.batch_size=64"
    with pytest.raises(DataError, match=re.escape(f"the training set after 'none' augmentation {message}")):
        pipeline.run(cfg)
    assert not (tmp_path / "small" / "resnet34").exists() and not (tmp_path / "small" / "report.json").exists()


def test_only_the_split_stays_on_the_device_and_the_history_matches_the_report(tiny_data, tmp_path, monkeypatch):
    import gc
    import weakref

    from gistnet.data import dataset
    from gistnet.training import train

    full, alive_when_training = [], []
    load, fit = dataset.load_images, train.fit

    def load_and_watch(*args, **kwargs):
        loaded = load(*args, **kwargs)
        full.append(weakref.ref(loaded.images.images))
        return loaded

    def fit_after_checking(*args, **kwargs):
        gc.collect()
        alive_when_training.append(full[0]() is not None)
        return fit(*args, **kwargs)

    monkeypatch.setattr(dataset, "load_images", load_and_watch)
    monkeypatch.setattr(train, "fit", fit_after_checking)
    cfg = tiny_config(tiny_data, tmp_path, "r4", **{"train.epochs": 1, "augmentation.mode": "none"})
    m = pipeline.run(cfg).report["models"]["resnet34"]
    assert alive_when_training == [False]  # the full set's tensor was freed once split
    # validation and the final evaluation are computed the same way (fp32): the same numbers
    assert m["history"][-1]["val_accuracy"] == m["metrics"]["accuracy"]["value"]


def test_model_trained_on_synthetic_data_beats_chance(tmp_path):
    """Training learns. Without augmentation: the paper's six-fold training set is built and trained
    on end to end by test_run_writes_everything_and_a_valid_report, and six copies of each image
    made this test six times as long (124 s in CI, 20 s now) without making it a stronger check."""
    from gistnet.data import synth

    synth.write_dataset(LocalStore(tmp_path / "data"), 60, 60, 48, seed=5)
    cfg = config.load_config(None, {"data.uri": str(tmp_path / "data"), "output.uri": str(tmp_path / "runs"),
                                    "output.run_id": "chance", "data.image_size": 48, "train.models": "resnet34",
                                    "train.epochs": 6, "train.checkpoint_every": 0, "augmentation.mode": "none"},
                             environ={})
    m = pipeline.run(cfg).report["models"]["resnet34"]
    assert m["roc_auc"]["ci_low"] > 0.5, m["roc_auc"]  # the AUC interval excludes chance
    assert m["metrics"]["accuracy"]["value"] > 0.6, m["metrics"]["accuracy"]


# ------------------------------------------------------------------ resume after kill -9 / SIGTERM

def _train_args(data, out, run_id):
    return [sys.executable, "-m", "gistnet", "train", "--data", str(data), "--output", str(out), "--run-id", run_id,
            "--models", "resnet34", "--epochs", "4", "--image-size", "32", "--batch-size", "16",
            "--checkpoint-every", "1", "--augmentation", "online"]


def _names_a_checkpoint(pointer: Path) -> bool:
    """The unit's lease claims its checkpoint pointer first with a stub that names none."""
    return pointer.exists() and '"key"' in pointer.read_text()


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run(_train_args(tiny_data, out, "ref"), capture_output=True, text=True, timeout=600,
                          env={**os.environ, **NO_GALLERY})
    assert done.returncode == 0, done.stderr
    return json.loads((out / "ref" / "report.json").read_text()), out / "ref"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_to_identical_results(how, tiny_data, tmp_path, uninterrupted):
    ref_report, ref_dir = uninterrupted
    env = {**os.environ, **NO_GALLERY}  # compared: weights, metrics, history; no figure
    proc = subprocess.Popen(_train_args(tiny_data, tmp_path, "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        pointer = tmp_path / "run" / "resnet34" / "checkpoint.json"
        wait_until(f"{pointer} naming a checkpoint", lambda: _names_a_checkpoint(pointer), proc)
        proc.send_signal(getattr(signal, how))
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    if how == "SIGTERM":
        assert proc.returncode == 8, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "report.json").exists()
    done = subprocess.run(_train_args(tiny_data, tmp_path, "run"), capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    m, ref = rep["models"]["resnet34"], ref_report["models"]["resnet34"]
    assert m["resumed_from_epoch"] in (1, 2, 3, 4)
    assert m["checkpoint"]["sha256"] == ref["checkpoint"]["sha256"]  # bit-identical final weights
    assert m["metrics"] == ref["metrics"] and m["confusion_matrix"] == ref["confusion_matrix"]
    wall_times = {"seconds", "train_seconds"}  # the only fields that may differ between the two runs
    strip = lambda h: [{k: v for k, v in e.items() if k not in wall_times} for e in h]  # noqa: E731
    assert strip(m["history"]) == strip(ref["history"])


def test_folds_trained_by_concurrent_processes_pool_into_one_report(kfold_run, tiny_data, tmp_path, cli):
    """Two processes, same --run-id, different --fold (the session's ``kfold_run``, trained that
    way in tests/conftest.py): neither overwrites the other; the last to finish writes the complete
    report, and `gistnet aggregate` (on a copy: the shared run is read-only) rewrites exactly the
    same bytes, but for the run's location."""
    run = kfold_run
    rep = json.loads((run / "report.json").read_text())
    assert rep["status"] == "complete" and rep["evaluation"]["method"] == "kfold"
    assert [f["fold"] for f in rep["models"]["resnet34"]["folds"]] == [0, 1]
    for i in (0, 1):
        assert (run / "folds" / str(i) / "resnet34" / "model.safetensors").exists()
    rows = predictions.read(LocalStore(run))
    assert sorted(r.key for r in rows) == sorted(str(p.relative_to(tiny_data)) for p in tiny_data.rglob("*.png"))
    assert "### Folds" in (run / "report.md").read_text()
    for i in (0, 1):  # each fold's Grad-CAM gallery, embedded in report.html, summarised over the folds
        assert (run / "folds" / str(i) / "gradcam-resnet34.png").read_bytes()[:4] == b"\x89PNG"
        assert f"gradcam_resnet34_fold{i}" in rep["artifacts"]
    assert rep["models"]["resnet34"]["explain"]["folds"] == [0, 1]
    assert (run / "report.html").is_file() and (run / "checklist.md").is_file()
    before = (run / "report.json").read_bytes()
    run = copy_tree(kfold_run, tmp_path / "kf")  # aggregate rewrites the report: a copy of the shared run
    done = cli("aggregate", "--run", run)
    assert done.returncode == 0, done.stderr

    def located(blob: bytes) -> bytes:
        """The run's location in the paths the report records made one: the copy's (in the documents
        aggregate writes) and the original's (each fold's checkpoint, read from its result.json)."""
        return blob.replace(str(run).encode(), b"<run>").replace(str(kfold_run).encode(), b"<run>")

    assert located((run / "report.json").read_bytes()) == located(before)


def test_fan_out_pairs_as_concurrent_processes_against_s3_and_a_killed_pair_reruns(bucket, s3_env, s3_client, cli):
    """The chart's fan-out (fanout.enabled) as processes: one per JOB_COMPLETION_INDEX, 2 folds x
    2 models, same run id, sharing the loopback S3 server. Pair 3 is killed (SIGKILL, a lost
    pod) once it has started training: the other three finish and leave the report to it; its
    rerun completes the run, and `gistnet aggregate` rewrites the same bytes."""
    assert cli("synth", "--output", f"s3://{bucket}/data", "--n-gist", 12, "--n-lm", 12, "--image-size", 32,
               "--seed", 5).returncode == 0
    args = [sys.executable, "-m", "gistnet", "train", "--data", f"s3://{bucket}/data", "--output",
            f"s3://{bucket}/runs", "--run-id", "fan", "--split", "kfold", "--folds", "2", "--models",
            "resnet34,resnet50", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--augmentation",
            "none", "--device", "cpu", "--fold", "auto"]

    def pair(index: int) -> subprocess.Popen:
        env = {**s3_env, **NO_GALLERY, "JOB_COMPLETION_INDEX": str(index), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    doomed = pair(3)
    deadline = time.monotonic() + 300
    started = ""
    while "fold 1: train" not in started and time.monotonic() < deadline and doomed.poll() is None:
        started += doomed.stderr.readline()
    assert "fold 1: train" in started, started
    doomed.kill()
    doomed.communicate(timeout=60)
    others = [pair(i) for i in (0, 1, 2)]
    for p in others:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        assert "this process's part is done" in out
    run_keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="runs/fan/")["Contents"]}
    assert "runs/fan/report.json" not in run_keys and "runs/fan/folds/1/resnet50/result.json" not in run_keys
    assert {f"runs/fan/folds/{f}/{m}/result.json" for f, m in ((0, "resnet34"), (1, "resnet34"), (0, "resnet50"))} \
        <= run_keys

    rerun = pair(3)
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    assert out.strip().endswith("runs/fan/report.json")
    stored = s3_client.get_object(Bucket=bucket, Key="runs/fan/report.json")["Body"].read()
    rep = json.loads(stored)
    assert rep["status"] == "complete" and rep["evaluation"]["missing"] == []
    assert sorted((u["fold"], u["model"]) for u in rep["evaluation"]["finished"]) == \
        [(0, "resnet34"), (0, "resnet50"), (1, "resnet34"), (1, "resnet50")]
    for name in ("resnet34", "resnet50"):
        assert [f["fold"] for f in rep["models"][name]["folds"]] == [0, 1]
        assert sum(rep["models"][name]["confusion_matrix"].values()) == 24  # pooled: every image validated once
    assert rep["comparison"]["models"] == ["resnet34", "resnet50"]  # paired: the same 24 images
    again = cli("aggregate", "--run", f"s3://{bucket}/runs/fan")
    assert again.returncode == 0, again.stderr
    assert s3_client.get_object(Bucket=bucket, Key="runs/fan/report.json")["Body"].read() == stored
