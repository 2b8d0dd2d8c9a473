"""data.pseudonymize_keys also covers what a failing run says: an error that stops it, a skip
reason and a log line name an object key by its pseudonym (and where the mapping is kept), never
the raw key, which may carry an MRN folder. With the option off the messages are today's."""

import json
import os

import numpy as np
import pytest
import torch
from gistnet.config import DataConfig
from gistnet.data import dataset, privacy
from gistnet.data.storage import LocalStore
from gistnet.errors import EXIT_DATA, DataError

from tests.conftest import one_line_error
from tests.data.test_dataset import png
from tests.data.test_dicom import make_dicom

MRN = "MRN0012345"
HINT = "a pseudonym: data.pseudonymize_keys; its object key is in"


def _images(store: LocalStore, bad: str) -> str:
    """Six images under an MRN folder and a manifest; ``bad`` breaks one of them. Returns its key."""
    rng = np.random.default_rng(0)
    rows, bad_key = ["path,label,frame,roi"], ""
    for i in range(6):
        key = f"{MRN}/2019-03-0{i}/img{i}" + (".dcm" if i == 3 and bad == "frame" else ".png")
        pixels = (rng.random((60, 80)) * 200 + 20).astype(np.uint8)
        data = make_dicom(np.stack([pixels, pixels])) if key.endswith(".dcm") else png(pixels)
        store.write_bytes(key, data)
        frame = "5" if i == 3 and bad == "frame" else ""
        roi = "0 0 90 40" if i == 3 and bad == "roi" else ""
        label = "GIST" if i % 2 else "LM"
        if i == 3 and bad == "both classes":  # the bytes of image 2 (LM), labelled GIST
            store.write_bytes(key, store.read(rows[3].split(",")[0]))
        rows.append(f"{key},{label},{frame},{roi}")
        bad_key = key if i == 3 else bad_key
    store.write_bytes("manifest.csv", ("\n".join(rows) + "\n").encode())
    return bad_key


CASES = {"roi": "the manifest roi region 0 0 90 40 is not inside the 80x60 image",
         "frame": "frame 5 is out of range",
         "both classes": "the same image is labeled both classes"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stopping_error_names_the_pseudonym_not_the_key(tmp_path, case):
    store, out = LocalStore(tmp_path / "data"), LocalStore(tmp_path / "run")
    bad = _images(store, case)
    cfg = DataConfig(image_size=32, min_images_per_class=2, pseudonymize_keys=True)
    pseudo = privacy.for_run(out, True, environ={})
    with pytest.raises(DataError) as info, privacy.kept_on_failure(pseudo, out):
        dataset.load_images(store, cfg, torch.device("cpu"), pseudo=pseudo, mapping=out)
    message = str(info.value)
    assert info.value.exit_code == EXIT_DATA and CASES[case] in message
    assert MRN not in message and bad not in message
    assert pseudo.key(bad) in message and out.uri_of(privacy.KEYS_FILE) in message, message
    assert json.loads(out.read(privacy.KEYS_FILE))[pseudo.key(bad)] == bad  # the mapping, kept under private/
    # data.pseudonymize_keys off: today's message, naming the object's URI, and nothing written
    plain, off = LocalStore(tmp_path / "plain"), privacy.for_run(LocalStore(tmp_path / "run2"), False, environ={})
    with pytest.raises(DataError) as info, privacy.kept_on_failure(off, LocalStore(tmp_path / "run2")):
        dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"),
                            pseudo=off, mapping=plain)
    assert store.uri_of(bad) in str(info.value) and HINT not in str(info.value)
    assert not (tmp_path / "run2").exists()


def test_skip_reasons_and_log_lines_name_pseudonyms(tmp_path, caplog):
    store = LocalStore(tmp_path / "data")
    rng = np.random.default_rng(1)
    for label in ("GIST", "LM"):
        for i in range(3):
            store.write_bytes(f"{label}/{MRN}/{i}.png", png((rng.random((40, 40)) * 255).astype(np.uint8)))
    store.write_bytes(f"{MRN}-at-the-root.png", png(np.zeros((40, 40), np.uint8)))
    pseudo = privacy.Pseudonymizer(b"k" * 32, True, pseudonymize_keys=True)
    caplog.set_level("INFO")
    cfg = DataConfig(image_size=32, min_images_per_class=2, pseudonymize_keys=True)
    loaded = dataset.load_images(store, cfg, torch.device("cpu"), pseudo=pseudo)
    assert "ignoring" in caplog.text and pseudo.key(f"{MRN}-at-the-root.png") in caplog.text
    # a manifest row whose object is missing: the read error quotes its path
    store.write_bytes("manifest.csv", "".join(f"{label}/{MRN}/{i}.png,{label}\n" for label in ("GIST", "LM")
                                              for i in range(3)).encode() + f"LM/{MRN}/gone.png,LM\n".encode())
    caplog.clear()
    loaded = dataset.load_images(store, cfg, torch.device("cpu"), pseudo=pseudo)
    skipped = json.dumps(loaded.skipped)
    assert "could not be read: FileNotFoundError" in skipped and "skipped" in caplog.text
    assert MRN not in skipped and MRN not in caplog.text and MRN not in " ".join(loaded.images.keys)
    assert pseudo.key(f"LM/{MRN}/gone.png") in skipped


def test_an_mrn_class_folder_is_not_named(tmp_path):
    store = LocalStore(tmp_path / "data")
    for key in ("GIST/a.png", "LM/b.png", f"{MRN}/c.png"):
        store.write_bytes(key, png(np.full((40, 40), len(key), np.uint8)))
    pseudo = privacy.Pseudonymizer(b"k" * 32, True, pseudonymize_keys=True)
    with pytest.raises(DataError, match="unknown class folder of .*k-") as info:
        dataset.list_labeled(store, DataConfig(pseudonymize_keys=True), pseudo)
    assert MRN not in str(info.value)
    with pytest.raises(DataError, match=f"unknown class folder '{MRN}'"):
        dataset.list_labeled(store, DataConfig())


@pytest.mark.e2e  # runs `gistnet train` as a subprocess
def test_train_stopped_by_a_bad_file_in_an_mrn_folder_never_prints_the_key(cli, tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    bad = _images(LocalStore(data), "frame")
    env = {**os.environ, "GISTNET_DATA_PSEUDONYMIZE_KEYS": "true"}
    env.pop("GISTNET_PSEUDONYM_KEY", None)
    done = cli("train", "--data", data, "--output", runs, "--run-id", "r", "--image-size", 32, "--device", "cpu",
               env=env)
    one_line_error(done, EXIT_DATA, "frame 5 is out of range")
    assert "(a pseudonym: data.pseudonymize_keys; its object key is in " in done.stderr
    assert str(runs / "r" / "private" / "keys.json") in done.stderr
    assert MRN not in done.stdout + done.stderr
    written = [p for p in runs.rglob("*") if p.is_file() and "private" not in p.relative_to(runs).parts]
    assert not any(MRN.encode() in p.read_bytes() for p in written), written
    mapping = json.loads((runs / "r" / "private" / "keys.json").read_text())
    named = next(k for k, v in mapping.items() if v == bad)
    assert named in done.stderr


def test_any_key_left_in_a_stopping_error_is_replaced_and_the_mapping_kept(tmp_path):
    """The belt under the targeted naming: e.g. a resumed run refused because an object changed
    content names the first such key, raw, deep in the lineage check."""
    out = LocalStore(tmp_path / "run")
    pseudo = privacy.Pseudonymizer(b"k" * 32, True, pseudonymize_keys=True)
    key = f"GIST/{MRN}/1.png"
    pseudo.watch([key, f"GIST/{MRN}/10.png"])
    with pytest.raises(DataError) as info, privacy.kept_on_failure(pseudo, out):
        raise DataError(f"1 object of the data changed content since run r started (first: {key}; ...)")
    assert str(info.value) == (f"1 object of the data changed content since run r started (first: {pseudo.key(key)}; "
                               f"...) (object keys shown as pseudonyms: data.pseudonymize_keys; the mapping is in "
                               f"{out.uri_of(privacy.KEYS_FILE)})")
    assert json.loads(out.read(privacy.KEYS_FILE)) == {pseudo.key(key): key}
    with pytest.raises(DataError, match="manifest.csv line 3"), privacy.kept_on_failure(pseudo, out):
        raise DataError("manifest.csv line 3: empty path")  # no key: left alone (listing watches image keys only)
