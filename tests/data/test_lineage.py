"""Data lineage: the digest of the data as used, on local folders and S3, and the resume guard."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from gistnet.config import DataConfig, StorageConfig
from gistnet.data import dataset, lineage, synth
from gistnet.data.storage import LocalStore, open_store
from gistnet.errors import EXIT_DATA
from tests.conftest import one_line_error

CFG = DataConfig(image_size=32, min_images_per_class=3, download_threads=4)


def _independent_digest(root: Path, skipped: list[str]) -> str:
    """The documented digest of a class-folder data set computed straight from the files, without
    gistnet: each kept image's label is its folder's (GIST positive), with no patient, site or region."""
    h, uses = hashlib.sha256(), hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in skipped
                       and "/" in p.relative_to(root).as_posix()):
        data, key = path.read_bytes(), path.relative_to(root).as_posix()
        h.update(f"{key}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\n".encode())
        uses.update((json.dumps([key, int(key.startswith("GIST/")), "", "", None, None, {}]) + "\n").encode())
    h.update(b"skipped\n")
    for key in sorted(skipped):
        h.update(f"{key}\n".encode())
    h.update(f"uses\tsha256:{uses.hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    synth.write_dataset(LocalStore(root), 5, 5, 32, seed=3)
    (root / "GIST" / "broken.png").write_bytes(b"not an image")  # skipped: its key is in the digest
    return root


def _digest(store) -> str:
    return dataset.load_images(store, CFG, torch.device("cpu")).lineage.digest()


def test_digest_matches_an_independent_computation_and_skipped_keys_count(data_dir):
    got = _digest(LocalStore(data_dir))
    assert got == _independent_digest(data_dir, ["GIST/broken.png"])
    assert got != _independent_digest(data_dir, [])  # the skipped key is part of it
    (data_dir / "GIST" / "broken.png").unlink()
    assert _digest(LocalStore(data_dir)) == _independent_digest(data_dir, [])


def _with_manifest(root: Path, rows: list[tuple[str, str, str]]) -> None:
    (root / "manifest.csv").write_text("path,label,patient_id,site\n" + "".join(
        f"{path},{label},{patient},{'A' if n % 2 else 'B'}\n" for n, (path, label, patient) in enumerate(rows)))


def test_the_digest_covers_the_manifest_labels_patients_and_sites_not_their_order(data_dir):
    """Issue 31.7: the digest is of the data as used. Flipping two labels in manifest.csv (same
    image bytes) changes it; reordering the rows, or renaming the patients consistently (their
    pseudonyms), does not; regrouping the images by patient or moving one to another site does."""
    (data_dir / "GIST" / "broken.png").unlink()
    keys = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.png"))
    rows = [(k, k.split("/")[0], f"p{n // 2}") for n, k in enumerate(keys)]
    _with_manifest(data_dir, rows)
    first = _digest(LocalStore(data_dir))
    gist, lm = next(i for i, r in enumerate(rows) if r[1] == "GIST"), next(i for i, r in enumerate(rows) if r[1] == "LM")
    flipped = list(rows)
    flipped[gist], flipped[lm] = (rows[gist][0], "LM", rows[gist][2]), (rows[lm][0], "GIST", rows[lm][2])
    _with_manifest(data_dir, flipped)
    assert _digest(LocalStore(data_dir)) != first
    # the same rows in another order (the sites go with their rows)
    (data_dir / "manifest.csv").write_text("path,label,patient_id,site\n" + "".join(
        f"{p},{label},{pid},{'A' if n % 2 else 'B'}\n" for n, (p, label, pid) in reversed(list(enumerate(rows)))))
    assert _digest(LocalStore(data_dir)) == first
    (data_dir / "manifest.csv").write_text("path,label,patient_id,site\n" + "".join(
        f"{p},{label},renamed-{pid}x,{'A' if n % 2 else 'B'}\n" for n, (p, label, pid) in enumerate(rows)))
    assert _digest(LocalStore(data_dir)) == first  # only which images share a patient counts
    _with_manifest(data_dir, [(k, label, f"p{n // 3}") for n, (k, label, _) in enumerate(rows)])
    assert _digest(LocalStore(data_dir)) != first
    (data_dir / "manifest.csv").write_text("path,label,patient_id,site\n" + "".join(
        f"{p},{label},{pid},{'A' if (n % 2) != (n == 0) else 'B'}\n" for n, (p, label, pid) in enumerate(rows)))
    assert _digest(LocalStore(data_dir)) != first
    # and the resume guard's lineage.json keeps the uses' digest, never a patient id
    used = dataset.load_images(LocalStore(data_dir), CFG, torch.device("cpu")).lineage
    saved = used.to_dict()
    assert "p0" not in json.dumps(saved) and lineage.Lineage.from_dict(saved).digest() == used.digest()


def test_same_data_same_digest_on_local_and_s3_and_one_changed_image_changes_it(data_dir, bucket, s3_env, s3_client):
    for path in data_dir.rglob("*"):
        if path.is_file():
            s3_client.put_object(Bucket=bucket, Key=f"set/{path.relative_to(data_dir).as_posix()}",
                                 Body=path.read_bytes())
    local = _digest(LocalStore(data_dir))
    s3 = _digest(open_store(f"s3://{bucket}/set", StorageConfig(), 4))
    assert local == s3
    # one image re-encoded: same key, same pixels, other bytes
    from PIL import Image

    victim = sorted((data_dir / "LM").iterdir())[0]
    with Image.open(victim) as img:
        img.save(victim, format="PNG", compress_level=0)
    changed = _digest(LocalStore(data_dir))
    assert changed != local
    s3_client.put_object(Bucket=bucket, Key=f"set/LM/{victim.name}", Body=victim.read_bytes())
    assert _digest(open_store(f"s3://{bucket}/set", StorageConfig(), 4)) == changed


def test_settle_keeps_the_first_lineage_and_refuses_changed_content(tmp_path):
    out = LocalStore(tmp_path / "run")
    first = lineage.Lineage({"GIST/a.png": (10, "aa"), "LM/b.png": (11, "bb")}, [])
    assert lineage.settle(out, first, fresh=False) is first
    saved = json.loads((tmp_path / "run" / lineage.FILENAME).read_text())
    assert saved["digest"] == first.digest() and saved["objects"]["LM/b.png"] == {"size": 11, "sha256": "bb"}
    grown = lineage.Lineage({**first.objects, "LM/c.png": (12, "cc")}, [])  # an added image: ignored on resume
    assert lineage.settle(out, grown, fresh=False).digest() == first.digest()
    changed = lineage.Lineage({"GIST/a.png": (10, "xx"), "LM/b.png": (11, "yy")}, [])
    with pytest.raises(lineage.DataError, match="2 objects of the data changed content"):
        lineage.settle(out, changed, fresh=False)
    assert lineage.settle(out, changed, fresh=True) is changed  # --force starts over with the new data


@pytest.mark.e2e
def test_resume_on_changed_data_is_refused_naming_the_count(cli, tiny_runs, tmp_path):
    """A run started on some data, resumed after one image changed under the same key: exit 4,
    "1 object of the data changed content", before any training."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(_tiny_data_of(tiny_runs), data)
    run = tmp_path / "out" / "r1"
    run.mkdir(parents=True)
    for key in ("split.json", "lineage.json", "dataset.json"):
        shutil.copyfile(Path(tiny_runs) / "a" / key, run / key)  # run a, interrupted before its units finished
    victim = sorted((data / "GIST").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # same key, other content (PNG ignores trailing bytes)
    done = cli("train", "--data", data, "--output", tmp_path / "out", "--run-id", "r1", "--device", "cpu",
               "--image-size", 32, "--models", "resnet34", "--epochs", 1, "--augmentation", "none")
    one_line_error(done, EXIT_DATA, "1 object of the data changed content")
    assert f"first: GIST/{victim.name}" in done.stderr
    assert not (run / "report.json").exists() and not list(run.rglob("*.safetensors"))


@pytest.mark.e2e
def test_the_digest_is_in_dataset_json_the_report_and_the_model_card(tiny_runs):
    run = Path(tiny_runs) / "a"
    recorded = json.loads((run / lineage.FILENAME).read_text())
    expected = _independent_digest(_tiny_data_of(tiny_runs), [])
    assert recorded["digest"] == expected and len(recorded["objects"]) == 40
    assert json.loads((run / "dataset.json").read_text())["lineage"]["digest"] == expected
    report = json.loads((run / "report.json").read_text())
    assert report["dataset"]["lineage"] == {"name": _tiny_data_of(tiny_runs).name, "digest": expected,
                                            "source": str(_tiny_data_of(tiny_runs)), "method": lineage.METHOD,
                                            "images": 40, "skipped": 0}
    assert f"Data digest: `{expected}`" in (run / "resnet34" / "model_card.md").read_text()


def _tiny_data_of(runs: Path) -> Path:
    """The data folder a ``tiny_runs`` run was trained on (its saved config names it)."""
    import yaml

    return Path(yaml.safe_load((Path(runs) / "a" / "config.yaml").read_text())["data"]["uri"])
