import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gistnet.observe.metrics import RunMetrics
from gistnet.data.storage import TransferStats
from tests.conftest import REPO, free_port, start_server, wait_http


def exposition(m: RunMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def populated() -> RunMetrics:
    stats = TransferStats()
    stats.add(downloaded=1000, uploaded=10)
    m = RunMetrics(stats)
    m.run_started("run-1", "cpu")
    m.stage("download", 1.5)
    m.model_started("resnet34", 10)
    m.on_step("resnet34", 32)
    m.on_epoch("resnet34", {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.7, "val_loss": 0.6,
                            "val_accuracy": 0.65, "images": 32, "train_seconds": 1.0, "seconds": 2.0}, 10)
    m.model_evaluated("resnet34", {"sensitivity": {"value": 0.8}, "specificity": {"value": None},
                                   "accuracy": {"value": 0.7}})
    m.run_ended(0)
    return m


def test_exposition_parses_and_follows_conventions():
    fams = families(exposition(populated()))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("gistnet_epoch", (("model", "resnet34"),))] == 1
    assert samples[("gistnet_images_processed_total", (("model", "resnet34"),))] == 32
    # 32 images in 1 s of training steps; the 2 s of the whole epoch include validation
    assert samples[("gistnet_images_per_second", (("model", "resnet34"),))] == 32
    assert samples[("gistnet_downloaded_bytes_total", ())] == 1000
    assert samples[("gistnet_run_info", (("device", "cpu"), ("run_id", "run-1"), ("version", "0.1.0")))] == 1
    assert fams["gistnet_images_processed"].type == "counter"
    for f in fams.values():
        assert f.name.startswith("gistnet_")
        for s in f.samples:
            assert set(s.labels) <= {"model", "stage", "metric", "run_id", "version", "device"}, s


def test_every_metric_is_documented_in_the_monitoring_page():
    page = (REPO / "docs" / "monitoring.md").read_text()
    documented = set(re.findall(r"`(gistnet_[a-z_]+)`", page))
    exposed = set()
    for f in families(exposition(populated())).values():
        exposed |= {s.name for s in f.samples if not s.name.endswith("_created")}
    assert exposed <= documented, exposed - documented


def _gateway_value(url: str, name: str, headers: dict | None = None) -> float | None:
    with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers or {}), timeout=5) as r:
        text = r.read().decode()
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name and s.labels.get("job") == "gistnet-test":
                assert "instance" not in s.labels or s.labels["instance"] == ""
                return s.value
    return None


@pytest.mark.e2e
def test_pushgateway_keeps_last_success_after_a_failure(pushgateway):
    ok = populated()
    ok.push(pushgateway, "gistnet-test", {"cronjob": "nightly"}, succeeded=True)
    success = _gateway_value(pushgateway, "gistnet_last_success_timestamp_seconds")
    assert success and success > 1e9
    time.sleep(1.1)
    failed = RunMetrics()
    failed.run_started("run-2", "cpu")
    failed.run_ended(4)
    failed.push(pushgateway, "gistnet-test", {"cronjob": "nightly"}, succeeded=False)
    assert _gateway_value(pushgateway, "gistnet_last_success_timestamp_seconds") == success
    assert _gateway_value(pushgateway, "gistnet_run_exit_code") == 4


def test_a_stage_timed_in_pieces_adds_up():
    m = RunMetrics()
    m.stage("checkpoint", 1.5, "resnet34")
    m.stage("checkpoint", 2.0, "resnet34")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families(exposition(m)).values() for s in f.samples}
    assert samples[("gistnet_stage_duration_seconds", (("model", "resnet34"), ("stage", "checkpoint")))] == 3.5


@pytest.mark.e2e
def test_push_with_credentials_in_the_url_uses_basic_auth(pushgateway_with_auth):
    from tests.conftest import PUSHGATEWAY_PASSWORD, PUSHGATEWAY_USER, basic_auth_header

    with_credentials, bare = pushgateway_with_auth
    populated().push(with_credentials, "gistnet-test", {}, succeeded=True)
    auth = basic_auth_header(PUSHGATEWAY_USER, PUSHGATEWAY_PASSWORD)
    assert _gateway_value(bare, "gistnet_run_exit_code", auth) == 0
    with pytest.raises(urllib.error.HTTPError, match="401"):  # the gateway does check
        _gateway_value(bare, "gistnet_run_exit_code")


@pytest.mark.e2e
def test_failed_cli_run_pushes_its_exit_code(pushgateway, cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli("train", "--data", empty, "--output", tmp_path / "out", "--pushgateway", pushgateway,
               env={**__import__("os").environ, "GISTNET_METRICS_JOB_NAME": "gistnet-test"})
    assert done.returncode == 4
    assert _gateway_value(pushgateway, "gistnet_run_exit_code") == 4
    assert _gateway_value(pushgateway, "gistnet_last_success_timestamp_seconds") is None


SCRAPE_S = 0.2  # Prometheus's scrape interval, and the query's step: eight short epochs show the gauge rising


def _query_range(prom: str, query: str, start: float, end: float) -> list[float]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": SCRAPE_S})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{params}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success"
    result = body["data"]["result"]
    return [float(v) for _, v in result[0]["values"]] if result else []


@pytest.mark.e2e
def test_prometheus_scrapes_a_running_training(tiny_data, tmp_path):
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {SCRAPE_S * 1000:.0f}ms\n  scrape_timeout: {SCRAPE_S * 1000:.0f}ms\n"
        f"scrape_configs:\n  - job_name: gistnet\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    prom = start_server(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                        f"http://127.0.0.1:{prom_port}/-/ready", tmp_path / "prometheus.log")
    prom_url = f"http://127.0.0.1:{prom_port}"
    try:
        started = time.time()
        train = subprocess.Popen([sys.executable, "-m", "gistnet", "train", "--data", str(tiny_data), "--output",
                                  str(tmp_path / "runs"), "--models", "resnet34", "--epochs", "8", "--image-size", "32",
                                  "--batch-size", "8", "--augmentation", "none",
                                  "--metrics-port", str(metrics_port), "--checkpoint-every", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "GISTNET_EXPLAIN_ENABLED": "false"})
        _, stderr = train.communicate(timeout=600)
        assert train.returncode == 0, stderr
        time.sleep(1)
        # eight short epochs (no augmentation, no saliency), scraped every SCRAPE_S
        epochs = _query_range(prom_url, 'gistnet_epoch{model="resnet34"}', started, time.time())
        images = _query_range(prom_url, 'gistnet_images_processed_total{model="resnet34"}', started, time.time())
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    assert len(set(epochs)) >= 3, epochs  # the epoch gauge was seen rising
    assert epochs == sorted(epochs)
    assert images == sorted(images) and images[-1] > images[0], images


def test_busy_metrics_port_is_a_config_error():
    import socket

    from gistnet.errors import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics.port {port}: cannot serve"):
            RunMetrics().serve(port, addr="127.0.0.1")


def test_serve_exposes_metrics_over_http():
    m = populated()
    port = free_port()
    m.serve(port, addr="127.0.0.1")
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", 10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert "gistnet_epoch" in families(r.read().decode())
    finally:
        m.close()


def test_predict_metrics_are_documented_and_follow_conventions():
    from gistnet.observe.metrics import PredictMetrics

    m = PredictMetrics(TransferStats())
    m.run_started("run-1", "cpu")
    m.stage("download", 0.5)
    m.chunk_scored("resnet34", 30, 1.5, unusable=2)
    m.chunk_scored("resnet34", 10, 0.5, unusable=0)
    m.run_ended(0)
    fams = families(exposition(m))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("gistnet_images_scored_total", (("model", "resnet34"),))] == 40
    assert samples[("gistnet_images_unusable", ())] == 2
    assert samples[("gistnet_scored_images_per_second", (("model", "resnet34"),))] == 20
    assert samples[("gistnet_stage_duration_seconds", (("model", "resnet34"), ("stage", "score")))] == 2.0
    documented = set(re.findall(r"`(gistnet_[a-z_]+)`", (REPO / "docs" / "monitoring.md").read_text()))
    assert {s[0] for s in samples if not s[0].endswith("_created")} <= documented


def test_each_training_process_serves_its_metrics_with_a_rank_label():
    """Under torchrun every rank serves on metrics.port + LOCAL_RANK, each sample labelled with its rank."""
    from prometheus_client.parser import text_string_to_metric_families

    m = populated()
    port = free_port()
    m.serve(port, addr="127.0.0.1", labels={"rank": "3"})
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", 10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        m.close()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert samples and all(s.labels.get("rank") == "3" for s in samples)
    epoch = next(s for s in samples if s.name == "gistnet_epoch")
    assert set(epoch.labels) == {"model", "rank"}
