import pytest

from gistnet.data.manifest import ManifestRow, read_manifest
from gistnet.errors import DataError


def test_header_names_the_columns():
    rows = read_manifest("path,label,site,sex,patient_id\na.png,GIST,H1,F,P1\nb.png,LM,,,\n", "m.csv")
    assert rows[0] == ManifestRow("a.png", "GIST", "P1", "H1", covariates={"sex": "F"})
    assert rows[1] == ManifestRow("b.png", "LM", None, None, covariates={"sex": ""})


def test_headerless_positional_form_still_works():
    assert read_manifest("a.png,GIST,P1\nb.png,LM\n\n", "m.csv") == [ManifestRow("a.png", "GIST", "P1"),
                                                                   ManifestRow("b.png", "LM")]


def test_ragged_row_names_the_line():
    with pytest.raises(DataError, match="m.csv line 3: 2 values for the header's 3 columns"):
        read_manifest("path,label,site\na.png,GIST,H1\nb.png,LM\n", "m.csv")
