"""The chart's promotion.enabled: the CronJob's training container gets the gate's settings, and
a refusal (exit 11) fails the Job without retries."""

import pytest

from gistnet import errors
from tests.test_helm import by_kind, helm, render, CHART


def _env(manifests) -> dict:
    cron = by_kind(manifests, "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_promotion_enabled_passes_registry_and_set_to_the_scheduled_training():
    env = _env(render(["--set", "schedule=0 2 * * *", "--set", "promotion.enabled=true",
                       "--set", "promotion.registry=s3://models/registry", "--set", "promotion.data=s3://locked/set"]))
    assert env["GISTNET_PROMOTION_REGISTRY"] == "s3://models/registry"
    assert env["GISTNET_PROMOTION_DATA"] == "s3://locked/set"
    assert "GISTNET_PROMOTION_REGISTRY" not in _env(render(["--set", "schedule=0 2 * * *"]))
    cron = by_kind(render(["--set", "schedule=0 2 * * *"]), "CronJob")
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert errors.EXIT_REFUSED in fail["onExitCodes"]["values"]


@pytest.mark.parametrize("missing", ["registry", "data"])
def test_promotion_enabled_needs_registry_and_data(missing):
    given = {"registry": "s3://models/registry", "data": "s3://locked/set"}
    given.pop(missing)
    done = helm("template", "g", str(CHART), "--set", "schedule=0 2 * * *", "--set", "promotion.enabled=true",
                *[x for k, v in given.items() for x in ("--set", f"promotion.{k}={v}")], check=False)
    assert done.returncode != 0 and f"promotion.{missing} is required with promotion.enabled" in done.stderr
