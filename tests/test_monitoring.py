"""The chart's alerts and dashboard (helm/gistnet/files/): promtool checks and unit tests of
the rendered rules, the dashboard's PromQL, the PrometheusRule against prometheus-operator's
CRD schema, and every metric name against a real scrape of gistnet."""

import copy
import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from gistnet import errors
from tests.conftest import REPO, free_port, system_tool
from tests.test_helm import CHART, by_kind, helm, render

FILES = REPO / "helm" / "gistnet" / "files"
PROMETHEUS_TESTS = REPO / "tests" / "prometheus"
MONITORING = ["--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.grafanaDashboard.enabled=true"]
ALERTS = {"GistnetNoRecentSuccess", "GistnetNeverSucceeded", "GistnetLastRunFailed", "GistnetTrainingStalled",
          "GistnetChallengersRefused"}
# Sample values for the dashboard's Grafana variables, so its queries are plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "1h", "$job": "gistnet",
                     "$cronjob": "gistnet-nightly", "${datasource}": "prometheus"}
METRIC_NAME = re.compile(r"\bgistnet_[a-z0-9_]+")


def rule_groups(extra=()) -> list[dict]:
    return by_kind(render([*MONITORING, *extra]), "PrometheusRule")["spec"]["groups"]


def alerting_rules(groups) -> list[dict]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([system_tool("promtool", "prometheus"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def check_rules(groups, path) -> None:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard() -> dict:
    return json.loads((FILES / "grafana-dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def as_promql(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    assert "$" not in query, f"unknown Grafana variable in {query}"
    return query


# ------------------------------------------------------------------ alerts


def test_rendered_rules_pass_promtool_check(tmp_path):
    groups = rule_groups()
    assert {r["alert"] for r in alerting_rules(groups)} == ALERTS
    check_rules(groups, tmp_path / "rules.yaml")


def test_every_alert_has_for_severity_summary_and_a_runbook_description():
    for rule in alerting_rules(rule_groups()):
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "check first" in rule["annotations"]["description"].lower(), rule["alert"]


def test_alerts_fire_and_stay_quiet_at_the_right_times(tmp_path):
    """tests/prometheus/alerts.test.yaml: success yesterday and none today, a healthy nightly,
    a failed push with no success ever, a failure after a success, a stalled counter."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    (tmp_path / "alerts.test.yaml").write_text((PROMETHEUS_TESTS / "alerts.test.yaml").read_text())
    done = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_last_run_failed_names_the_meaning_of_every_exit_code(tmp_path):
    """One pushed series per exit code of errors.EXIT_CODES (the README table's source): the
    summary carries that code's meaning. Descriptions are dropped from this copy of the rules
    (alerts.test.yaml checks them) so each case states only the summary."""
    groups = copy.deepcopy(rule_groups())
    for rule in alerting_rules(groups):
        rule["annotations"].pop("description")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    failures = {code: meaning for code, meaning in errors.EXIT_CODES.items() if code != errors.EXIT_OK}
    series = [{"series": f'gistnet_run_exit_code{{job="gistnet", cronjob="c{code}"}}', "values": f"{code}x20"}
              for code in failures]
    series.append({"series": 'gistnet_run_exit_code{job="gistnet", cronjob="ok"}', "values": "0x20"})
    expected = [{"exp_labels": {"severity": "warning", "exit_code": str(code), "job": "gistnet", "cronjob": f"c{code}"},
                 "exp_annotations": {"summary": f"gistnet c{code}: last run exited with code {code} ({meaning})"}}
                for code, meaning in failures.items()]
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series,
         "alert_rule_test": [{"eval_time": "10m", "alertname": "GistnetLastRunFailed", "exp_alerts": expected}]}]}
    (tmp_path / "exit-codes.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", "exit-codes.test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_windows_come_from_values(tmp_path):
    groups = rule_groups(["--set", "metrics.prometheusRule.noSuccessWindow=2d",
                          "--set", "metrics.prometheusRule.stalledWindow=30m", "--set", "metrics.jobName=eus"])
    rules = {r["alert"]: r for r in alerting_rules(groups)}
    assert rules["GistnetNoRecentSuccess"]["expr"].endswith("> 172800")
    assert rules["GistnetNeverSucceeded"]["for"] == "2d"
    assert 'job="eus"' in rules["GistnetLastRunFailed"]["expr"]
    assert "[30m]" in rules["GistnetTrainingStalled"]["expr"]
    check_rules(groups, tmp_path / "rules.yaml")


@pytest.mark.parametrize("bad", ["26 hours", "1h30m", ""])
def test_a_window_that_is_not_one_duration_is_rejected(bad):
    done = helm("template", "gistnet", str(CHART), *MONITORING,
                "--set", f"metrics.prometheusRule.noSuccessWindow={bad}", check=False)
    assert done.returncode != 0 and "noSuccessWindow" in done.stderr, done.stderr


def _strict(schema):
    """The CRD schema as the API server applies it: it prunes unknown fields silently, which
    would lose a misspelt key, so the test rejects them instead."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(s) for s in schema]
    return schema


def test_prometheus_rule_validates_against_the_prometheus_operator_crd():
    import jsonschema

    crd = yaml.safe_load((PROMETHEUS_TESTS / "monitoring.coreos.com_prometheusrules.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    rule = by_kind(render([*MONITORING, "--set", "metrics.prometheusRule.labels.release=kube-prometheus-stack"]),
                   "PrometheusRule")
    assert rule["apiVersion"] == f"{crd['spec']['group']}/v1" and rule["kind"] == crd["spec"]["names"]["kind"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # No check_schema: the CRD's patterns are Go regexps ("^(?i)..." is not valid in Python's re).
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(rule)
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError, match="fro"):
        validator.validate(broken)
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["for"] = "26 hours"
    with pytest.raises(jsonschema.ValidationError, match="26 hours"):
        validator.validate(broken)
    assert not by_kind(render([]), "PrometheusRule")


# ------------------------------------------------------------------ dashboard


def test_dashboard_configmap_carries_the_sidecar_label_and_the_file():
    docs = render(MONITORING)
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "gistnet-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["gistnet.json"]) == dashboard()
    custom = render([*MONITORING, "--set", "metrics.grafanaDashboard.labels.team=ml",
                     "--set", "metrics.grafanaDashboard.annotations.grafana_folder=ML"])
    configmap = next(d for d in custom if d["metadata"]["name"] == "gistnet-dashboard")
    assert configmap["metadata"]["labels"]["team"] == "ml"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "ML"
    assert not [d for d in render([]) if d["metadata"]["name"] == "gistnet-dashboard"]


def test_dashboard_has_the_panels_and_variables():
    board = dashboard()
    titles = {p["title"] for p in board["panels"]}
    assert {"Last success", "Last exit code", "Progress per model", "Loss", "Accuracy", "Training throughput",
            "Stage durations (last finished run)", "Storage bytes in/out"} <= titles
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "job", "cronjob"} <= set(variables)
    queries = " ".join(dashboard_queries())
    for name in ("gistnet_train_loss", "gistnet_validation_loss", "gistnet_train_accuracy_ratio",
                 "gistnet_validation_accuracy_ratio", "gistnet_images_per_second", "gistnet_stage_duration_seconds",
                 "gistnet_downloaded_bytes_total", "gistnet_uploaded_bytes_total", "gistnet_epochs_planned"):
        assert name in queries, name
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert "$job" in target["expr"] and "$cronjob" in target["expr"], (panel["title"], target["expr"])


def test_dashboard_exit_code_mappings_follow_the_exit_code_table():
    panel = next(p for p in dashboard()["panels"] if p["title"] == "Last exit code")
    mapped = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {int(code): m["text"] for code, m in mapped.items()} == \
        {code: f"{code}: {meaning}" for code, meaning in errors.EXIT_CODES.items()}


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """Each panel query, with sample values for the Grafana variables, as a recording rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": as_promql(q)} for i, q in enumerate(dashboard_queries())]
    assert len(rules) >= 10
    check_rules([{"name": "dashboard", "rules": rules}], tmp_path / "dashboard.rules.yaml")


# ------------------------------------------------------------------ names against a real exposition


def _names(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


@pytest.mark.e2e
def test_rules_and_dashboard_use_only_metric_names_gistnet_exposes(tiny_data, tmp_path, pushgateway):
    """A short training run: the union of its live /metrics scrapes (what the PodMonitor sees)
    and its push (what the Pushgateway serves) holds every name the rules and the dashboard use."""
    port = free_port()
    train = subprocess.Popen([sys.executable, "-m", "gistnet", "train", "--data", str(tiny_data), "--output",
                              str(tmp_path / "runs"), "--models", "resnet34", "--epochs", "1", "--image-size", "32",
                              "--batch-size", "16", "--metrics-port", str(port), "--pushgateway", pushgateway,
                              "--checkpoint-every", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live = set()
    deadline = time.monotonic() + 600
    while train.poll() is None and time.monotonic() < deadline:
        live |= _names(_scrape(f"http://127.0.0.1:{port}/metrics"))
        time.sleep(0.25)
    _, stderr = train.communicate(timeout=60)
    assert train.returncode == 0, stderr
    pushed = _names(_scrape(f"{pushgateway}/metrics"))
    assert "gistnet_images_processed_total" in live and "gistnet_run_end_timestamp_seconds" in live  # the stall alert
    assert {"gistnet_last_success_timestamp_seconds", "gistnet_run_exit_code"} <= pushed
    # what gistnet promote pushes (GistnetChallengersRefused), from the registry it pushes
    from prometheus_client import generate_latest

    from gistnet.observe.metrics import promotion_registry
    pushed |= _names(generate_latest(promotion_registry(False, 1)).decode())
    rules = " ".join(r["expr"] for r in alerting_rules(rule_groups()))
    variables = " ".join(json.dumps(v.get("query", "")) for v in dashboard()["templating"]["list"])
    used = set(METRIC_NAME.findall(rules + " " + " ".join(dashboard_queries()) + " " + variables))
    assert len(used) >= 15
    assert used <= live | pushed, used - (live | pushed)


def test_monitoring_page_describes_every_alert_and_panel():
    page = (REPO / "docs" / "monitoring.md").read_text()
    section = page[page.index("## Alerts and dashboard"):].split("\n## ", 1)[0]
    for alert in ALERTS:
        assert f"`{alert}`" in section, alert
    for panel in dashboard()["panels"]:
        assert f"**{panel['title']}**" in section, panel["title"]
