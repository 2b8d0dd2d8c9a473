"""Plain manifests (k8s/): rendered from the chart, validated, and rendered by kustomize."""

import subprocess
import sys

import yaml

from tests.conftest import REPO, k8s_tool, kubernetes_versions


def test_k8s_manifests_have_not_drifted_from_the_chart():
    import os

    env = {**os.environ, "PATH": f"{os.path.dirname(k8s_tool('helm'))}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "render_k8s.py"), "--check"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_kustomize_renders_a_valid_base():
    import kubernetes_validate

    out = subprocess.run([k8s_tool("kubectl"), "kustomize", str(REPO / "k8s")], capture_output=True, text=True,
                         check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "CronJob", "Job", "Namespace", "NetworkPolicy", "PodMonitor",
                     "PrometheusRule", "Secret", "ServiceAccount"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"gistnet"}
    for version in kubernetes_versions():
        for doc in docs:
            if doc["kind"] not in {"PodMonitor", "PrometheusRule"}:  # CRDs: tests/test_monitoring.py
                kubernetes_validate.validate(doc, version, strict=True)
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["stringData"].values()) == {"CHANGE-ME"}
    assert "CHANGE-ME" not in yaml.safe_dump([d for d in docs if d["kind"] == "ConfigMap"])
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["egress"][1]["ports"] == [{"port": 9000, "protocol": "TCP"}]  # the MinIO endpoint


def test_predict_example_is_a_valid_predict_job():
    import kubernetes_validate

    job = yaml.safe_load((REPO / "k8s" / "predict-job.yaml").read_text())
    kubernetes_validate.validate(job, "1.37.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][:2] == ["predict", "--config"]
    assert job["metadata"]["name"] == "gistnet-predict" and pod["serviceAccountName"] == "gistnet"
    assert "predict-job.yaml" not in yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())["resources"]
