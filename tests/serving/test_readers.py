"""``gistnet readers``: the reader study end to end, each number recomputed here independently."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from gistnet import config, errors
from gistnet.data import synth, synth_readers
from gistnet.data.storage import LocalStore
from gistnet.errors import ConfigError, DataError
from gistnet.serving import readers as readers_mod
from tests.conftest import one_line_error, run_cli

CFG = config.load_config(None, {}, environ={})


def analyse(readers, output, **kw):
    """In process, as the CLI calls it (the CLI's own output is tested once, below)."""
    return readers_mod.run(readers_mod.Request(readers=str(readers), output=str(output) if output else None, **kw), CFG)


def write_readers(path, cases, truth, n_readers=3, patients=None, seed=0):
    path.write_text(synth_readers.simulate(cases, truth, "GIST", n_readers, seed, patients))
    return path


def table(path):
    """(modality, reader) -> {case: (rating, call)} and case -> truth, read with the csv module."""
    cells, truth = defaultdict(dict), {}
    with open(path) as f:
        for row in csv.DictReader(f):
            cells[(row["modality"], row["reader"])][row["case"]] = (float(row["rating"]), row["call"])
            truth[row["case"]] = row["truth"]
    return cells, truth


def subset(rows, path, keep):
    """The rows ``keep`` accepts, written as a readers file at ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=rows[0].keys())
        writer.writeheader()
        writer.writerows(r for r in rows if keep(r))
    return path


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers-alone")
    cases = [f"GIST/g{i}.png" for i in range(18)] + [f"LM/l{i}.png" for i in range(22)]
    truth = ["GIST"] * 18 + ["LM"] * 22
    return write_readers(root / "readers.csv", cases, truth, n_readers=4)


def test_readers_alone_every_number_recomputed(study_file, tmp_path):
    analyse(study_file, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "readers.json").read_text())
    cells, truth = table(study_file)
    y = {c: int(t == "GIST") for c, t in truth.items()}
    aucs = {}
    for row in doc["per_reader"]:
        ratings = cells[(row["modality"], row["reader"])]
        cases = sorted(ratings)
        aucs[(row["modality"], row["reader"])] = expected = roc_auc_score([y[c] for c in cases],
                                                                           [ratings[c][0] for c in cases])
        assert row["auc"]["value"] == pytest.approx(expected)
        positives = [c for c in cases if y[c]]
        assert row["sensitivity"]["value"] == pytest.approx(np.mean([ratings[c][1] == "GIST" for c in positives]))
    unaided = [aucs[("unaided", r)] for r in doc["design"]["readers"]]
    aided = [aucs[("aided", r)] for r in doc["design"]["readers"]]
    rrrc, rrfc = doc["or"]["rrrc"], doc["or"]["rrfc"]
    assert rrrc["difference"] == pytest.approx(np.mean(unaided) - np.mean(aided))
    # Random readers, fixed cases with two modalities is the paired t-test on the reader AUCs.
    assert rrfc["p"] == pytest.approx(stats.ttest_rel(unaided, aided).pvalue)
    assert rrrc["ci_low"] < rrrc["difference"] < rrrc["ci_high"] and rrrc["ddf"] > 0
    md = (tmp_path / "out" / "readers.md").read_text()
    assert "Random readers, random cases" in md and "unaided - aided" in md
    page = (tmp_path / "out" / "readers.html").read_text()
    assert "<script" not in page and "data:image/png;base64," in page
    assert "unaided - aided" in readers_mod.summary_lines(doc)[0]


def test_one_reader_and_one_modality_say_what_is_missing(study_file, tmp_path):
    rows = list(csv.DictReader(open(study_file)))
    analyse(subset(rows, tmp_path / "one-reader.csv", lambda r: r["reader"] == "reader-1"), tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "readers.json").read_text())
    assert doc["or"]["rrrc"]["statistic"] is None and "one reader" in doc["or"]["note"]
    assert doc["or"]["frrc"]["statistic"] is not None
    analyse(subset(rows, tmp_path / "one-modality.csv", lambda r: r["modality"] == "aided"), tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "readers.json").read_text())
    assert doc["or"]["rrrc"]["statistic"] is None and "one modality" in doc["or"]["note"]
    assert len(doc["or"]["rrrc"]["modalities"]) == 1


def test_bad_input_names_the_problem(study_file, tmp_path):
    text = study_file.read_text().splitlines()
    gap = tmp_path / "gap.csv"
    gap.write_text("\n".join(text[:-1]) + "\n")
    with pytest.raises(DataError, match="1 of .* cells missing"):
        analyse(gap, tmp_path / "o")
    no_truth = tmp_path / "no-truth.csv"
    no_truth.write_text("case,reader,rating\na,r1,1\nb,r1,2\n")
    with pytest.raises(DataError, match="needs a 'truth'"):
        analyse(no_truth, tmp_path / "o")
    with pytest.raises(ConfigError, match="--run and --data go together"):
        analyse(study_file, None, run=str(tmp_path))
    with pytest.raises(ConfigError, match="--output is required without --run"):
        analyse(study_file, None)
    with pytest.raises(DataError, match="not found"):
        analyse(tmp_path / "none.csv", tmp_path / "o")
    bad_call = tmp_path / "bad-call.csv"
    bad_call.write_text(study_file.read_text().replace(",GIST,GIST\n", ",schwannoma,GIST\n", 1))
    with pytest.raises(DataError, match="call 'schwannoma' is not a class"):
        analyse(bad_call, tmp_path / "o")


@pytest.mark.e2e
def test_cli_prints_the_summary_and_one_line_errors(study_file, tmp_path):
    done = run_cli("readers", "--readers", study_file, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "unaided - aided" in done.stderr and done.stdout.strip().endswith("readers.json")
    text = study_file.read_text().splitlines()
    gap = tmp_path / "gap.csv"
    gap.write_text("\n".join(text[:-1]) + "\n")
    one_line_error(run_cli("readers", "--readers", gap, "--output", tmp_path / "o"), 4, "cells missing")


@pytest.mark.e2e
def test_model_against_readers_on_external_cases(tiny_runs, tiny_data, tmp_path):
    data = tmp_path / "external"
    summary = synth.write_dataset(LocalStore(data), 10, 10, 32, seed=5)
    shutil.copyfile(tiny_data / "GIST" / "gist_0000.png", data / "GIST" / "development_copy.png")
    cases = [r["key"] for r in summary["images"]] + ["GIST/development_copy.png"]
    truth = [k.split("/")[0] for k in cases]
    readers = write_readers(tmp_path / "readers.csv", cases, truth, n_readers=3)
    out = tmp_path / "study"
    done = run_cli("readers", "--readers", readers, "--run", tiny_runs / "a", "--data", data, "--output", out)
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "readers.json").read_text())
    assert doc["excluded"]["development_cases"] == 1 and doc["design"]["cases"] == 20
    predictions = [r for r in csv.DictReader(open(out / "model-evaluation" / "predictions.csv"))
                   if r["in_development"] == "no"]
    y = np.array([int(r["label"] == "GIST") for r in predictions])
    score = {r["key"]: float(r["score"]) for r in predictions}
    model_auc = roc_auc_score(y, [score[r["key"]] for r in predictions])
    assert doc["model"]["auc"]["value"] == pytest.approx(model_auc)
    cells, _ = table(readers)
    kept = [r["key"] for r in predictions]
    truth_of = {r["key"]: int(r["label"] == "GIST") for r in predictions}
    for modality in ("unaided", "aided"):
        part = doc["model"]["by_modality"][modality]
        reader_aucs = [roc_auc_score([truth_of[c] for c in kept], [cells[(modality, r)][c][0] for c in kept])
                       for r in doc["design"]["readers"]]
        assert part["auc"]["difference"] == pytest.approx(model_auc - np.mean(reader_aucs))
        at_half = next(p for p in part["operating_points"] if p["threshold_name"].startswith("0.5"))
        for row in at_half["versus_readers"]:
            positives = [c for c in kept if truth_of[c]]
            model_sens = np.mean([score[c] >= 0 for c in positives])
            reader_sens = np.mean([cells[(modality, row["reader"])][c][1] == "GIST" for c in positives])
            assert row["sensitivity"]["difference"] == pytest.approx(model_sens - reader_sens)
        matched = next(p for p in part["operating_points"] if "matched" in p["threshold_name"])
        assert matched["specificity"]["value"] >= part["readers_mean_specificity"] - 1e-12
    assert (out / "readers_roc.png").stat().st_size > 0

    unknown = tmp_path / "unknown.csv"
    unknown.write_text(readers.read_text().replace("LM/lm_0003.png", "LM/not_there.png"))
    one_line_error(run_cli("readers", "--readers", unknown, "--run", tiny_runs / "a", "--data", data, "--output",
                           tmp_path / "u"), errors.EXIT_DATA, "1 of 21 cases are not images of --data")
    wrong = tmp_path / "wrong-truth.csv"
    lines = readers.read_text().splitlines()
    flipped = [ln.rsplit(",", 1)[0] + ",LM" if ln.startswith("GIST/gist_0001.png,") else ln for ln in lines]
    wrong.write_text("\n".join(flipped) + "\n")
    one_line_error(run_cli("readers", "--readers", wrong, "--run", tiny_runs / "a", "--data", data, "--output",
                           tmp_path / "w"), errors.EXIT_DATA, "case 'GIST/gist_0001.png' has truth 'LM'")
