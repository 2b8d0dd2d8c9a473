"""The command line as users run it: exit codes, one-line errors, the S3 round trip."""

import hashlib
import json
import logging
import re
import zlib
from pathlib import Path

import pytest
import yaml

from gistnet import errors
from gistnet.evidence import report
from tests.conftest import one_line_error

pytestmark = pytest.mark.e2e


def test_train_against_loopback_s3_end_to_end(cli, bucket, s3_client, s3_env):
    seeded = cli("synth", "--output", f"s3://{bucket}/data", "--n-gist", 20, "--n-lm", 20, "--image-size", 32,
                 env=s3_env)
    assert seeded.returncode == 0, seeded.stderr
    # no augmentation: the round trip is the point, and six augmented copies of each image would
    # only multiply ResNet-50's training time (the paper's augmentation: test_pipeline.py)
    flags = ("--epochs", 1, "--image-size", 32, "--batch-size", 16, "--augmentation", "none")
    done = cli("train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs", "--run-id", "e2e", *flags,
               env=s3_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"s3://{bucket}/runs/e2e/report.json"
    get = lambda key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
    rep = json.loads(get("runs/e2e/report.json"))
    report.validate(rep)
    assert rep["dataset"]["train"] == {"GIST": 16, "LM": 16} and rep["dataset"]["val"] == {"GIST": 4, "LM": 4}
    assert set(rep["models"]) == {"resnet34", "resnet50"}
    for name, m in rep["models"].items():
        key = m["checkpoint"]["uri"].removeprefix(f"s3://{bucket}/")
        body = get(key)
        assert hashlib.sha256(body).hexdigest() == m["checkpoint"]["sha256"]
        assert len(body) == m["checkpoint"]["bytes"]
    split = json.loads(get("runs/e2e/split.json"))
    assert len(split["train"]) == 32 and len(split["val"]) == 8
    assert yaml.safe_load(get("runs/e2e/config.yaml"))["train"]["epochs"] == 1
    again = cli("train", "--data", f"s3://{bucket}/data", "--output", f"s3://{bucket}/runs", "--run-id", "e2e", *flags,
                env=s3_env)
    assert again.returncode == 0 and "already complete" in again.stderr


_one_line_error = one_line_error


def test_config_errors(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    _one_line_error(cli("config", "--config", bad), errors.EXIT_CONFIG, "unknown key train.epochz")
    _one_line_error(cli("train", "--data", tmp_path, "--output", tmp_path, "--epochs", 0), errors.EXIT_CONFIG,
                    "train.epochs must be >= 1")
    _one_line_error(cli("train", "--data", tmp_path, "--output", tmp_path, "--epochs", -3), errors.EXIT_CONFIG,
                    "train.epochs must be >= 1, got -3")
    for size in (1, 0, -4):  # a batch of one trains nothing (BatchNorm): refused like a negative size
        _one_line_error(cli("train", "--data", tmp_path, "--output", tmp_path, "--batch-size", size),
                        errors.EXIT_CONFIG, f"train.batch_size must be >= 2, got {size}")
    env = {**__import__("os").environ, "GISTNET_STORAGE_CONNECT_TIMEOUT": "-5"}
    _one_line_error(cli("train", "--data", tmp_path, "--output", tmp_path, env=env), errors.EXIT_CONFIG,
                    "storage.connect_timeout must be > 0, got -5")
    _one_line_error(cli("train", "--data", tmp_path), errors.EXIT_CONFIG, "no output URI")


def test_config_command_prints_resolved_yaml(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 5\n")
    env = {**__import__("os").environ, "GISTNET_TRAIN_BATCH_SIZE": "4"}
    done = cli("config", "--config", cfg, "--seed", 3, env=env)
    resolved = yaml.safe_load(done.stdout)
    assert resolved["train"]["epochs"] == 5 and resolved["train"]["batch_size"] == 4 and resolved["train"]["seed"] == 3


def test_data_errors(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(cli("train", "--data", empty, "--output", tmp_path / "o", "--device", "cpu"),
                    errors.EXIT_DATA, "no objects found")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("report.json"))


def test_empty_bucket_is_a_data_error(cli, bucket, s3_env, tmp_path):
    """An empty bucket (and a prefix with nothing under it) is bad data, not a storage failure."""
    for data in (f"s3://{bucket}", f"s3://{bucket}/no/such/prefix"):
        _one_line_error(cli("train", "--data", data, "--output", tmp_path / "o", "--device", "cpu", env=s3_env),
                        errors.EXIT_DATA, f"no objects found under {data}")


def test_config_command_warns_about_unknown_environment_variables(cli):
    env = {**__import__("os").environ, "GISTNET_TRAIN_EPOCH": "5"}
    done = cli("config", env=env)
    assert done.returncode == 0, done.stderr
    assert "ignoring GISTNET_TRAIN_EPOCH: not a gistnet config key" in done.stderr


def test_train_help_shows_every_default_and_the_cpu_warning():
    from click.testing import CliRunner

    from gistnet import cli as cli_mod, config

    shown = " ".join(CliRunner().invoke(cli_mod.cli, ["train", "--help"]).output.split())
    assert "runs for many hours" in shown and "--epochs 3 --image-size 64" in shown
    defaults = config.Config().to_dict()
    for dotted in cli_mod.FLAG_KEYS.values():
        section, key = dotted.split(".")
        value = defaults[section][key]
        value = ",".join(value) if isinstance(value, list) else str(value).lower() if value is False else value
        assert f"[default: {value if value != '' else 'none'}; {dotted}]" in shown, dotted


@pytest.mark.parametrize("command, error, hint", [
    (["train", "--data", "d", "--output", "o"], "sigterm", "re-run the same command with the same --run-id to resume"),
    (["train", "--data", "d", "--output", "o"], "ctrl-c", "re-run the same command with the same --run-id to resume"),
    (["demo", "--output", "o"], "sigterm", "gistnet demo starts over when re-run"),
    (["demo", "--output", "o"], "ctrl-c", "gistnet demo starts over when re-run"),
])
def test_interruption_says_what_a_re_run_will_do(command, error, hint, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from gistnet import cli as cli_mod, pipeline

    def interrupted(cfg, **_):
        if error == "ctrl-c":
            raise KeyboardInterrupt
        raise errors.Interrupted("resnet34: stopped by SIGTERM after epoch 1/3; checkpoint saved")

    monkeypatch.setattr(pipeline, "run", interrupted)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o" / "data").mkdir(parents=True)
    (tmp_path / "o" / "data" / "synth.json").write_text("{}")  # the demo's data exists: no synthesis
    result = CliRunner().invoke(cli_mod.cli, command)
    assert result.exit_code == (errors.EXIT_CTRL_C if error == "ctrl-c" else errors.EXIT_INTERRUPTED)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("gistnet: ")]
    assert len(lines) == 1 and hint in lines[0], result.stderr
    if command[0] == "demo":
        assert "resume" not in lines[0]


def test_missing_bucket_and_endpoint_down(cli, s3_env, tmp_path):
    _one_line_error(cli("train", "--data", "s3://gistnet-no-such-bucket/x", "--output", tmp_path, env=s3_env),
                    errors.EXIT_STORAGE, "bucket 'gistnet-no-such-bucket' does not exist")
    from tests.conftest import free_port
    env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "GISTNET_STORAGE_MAX_ATTEMPTS": "2",
           "GISTNET_STORAGE_CONNECT_TIMEOUT": "1"}
    _one_line_error(cli("train", "--data", "s3://b/x", "--output", tmp_path, env=env), errors.EXIT_STORAGE,
                    "cannot reach S3 endpoint")


def test_cuda_without_gpu(cli, tiny_data, tmp_path):
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    _one_line_error(cli("train", "--data", tiny_data, "--output", tmp_path, "--device", "cuda", env=env),
                    errors.EXIT_DEVICE, "no CUDA GPU")


def test_demo_takes_the_device_flag(cli, tmp_path):
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    _one_line_error(cli("demo", "--output", tmp_path, "--image-size", "32", "--device", "cuda", env=env),
                    errors.EXIT_DEVICE, "no CUDA GPU")


def test_demo_folds_writes_a_pooled_k_fold_report(cli, tmp_path):
    done = cli("demo", "--output", tmp_path, "--folds", "2", "--epochs", "1", "--image-size", "32",
               "--models", "resnet34", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "pooled out-of-fold" in done.stderr and "folds/<i>/<model>/model.safetensors" in done.stderr
    run = tmp_path / "runs" / "demo"
    rep = json.loads((run / "report.json").read_text())
    assert rep["status"] == "complete" and rep["evaluation"] == {**rep["evaluation"], "method": "kfold", "folds": 2}
    assert sum(rep["models"]["resnet34"]["confusion_matrix"].values()) == 142  # every image validated once
    assert [f["fold"] for f in rep["models"]["resnet34"]["folds"]] == [0, 1]
    assert (run / "report.html").is_file() and (run / "folds" / "1" / "resnet34" / "model.safetensors").is_file()


def test_exit_code_table_matches_readme(cli):
    """README's table has exactly the codes of errors.EXIT_CODES, each with its meaning; so
    does `gistnet exit-codes`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M)
    assert {int(code): meaning.strip() for code, meaning in rows} == errors.EXIT_CODES
    printed = cli("exit-codes").stdout.splitlines()
    assert printed == [f"{code}\t{meaning}" for code, meaning in errors.EXIT_CODES.items()]


# ------------------------------------------------------------------ bad input, as a user meets it

def _png(seed, mode="L", size=40, fmt="PNG"):
    import io

    import numpy as np
    from PIL import Image

    arr = (np.random.default_rng(seed).random((size, size)) * 255).astype("uint8")
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray(arr.astype("uint16") * 257)
    elif mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _dataset(root, n=6, extra=None, skip_class=None):
    for label in ("GIST", "LM"):
        if label == skip_class:
            continue
        for i in range(n):
            path = root / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(zlib.crc32(f"{label}/{i}".encode())))
    for rel, data in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


BAD_DATA = {
    "class folder missing": (dict(skip_class="LM"), "class folder 'LM' is missing"),
    "too few images": (dict(n=2), "at least data.min_images_per_class=5"),
    "unknown class folder": (dict(extra={"SCHWANNOMA/a.png": _png(1)}), "unknown class folder 'SCHWANNOMA'"),
    "duplicate across classes": (dict(extra={"GIST/dup.png": _png(7), "LM/dup.png": _png(7)}),
                                 "labeled both classes"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_sets_fail_with_one_line_and_no_report(case, cli, tmp_path):
    kwargs, fragment = BAD_DATA[case]
    data = _dataset(tmp_path / "data", **kwargs)
    done = cli("train", "--data", data, "--output", tmp_path / "out", "--run-id", "bad", "--device", "cpu",
               "--image-size", 32)  # the images are 40 px: at the default 224 each would be skipped as too small
    _one_line_error(done, errors.EXIT_DATA, fragment)
    assert not (tmp_path / "out" / "bad" / "report.json").exists()


def test_odd_images_are_decoded_or_skipped_and_listed(cli, tmp_path):
    good = _png(3)
    odd = {"GIST/palette.png": _png(11, "P"), "GIST/cmyk.jpg": _png(12, "CMYK", fmt="JPEG"),
           "LM/sixteen.png": _png(13, "I;16"), "LM/rgba.png": _png(14, "RGBA"), "LM/scan.tif": _png(15, fmt="TIFF")}
    bad = {"GIST/truncated.png": good[: len(good) // 2], "GIST/empty.png": b"", "LM/notes.txt": b"not an image",
           "LM/huge.png": _png(16, size=400)}
    data = _dataset(tmp_path / "data", extra={**odd, **bad})
    env = {**__import__("os").environ, "GISTNET_DATA_MAX_IMAGE_PIXELS": "100000"}
    done = cli("train", "--data", data, "--output", tmp_path / "out", "--run-id", "odd", "--models", "resnet34",
               "--epochs", 1, "--image-size", 32, "--augmentation", "none", "--batch-size", 8, env=env)
    assert done.returncode == 0, done.stderr
    rep = json.loads((tmp_path / "out" / "odd" / "report.json").read_text())
    skipped = {s["uri"].split("/data/", 1)[1]: s["reason"] for s in rep["dataset"]["skipped"]}
    assert set(skipped) == set(bad), skipped
    assert "corrupt or truncated" in skipped["GIST/truncated.png"]
    assert "empty object" in skipped["GIST/empty.png"]
    assert "not a recognised image" in skipped["LM/notes.txt"]
    assert "max_image_pixels" in skipped["LM/huge.png"] or "decompression bomb" in skipped["LM/huge.png"]
    used = sum(rep["dataset"]["train"].values()) + sum(rep["dataset"]["val"].values())
    assert used == 12 + len(odd)


def test_unwritable_output_is_a_storage_error(cli, tiny_data, tmp_path):
    (tmp_path / "file").write_text("a file where the output folder should be")
    done = cli("train", "--data", tiny_data, "--output", tmp_path / "file" / "runs", "--device", "cpu",
               "--image-size", 32)
    _one_line_error(done, errors.EXIT_STORAGE, "cannot write")


def test_wrong_credentials_are_a_storage_error(cli, s3_endpoint, tmp_path):
    """The loopback S3 server checks signatures: an unknown key pair is refused."""
    import os

    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0",
           "AWS_SECRET_ACCESS_KEY": "wrong-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    done = cli("train", "--data", "s3://bucket/data", "--output", tmp_path, env=env)
    _one_line_error(done, errors.EXIT_STORAGE, "credentials refused")
    assert "wrong-secret" not in done.stderr


def _test_source(path: Path, name: str) -> str:
    """A test's source with its decorators, plus the module-level functions and constants it
    names (helpers, parametrize tables), one level deep."""
    import ast

    text = path.read_text()
    tree = ast.parse(text)
    top = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top[node.name] = node
        elif isinstance(node, ast.Assign):
            top.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    test = top.get(name)
    assert isinstance(test, ast.FunctionDef), f"{path.name}::{name} does not exist"
    parts = [ast.get_source_segment(text, d) for d in test.decorator_list] + [ast.get_source_segment(text, test)]
    named = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
    parts += [ast.get_source_segment(text, top[n]) for n in sorted(named) if n in top and n != name]
    return "\n".join(parts)


def _exit_evidence(code: int) -> list[str]:
    """What in a test's source shows it checks exit ``code``."""
    import inspect

    constants = [n for n, v in vars(errors).items() if n.startswith("EXIT_") and v == code]
    classes = [n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, errors.GistnetError)
               and c.exit_code == code and c is not errors.GistnetError]
    return constants + classes + [f"returncode == {code}", f"exit_code == {code}"]


def test_every_bad_input_row_is_asserted_by_its_test():
    """Each row of docs/bad-input.md names a test that exists, whose source holds every literal
    piece of the row's quoted message and checks the row's exit code."""
    repo = Path(__file__).resolve().parents[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in (repo / "docs" / "bad-input.md").read_text().splitlines()
            if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 35
    for case, outcome, code, test in rows:
        path, name = re.fullmatch(r"`(tests/(?:\w+/)*test_\w+\.py)::(\w+)`", test).groups()
        source = _test_source(repo / path, name)
        for quoted in re.findall(r'"([^"]+)"', outcome):
            for piece in re.split(r"\.\.\.|<[^>]+>", quoted):
                piece = piece.strip(" '")
                if len(piece) >= 3:
                    assert piece in source, f"{case!r}: {path}::{name} does not assert {piece!r}"
        if code != "0":
            assert any(e in source for e in _exit_evidence(int(code))), f"{case!r}: {name} does not check exit {code}"


# ------------------------------------------------------------------ out of device memory

OOM_LINE = ("{stage}: out of device memory with train.batch_size=16 and data.image_size=32"
            "; lower train.batch_size or data.image_size")


def _patch_out_of_memory(monkeypatch, stage):
    import torch

    from gistnet.data import augmentation
    from gistnet.evidence import evaluate
    from gistnet.training import train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 79.19 GiB of which 1.06 GiB is free.\nmore details")

    if stage == "augmentation":
        monkeypatch.setattr(augmentation, "PaperSet", oom)  # built under the augmentation guard
    elif stage == "resnet34 training":
        monkeypatch.setattr(train, "train_one_epoch", oom)
    else:
        monkeypatch.setattr(train, "fit", lambda name, state, *args, **kwargs: state)
        monkeypatch.setattr(evaluate, "predict", oom)


@pytest.mark.parametrize("stage", ["augmentation", "resnet34 training", "resnet34 evaluation"])
def test_out_of_device_memory_is_exit_6_naming_the_keys(stage, monkeypatch, tiny_data, tmp_path):
    """A simulated torch.OutOfMemoryError (in process: a GPU is not needed to raise one) is
    the device exit code, which the chart's podFailurePolicy fails at once: retrying the
    same batch size on the same GPU would only hit the same wall."""
    import logging
    import types

    from click.testing import CliRunner

    from gistnet import cli as cli_mod

    _patch_out_of_memory(monkeypatch, stage)
    mode = "paper" if stage == "augmentation" else "none"
    try:
        result = CliRunner().invoke(cli_mod.cli, ["train", "--data", str(tiny_data), "--output", str(tmp_path),
                                                  "--run-id", "oom", "--models", "resnet34", "--epochs", "1",
                                                  "--image-size", "32", "--batch-size", "16", "--device", "cpu",
                                                  "--augmentation", mode])
    finally:
        logging.getLogger().handlers.clear()  # they wrote to the runner's closed stream
    done = types.SimpleNamespace(returncode=result.exit_code, stderr=result.stderr)
    _one_line_error(done, errors.EXIT_DEVICE, "gistnet: out of device memory: " + OOM_LINE.format(stage=stage))
    assert "Tried to allocate 2.00 GiB" in result.stderr
    assert not (tmp_path / "oom" / "report.json").exists()
    assert errors.EXIT_DEVICE in errors.PERMANENT_EXIT_CODES


@pytest.mark.parametrize("args, code, fragment", [
    (["--split", "kfold", "--folds", "1"], errors.EXIT_CONFIG, "split.folds must be >= 2"),
    (["--split", "kfold", "--folds", "21"], errors.EXIT_DATA, "split.folds=21 but class 'GIST' has only 20 images"),
    (["--split", "kfold", "--folds", "3", "--fold", "3"], errors.EXIT_CONFIG, "--fold 3 is out of range"),
    (["--fold", "0"], errors.EXIT_CONFIG, "--fold 0 needs a k-fold split"),
], ids=["one-fold", "more-folds-than-images", "fold-out-of-range", "fold-with-holdout"])
def test_bad_fold_settings_fail_with_one_line_and_write_nothing(args, code, fragment, cli, tiny_data, tmp_path):
    done = cli("train", "--data", tiny_data, "--output", tmp_path / "o", "--device", "cpu", "--image-size", 32, *args)
    _one_line_error(done, code, fragment)
    assert not (tmp_path / "o").exists()


def test_bad_fan_out_selections_fail_with_one_line_and_write_nothing(cli, tiny_data, tmp_path):
    import os

    base = ["train", "--data", tiny_data, "--output", tmp_path / "o", "--device", "cpu", "--split", "kfold",
            "--folds", "2"]
    bare = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
    _one_line_error(cli(*base, "--fold", "auto", env=bare), errors.EXIT_CONFIG,
                    "--fold auto needs JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job)")
    _one_line_error(cli(*base, "--fold", "auto", env={**bare, "JOB_COMPLETION_INDEX": "4"}), errors.EXIT_CONFIG,
                    "JOB_COMPLETION_INDEX=4 is out of range: 2 fold(s) x 2 model(s) give indexes 0..3")
    _one_line_error(cli(*base, "--model", "resnet18"), errors.EXIT_CONFIG,
                    "--model resnet18 is not one of this run's train.models")
    assert not (tmp_path / "o").exists()


def test_aggregate_without_a_finished_fold_fails_and_writes_nothing(cli, tmp_path):
    _one_line_error(cli("aggregate", "--run", tmp_path / "nothing"), errors.EXIT_DATA, "no config.yaml")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("split:\n  method: kfold\n  folds: 3\n")
    _one_line_error(cli("aggregate", "--run", run), errors.EXIT_DATA, "no finished fold to aggregate")
    assert [p.name for p in run.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("environ, level, prefix", [({}, logging.INFO, ""),
                                                    ({"WORLD_SIZE": "2", "RANK": "0"}, logging.INFO, ""),
                                                    ({"WORLD_SIZE": "2", "RANK": "1"}, logging.WARNING, "rank 1: ")])
def test_under_torchrun_only_rank_0_logs_info_and_the_others_name_their_rank(environ, level, prefix, monkeypatch,
                                                                              capsys):
    """A 2-rank run printed every line twice: the ranks other than 0 log WARNING and above, prefixed."""
    from gistnet import cli as cli_mod

    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    try:
        cli_mod.setup_logging()
        assert logging.getLogger().level == level
        logging.getLogger("gistnet.test").warning("stopping")
        assert f"gistnet.test: {prefix}stopping" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        cli_mod.setup_logging()


def test_a_third_party_record_is_one_warning_line_and_a_warned_echo_is_dropped():
    from gistnet.cli.base import ThirdPartyOneLine

    one_line = ThirdPartyOneLine()
    try:
        raise OSError("broken data stream\nwhen reading")
    except OSError:
        import sys

        record = logging.LogRecord("pydicom.pixels", logging.ERROR, "f.py", 1, "decoder %s failed", ("pillow",),
                                   sys.exc_info())
    assert one_line.filter(record) and record.levelname == "WARNING" and record.exc_info is None
    assert record.getMessage() == "decoder pillow failed: OSError: broken data stream when reading"
    logged = logging.LogRecord("pydicom", logging.WARNING, "f.py", 1, "excess padding", (), None)
    warned = logging.LogRecord("py.warnings", logging.WARNING, "f.py", 1, "%s", (
        "/v/lib/python3.11/site-packages/pydicom/x.py:8: UserWarning: excess padding\n  warn_and_log(\n",), None)
    assert one_line.filter(logged) and not one_line.filter(warned)  # said once
    other = logging.LogRecord("py.warnings", logging.WARNING, "f.py", 1, "%s", (
        "/v/lib/python3.11/site-packages/torch/y.py:3: UserWarning: something else\n  warn(\n",), None)
    assert one_line.filter(other) and other.getMessage() == "UserWarning: something else (torch/y.py:3)"
    own = logging.LogRecord("gistnet.data", logging.ERROR, "f.py", 1, "two\nlines", (), None)
    assert one_line.filter(own) and own.levelname == "ERROR" and own.getMessage() == "two\nlines"


# ------------------------------------------------------------------ bad flags: one line, exit 2

@pytest.mark.parametrize("args, flag", [
    (["train", "--epochs", "abc"], "'--epochs': 'abc' is not a valid integer"),
    (["predict", "--run", "r", "--data", "d", "--output", "o", "--threshold", "2"], "'--threshold'"),
    (["train", "--bogus"], "No such option '--bogus'"),
    (["trian"], "No such command 'trian'"),
])
def test_bad_flag_values_are_one_line_usage_errors(args, flag):
    """README's exit-code table: a bad flag value is "bad command-line usage", one line and exit 2,
    not Click's usage block (docs/bad-input.md)."""
    from click.testing import CliRunner

    from gistnet.cli import cli

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == errors.EXIT_USAGE, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gistnet: usage error: ") and flag in lines[0], lines
    assert " (see '" in lines[0] and "--help')" in lines[0] and "Usage:" not in result.stderr


def test_help_and_version_are_still_clicks():
    from click.testing import CliRunner

    import gistnet
    from gistnet.cli import cli

    assert CliRunner().invoke(cli, ["--version"]).stdout == f"gistnet, version {gistnet.__version__}\n"
    helped = CliRunner().invoke(cli, ["train", "--help"], prog_name="gistnet")
    assert helped.exit_code == 0 and helped.stdout.startswith("Usage: gistnet train [OPTIONS]")


# ------------------------------------------------------------------ -v: debug lines at each stage

@pytest.mark.e2e
def test_verbose_logs_each_stage_at_debug(cli, tiny_data, tmp_path):
    """README: `gistnet -v` gives debug logging; each stage boundary says what it did."""
    args = ("train", "--data", tiny_data, "--output", tmp_path / "runs", "--run-id", "v", "--models", "resnet34",
            "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--augmentation", "none",
            "--checkpoint-every", "1")
    done = cli("-v", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    debug = [line for line in done.stderr.splitlines() if " DEBUG gistnet." in line]
    objects = sum(1 for p in Path(tiny_data).rglob("*") if p.is_file())  # 40 images and synth.json
    for fragment in (f"DEBUG gistnet.data.storage: listed {objects} objects under {tiny_data}",
                     f"DEBUG gistnet.data.listing: listing {tiny_data}: {objects} objects, 40 labeled images "
                     "(20 GIST, 20 LM)",
                     "DEBUG gistnet.data.split: split holdout, part 1 of 1: 32 training, 8 validation images",
                     "DEBUG gistnet.training.train: resnet34 epoch 1: learning rate",
                     "DEBUG gistnet.data.storage: wrote "):
        assert any(fragment in line for line in debug), (fragment, debug)
    quiet = cli(*args)  # the same run again (nothing to do), without -v
    assert quiet.returncode == 0 and " DEBUG " not in quiet.stderr
