import json

import pytest


@pytest.mark.e2e  # trains ResNet-34 (the slowest unit tests: make test-fast under 3 min)
def test_bench_prints_one_json_object_per_measurement(cli):
    """Tiny sizes on CPU: the command runs all three measurements; no timing is asserted."""
    proc = cli("bench", "--device", "cpu", "--models", "resnet34", "--batch-size", "4", "--image-size", "32",
               "--steps", "2", "--warmup", "1", "--workers", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["name"] for r in records] == ["model-only", "gistnet-step", "torchvision-reference", "ratios"]
    for r in records[:3]:
        assert r["model"] == "resnet34" and r["img_per_s"] > 0 and r["device"] == "cpu"
    assert records[1]["augmentation"] == "paper (on the fly)"
    assert records[3]["gistnet_over_model_only"] == records[1]["img_per_s"] / records[0]["img_per_s"]


def test_bench_rejects_an_unknown_model():
    """In-process (Click's runner): the refusal comes before any model is built, so a subprocess
    would only add an interpreter start and the imports."""
    from click.testing import CliRunner

    from gistnet.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--device", "cpu", "--models", "vgg16", "--steps", "1"])
    assert result.exit_code == 3 and "--models: unknown model 'vgg16'" in result.stderr, result.stderr
