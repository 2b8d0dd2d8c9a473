import io
import json

import numpy as np
import pytest
from PIL import Image

from gistnet.data import synth
from gistnet.data.storage import LocalStore


def test_deterministic_for_a_seed():
    a, la = synth.generate("GIST", 3, 64, seed=7)
    b, lb = synth.generate("GIST", 3, 64, seed=7)
    c, _ = synth.generate("GIST", 3, 64, seed=8)
    assert a == b and la == lb and a != c


def test_image_is_grayscale_sector_with_content():
    png, _ = synth.generate("LM", 0, 96, seed=0)
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (96, 96) and img.dtype == np.uint8
    assert img[0, 0] == 0 and img[0, -1] == 0  # outside the fan
    assert img.std() > 10


def test_class_attributes_follow_table1():
    rng = np.random.default_rng(0)
    gist = [synth.sample_lesion("GIST", rng) for _ in range(400)]
    lm = [synth.sample_lesion("LM", rng) for _ in range(400)]
    assert np.mean([g.diameter_mm for g in gist]) > 2 * np.mean([m.diameter_mm for m in lm]) * 0.8
    assert sum(m.layer == "muscularis_mucosae" for m in lm) > 80  # 26/73 in the paper
    assert sum(g.layer == "muscularis_mucosae" for g in gist) == 0  # 0/69
    assert sum(g.heterogeneous for g in gist) / 400 > sum(m.heterogeneous for m in lm) / 400 + 0.2


def test_write_dataset_layout(tmp_path):
    store = LocalStore(tmp_path)
    summary = synth.write_dataset(store, 3, 2, 32, seed=0)
    assert sorted(store.list()) == ["GIST/gist_0000.png", "GIST/gist_0001.png", "GIST/gist_0002.png",
                                    "LM/lm_0000.png", "LM/lm_0001.png", "synth.json"]
    assert json.loads(store.read("synth.json"))["counts"] == {"GIST": 3, "LM": 2} == summary["counts"]


def test_learnable_but_no_single_pixel_separates_the_classes():
    """Size and darkness carry signal (GISTs are larger, as in Table 1), but neither one
    pixel nor the mean intensity separates the classes: a model has to combine cues."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    images, labels = [], []
    for label in ("GIST", "LM"):
        for i in range(80):
            png, _ = synth.generate(label, i, 48, seed=3)
            images.append(np.asarray(Image.open(io.BytesIO(png)), dtype=float).ravel())
            labels.append(label == "GIST")
    x, y = np.array(images), np.array(labels)
    separation = lambda v: max(roc_auc_score(y, v), 1 - roc_auc_score(y, v)) if v.std() > 0 else 0.5  # noqa: E731
    # every pixel's AUC at once (Mann-Whitney U from average ranks, ties counted half, as
    # roc_auc_score counts them); the best one checked against roc_auc_score itself
    ranks = rankdata(x, axis=0)
    n1, n0 = int(y.sum()), int((~y).sum())
    auc = (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    each = np.where(x.std(axis=0) > 0, np.maximum(auc, 1 - auc), 0.5)
    best = int(np.argmax(each))
    best_pixel = separation(x[:, best])
    assert best_pixel == pytest.approx(each[best], abs=1e-12)
    assert 0.6 < best_pixel < 0.95, best_pixel
    assert separation(x.mean(axis=1)) < 0.95


def test_sites_differ_in_acquisition_and_class_mix(tmp_path):
    from gistnet.data.manifest import read_manifest

    store = LocalStore(tmp_path / "d")
    summary = synth.write_sites(store, synth.sites(4, 0), 20, 48, seed=1)
    rows = read_manifest((tmp_path / "d" / "manifest.csv").read_text(), "manifest.csv")
    assert (tmp_path / "d" / "manifest.csv").read_text().startswith("path,label,patient_id,site\n")
    assert len(rows) == 80 and {r.site for r in rows} == {"site-A", "site-B", "site-C", "site-D"}
    assert all((tmp_path / "d" / r.path).exists() and r.path.startswith(f"{r.site}/{r.label}/") for r in rows)
    per_patient = {}
    for r in rows:
        per_patient.setdefault(r.patient_id, []).append(r)
    assert any(len(v) == 2 for v in per_patient.values())  # some patients have two images
    assert all(len({r.site for r in v}) == 1 and len({r.label for r in v}) == 1 for v in per_patient.values())
    mix = {s: sum(r.label == "GIST" for r in rows if r.site == s) for s in ("site-A", "site-C")}
    assert mix["site-A"] == 10 and mix["site-C"] == round(20 * synth.SITE_PRESETS[2].gist_fraction)
    brightness = {}
    for site in ("site-A", "site-C"):
        arrays = [np.asarray(Image.open(tmp_path / "d" / r.path), float) for r in rows if r.site == site]
        brightness[site] = np.mean(arrays)
    assert brightness["site-C"] < 0.7 * brightness["site-A"]  # the acquisition effect is visible
    assert [s["name"] for s in summary["sites"]] == ["site-A", "site-B", "site-C", "site-D"]
    assert synth.write_sites(LocalStore(tmp_path / "e"), synth.sites(4, 0), 20, 48, seed=1) == summary


def test_synth_cli_sites(tmp_path):
    from click.testing import CliRunner

    from gistnet.cli import cli

    result = CliRunner().invoke(cli, ["synth", "--output", str(tmp_path / "d"), "--sites", "3", "--n-gist", "9",
                                      "--n-lm", "9", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "d" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,patient_id,site" and len(lines) == 19
