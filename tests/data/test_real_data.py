"""A mixed archive (DICOM of every kind and screenshot PNGs, fake patients burned in and in the
headers) trains, predicts and is evaluated on a second archive on CPU, and no output holds a header
value or an object key; an error that stops evaluate names a key by its pseudonym only."""

import base64
import binascii
import csv
import hashlib
import io
import json
import re
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.e2e


def _png_text(data: bytes) -> bytes:
    """The text chunks of a PNG (tEXt, zTXt, iTXt), decompressed: image metadata."""
    out, pos = b"", 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt":
            out += body
        elif kind in (b"zTXt", b"iTXt"):
            out += body
            _, _, rest = body.partition(b"\0")
            for start in (1, 3):
                try:
                    out += zlib.decompress(rest[start:].split(b"\0", 2)[-1] if kind == b"iTXt" else rest[1:])
                    break
                except zlib.error:
                    pass
        pos += 12 + length
    return out


def _readable(data: bytes) -> bytes:
    """The bytes as stored, plus every base64 run decoded (figures inside report.html) and the
    text chunks of every PNG found either way."""
    views = [data]
    for run in re.findall(rb"[A-Za-z0-9+/]{32,}={0,2}", data):
        try:
            views.append(base64.b64decode(run, validate=True))
        except (binascii.Error, ValueError):
            pass
    return b"\n".join(views + [_png_text(v) for v in views if v.startswith(b"\x89PNG")])


def _leaks(root: Path, secrets: list[str], extra: str = "") -> list[str]:
    found = []
    for path in [p for p in root.rglob("*") if p.is_file() and "private" not in p.relative_to(root).parts]:
        seen = _readable(path.read_bytes())
        found += [f"{path.relative_to(root)}: {s}" for s in secrets if s.encode() in seen]
    return found + [f"log: {s}" for s in secrets if s in extra]


def _synth(cli, data: Path, seed: int, n: int) -> list[str]:
    """A mixed archive, and its secrets (``_secrets``)."""
    made = cli("synth", "--format", "dicom", "--output", data, "--n-gist", n, "--n-lm", n, "--image-size", 64,
               "--seed", seed)
    assert made.returncode == 0, made.stderr
    return _secrets(data)


def _secrets(data: Path) -> list[str]:
    """The strings of a mixed archive that must never reach an output: every header value, the
    unkeyed hashes of its patient ids, and the object keys' names (data.pseudonymize_keys)."""
    summary = json.loads((data / "synth.json").read_text())
    kinds = {r["kind"] for r in summary["images"]}
    assert kinds == {"dicom-mono", "dicom-jpeg-ybr422", "dicom-multiframe-rgb", "png-screenshot"}
    header_values = summary["header_values"]
    patient_ids = [v for v in header_values if v.startswith("MRN")]
    secrets = header_values + [hashlib.sha256(p.encode()).hexdigest()[:16] for p in patient_ids] + \
        [Path(r["key"]).stem for r in summary["images"]]  # object keys: data.pseudonymize_keys
    assert _leaks(data, secrets)  # the scan finds what is there (the data's own synth.json)
    return secrets


@pytest.fixture
def archive_run(dicom_run, tmp_path):
    """The session's DICOM run (``dicom_run`` in tests/conftest.py: a mixed archive of 12 + 12, one
    run with data.pseudonymize_keys and a random pseudonym key), as this module reads it: ``run``
    the shared run itself (read-only), ``copy`` a writable copy of it (evaluate writes under
    ``<run>/external/``), ``tmp`` this test's folder."""
    from tests.conftest import copy_tree

    return SimpleNamespace(tmp=tmp_path, data=dicom_run.data, run=dicom_run.run, env=dicom_run.env,
                           secrets=_secrets(dicom_run.data), logs=dicom_run.logs,
                           summary=json.loads((dicom_run.data / "synth.json").read_text()),
                           copy=lambda: copy_tree(dicom_run.run, tmp_path / "r"))


def test_mixed_archive_trains_and_predicts_and_no_patient_data_leaves(cli, archive_run):
    data, run, secrets, env = archive_run.data, archive_run.run, archive_run.secrets, archive_run.env
    scored, summary = archive_run.tmp / "scored", archive_run.summary
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "complete" and sum(report["dataset"]["images"].values()) == 24
    assert (run / "augmentation_examples.png").exists() and (run / "gradcam-resnet34.png").exists()
    predicted = cli("predict", "--run", run, "--data", data, "--output", scored, env=env)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO((scored / "predictions.csv").read_text())))
    assert len(rows) == 24 and all(r["key"].startswith("k-") and r["patient_id"].startswith("p-") for r in rows)

    logs = f"{archive_run.logs}\n{predicted.stderr}\n{predicted.stdout}"
    assert _leaks(run, secrets, logs) == [] and _leaks(scored, secrets) == []
    # the mapping and the random key are kept, under private/ only
    mapping = json.loads((run / "private" / "keys.json").read_text())
    # (synth.json at the data root is logged as ignored, by its pseudonym too: a root file's name may be an MRN)
    assert sorted(mapping.values()) == sorted([r["key"] for r in summary["images"]] + ["synth.json"])
    assert (run / "private" / "pseudonym.key").exists()
    run_ids = {r["key"]: r["patient_id"] for r in csv.DictReader(io.StringIO((run / "predictions.csv").read_text()))}
    assert all(run_ids[k] == next(r["patient_id"] for r in rows if r["key"] == k) for k in run_ids)  # same key


def test_evaluate_on_a_second_archive_leaks_no_patient_data(cli, archive_run):
    external = archive_run.tmp / "site-b"
    secrets = archive_run.secrets + _synth(cli, external, 1, 6)
    run = archive_run.copy()
    done = cli("evaluate", "--run", run, "--data", external, env=archive_run.env)
    assert done.returncode == 0, done.stderr
    out = run / "external" / "site-b"
    report = json.loads((out / "report.json").read_text())
    assert report["external"]["counts"]["evaluated"] == 12 and report["external"]["overlap"]["count"] == 0
    rows = list(csv.DictReader(io.StringIO((out / "predictions.csv").read_text())))
    assert len(rows) == 12 and all(r["key"].startswith("k-") and r["patient_id"].startswith("p-") for r in rows)
    assert {"report.md", "report.html"} <= {p.name for p in out.iterdir()}
    assert _leaks(out, secrets, f"{done.stderr}\n{done.stdout}") == []
    mapping = json.loads((out / "private" / "keys.json").read_text())  # the evaluation's mapping, under private/
    assert sorted(mapping.values()) == sorted(
        [r["key"] for r in json.loads((external / "synth.json").read_text())["images"]] + ["synth.json"])


def test_evaluate_stopped_by_a_bad_file_in_an_mrn_folder_names_its_pseudonym(cli, archive_run):
    from gistnet.data.storage import LocalStore

    from tests.data.test_key_privacy import HINT, MRN, _images

    bad_set = archive_run.tmp / "bad-set"
    bad = _images(LocalStore(bad_set), "roi")
    run = archive_run.copy()
    done = cli("evaluate", "--run", run, "--data", bad_set, env=archive_run.env)
    assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr
    assert "is not inside the 80x60 image" in done.stderr and HINT in done.stderr
    assert MRN not in done.stdout + done.stderr
    out = run / "external" / "bad-set"
    assert not (out / "report.json").exists()
    mapping = json.loads((out / "private" / "keys.json").read_text())
    assert next(k for k, v in mapping.items() if v == bad) in done.stderr
