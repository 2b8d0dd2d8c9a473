"""An output inside the data, or data inside an output, is refused before anything is written."""

import pytest
from gistnet.data.overlap import check_apart, inside
from gistnet.errors import EXIT_CONFIG, ConfigError, StorageError


def test_inside_compares_whole_segments(tmp_path):
    assert inside(str(tmp_path / "d" / "out"), str(tmp_path / "d"))
    assert inside(str(tmp_path / "d" / ".." / "d" / "x"), str(tmp_path / "d"))
    assert not inside(str(tmp_path / "data2"), str(tmp_path / "data"))
    assert inside("s3://b/data/out", "s3://b/data/") and inside("s3://b/data", "s3://b/data")
    assert not inside("s3://b/data2", "s3://b/data") and not inside("s3://c/data/x", "s3://b/data")
    assert not inside(str(tmp_path / "b" / "data"), "s3://b/data")


def test_s3_prefixes_are_compared_as_the_store_writes_them():
    # S3Store drops '.' and empty segments of a prefix (storage.safe_key): s3://bkt/./eus is s3://bkt/eus
    assert inside("s3://bkt/eus/runs", "s3://bkt/./eus") and inside("s3://bkt/./eus/runs", "s3://bkt/eus")
    assert inside("s3://bkt/eus//./runs/", "s3://bkt/eus") and not inside("s3://bkt/./eus2", "s3://bkt/eus")
    with pytest.raises(StorageError, match=r"contains '\.\.'"):  # refused, as opening such a store is
        inside("s3://bkt/eus/../data", "s3://bkt/eus")


@pytest.mark.parametrize("data, output, message", [
    ("s3://b/d", "s3://b/d/out", "output.uri s3://b/d/out is inside data.uri s3://b/d"),
    ("s3://b/runs/d", "s3://b/runs", "data.uri s3://b/runs/d is inside output.uri s3://b/runs"),
    ("s3://bkt/./eus", "s3://bkt/eus/runs", "output.uri s3://bkt/eus/runs is inside data.uri s3://bkt/./eus"),
])
def test_check_apart_names_both(data, output, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_apart(data, output)
    assert info.value.exit_code == EXIT_CONFIG
    check_apart("s3://b/d", "s3://b/out")


@pytest.mark.e2e
def test_train_and_predict_refuse_an_output_inside_the_data_before_writing(cli, tiny_data, tiny_runs, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    done = cli("train", "--data", data, "--output", data / "out", "--epochs", 1, "--image-size", 32)
    assert done.returncode == 3, done.stderr
    assert f"output.uri {data / 'out'} is inside data.uri {data}" in done.stderr and "Traceback" not in done.stderr
    done = cli("predict", "--run", tiny_runs / "a", "--data", data, "--output", data / "scored")
    assert done.returncode == 3, done.stderr
    assert f"--output {data / 'scored'} is inside --data {data}" in done.stderr
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written
