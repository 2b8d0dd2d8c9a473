"""manifest.csv with a header row naming its columns, and the old positional form."""

import re

import pytest
import torch
from gistnet.config import DataConfig
from gistnet.data import dataset
from gistnet.data.manifest import ManifestRow, read_manifest
from gistnet.data.storage import LocalStore
from gistnet.errors import EXIT_DATA, DataError

from tests.data.test_dataset import gray, png


def test_header_names_every_column_in_any_order_and_the_rest_are_covariates():
    text = "label,roi,path,site,frame,patient_id,age,probe\nGIST,1 2 30 40,a.dcm,north,2,MRN7,63,radial\n"
    assert read_manifest(text, "m.csv") == [ManifestRow(
        path="a.dcm", label="GIST", patient_id="MRN7", site="north", frame=2, roi=(1, 2, 30, 40),
        covariates={"age": "63", "probe": "radial"})]


def test_positional_form_without_a_header_still_works():
    rows = read_manifest("a.png,GIST,p1\nb.png,LM\n\n", "m.csv")
    assert rows == [ManifestRow("a.png", "GIST", "p1"), ManifestRow("b.png", "LM")]
    assert read_manifest("path,label\nc.png,LM\n", "m.csv") == [ManifestRow("c.png", "LM")]


def test_two_frames_of_one_file_with_one_label_are_two_images():
    rows = read_manifest("path,label,frame\ncine.dcm,GIST,0\ncine.dcm,GIST,3\n", "m.csv")
    assert [(r.path, r.frame) for r in rows] == [("cine.dcm", 0), ("cine.dcm", 3)]


@pytest.mark.parametrize("text, message", [
    ("path,label,roi\na.png,GIST,1 2 3\n", "roi '1 2 3' is not 'x0 y0 x1 y1'"),
    ("path,label,roi\na.png,GIST,5 5 5 9\n", "roi '5 5 5 9' is empty or negative"),
    ("path,label,frame\na.dcm,GIST,-1\n", "frame '-1' is not a frame number"),
    ("path,label,site\na.png,GIST\n", "m.csv line 2: 2 fields, the header names 3"),
    ("path,label,site,site\na.png,GIST,x,y\n", "names column 'site' twice"),
    ("a.png\n", "m.csv line 1: expected path,label[,patient_id]"),
    ("path,diagnosis\na.png,GIST\n", "m.csv: the header names no 'label' column (it names: path, diagnosis)"),
    ("\ufeffpath,diagnosis\na.png,GIST\n", "the header names no 'label' column (it names: path, diagnosis)"),
    ("path,label\na.png,GIST\nb.png,LM\na.png,GIST\n", "m.csv line 4: lists the same path as line 2"),
    ("path,label\na.png,GIST\na.png,LM\n", "m.csv line 3: lists the same path as line 2"),
    ("path,label,frame\na.dcm,GIST,0\na.dcm,LM,1\n", "m.csv line 3: labels a path 'LM' that line 2 labels 'GIST'"),
    ("a.png,GIST\na.png,LM\n", "m.csv line 2: lists the same path as line 1"),
])
def test_bad_manifests_are_data_errors_naming_the_line(text, message):
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_manifest(text, "m.csv")
    assert info.value.exit_code == EXIT_DATA


def test_loader_carries_site_covariates_frame_and_roi(tmp_path):
    store = LocalStore(tmp_path)
    for i in range(4):
        store.write_bytes(f"img/{i}.png", png(gray(i, 64)))
    store.write_bytes("manifest.csv", b"path,label,site,roi,bmi\n" + b"".join(
        f"img/{i}.png,{'GIST' if i % 2 else 'LM'},s{i % 2},0 0 40 40,2{i}\n".encode() for i in range(4)))
    labeled, _ = dataset.list_labeled(store, DataConfig())
    assert [(x.site, x.roi, x.covariates, x.frame) for x in labeled][1] == ("s1", (0, 0, 40, 40), {"bmi": "21"}, None)
    loaded = dataset.load_images(store, DataConfig(image_size=32, min_images_per_class=2), torch.device("cpu"))
    assert len(loaded.images.keys) == 4
