"""A mixed archive (DICOM of every kind and screenshot PNGs, fake patients burned in and in the
headers) trains and predicts on CPU, and no output holds a header value or an object key."""

import base64
import binascii
import csv
import hashlib
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

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


def test_mixed_archive_trains_and_predicts_and_no_patient_data_leaves(cli, tmp_path):
    data, runs, scored = tmp_path / "data", tmp_path / "runs", tmp_path / "scored"
    made = cli("synth", "--format", "dicom", "--output", data, "--n-gist", 12, "--n-lm", 12, "--image-size", 64)
    assert made.returncode == 0, made.stderr
    summary = json.loads((data / "synth.json").read_text())
    kinds = {r["kind"] for r in summary["images"]}
    assert kinds == {"dicom-mono", "dicom-jpeg-ybr422", "dicom-multiframe-rgb", "png-screenshot"}
    header_values = summary["header_values"]
    patient_ids = [v for v in header_values if v.startswith("MRN")]
    secrets = header_values + [hashlib.sha256(p.encode()).hexdigest()[:16] for p in patient_ids] + \
        [Path(r["key"]).stem for r in summary["images"]]  # object keys: data.pseudonymize_keys
    assert _leaks(data, secrets)  # the scan finds what is there (the data's own synth.json)

    env = {**os.environ, "GISTNET_DATA_PSEUDONYMIZE_KEYS": "true"}
    env.pop("GISTNET_PSEUDONYM_KEY", None)
    trained = cli("train", "--data", data, "--output", runs, "--run-id", "r", "--models", "resnet34", "--epochs", 1,
                  "--image-size", 32, "--batch-size", 8, env=env)
    assert trained.returncode == 0, trained.stderr
    run = runs / "r"
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "complete" and sum(report["dataset"]["images"].values()) == 24
    assert (run / "augmentation_examples.png").exists() and (run / "gradcam-resnet34.png").exists()
    predicted = cli("predict", "--run", run, "--data", data, "--output", scored, env=env)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO((scored / "predictions.csv").read_text())))
    assert len(rows) == 24 and all(r["key"].startswith("k-") and r["patient_id"].startswith("p-") for r in rows)

    logs = f"{trained.stderr}\n{trained.stdout}\n{predicted.stderr}\n{predicted.stdout}"
    assert _leaks(run, secrets, logs) == [] and _leaks(scored, secrets) == []
    # the mapping and the random key are kept, under private/ only
    mapping = json.loads((run / "private" / "keys.json").read_text())
    assert sorted(mapping.values()) == sorted(r["key"] for r in summary["images"])
    assert (run / "private" / "pseudonym.key").exists()
    run_ids = {r["key"]: r["patient_id"] for r in csv.DictReader(io.StringIO((run / "predictions.csv").read_text()))}
    assert all(run_ids[k] == next(r["patient_id"] for r in rows if r["key"] == k) for k in run_ids)  # same key
