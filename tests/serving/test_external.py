"""gistnet evaluate end to end (32 px, the session's 1-epoch ResNet-34 run): the report's numbers
recomputed from its predictions.csv, frozen thresholds, overlap by pixel content, bad input."""

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gistnet.data import dataset, fingerprint, privacy, synth
from gistnet.data.storage import LocalStore
from gistnet.errors import EXIT_DATA, EXIT_MODEL
from gistnet.evidence import report
from tests.conftest import copy_run, one_line_error

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def external_data(tmp_path_factory):
    """Sites B and C at 32 px (12 images each) with an extra, entirely empty manifest column ``sex``."""
    root = tmp_path_factory.mktemp("external-data")
    synth.write_sites(LocalStore(root), synth.sites(3, 0)[1:], 12, 32, seed=5)
    lines = (root / "manifest.csv").read_text().splitlines()
    (root / "manifest.csv").write_text("\n".join([lines[0] + ",sex"] + [ln + "," for ln in lines[1:]]) + "\n")
    return root


def _run(tiny_runs, tmp_path):
    return copy_run(tiny_runs / "a", tmp_path / "run")


def _digests(data_root) -> dict[str, str]:
    """Each image's pixel digest, decoded independently of gistnet evaluate (one by one)."""
    out = {}
    for path in sorted(data_root.rglob("*.png")):
        pixels = dataset.decode_image(path.read_bytes(), 32, 10**8)
        out[str(path.relative_to(data_root))] = fingerprint.pixel_digest(pixels)
    return out


def test_evaluate_writes_a_schema_checked_external_report(tiny_runs, external_data, tmp_path, cli):
    run = _run(tiny_runs, tmp_path)
    (tmp_path / "c.yaml").write_text("evaluate:\n  subgroups: [sex, site]\n  min_subgroup: 13\n")  # the run's: 10
    done = cli("evaluate", "--run", run, "--data", external_data, "--name", "hospital-bc", "--config", tmp_path / "c.yaml")
    assert done.returncode == 0, done.stderr
    out = run / "external" / "hospital-bc"
    assert done.stdout.strip() == str(out / "report.json")
    rep = json.loads((out / "report.json").read_text())
    report.validate(rep)
    assert rep["evaluation"]["kind"] == "external" and rep["external"]["counts"]["evaluated"] == 24
    assert rep["external"]["overlap"]["status"].startswith("not checked")
    dev = json.loads((run / "report.json").read_text())["models"]["resnet34"]
    m = rep["models"]["resnet34"]
    assert m["thresholds"]["primary"]["value"] == 0.5
    assert m["thresholds"]["youden"]["value"] == dev["thresholds"]["youden"]["values"][0]  # frozen, not re-chosen
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    y = np.array([r["label"] == "GIST" for r in rows], int)
    p = np.array([float(r["probability"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    assert m["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, s))
    t = m["thresholds"]["youden"]["value"]
    assert m["thresholds"]["youden"]["confusion_matrix"]["tp"] == int(((p >= t) & (y == 1)).sum())
    side = {r["metric"]: r for r in m["side_by_side"]["rows"]}
    assert side["roc_auc"]["development"]["value"] == dev["roc_auc"]["value"]
    assert side["sensitivity"]["external"]["value"] == pytest.approx(((p >= 0.5) & (y == 1)).sum() / y.sum())
    dc = rep["decision_curve"]
    i = dc["thresholds"].index(0.2)
    nb = ((p >= 0.2) & (y == 1)).sum() / len(y) - ((p >= 0.2) & (y == 0)).sum() / len(y) * 0.2 / 0.8
    assert dc["net_benefit"]["resnet34"][i] == pytest.approx(nb, abs=1e-6)
    sex = m["subgroups"]["columns"]["sex"]  # an empty subgroup column: n/a rows, not a crash
    assert sex == [{**sex[0], "value": "(missing)", "n": 24, "status": "n/a: no value recorded"}]
    assert [r["value"] for r in m["subgroups"]["columns"]["site"]] == ["site-B", "site-C"]
    assert all(r["n"] == 12 and "min_subgroup=13" in r["status"] and r["sensitivity"]["value"] is None
               for r in m["subgroups"]["columns"]["site"])  # --config's evaluate.min_subgroup, not the run's
    assert [r["site"] for r in m["sites"]["per_site"]] == ["site-B", "site-C"]
    md = (out / "report.md").read_text()
    assert "| roc_auc |" in md and "frozen" in md and "## Decision curve" in md
    html = (out / "report.html").read_text()
    assert 'id="fig-decision_curve"' in html and 'id="decision-curve"' in html


def test_development_images_are_excluded_and_counted(tiny_runs, external_data, tmp_path, cli):
    run = _run(tiny_runs, tmp_path)
    digests = _digests(external_data)
    shared = sorted(digests)[:5]
    (run / "fingerprints.json").write_text(json.dumps({
        "method": fingerprint.METHOD, "image_size": 32,
        "images": {f"dev/{k}": digests[k] for k in shared}}))
    done = cli("evaluate", "--run", run, "--data", external_data, "--output", tmp_path / "ev")
    assert done.returncode == 0, done.stderr
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    overlap = rep["external"]["overlap"]
    assert overlap["count"] == 5 and overlap["examples"] == shared
    assert overlap["status"] == "5 of 24 images are development images, excluded from every metric"
    assert rep["external"]["counts"]["evaluated"] == 19 and sum(rep["models"]["resnet34"]["confusion_matrix"].values()) == 19
    flagged = {r["key"] for r in csv.DictReader((tmp_path / "ev" / "predictions.csv").open()) if r["in_development"] == "yes"}
    assert flagged == set(shared)


def test_repeats_within_the_set_count_once_and_development_patients_are_excluded(tiny_runs, external_data, tmp_path,
                                                                                 cli):
    """Site C's images again under new patient ids (a triplicated site) count once; a patient the run
    was developed on (same pseudonymised id, new pixels) is left out; the report counts both."""
    run, data = _run(tiny_runs, tmp_path), tmp_path / "data"
    shutil.copytree(external_data, data)
    lines = (data / "manifest.csv").read_text().splitlines()
    extra = []
    for copy in (1, 2):
        for line in lines[1:]:
            path, label, patient, site, sex = line.split(",")
            if site == "site-C":
                (data / f"copy{copy}" / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data / path, data / f"copy{copy}" / path)
                extra.append(f"copy{copy}/{path},{label},{patient}-copy{copy},{site},{sex}")
    (data / "manifest.csv").write_text("\n".join(lines + extra) + "\n")
    secret = bytes(range(32))
    (run / "private").mkdir()
    (run / "private" / "pseudonym.key").write_text(secret.hex())
    pseudo = privacy.Pseudonymizer(secret, False)
    (run / "fingerprints.json").write_text(json.dumps(fingerprint.document(
        {"dev/x.png": "0" * 64}, 32, [pseudo.patient("site-B-gist-0002")], pseudo.check())))
    done = cli("evaluate", "--run", run, "--data", data, "--output", tmp_path / "ev")
    assert done.returncode == 0, done.stderr
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    ext = rep["external"]
    site_c = sum(",site-C," in line for line in lines)
    assert ext["counts"] == {"scored": 24 + 2 * site_c, "evaluated": 22, "excluded_development": 2,
                             "excluded_repeats": 2 * site_c, "unusable": 0}
    assert ext["overlap"]["patients"] == {"status": "checked by pseudonymised patient id", "checked": True,
                                          "shared_patients": 1, "images": 2}
    assert ext["overlap"]["repeats"]["images"] == 2 * site_c
    assert "2 image(s) of 1 development patient(s)" in ext["overlap"]["status"]
    rows = [r for r in csv.DictReader((tmp_path / "ev" / "predictions.csv").open())]
    kept = [r for r in rows if not r["excluded"]]
    originals = [ln.split(",")[0] for ln in lines[1:] if ",site-B-gist-0002," not in ln]
    first = {p: ("copy1/" + p if p.startswith("site-C/") else p) for p in originals}  # the smallest key of each image
    assert sorted(r["key"] for r in kept) == sorted(first.values())
    assert {r["key"]: r["excluded"] for r in rows if "site-C/" in r["key"] and not r["key"].startswith("copy1/")} == {
        k: f"repeat of {first[k.removeprefix('copy2/')]}" for k in (r["key"] for r in rows)
        if "site-C/" in k and not k.startswith("copy1/")}
    assert {r["in_development"] for r in rows if "site-B/GIST/gist_0002" in r["key"]} == {"yes"}
    y = np.array([r["label"] == "GIST" for r in kept], int)
    assert rep["models"]["resnet34"]["roc_auc"]["value"] == pytest.approx(
        roc_auc_score(y, [float(r["score"]) for r in kept]))


def test_an_external_set_that_is_all_development_data_is_refused(tiny_runs, external_data, tmp_path, cli):
    run = _run(tiny_runs, tmp_path)
    (run / "fingerprints.json").write_text(json.dumps({"method": fingerprint.METHOD, "image_size": 32,
                                                       "images": _digests(external_data)}))
    done = cli("evaluate", "--run", run, "--data", external_data)
    one_line_error(done, EXIT_DATA, "all 24 external images are development images of run")
    assert not (run / "external").exists()


def test_unknown_external_classes_are_named(tiny_runs, external_data, tmp_path, cli):
    data = tmp_path / "data"
    shutil.copytree(external_data, data)
    text = (data / "manifest.csv").read_text().replace(",LM,", ",Schwannoma,", 2)
    (data / "manifest.csv").write_text(text)
    done = cli("evaluate", "--run", _run(tiny_runs, tmp_path), "--data", data)
    one_line_error(done, EXIT_DATA, "unknown label(s) 'Schwannoma'")


def test_unfinished_run_or_bad_weights_are_refused(tiny_runs, external_data, tmp_path, cli):
    run = _run(tiny_runs, tmp_path)
    weights = run / "resnet34" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    done = cli("evaluate", "--run", run, "--data", external_data)
    one_line_error(done, EXIT_MODEL, "does not match the")
    assert "in report.json; refusing to use these weights" in done.stderr
    (run / "report.json").unlink()
    done = cli("evaluate", "--run", run, "--data", external_data)
    one_line_error(done, EXIT_MODEL, "is not complete (no report.json yet)")


def test_summary_lines_name_an_interval_that_is_not_estimable():
    """Two external images (one per class) give an AUC without an interval: the terminal
    summary says so instead of failing on the missing bounds."""
    from gistnet.serving.external import summary_lines
    rows = [{"metric": "roc_auc",
             "development": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9},
             "external": {"value": 0.0, "ci_low": None, "ci_high": None, "note": "two images"}}]
    rep = {"models": {"resnet34": {"scoring": "single model", "side_by_side": {"rows": rows}}},
           "external": {"overlap": {"status": "0 of 2 images are development images"}}}
    assert summary_lines(rep) == [
        "resnet34 (single model): ROC AUC development 0.800 (0.700 to 0.900), "
        "external 0.000 [interval n/a (two images)]",
        "overlap with the development data: 0 of 2 images are development images"]
