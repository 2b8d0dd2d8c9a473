"""gistnet synth --classes: K lesion types, each with its EUS appearance, several frames per
lesion, manifest.csv with lesion_id. Mirrors tests/data/test_synth.py for K classes: per-type
statistics measured on the drawn images match the appearance docs/multiclass.md describes, and
the types are learnable while no single pixel statistic separates one from the rest."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gistnet import errors
from gistnet.data import synth, synth_classes as sc
from gistnet.data.storage import LocalStore

LAYER_2_TOP = synth.WALL_LAYERS[1][0] - synth.WALL_LAYERS[1][1]  # 0.24
LAYER_3_BOTTOM = synth.WALL_LAYERS[2][0] + synth.WALL_LAYERS[2][1]  # 0.34


def _lesions(label: str, n: int, size: int, seed: int = 0):
    """(appearance, tissue parts, image of an unshifted frame at unit gain) for n lesions."""
    out = []
    for i in range(n):
        rng = sc._stream(seed, label, i, 0)
        a = sc.sample_appearance(label, rng)
        parts = sc.lesion_tissue(a, size, rng)
        image = sc.render_frame(parts["tissue"], sc.Frame(), sc._stream(seed, label, i, 0, 0)).astype(float)
        out.append((a, parts, image))
    return out


def _depth(size: int) -> np.ndarray:
    return synth._sector_mask(size)[1]


# ------------------------------------------------------------------ the appearance of each type


def test_net_lies_in_layers_2_and_3_and_gist_schwannoma_in_the_4th():
    """NET: deep mucosa or submucosa (2nd/3rd layer), the lesion's drawn centre of mass there and
    the muscularis propria beneath it spared; GIST and schwannoma: muscularis propria (4th), most
    of them (intraluminal growth) bulging into the layers above, so their centre of mass is
    mostly, not always, below the 3rd layer."""
    size = 96
    depth = _depth(size)
    centroid = lambda parts: float((parts["lesion"] * depth).sum() / parts["lesion"].sum())  # noqa: E731
    nets = _lesions("NET", 40, size)
    assert {a.layer for a, _, _ in nets} == {"deep_mucosa", "submucosa"}
    for a, parts, _ in nets:
        assert LAYER_2_TOP <= centroid(parts) <= LAYER_3_BOTTOM, (a, centroid(parts))
        deepest = depth[parts["lesion"] > 0.5].max()
        assert deepest < synth.WALL_LAYERS[3][0] + 0.005, a  # the 4th layer's centre and below are intact
    for label in ("GIST", "schwannoma"):
        drawn = _lesions(label, 40, size)
        assert np.mean([a.layer == "muscularis_propria" for a, _, _ in drawn]) > 0.9
        assert np.median([centroid(p) for _, p, _ in drawn]) > LAYER_3_BOTTOM  # bulging inwards from the 4th


def test_schwannoma_has_a_marginal_halo_darker_than_its_core():
    """Most schwannomas (24/27 in Yoon et al. 2016) show a marginal hypoechoic halo: measured on
    the image, the rim is darker than the core; GISTs rarely have one, leiomyomas none."""
    size = 96
    fan = synth._sector_mask(size)[0]
    drawn = _lesions("schwannoma", 40, size)
    ratios = []
    for a, parts, image in drawn:
        if not a.halo:
            continue
        rim, inside = (parts["halo"] > 0.5) & fan, (parts["lesion"] > 0.99) & fan
        # In the rows that cross both (the same depth, so the same attenuation): the rim's mean
        # echo against the lesion's beside it.
        rows = [y for y in range(size) if rim[y].sum() >= 2 and inside[y].sum() >= 2]
        assert len(rows) >= 5, a
        ratios.append(np.mean([image[y][rim[y]].mean() for y in rows]) /
                      np.mean([image[y][inside[y]].mean() for y in rows]))
    assert len(ratios) >= 30
    assert np.median(ratios) < 0.6 and np.mean(np.array(ratios) < 0.9) > 0.9, sorted(ratios)
    rate = lambda label: np.mean([sc.sample_appearance(label, np.random.default_rng([1, i])).halo  # noqa: E731
                                  for i in range(300)])
    assert rate("schwannoma") > 0.8 > 0.3 > rate("GIST") and rate("LM") == 0


def test_ectopic_pancreas_holds_anechoic_ducts_and_an_indistinct_margin():
    """Ectopic pancreas: 3rd (or 3rd and 4th) layer, heterogeneous, mostly indistinct margin, and
    anechoic ductal structures (80% in Matsushita et al. 1999) that are the darkest part of it."""
    drawn = _lesions("ectopic_pancreas", 30, 128)
    assert {a.layer for a, _, _ in drawn} <= {"submucosa", "submucosa_and_muscularis_propria"}
    with_ducts = [(a, p, img) for a, p, img in drawn if a.ducts]
    assert 18 <= len(with_ducts) <= 29
    for a, parts, image in with_ducts:
        duct = ndimage.binary_erosion(parts["ducts"])  # the duct's middle, not its blurred edge
        tissue = (parts["lesion"] > 0.9) & ~ndimage.binary_dilation(parts["ducts"], iterations=2)
        assert duct.sum() >= 3, a
        assert image[duct].mean() < 0.5 * image[tissue].mean(), a
    assert np.mean([not a.border_clear for a, _, _ in drawn]) > 0.6
    others = [a for label in ("GIST", "LM", "schwannoma", "NET") for a, _, _ in _lesions(label, 10, 32)]
    assert all(a.ducts == 0 for a in others)  # ducts are the ectopic pancreas's own cue


def test_gist_is_heterogeneous_when_large_and_leiomyoma_homogeneous():
    """Texture measured on the image (the core's spread after smoothing away the speckle):
    large GISTs are heterogeneous, leiomyomas homogeneous and well defined."""
    def spread(parts, image):
        smooth = ndimage.gaussian_filter(image, 2.0)
        core = parts["core"] & (parts["lesion"] > 0.99)
        return smooth[core].std() / smooth[core].mean() if core.sum() > 30 else None

    gists = [(a, spread(p, img)) for a, p, img in _lesions("GIST", 60, 96)]
    lms = [(a, spread(p, img)) for a, p, img in _lesions("LM", 60, 96)]
    large = [s for a, s in gists if a.diameter_mm > 25 and s is not None]
    homogeneous_lm = [s for a, s in lms if s is not None and not a.heterogeneity > 0.05]
    assert len(large) >= 10 and len(homogeneous_lm) >= 5
    assert np.median(large) > 1.5 * np.median(homogeneous_lm)
    rng = np.random.default_rng(5)
    many = [sc.sample_appearance("GIST", rng) for _ in range(600)]
    het = lambda sel: np.mean([a.heterogeneity > 0.05 for a in sel])  # noqa: E731
    assert het([a for a in many if a.diameter_mm > 30]) > het([a for a in many if a.diameter_mm < 15]) + 0.4
    assert all(a.cysts == 0 for a in many if a.diameter_mm < 20)  # cystic spaces only in large GISTs
    lm = [sc.sample_appearance("LM", rng) for _ in range(300)]
    assert np.mean([a.border_clear for a in lm]) > 0.95 and het(lm) < het(many) - 0.3
    assert {a.layer for a in lm} >= {"muscularis_mucosae", "muscularis_propria"}  # 2nd or 4th layer


def test_net_is_round_small_homogeneous_and_well_demarcated():
    rng = np.random.default_rng(2)
    nets = [sc.sample_appearance("NET", rng) for _ in range(300)]
    assert all(a.aspect <= 1.2 and a.heterogeneity < 0.05 and 4 <= a.diameter_mm <= 13 for a in nets)
    assert np.mean([a.border_clear for a in nets]) > 0.9 and not any(a.halo or a.ducts for a in nets)


# ------------------------------------------------------------------ learnable, not one pixel


def _pixel_aucs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC of every column of x for the 0/1 labels y (Mann-Whitney U from mid-ranks)."""
    from scipy.stats import rankdata

    ranks = rankdata(x, axis=0)
    n1, n0 = y.sum(), (~y).sum()
    return (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_types_are_learnable_but_no_single_pixel_statistic_separates_one_from_the_rest():
    """One lesion (one frame) per image: each type against the rest, its best single pixel and its
    mean or spread of intensity stay below an AUC of 0.95, while a linear model on the pixels
    (grouped by lesion: all different here) classifies the five far above chance (0.2)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    x, labels = [], []
    for k, label in enumerate(sc.TYPES):
        for i in range(80):
            rng = sc._stream(3, label, i, 0)
            tissue = sc.lesion_tissue(sc.sample_appearance(label, rng), 48, rng)["tissue"]
            frame_rng = sc._stream(3, label, i, 0, 0)
            x.append(sc.render_frame(tissue, sc.draw_frame(frame_rng, 48), frame_rng).astype(float).ravel())
            labels.append(k)
    x, labels = np.array(x), np.array(labels)
    separation = lambda auc: np.maximum(auc, 1 - auc)  # noqa: E731
    informative = []
    for k, label in enumerate(sc.TYPES):
        y = labels == k
        varying = x.std(axis=0) > 0
        aucs = _pixel_aucs(x[:, varying], y)
        j = int(np.argmax(separation(aucs)))
        assert abs(aucs[j] - roc_auc_score(y, x[:, varying][:, j])) < 1e-9  # the rank AUC is sklearn's
        best = separation(aucs).max()
        assert best < 0.95, (label, best)
        informative.append(best)
        for statistic in (x.mean(axis=1), x.std(axis=1)):
            assert separation(roc_auc_score(y, statistic)) < 0.95, label
    assert max(informative) > 0.75 and min(informative) > 0.6  # each type has some signal
    with threadpool_limits(1):  # one BLAS thread: many threads on a shared small machine take 10x longer
        accuracy = cross_val_score(make_pipeline(PCA(30, random_state=0), LinearDiscriminantAnalysis()),
                                   x, labels, cv=5).mean()
    assert accuracy > 0.4, accuracy


# ------------------------------------------------------------------ frames, lesions, patients, manifest


def test_frames_of_a_lesion_are_the_same_tissue_seen_again():
    """Frames of one lesion differ (shift, gain, speckle) yet correlate more with each other than
    with another lesion of the same type."""
    size = 64
    rng = sc._stream(0, "GIST", 7, 0)
    tissue = sc.lesion_tissue(sc.sample_appearance("GIST", rng), size, rng)["tissue"]
    frames = []
    for f in range(3):
        frame_rng = sc._stream(0, "GIST", 7, 0, f)
        frame = sc.draw_frame(frame_rng, size)
        assert 0.85 <= frame.gain <= 1.15 and max(abs(frame.dx), abs(frame.dy)) <= 0.03 * size
        frames.append(ndimage.gaussian_filter(sc.render_frame(tissue, frame, frame_rng).astype(float), 2).ravel())
    other = ndimage.gaussian_filter(_lesions("GIST", 9, size)[8][2], 2).ravel()
    same = min(np.corrcoef(frames[a], frames[b])[0, 1] for a, b in ((0, 1), (0, 2), (1, 2)))
    assert not np.array_equal(frames[0], frames[1])
    assert same > np.corrcoef(frames[0], other)[0, 1] + 0.05


def test_write_classes_manifest_lesions_and_patients(tmp_path):
    from gistnet.data.manifest import read_manifest

    store = LocalStore(tmp_path / "d")
    summary = sc.write_classes(store, ["NET", "GIST", "ectopic_pancreas"], 25, 32, seed=1)
    text = (tmp_path / "d" / "manifest.csv").read_text()
    assert text.startswith("path,label,patient_id,lesion_id\n")
    rows = read_manifest(text, "manifest.csv")
    assert len(rows) == 75 and [r.label for r in rows[::25]] == ["NET", "GIST", "ectopic_pancreas"]
    assert all((tmp_path / "d" / r.path).exists() and r.path.startswith(f"{r.label}/") for r in rows)
    lesions, patients = {}, {}
    for r in rows:
        lesions.setdefault(r.lesion_id, []).append(r)
        patients.setdefault(r.patient_id, set()).add(r.lesion_id)
    for lesion_id, images in lesions.items():  # one label and one patient per lesion
        assert len({r.label for r in images}) == 1 and len({r.patient_id for r in images}) == 1
        assert 1 <= len(images) <= sc.FRAMES[1]
    assert np.mean([len(v) >= sc.FRAMES[0] for v in lesions.values()]) > 0.8  # several frames per lesion
    assert any(len(v) == 2 for v in patients.values())  # some patients have two lesions (NETs: often)
    assert summary["counts"]["NET"]["images"] == 25 and summary["classes"] == ["NET", "GIST", "ectopic_pancreas"]
    assert {i["lesion_id"] for i in summary["images"]} == set(lesions)
    img = np.asarray(Image.open(tmp_path / "d" / rows[0].path))
    assert img.shape == (32, 32) and img.dtype == np.uint8 and img[0, 0] == 0


def test_a_types_images_do_not_depend_on_the_other_types_or_their_order(tmp_path):
    a = sc.write_classes(LocalStore(tmp_path / "a"), ["GIST", "schwannoma"], 6, 32, seed=4)
    b = sc.write_classes(LocalStore(tmp_path / "b"), ["schwannoma"], 6, 32, seed=4)
    c = sc.write_classes(LocalStore(tmp_path / "c"), ["schwannoma"], 6, 32, seed=5)
    keys = [i["key"] for i in b["images"]]
    assert keys == [i["key"] for i in a["images"] if i["label"] == "schwannoma"]
    read = lambda root, key: (root / key).read_bytes()  # noqa: E731
    assert all(read(tmp_path / "a", k) == read(tmp_path / "b", k) for k in keys)
    assert any(read(tmp_path / "c", k) != read(tmp_path / "b", k) for k in keys if (tmp_path / "c" / k).exists())
    assert c["seed"] == 5


def test_check_types_names_the_unknown_or_repeated_type():
    assert sc.check_types(["NET", "GIST"]) == ("NET", "GIST")
    with pytest.raises(ValueError, match="unknown lesion type 'polyp'"):
        sc.check_types(["GIST", "polyp"])
    with pytest.raises(ValueError, match="lesion type 'LM' named twice"):
        sc.check_types(["LM", "LM"])


# ------------------------------------------------------------------ the command line


def test_synth_cli_classes_writes_the_manifest(tmp_path):
    from click.testing import CliRunner

    from gistnet.cli import cli

    result = CliRunner().invoke(cli, ["synth", "--output", str(tmp_path / "d"), "--classes",
                                      "GIST,LM,schwannoma,NET,ectopic_pancreas", "--per-class", "4",
                                      "--image-size", "32"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "d" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,patient_id,lesion_id" and len(lines) == 21
    assert [line.split(",")[1] for line in lines[1::4]] == list(sc.TYPES)


@pytest.mark.parametrize("args, message", [
    (["--classes", "GIST,polyp"],
     "Invalid value for '--classes': unknown lesion type 'polyp' (known: GIST, LM, schwannoma, NET, ectopic_pancreas)"),
    (["--classes", "NET,NET"], "Invalid value for '--classes': lesion type 'NET' named twice"),
    (["--classes", "GIST,LM", "--sites", "2"], "--classes draws --per-class images of each type; it does not "
                                               "combine with --sites"),
    (["--per-class", "5"], "--per-class counts the images of each type of --classes"),
])
def test_synth_cli_unknown_lesion_type_is_a_one_line_usage_error(tmp_path, args, message):
    from click.testing import CliRunner

    from gistnet.cli import cli

    result = CliRunner().invoke(cli, ["synth", "--output", str(tmp_path / "d"), *args])
    assert result.exit_code == errors.EXIT_USAGE, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gistnet: usage error: ") and message in lines[0], lines
    assert not (tmp_path / "d").exists()


def test_the_clis_lesion_types_are_the_generators():
    from gistnet.cli import run

    assert run.LESION_TYPES == sc.TYPES


def test_demo_classes_sets_data_classes_and_draws_the_first_k_types(tmp_path, monkeypatch):
    """gistnet demo --classes 3: GIST, LM and schwannoma drawn into <output>/data-3-classes, and
    data.classes set through the demo's config flags (training itself is stubbed here)."""
    import types

    from click.testing import CliRunner

    from gistnet.cli import cli, run

    seen = {}

    def load_config(path, flags=None, environ=None):
        seen["flags"] = dict(flags)
        return types.SimpleNamespace()

    monkeypatch.setattr(run.config_mod, "load_config", load_config)
    monkeypatch.setattr(run, "_run_training", lambda cfg: types.SimpleNamespace(uri=str(tmp_path / "runs" / "x")))
    result = CliRunner().invoke(cli, ["demo", "--output", str(tmp_path), "--classes", "3", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    flags = seen["flags"]
    assert flags["data.classes"] == "GIST,LM,schwannoma"
    assert flags["data.uri"] == str(tmp_path / "data-3-classes") and flags["output.run_id"] == "demo-3-classes"
    rows = (tmp_path / "data-3-classes" / "manifest.csv").read_text().splitlines()
    assert rows[0] == "path,label,patient_id,lesion_id"
    assert {r.split(",")[1] for r in rows[1:]} == {"GIST", "LM", "schwannoma"}
    assert len(rows) - 1 == 3 * run.SYNTH_PER_CLASS
    seen.clear()
    assert CliRunner().invoke(cli, ["demo", "--output", str(tmp_path / "two")]).exit_code == 0
    assert "data.classes" not in seen["flags"] and seen["flags"]["output.run_id"] == "demo"  # the paper's demo as before


@pytest.mark.parametrize("args, message", [
    (["--classes", "6"], "Invalid value for '--classes': 6 is not in the range 2<=x<=5"),
    (["--classes", "3", "--external"], "--classes draws one site of K lesion types; it does not combine with"),
])
def test_demo_classes_out_of_range_or_with_sites_is_a_usage_error(tmp_path, args, message):
    from click.testing import CliRunner

    from gistnet.cli import cli

    result = CliRunner().invoke(cli, ["demo", "--output", str(tmp_path / "o"), *args])
    assert result.exit_code == errors.EXIT_USAGE, result.output
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "o").exists()
