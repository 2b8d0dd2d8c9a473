"""Pooling finished (fold, model) units into one report."""
import json

import numpy as np
import pytest
import torch

from gistnet import config
from gistnet.data import runs, split
from gistnet.data.storage import LocalStore
from gistnet.errors import DataError
from gistnet.evidence import aggregate as aggregation
from gistnet.evidence import predictions, report

from tests.training.test_units import NAMES, image_set


def fake_unit(out, unit, images, part, cfg, seed, finished="2026-01-01T00:00:00+00:00"):
    """What train_unit leaves behind, with made-up scores (no training)."""
    rng = np.random.default_rng(seed)
    val = images.subset(part.val)
    y = val.labels.numpy()
    scores = y * 1.5 + rng.normal(size=len(y))
    p = 1 / (1 + np.exp(-scores))
    predictions.write(out, predictions.rows(val.keys, [], y, NAMES, unit.fold, unit.model, p, scores),
                      unit.key(predictions.FILENAME))
    history = [{"epoch": 1, "train_loss": 0.7, "train_accuracy": 0.5, "val_loss": 0.69, "val_accuracy": 0.5,
                "images": 12, "seconds": 1.0}]
    ckpt = {"uri": out.uri_of(unit.key("model.safetensors")), "sha256": "0" * 64, "bytes": 1}
    out.write_bytes(unit.key("result.json"), json.dumps({
        "fold": unit.fold, "model": unit.model, "history": history, "checkpoint": ckpt,
        "resumable_checkpoint": {**ckpt, "epoch": 1}, "resumed_from_epoch": None, "youden_threshold": 0.4,
        "counts": {"train": {"GIST": 6, "LM": 6}, "val": {"GIST": 3, "LM": 3}, "train_augmented": {"GIST": 6, "LM": 6}},
        "environment": report.environment(torch.device("cpu")), "finished": finished}).encode())


def seeded_kfold_run(root, models="resnet34,resnet50"):
    """A 3-fold run as the pipeline leaves it before training: config, split and data set description."""
    images = image_set()
    cfg = config.load_config(None, {"split.method": "kfold", "split.folds": 3, "train.models": models}, environ={})
    out = LocalStore(root)
    plan = split.make_plan(images.keys, images.labels.numpy(), [], cfg.split, 0, NAMES)
    _seed_run(out, images, cfg, plan)
    return images, cfg, out, plan


@pytest.fixture
def kfold_run(tmp_path):
    return (*seeded_kfold_run(tmp_path / "run"), tmp_path / "run")


def test_aggregation_names_missing_units_then_completes_deterministically(kfold_run, tmp_path):
    images, cfg, out, plan, root = kfold_run
    with pytest.raises(DataError, match="no finished fold to aggregate"):
        aggregation.aggregate(out, cfg, "r", str(tmp_path))
    assert not (root / "report.json").exists()
    units = runs.all_units(cfg)
    for i, unit in enumerate(units[:-1]):
        fake_unit(out, unit, images, plan.part(unit.fold), cfg, seed=i)
    partial = aggregation.aggregate(out, cfg, "r", str(tmp_path))
    assert partial["status"] == "partial" and partial["evaluation"]["missing"] == [{"fold": 2, "model": "resnet50"}]
    assert partial["comparison"] is None  # not the same images yet
    assert "PARTIAL REPORT" in (root / "report.md").read_text() and "resnet50 fold 2" in (root / "report.md").read_text()
    assert len(partial["models"]["resnet50"]["folds"]) == 2

    fake_unit(out, units[-1], images, plan.part(2), cfg, seed=9, finished="2026-01-02T00:00:00+00:00")
    final = aggregation.aggregate(out, cfg, "r", str(tmp_path))
    first_bytes = {name: (root / name).read_bytes() for name in ("report.json", "report.md", "predictions.csv", "roc.png",
                                                                 "reliability.png", "training_curves.png")}
    aggregation.aggregate(out, cfg, "r", str(tmp_path))
    assert {name: (root / name).read_bytes() for name in first_bytes} == first_bytes
    assert final["status"] == "complete" and final["created"] == "2026-01-02T00:00:00+00:00"
    assert final["evaluation"] == {"method": "kfold", "folds": 3, "pooled": True, "missing": [],
                                   "finished": [u.to_dict() for u in units],
                                   "design": report.words(final)["design"], "caveat": report.words(final)["caveat"]}
    assert final["evaluation"]["design"].startswith("3-fold cross-validation")
    rows = predictions.read(out)
    for model in ("resnet34", "resnet50"):
        assert sorted(r.key for r in rows if r.model == model) == sorted(images.keys)  # every image once per model
        m = final["models"][model]
        assert sum(m["confusion_matrix"].values()) == len(images.keys)
        assert [f["fold"] for f in m["folds"]] == [0, 1, 2] and m["across_folds"]["roc_auc"]["n_folds"] == 3
        assert m["roc_auc"]["method"] == "delong" and m["calibration"]["brier"] > 0
        assert m["thresholds"]["youden"]["values"] == [0.4] and m["thresholds"]["youden"]["exploratory"]
    assert {r.fold for r in rows} == {0, 1, 2}
    c = final["comparison"]
    assert c["n_images"] == 18 and 0 <= c["delong"]["p"] <= 1 and c["auc_difference"]["ci_low"] <= c["auc_difference"]["ci_high"]


def fake_gradcam(out, unit, rho):
    """A unit's Grad-CAM gallery (a tiny PNG) and its summary, as train_unit stores them."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(png, format="PNG")
    out.write_bytes(runs.gradcam_key(unit), png.getvalue())
    result = json.loads(out.read(unit.key("result.json")))
    result["explain"] = {"method": "Grad-CAM (captum LayerGradCam)", "layer": "layer4", "target": "true class",
                         "images": 2, "misclassified_shown": 1, "randomisation_spearman": rho,
                         "randomisation_images": 2, "randomisation_values": [rho, rho],
                         "randomisation_flagged": False, "note": "ok"}
    out.write_bytes(unit.key("result.json"), json.dumps(result).encode())


class RecordingStore(LocalStore):
    """A local store that remembers the order of its writes."""

    def __init__(self, root):
        super().__init__(root)
        self.written = []

    def write_bytes(self, key, data):
        self.written.append(key)
        return super().write_bytes(key, data)

    def write_bytes_if(self, key, data, **condition):
        self.written.append(key)
        return super().write_bytes_if(key, data, **condition)


def test_kfold_report_embeds_every_folds_gradcam_and_writes_html_and_checklist_after_json(kfold_run, tmp_path):
    images, cfg, _, plan, root = kfold_run
    out = RecordingStore(root)
    for i, unit in enumerate(runs.all_units(cfg)):
        fake_unit(out, unit, images, plan.part(unit.fold), cfg, seed=i)
        fake_gradcam(out, unit, rho=0.1 * unit.fold)
    out.written.clear()
    final = aggregation.aggregate(out, cfg, "r", str(tmp_path))
    for model in ("resnet34", "resnet50"):
        summary = final["models"][model]["explain"]
        assert summary["folds"] == [0, 1, 2] and summary["images"] == 6  # combined over the folds
        for fold in range(3):
            assert final["artifacts"][f"gradcam_{model}_fold{fold}"].endswith(f"folds/{fold}/gradcam-{model}.png")
    html = (root / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 + 3  # six galleries, curves, ROC, reliability
    assert "## To be filled by the authors" in (root / "checklist.md").read_text()
    assert {"report_html", "checklist", "reliability_diagram"} <= set(final["artifacts"])
    # the documents follow the report, written only once its compare-and-swap won (issue 29, item 12)
    assert out.written.index("report.json") < out.written.index("report.html")
    assert out.written.index("report.json") < out.written.index("checklist.md")
    assert out.written.index("predictions.csv") < out.written.index("report.json")
    for model in ("resnet34", "resnet50"):  # one card per architecture: its fold ensemble's
        assert "ensemble of its 3 fold models (mean logit margin)" in (root / model / "model_card.md").read_text()
        assert final["artifacts"][f"model_card_{model}"].endswith(f"{model}/model_card.md")


def test_holdout_report_keeps_the_units_explain_summary_and_writes_model_cards(tmp_path):
    images = image_set()
    cfg = config.load_config(None, {"train.models": "resnet34"}, environ={})
    out = LocalStore(tmp_path / "run")
    plan = split.make_plan(images.keys, images.labels.numpy(), [], cfg.split, 0, NAMES)
    out.write_bytes("config.yaml", cfg.to_yaml().encode())
    out.write_bytes(runs.DATASET, json.dumps({"uri": "data", "classes": {"GIST": "positive", "LM": "negative"},
                                                  "images": images.counts(NAMES), "split_method": "stratified-holdout",
                                                  "skipped": []}).encode())
    unit = runs.Unit(None, "resnet34")
    fake_unit(out, unit, images, plan.part(None), cfg, seed=0)
    fake_gradcam(out, unit, rho=0.3)
    final = aggregation.aggregate(out, cfg, "r", str(tmp_path))
    assert final["models"]["resnet34"]["explain"]["randomisation_spearman"] == 0.3
    assert final["artifacts"]["gradcam_resnet34"].endswith("gradcam-resnet34.png")
    assert (tmp_path / "run" / "resnet34" / "model_card.md").is_file()
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "checklist.md").is_file()


def _seed_run(out, images, cfg, plan):
    """What the pipeline writes before training: config, split and data set description."""
    out.write_bytes("config.yaml", cfg.to_yaml().encode())
    out.write_bytes("split.json", json.dumps(plan.to_dict()).encode())
    out.write_bytes(runs.DATASET, json.dumps({"uri": "data", "classes": {"GIST": "positive", "LM": "negative"},
                                                  "images": images.counts(NAMES), "split_method": "stratified-kfold",
                                                  "skipped": []}).encode())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_last_unit_finishing_during_a_hand_run_aggregate_ends_complete(where, tmp_path, monkeypatch, request):
    """The race of issue 19 item 4, made deterministic: a hand-run ``gistnet aggregate`` lists
    the units (the last one not finished yet) and is held there; meanwhile the last unit
    finishes and its process writes the complete report; then the hand-run one goes on. Before
    compare-and-swap it wrote its partial report over the complete one."""
    import threading

    from gistnet.config import StorageConfig
    from gistnet.data.storage import open_store

    images = image_set()
    cfg = config.load_config(None, {"split.method": "kfold", "split.folds": 3, "train.models": "resnet34"},
                             environ={})
    plan = split.make_plan(images.keys, images.labels.numpy(), [], cfg.split, 0, NAMES)
    if where == "local":
        out = LocalStore(tmp_path / "run")
    else:
        out = open_store(f"s3://{request.getfixturevalue('bucket')}/run", StorageConfig())
    _seed_run(out, images, cfg, plan)
    units = runs.all_units(cfg)
    for i, unit in enumerate(units[:-1]):
        fake_unit(out, unit, images, plan.part(unit.fold), cfg, seed=i)

    listed, go_on = threading.Event(), threading.Event()
    real_load = aggregation.load_finished

    def load_then_hold(store, expected):
        found = real_load(store, expected)
        if threading.current_thread() is hand and not listed.is_set():
            listed.set()  # the hand-run aggregate saw 2 of 3 units finished
            assert go_on.wait(120)
        return found

    monkeypatch.setattr(aggregation, "load_finished", load_then_hold)
    returned = []
    hand = threading.Thread(target=lambda: returned.append(aggregation.aggregate(out, cfg, "r", str(tmp_path))))
    hand.start()
    try:
        assert listed.wait(120)
        fake_unit(out, units[-1], images, plan.part(units[-1].fold), cfg, seed=9)  # the last unit finishes
        assert aggregation.aggregate(out, cfg, "r", str(tmp_path))["status"] == "complete"  # ... and its process aggregates
    finally:
        go_on.set()
        hand.join(300)
    assert not hand.is_alive()
    stored = json.loads(out.read("report.json"))
    assert stored["status"] == "complete" and stored["evaluation"]["missing"] == []
    assert returned[0] == stored  # the hand-run one aggregated again and agrees
    assert "PARTIAL REPORT" not in out.read("report.md").decode()  # its documents follow the stored report
    assert len(predictions.read(out)) == len(images.keys)


def test_publish_never_replaces_a_report_that_pools_more(tmp_path):
    """A build made from an older listing (it misses a unit the stored report pools) is
    built again; one that still pools less after that leaves the stored report as it is."""
    from gistnet.evidence import publish

    out = LocalStore(tmp_path)
    full = {"status": "complete", "evaluation": {"finished": [{"fold": 0, "model": "a"}, {"fold": 1, "model": "a"}]}}
    less = {"status": "partial", "evaluation": {"finished": [{"fold": 0, "model": "a"}]}}
    out.write_bytes("report.json", json.dumps(full).encode())
    documents = []
    builds = iter([less, full])
    assert publish.publish(out, lambda: (b := next(builds), lambda: documents.append(b["status"]))) == full
    assert documents == ["complete"]  # the partial build's documents were never written
    assert publish.publish(out, lambda: (less, lambda: documents.append("partial"))) == full
    assert json.loads(out.read("report.json")) == full and documents == ["complete"]
    assert publish.may_replace(full, less) and publish.may_replace(full, full) and not publish.may_replace(less, full)


def test_an_aggregation_that_loses_and_dies_before_its_write_leaves_no_document(tmp_path):
    """A losing aggregator (it read before the winner stored a complete report, built a partial
    one) killed before its compare-and-swap leaves report.md as the winner wrote it, not
    "PARTIAL REPORT" beside a complete report.json."""
    from gistnet.evidence import publish

    class Killed(BaseException):
        pass

    class DiesBeforeItsWrite(LocalStore):
        def write_bytes_if(self, key, data, **condition):
            raise Killed(key)

    out = LocalStore(tmp_path)
    full = {"status": "complete", "evaluation": {"finished": [{"fold": 0, "model": "a"}, {"fold": 1, "model": "a"}]}}
    less = {"status": "partial", "evaluation": {"finished": [{"fold": 0, "model": "a"}]}}

    def documents(report):
        return lambda: out.write_bytes("report.md", ("PARTIAL REPORT" if report["status"] == "partial"
                                                     else "complete report").encode())

    def losing_build():  # the winner stores its complete report while this one builds from an older listing
        publish.publish(out, lambda: (full, documents(full)))
        return less, documents(less)

    with pytest.raises(Killed):
        publish.publish(DiesBeforeItsWrite(tmp_path), losing_build)
    assert json.loads(out.read("report.json")) == full
    assert out.read("report.md") == b"complete report"
