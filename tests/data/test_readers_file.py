"""The readers file: parsed into a fully crossed table, every bad input one clear error."""

from __future__ import annotations

import numpy as np
import pytest

from gistnet.data.readers import read_readers
from gistnet.errors import DataError

HEADER = "case,reader,modality,rating,call,truth\n"


def crossed(readers=("r1", "r2"), modalities=("unaided", "aided"), cases=("a", "b", "c")) -> str:
    lines = [HEADER.strip()]
    for m in modalities:
        for r in readers:
            for n, c in enumerate(cases):
                lines.append(f"{c},{r},{m},{n + 1},{'GIST' if n else 'LM'},{'GIST' if n else 'LM'}")
    return "\n".join(lines) + "\n"


def test_crossed_table_in_order_of_appearance():
    table = read_readers(crossed(), "readers.csv")
    assert table.modalities == ("unaided", "aided") and table.readers == ("r1", "r2")
    assert table.cases == ("a", "b", "c")
    ratings = table.ratings()
    assert ratings.shape == (2, 2, 3)
    np.testing.assert_array_equal(ratings[1, 0], [1, 2, 3])
    assert table.calls()[0, 1, 0] == "LM" and table.per_case("truth") == {"a": "LM", "b": "GIST", "c": "GIST"}


def test_modality_defaults_to_one():
    text = "case,reader,rating\na,r1,1\nb,r1,2\n"
    table = read_readers(text, "f.csv")
    assert table.modalities == ("unaided",) and not table.has_calls


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty"),
    ("reader,rating\nr1,3\n", "no 'case'"),
    ("case,reader,modality\na,r1,x\n", "neither a 'rating' nor a 'call'"),
    ("case,reader,rating,colour\na,r1,3,red\n", "unknown column 'colour'"),
    ("case,reader,rating\n", "no rows"),
    ("case,reader,rating\na,r1,high\n", "line 2: rating 'high' is not a number"),
    ("case,reader,rating\na,r1,nan\n", "is not a number"),
    ("case,reader,rating\na,r1,3\na,r1,4\n", "line 3: reader 'r1' rated case 'a' in modality 'unaided' already on line 2"),
    ("case,reader,rating\na,r1,3,9\n", "4 fields, the header names 3"),
    ("case,reader,rating,truth\na,r1,3,GIST\na,r2,3,LM\n", "case 'a' has truth 'LM', line 2 gives 'GIST'"),
])
def test_bad_files_name_the_problem(text, fragment):
    with pytest.raises(DataError, match=None) as info:
        read_readers(text, "readers.csv")
    assert fragment in str(info.value) and "readers.csv" in str(info.value)


def test_missing_cell_names_reader_case_and_modality_with_a_count():
    text = crossed().replace("c,r2,aided,3,GIST,GIST\n", "")
    with pytest.raises(DataError) as info:
        read_readers(text, "readers.csv")
    message = str(info.value)
    assert "1 of 12 cells missing" in message and "reader 'r2', case 'c', modality 'aided'" in message
    assert "fully crossed" in message
