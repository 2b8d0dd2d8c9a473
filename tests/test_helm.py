"""The Helm chart: lint, render every variant, validate against Kubernetes' schemas, and
check what the rendered objects say (not only that they render)."""

import functools
import json
import subprocess

import pytest
import yaml

from gistnet import config, errors
from tests.conftest import REPO, checkov, k8s_tool, kubernetes_versions, unexplained_checkov_findings

CHART = REPO / "helm" / "gistnet"
DIGEST = "sha256:" + "ab" * 32
SECRET = "sentinel-secret-value-3141"

VARIANTS = {
    "job": [],
    "cronjob": ["--set", "schedule=0 2 * * *", "--set", "cron.timeZone=Europe/Berlin"],
    "gpu": ["--set", "resources.limits.nvidia\\.com/gpu=2", "--set", "nodeSelector.gpu=h100",
            "--set", "tolerations[0].key=nvidia.com/gpu", "--set", "tolerations[0].operator=Exists",
            "--set", "tolerations[0].effect=NoSchedule", "--set", "priorityClassName=batch-high"],
    "minio-secret": ["--set", "s3.endpoint=http://minio:9000", "--set", "s3.createSecret=true",
                     "--set", "s3.accessKeyId=minioadmin", "--set", f"s3.secretAccessKey={SECRET}"],
    "aws-irsa": ["--set", "s3.region=eu-west-1", "--set",
                 "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123:role/gistnet"],
    "existing-secret-podmonitor": ["--set", "s3.existingSecret=my-s3", "--set", "metrics.podMonitor.enabled=true",
                                   "--set", "metrics.pushgateway=http://pushgateway:9091"],
    "monitoring": ["--set", "schedule=0 2 * * *", "--set", "metrics.pushgateway=http://pushgateway:9091",
                   "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
                   "--set", "metrics.grafanaDashboard.enabled=true"],
    "predict": ["--set", "mode=predict", "--set", "predict.run=s3://gistnet/runs/nightly-1", "--set",
                "predict.data=s3://gistnet/new", "--set", "predict.output=s3://gistnet/scored/", "--set",
                "predict.threshold=0.35", "--set", "predict.engine=onnx", "--set", "predict.batchSize=8"],
    "predict-cron": ["--set", "mode=predict", "--set", "predict.run=s3://gistnet/runs/nightly-1", "--set",
                     "predict.data=s3://gistnet/new", "--set", "predict.output=s3://gistnet/scored",
                     "--set", "schedule=0 6 * * 1"],
    "evaluate": ["--set", "mode=evaluate", "--set", "evaluate.run=s3://gistnet/runs/nightly-1", "--set",
                 "evaluate.data=s3://gistnet/hospital-b", "--set", "evaluate.model=best", "--set",
                 "evaluate.batchSize=8", "--set", "metrics.pushgateway=http://pushgateway:9091"],
    "readers": ["--set", "mode=readers", "--set", "readers.file=s3://gistnet/studies/readers.csv", "--set",
                "readers.run=s3://gistnet/runs/nightly-1", "--set", "readers.data=s3://gistnet/hospital-b"],
    "tracking": ["--set", "schedule=0 2 * * *", "--set", "tracking.mlflowUri=http://mlflow.mlflow.svc:5000",
                 "--set", "tracking.existingSecret=gistnet-mlflow", "--set", "metrics.pushgateway=http://pg:9091",
                 "--set", "promotion.enabled=true", "--set", "promotion.registry=s3://gistnet/registry",
                 "--set", "promotion.data=s3://gistnet/promotion"],
    "tracking-config-key": ["--set", "config.tracking.mlflow_uri=https://mlflow.example.org"],
    "pinned-cpu-limit": ["--set", f"image.digest={DIGEST}", "--set", "resources.limits.cpu=8"],
    "egress-allow-all": ["--set", "networkPolicy.egress.allowAll=true"],
    "no-networkpolicy": ["--set", "networkPolicy.enabled=false"],
    "ddp-indexed": ["--set", "distributed.enabled=true", "--set", "distributed.nodes=3",
                    "--set", "distributed.procPerNode=2", "--set", "resources.limits.nvidia\\.com/gpu=2",
                    "--set", "distributed.nccl.NCCL_DEBUG=WARN", "--set", "distributed.nccl.NCCL_IB_DISABLE=1",
                    "--set", "shm.sizeLimit=16Gi", "--set", "metrics.podMonitor.enabled=true"],
    "ddp-trainjob": ["--set", "distributed.enabled=true", "--set", "distributed.engine=trainjob",
                     "--set", "distributed.nodes=2", "--set", "distributed.procPerNode=1",
                     "--set", "s3.existingSecret=my-s3", "--set", "tolerations[0].key=nvidia.com/gpu",
                     "--set", "tolerations[0].operator=Exists", "--set", "distributed.nccl.NCCL_DEBUG=INFO"],
    "fanout": ["--set", "fanout.enabled=true", "--set", "fanout.parallelism=3", "--set", "config.split.method=kfold",
               "--set", "config.split.folds=4", "--set", "metrics.pushgateway=http://pushgateway:9091"],
    "fanout-cron": ["--set", "fanout.enabled=true", "--set", "config.split.method=kfold",
                    "--set", "schedule=0 2 * * 6", "--set", "job.runId="],
}
# Custom resources: prometheus-operator's (test_podmonitor and test_monitoring.py) and Kubeflow
# Trainer's TrainJob (test_trainjob_validates_against_the_vendored_crd).
CRDS = {"PodMonitor", "PrometheusRule", "TrainJob"}


def helm(*args, check=True):
    return subprocess.run([k8s_tool("helm"), *args], capture_output=True, text=True, check=check)


def render(extra) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_text(tuple(extra))) if d]


@functools.lru_cache(maxsize=None)
def render_text(extra: tuple[str, ...]) -> str:
    return helm("template", "gistnet", str(CHART), "--namespace", "ml", *extra).stdout


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) <= 1
    return found[0] if found else None


def job_spec(docs):
    cron = by_kind(docs, "CronJob")
    return cron["spec"]["jobTemplate"]["spec"] if cron else by_kind(docs, "Job")["spec"]


def container(docs):
    return job_spec(docs)["template"]["spec"]["containers"][0]


def env(docs):
    return {e["name"]: e for e in container(docs)["env"]}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(variant):
    done = helm("lint", "--strict", str(CHART), *VARIANTS[variant], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", kubernetes_versions())
def test_every_variant_validates_against_every_claimed_kubernetes(version):
    """Each variant, against the schemas of each minor from Chart.yaml's kubeVersion floor to the
    newest kubernetes-validate ships (1.30-1.34 require podFailurePolicy's onPodConditions status)."""
    import kubernetes_validate

    done = helm("template", "gistnet", str(CHART), "--kube-version", version, check=False)
    assert done.returncode == 0, done.stderr  # kubeVersion admits it
    for variant, extra in VARIANTS.items():
        for doc in render(extra):
            if doc["kind"] in CRDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{variant} {doc['kind']} on Kubernetes {version}: {exc.message}") from None


def test_kube_version_floor_is_enforced_below_the_validated_range():
    below = kubernetes_versions()[0].split(".")
    older = f"1.{int(below[1]) - 1}.0"
    done = helm("template", "gistnet", str(CHART), "--kube-version", older, check=False)
    assert done.returncode != 0 and "kubeVersion" in done.stderr, done.stderr


def test_default_is_a_job_and_schedule_makes_a_cronjob():
    docs = render([])
    assert by_kind(docs, "Job") and not by_kind(docs, "CronJob")
    cron = by_kind(render(VARIANTS["cronjob"]), "CronJob")
    assert not by_kind(render(VARIANTS["cronjob"]), "Job")
    spec = cron["spec"]
    assert spec["schedule"] == "0 2 * * *" and spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["startingDeadlineSeconds"] > 0


def test_pod_failure_policy_follows_the_exit_code_table():
    spec = job_spec(render([]))
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert sorted(fail["onExitCodes"]["values"]) == sorted(errors.PERMANENT_EXIT_CODES)
    assert fail["onExitCodes"]["containerName"] == "gistnet"
    assert errors.OutOfDeviceMemory.exit_code in fail["onExitCodes"]["values"]  # out of GPU memory: no retry
    ignored = [r for r in rules if r["action"] == "Ignore"]
    assert any(c["type"] == "DisruptionTarget" for r in ignored for c in r.get("onPodConditions", []))
    assert any(errors.EXIT_INTERRUPTED in r.get("onExitCodes", {}).get("values", []) for r in ignored)
    # another live process holds the unit's lease: retried without counting against backoffLimit
    assert any(errors.EXIT_LEASED in r.get("onExitCodes", {}).get("values", []) for r in ignored)
    for code in (errors.EXIT_STORAGE, errors.EXIT_INTERNAL):  # retried, counted against backoffLimit
        assert not any(code in r.get("onExitCodes", {}).get("values", []) for r in rules)
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0


def test_compile_cache_key_comes_from_a_secret_and_without_one_the_cache_is_off():
    """The compile cache's MAC key reaches the pod only as a secretKeyRef; by default there is
    none, so gistnet neither reads nor writes the cache (training/compile.py)."""
    assert "GISTNET_COMPILE_CACHE_KEY" not in env(render([]))
    docs = render(["--set", "compileCache.existingSecret=gistnet-compile-cache"])
    assert env(docs)["GISTNET_COMPILE_CACHE_KEY"]["valueFrom"]["secretKeyRef"] == \
        {"name": "gistnet-compile-cache", "key": "GISTNET_COMPILE_CACHE_KEY"}
    assert not by_kind(docs, "Secret")  # the chart never holds the key itself


def test_secret_reaches_the_pod_only_through_secret_refs():
    docs = render(VARIANTS["minio-secret"])
    configmap = by_kind(docs, "ConfigMap")
    assert SECRET not in yaml.safe_dump(configmap)
    assert SECRET not in yaml.safe_dump(job_spec(docs))
    e = env(docs)
    assert e["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "gistnet-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert e["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "gistnet-s3"
    assert e["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert by_kind(docs, "Secret")["stringData"]["AWS_SECRET_ACCESS_KEY"] == SECRET
    # no Secret unless asked; an existing one is referenced, not created
    assert not by_kind(render([]), "Secret")
    docs = render(VARIANTS["existing-secret-podmonitor"])
    assert not by_kind(docs, "Secret")
    assert env(docs)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "my-s3"


def test_create_secret_without_keys_fails_clearly():
    done = helm("template", "gistnet", str(CHART), "--set", "s3.createSecret=true", check=False)
    assert done.returncode != 0 and "s3.createSecret needs" in done.stderr


def test_gpu_scheduling_and_resources():
    docs = render(VARIANTS["gpu"])
    pod = job_spec(docs)["template"]["spec"]
    assert container(docs)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["priorityClassName"] == "batch-high"
    assert container(render([]))["resources"]["limits"]["nvidia.com/gpu"] == 1  # the default asks for a GPU


def test_security_defaults_and_writable_mounts():
    docs = render([])
    pod = job_spec(docs)["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/etc/gistnet"]]["configMap"]["name"] == "gistnet"


def test_configmap_holds_a_valid_gistnet_config_and_env_wires_the_job(tmp_path):
    docs = render(VARIANTS["existing-secret-podmonitor"])
    text = by_kind(docs, "ConfigMap")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(text)
    c = container(docs)
    assert c["args"][:3] == ["train", "--config", "/etc/gistnet/config.yaml"]
    e = env(docs)
    environ = {k: v["value"] for k, v in e.items() if "value" in v}
    cfg = config.load_config(tmp_path / "config.yaml", environ=environ)  # what the pod would resolve
    assert cfg.train.epochs == 200 and cfg.data.uri == "s3://gistnet/data" and cfg.metrics.port == 9090
    assert cfg.metrics.pushgateway == "http://pushgateway:9091"
    assert cfg.metrics.grouping_labels == {"k8s_job": "gistnet"}
    assert e["GISTNET_OUTPUT_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090}
    cron_env = env(render(VARIANTS["cronjob"]))
    assert cron_env["GISTNET_METRICS_GROUPING_LABELS"]["value"] == "cronjob=gistnet"


def test_podmonitor():
    docs = render(VARIANTS["existing-secret-podmonitor"] + ["--set", "metrics.podMonitor.labels.release=prom"])
    pm = by_kind(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    pod_labels = job_spec(docs)["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not by_kind(render([]), "PodMonitor")


def test_aws_irsa_annotation():
    sa = by_kind(render(VARIANTS["aws-irsa"]), "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("bad, message", [
    (["--set", "unknownKey=1"], "additional properties 'unknownKey' not allowed"),
    (["--set", "job.backoffLimit=abc"], "want integer"),
    (["--set", "config.train.epoch=3"], "additional properties 'epoch' not allowed"),
    (["--set", "config.train.epochs=many"], "want integer"),
    (["--set", "config.train.epochs=0"], "at '/config/train/epochs': minimum: got 0, want 1"),  # config.BOUNDS
    (["--set", "config.split.val_fraction=1"], "at '/config/split/val_fraction': exclusiveMaximum"),
    (["--set", "cron.concurrencyPolicy=Sometimes"], "concurrencyPolicy"),
    (["--set", "mode=serve"], "/mode"),
    (["--set", "predict.threshold=1.5"], "/predict/threshold"),
    (["--set", "predict.model=vgg16"], "/predict/model"),
    (["--set", "mode=predict"], "predict.run is required with mode: predict"),
    (["--set", "mode=evaluate"], "evaluate.run is required with mode: evaluate"),
    (["--set", "mode=evaluate", "--set", "evaluate.run=s3://b/r"], "evaluate.data is required with mode: evaluate"),
    (["--set", "evaluate.model=vgg16"], "/evaluate/model"),
    (["--set", "mode=readers"], "readers.file is required with mode: readers"),
    (["--set", "mode=readers", "--set", "readers.file=s3://b/r.csv", "--set", "readers.run=s3://b/run"],
     "readers.run and readers.data go together"),
    (["--set", "mode=readers", "--set", "readers.file=s3://b/r.csv"], "readers.output is required"),
    (["--set", "readers.covariance=bootstrap"], "/readers/covariance"),
    (["--set", "evaluate.name=../x"], "/evaluate/name"),
    (["--set", "mode=predict", "--set", "predict.run=s3://b/r"], "predict.data is required with mode: predict"),
])
def test_schema_rejects_unknown_and_mistyped_values(bad, message):
    done = helm("template", "gistnet", str(CHART), *bad, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_values_schema_config_matches_the_gistnet_config_tree():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"] == config.json_schema()


def test_every_value_is_documented_in_values_yaml():
    """Each leaf in values.yaml appears in the schema (which forbids anything else)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(v, s, path):
        if isinstance(v, dict) and s.get("additionalProperties") is False:
            for k, child in v.items():
                assert k in s["properties"], f"{path}.{k} not in values.schema.json"
                walk(child, s["properties"][k], f"{path}.{k}")

    walk(values, schema, "values")


def test_notes_tell_where_the_report_lands():
    done = helm("install", "gistnet", str(CHART), "--dry-run=client", "--namespace", "ml", check=False)
    assert done.returncode == 0, done.stderr
    assert "s3://gistnet/runs/<run-id>/report.json" in done.stdout
    assert "kubectl --namespace ml logs -f" in done.stdout


def test_predict_mode_runs_gistnet_predict_with_the_values(tmp_path):
    from gistnet import cli

    for variant in ("predict", "predict-cron"):
        docs = render(VARIANTS[variant])
        assert by_kind(docs, "CronJob" if variant == "predict-cron" else "Job")
        c = container(docs)
        e = env(docs)
        assert e["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
        assert not {"GISTNET_DATA_URI", "GISTNET_OUTPUT_URI", "GISTNET_OUTPUT_RUN_ID"} & set(e)
        # the args as the kubelet passes them ($(JOB_NAME) expanded) parse as a gistnet predict command line
        args = [a.replace("$(JOB_NAME)", "gistnet-29000000") for a in c["args"]]
        assert args[0] == "predict"
        params = cli.predict_cmd.make_context("predict", args[1:]).params
        assert params["run_uri"] == "s3://gistnet/runs/nightly-1" and params["data"] == "s3://gistnet/new"
        assert params["output"] == "s3://gistnet/scored/gistnet-29000000"
        assert params["config_file"] == "/etc/gistnet/config.yaml" and params["model"] == "best"
        if variant == "predict":
            assert (params["engine"], params["threshold"], params["batch_size"]) == ("onnx", 0.35, 8)
        else:
            assert (params["engine"], params["threshold"], params["batch_size"]) == ("torch", None, None)
    assert container(render([]))["args"][0] == "train"


def test_evaluate_mode_runs_gistnet_evaluate_with_the_values():
    from gistnet import cli

    docs = render(VARIANTS["evaluate"])
    assert by_kind(docs, "Job") and network_policy(docs)
    c, e = container(docs), env(docs)
    assert e["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert not {"GISTNET_DATA_URI", "GISTNET_OUTPUT_URI", "GISTNET_OUTPUT_RUN_ID"} & set(e)
    assert e["GISTNET_METRICS_PUSHGATEWAY"]["value"] == "http://pushgateway:9091"  # the exit code is pushed
    args = [a.replace("$(JOB_NAME)", "gistnet-29000000") for a in c["args"]]
    assert args[0] == "evaluate"
    params = cli.evaluate_cmd.make_context("evaluate", args[1:]).params
    assert params["run_uri"] == "s3://gistnet/runs/nightly-1" and params["data"] == "s3://gistnet/hospital-b"
    assert (params["model"], params["batch_size"], params["name"], params["output"]) == ("best", 8, "gistnet-29000000",
                                                                                          None)
    assert params["config_file"] == "/etc/gistnet/config.yaml"
    named = container(render(VARIANTS["evaluate"] + ["--set", "evaluate.name=site-c", "--set",
                                                     "evaluate.output=s3://gistnet/ext"]))["args"]
    assert named[named.index("--name") + 1] == "site-c" and named[named.index("--output") + 1] == "s3://gistnet/ext"


def test_readers_mode_runs_gistnet_readers_with_the_values():
    from gistnet import cli

    docs = render(VARIANTS["readers"])
    c = container(docs)
    assert c["args"][0] == "readers"
    params = cli.readers_cmd.make_context("readers", c["args"][1:]).params
    assert (params["readers_uri"], params["run_uri"], params["data"]) == (
        "s3://gistnet/studies/readers.csv", "s3://gistnet/runs/nightly-1", "s3://gistnet/hospital-b")
    assert (params["model"], params["covariance"], params["output"]) == ("best", "jackknife", None)
    alone = container(render(["--set", "mode=readers", "--set", "readers.file=s3://b/r.csv", "--set",
                              "readers.output=s3://b/study"]))["args"]
    assert "--run" not in alone and alone[alone.index("--output") + 1] == "s3://b/study"


def network_policy(docs):
    return by_kind(docs, "NetworkPolicy")


def test_network_policy_admits_only_metrics_and_allows_only_dns_and_s3():
    docs = render([])
    policy = network_policy(docs)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= job_spec(docs)["template"]["metadata"]["labels"].items()
    assert policy["metadata"]["namespace"] == "ml"
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    dns, s3 = spec["egress"]  # no Pushgateway rule without metrics.pushgateway
    assert {p["port"] for p in dns["ports"]} == {53} and {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert s3["ports"] == [{"port": 443, "protocol": "TCP"}]  # AWS S3: HTTPS only


def test_network_policy_ports_follow_the_endpoints_and_peers_come_from_values():
    minio = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}
    docs = render(["--set", "s3.endpoint=http://minio.minio.svc:9000", "--set", "metrics.pushgateway=http://pg.mon:9091",
                   "--set-json", f"networkPolicy.egress.s3={json.dumps([minio])}",
                   "--set-json", 'networkPolicy.metricsFrom=[{"podSelector":{"matchLabels":{"app":"prometheus"}}}]'])
    spec = network_policy(docs)["spec"]
    _, s3, push = spec["egress"]
    assert s3 == {"to": [minio], "ports": [{"port": 9000, "protocol": "TCP"}]}
    assert push["ports"] == [{"port": 9091, "protocol": "TCP"}]
    assert push["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert spec["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]
    assert network_policy(render(["--set", "s3.endpoint=http://minio"]))["spec"]["egress"][1]["ports"][0]["port"] == 80


def test_network_policy_opens_the_tracking_server_only_when_tracking_is_set():
    """With an MLflow server configured (tracking.mlflowUri, or config.tracking.mlflow_uri) the job
    may reach it, on its URI's port, at the peers in networkPolicy.egress.tracking; otherwise no rule."""
    mlflow_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlflow"}}}
    assert len(network_policy(render([]))["spec"]["egress"]) == 2  # DNS and S3 only
    _, _, push, tracking = network_policy(render(VARIANTS["tracking"]))["spec"]["egress"]
    assert tracking == {"to": [mlflow_ns], "ports": [{"port": 5000, "protocol": "TCP"}]}
    assert push["ports"] == [{"port": 9091, "protocol": "TCP"}]
    _, _, by_config = network_policy(render(VARIANTS["tracking-config-key"]))["spec"]["egress"]
    assert by_config == {"to": [mlflow_ns], "ports": [{"port": 443, "protocol": "TCP"}]}
    peers = [{"ipBlock": {"cidr": "10.20.0.0/16"}}, {"podSelector": {"matchLabels": {"app": "mlflow"}}}]
    _, _, own = network_policy(render(["--set", "tracking.mlflowUri=http://10.20.1.5:8080",
                                       "--set-json", f"networkPolicy.egress.tracking={json.dumps(peers)}"])
                               )["spec"]["egress"]
    assert own == {"to": peers, "ports": [{"port": 8080, "protocol": "TCP"}]}
    assert network_policy(render(VARIANTS["egress-allow-all"] + VARIANTS["tracking"][2:4]))["spec"]["egress"] == [{}]


def test_tracking_uri_and_credentials_reach_the_pod_and_credentials_only_from_a_secret(tmp_path):
    docs = render(VARIANTS["tracking"])
    e = env(docs)
    text = by_kind(docs, "ConfigMap")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(text)
    cfg = config.load_config(tmp_path / "config.yaml", environ={k: v["value"] for k, v in e.items() if "value" in v})
    assert cfg.tracking.mlflow_uri == "http://mlflow.mlflow.svc:5000"  # what the pod resolves
    for var, key in (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_USERNAME"),
                     ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_PASSWORD"), ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_TOKEN")):
        assert e[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": "gistnet-mlflow", "key": key,
                                                                       "optional": True}}}
    assert not by_kind(docs, "Secret")  # the chart never holds the credentials
    assert not {n for n in env(render([])) if n.startswith("MLFLOW_") or "TRACKING" in n}
    assert "MLFLOW_TRACKING_USERNAME" not in env(render(VARIANTS["tracking"][:4]))  # no Secret named: none injected
    for bad in (["--set", "tracking.mlflowUri=http://gistnet:hunter2@mlflow:5000"],
                ["--set", "config.tracking.mlflow_uri=http://gistnet:hunter2@mlflow:5000",
                 "--set", "networkPolicy.enabled=false"]):
        done = helm("template", "gistnet", str(CHART), *bad, check=False)
        assert done.returncode != 0 and "hunter2" not in done.stdout, done.stderr
        assert "user:password@" in done.stderr or "does not match pattern" in done.stderr, done.stderr


def test_network_policy_escapes_and_off_switch():
    assert network_policy(render(VARIANTS["egress-allow-all"]))["spec"]["egress"] == [{}]
    assert network_policy(render(VARIANTS["no-networkpolicy"])) is None
    closed = network_policy(render(["--set-json", "networkPolicy.metricsFrom=[]"]))["spec"]
    assert closed["ingress"] == []  # an empty peer list admits nobody (never `from: []`, which admits all)


def test_image_digest_wins_over_the_tag_and_cpu_limit_is_optional():
    assert container(render([]))["image"] == "ghcr.io/gistnet/gistnet:0.1.0"
    assert container(render(["--set", "image.tag=1.2.3"]))["image"] == "ghcr.io/gistnet/gistnet:1.2.3"
    pinned = render(VARIANTS["pinned-cpu-limit"] + ["--set", "image.tag=1.2.3"])
    assert container(pinned)["image"] == f"ghcr.io/gistnet/gistnet@{DIGEST}"
    assert container(pinned)["resources"]["limits"]["cpu"] == 8
    assert container(render([]))["resources"]["requests"]["cpu"] and "cpu" not in container(render([]))["resources"]["limits"]


def test_checkov_finds_nothing_unexplained_in_any_variant_or_k8s(tmp_path):
    """checkov (offline) on every rendered variant and on k8s/ as kustomize renders it: every
    finding is fixed, or skipped in the chart with a one-line reason (checkov.io/skipN)."""
    paths = []
    for variant, extra in VARIANTS.items():
        paths.append(tmp_path / f"{variant}.yaml")
        paths[-1].write_text(render_text(tuple(extra)))
    paths.append(tmp_path / "k8s.yaml")
    paths[-1].write_text(subprocess.run([k8s_tool("kubectl"), "kustomize", str(REPO / "k8s")], capture_output=True,
                                        text=True, check=True).stdout)
    reports = checkov(paths, "kubernetes")
    assert sum(r["summary"]["passed"] for r in reports if "summary" in r) > 100
    assert unexplained_checkov_findings(reports) == []
    skipped = {c["check_id"] for r in reports for c in r.get("results", {}).get("skipped_checks", [])}
    pinned = checkov([paths[list(VARIANTS).index("pinned-cpu-limit")]], "kubernetes")
    pinned_skips = {c["check_id"] for r in pinned for c in r.get("results", {}).get("skipped_checks", [])}
    assert {"CKV_K8S_43", "CKV_K8S_11"} <= skipped and not {"CKV_K8S_43", "CKV_K8S_11"} & pinned_skips


# ---------------------------------------------------------------- data-parallel training

TRAINJOB_CRD = REPO / "tests" / "kubeflow" / "trainer.kubeflow.org_trainjobs.yaml"


def _strict(schema):
    """kubectl's strict field validation: an object with listed properties takes no others
    (the API server would prune them silently)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema = {**schema, "additionalProperties": False}
        return {k: _strict(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def trainjob_schema():
    crd = yaml.safe_load(TRAINJOB_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return _strict(version["schema"]["openAPIV3Schema"])


def test_ddp_indexed_job_is_a_gang_of_torchrun_pods_behind_a_headless_service():
    docs = render(VARIANTS["ddp-indexed"])
    spec = by_kind(docs, "Job")["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0 and spec["podReplacementPolicy"] == "Failed"
    service = by_kind(docs, "Service")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "gistnet"}
    assert [p["port"] for p in service["spec"]["ports"]] == [29500]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    c = container(docs)
    assert c["args"][:2] == ["launch", "train"]
    e = env(docs)
    assert e["PET_NNODES"]["value"] == "3" and e["PET_NPROC_PER_NODE"]["value"] == "2"
    assert e["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert e["PET_MASTER_ADDR"]["value"] == f"gistnet-0.{service['metadata']['name']}"
    assert e["PET_MASTER_PORT"]["value"] == "29500"
    assert e["NCCL_DEBUG"]["value"] == "WARN" and e["NCCL_IB_DISABLE"]["value"] == "1"
    grace = pod["terminationGracePeriodSeconds"]
    assert 0 < int(e["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"]) < grace  # torchrun must not SIGKILL first
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "metrics-1": 9091, "rendezvous": 29500}  # metrics.port + local rank
    pm = by_kind(docs, "PodMonitor")
    assert [ep["port"] for ep in pm["spec"]["podMetricsEndpoints"]] == ["metrics", "metrics-1"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = volumes[{m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/dev/shm"]]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": "16Gi"}


def test_ddp_keeps_the_exit_code_policy_since_gistnet_launch_passes_exit_codes_through():
    rules = job_spec(render(VARIANTS["ddp-indexed"]))["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert sorted(fail["onExitCodes"]["values"]) == sorted(errors.PERMANENT_EXIT_CODES)
    assert any(errors.EXIT_INTERRUPTED in r.get("onExitCodes", {}).get("values", []) for r in rules
               if r["action"] == "Ignore")


def test_trainjob_validates_against_the_vendored_crd():
    import jsonschema
    import kubernetes_validate

    docs = render(VARIANTS["ddp-trainjob"])
    assert not by_kind(docs, "Job") and not by_kind(docs, "Service")
    trainjob = by_kind(docs, "TrainJob")
    assert trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    jsonschema.validate(trainjob, trainjob_schema())
    spec = trainjob["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["command"][:3] == ["gistnet", "launch", "train"]
    names = [e["name"] for e in trainer["env"]]
    assert not [n for n in names if n.startswith("PET_")]  # Trainer injects them and rejects ours
    assert "NCCL_DEBUG" in names and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in names
    secret_ref = next(e for e in trainer["env"] if e["name"] == "AWS_SECRET_ACCESS_KEY")["valueFrom"]
    assert secret_ref["secretKeyRef"]["name"] == "my-s3"
    # The parts the excerpt leaves to core Kubernetes: validated as one Pod with kubernetes-validate.
    override = spec["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    pod_spec = override["spec"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainjob-node", **override["metadata"]},
           "spec": {"serviceAccountName": pod_spec["serviceAccountName"], "volumes": pod_spec["volumes"],
                    "tolerations": pod_spec["tolerations"],
                    "containers": [{"name": c["name"], "image": trainer["image"], "env": trainer["env"],
                                    "resources": trainer["resourcesPerNode"], "volumeMounts": c["volumeMounts"]}
                                   for c in pod_spec["containers"]]}}
    kubernetes_validate.validate(pod, kubernetes_versions()[-1], strict=True)
    mounts = {m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
    assert mounts == {"/etc/gistnet", "/tmp", "/dev/shm"}


def test_the_vendored_crd_excerpt_rejects_what_trainer_would():
    import jsonschema

    schema = trainjob_schema()
    good = by_kind(render(VARIANTS["ddp-trainjob"]), "TrainJob")
    for broken in ({**good, "spec": {**good["spec"], "runtimeRef": {}}},
                   {**good, "spec": {**good["spec"], "trainer": {**good["spec"]["trainer"], "numNode": 2}}},
                   {**good, "spec": {k: v for k, v in good["spec"].items() if k != "runtimeRef"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


@pytest.mark.parametrize("bad, message", [
    (["--set", "distributed.enabled=true", "--set", "distributed.procPerNode=4"],
     "distributed.procPerNode (4) must equal resources.limits.nvidia.com/gpu (1)"),
    (["--set", "distributed.enabled=true", "--set", "schedule=0 2 * * *"], "distributed.enabled with a schedule"),
    (["--set", "distributed.enabled=true", "--set", "mode=predict", "--set", "predict.run=s3://b/r",
      "--set", "predict.data=s3://b/d", "--set", "predict.output=s3://b/o"], "distributed.enabled is for training"),
    (["--set", "distributed.engine=mpi"], "/distributed/engine"),
    (["--set", "distributed.nccl.DEBUG=1"], "does not match pattern '^NCCL_"),
])
def test_distributed_values_that_cannot_work_are_refused(bad, message):
    done = helm("template", "gistnet", str(CHART), *bad, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


@pytest.mark.parametrize("variant", ["fanout", "fanout-cron"])
def test_fanout_is_an_indexed_job_with_one_completion_per_unit_the_pods_resolve(variant, tmp_path):
    """completions = the (fold, model) units of the config the pods mount, as gistnet counts them
    (runs.all_units); each index resolves to a distinct unit; a failed unit fails only its
    index, permanently on the bad-input codes; preemption is ignored."""
    from gistnet.data import runs

    docs = render(VARIANTS[variant])
    spec = job_spec(docs)
    (tmp_path / "config.yaml").write_text(by_kind(docs, "ConfigMap")["data"]["config.yaml"])
    e = env(docs)
    cfg = config.load_config(tmp_path / "config.yaml", environ={k: v["value"] for k, v in e.items() if "value" in v})
    units = runs.all_units(cfg)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == len(units)
    assert len(units) == (8 if variant == "fanout" else 10)  # 4 or (the default) 5 folds x 2 models
    assert spec["parallelism"] == (3 if variant == "fanout" else 2)
    assert spec["backoffLimitPerIndex"] == 1 and spec["maxFailedIndexes"] == 0 and "backoffLimit" not in spec
    resolved = [runs.select("auto", None, cfg, {"JOB_COMPLETION_INDEX": str(i)})[0] for i in range(len(units))]
    assert sorted(resolved, key=str) == sorted(units, key=str)
    c = container(docs)
    assert c["args"] == ["train", "--config", "/etc/gistnet/config.yaml", "--fold", "auto"]
    assert e["GISTNET_OUTPUT_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"  # one run id for every pod of the Job
    assert e["FANOUT_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert e["GISTNET_METRICS_GROUPING_LABELS"]["value"].endswith(",index=$(FANOUT_INDEX)")
    names = list(e)
    assert names.index("FANOUT_INDEX") < names.index("GISTNET_METRICS_GROUPING_LABELS")  # $(...) sees only earlier vars
    rules = spec["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailIndex")
    assert sorted(fail["onExitCodes"]["values"]) == sorted(errors.PERMANENT_EXIT_CODES)
    assert not any(r["action"] == "FailJob" for r in rules)
    assert any(c["type"] == "DisruptionTarget" for r in rules if r["action"] == "Ignore"
               for c in r.get("onPodConditions", []))
    assert not by_kind(docs, "Service")  # independent pods: no rendezvous


@pytest.mark.parametrize("bad, message", [
    (["--set", "fanout.enabled=true", "--set", "distributed.enabled=true"],
     "fanout.enabled and distributed.enabled together are not supported"),
    (["--set", "fanout.enabled=true", "--set", "mode=predict", "--set", "predict.run=s3://b/r",
      "--set", "predict.data=s3://b/d", "--set", "predict.output=s3://b/o"], "fanout.enabled is for training"),
    (["--set", "fanout.parallelism=0"], "/fanout/parallelism"),
])
def test_fanout_values_that_cannot_work_are_refused(bad, message):
    done = helm("template", "gistnet", str(CHART), *bad, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
