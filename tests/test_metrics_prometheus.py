"""A real Prometheus server (Debian package) scrapes Patio every second and ingests it."""

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, free_port, make_settings, shared_path

PROMETHEUS = shutil.which("prometheus")


def _query(port: int, expr: str):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


@pytest.fixture()
def prometheus_scraping():
    if PROMETHEUS is None:
        pytest.fail("the prometheus server binary is missing: apt-get install prometheus (tests/run.sh does)")
    engine = FakeEngine("vllm")
    engine.metrics_body = shared_path("fixtures", "metrics", "vllm-0.33-single.txt").read_bytes()
    settings = make_settings([], {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url})
    workdir = Path(tempfile.mkdtemp(prefix="patio-prom-"))
    with RunningPatio(settings) as patio:
        port = free_port()
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: patio\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{patio.port}']\n"
        )
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield port, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            engine.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def test_prometheus_ingests_patio(prometheus_scraping):
    port, proc = prometheus_scraping
    deadline = time.monotonic() + 30
    up = tokens = buckets = None
    while time.monotonic() < deadline:
        try:
            up = _query(port, 'up{job="patio"}')
            tokens = _query(port, "patio:input_tokens_total")
            buckets = _query(port, "patio:time_to_first_token_seconds_bucket")
        except OSError:
            pass
        if up and tokens and buckets:
            break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "prometheus exited"
        time.sleep(0.5)
    assert up and up[0]["value"][1] == "1", up
    assert tokens and float(tokens[0]["value"][1]) == 812.0
    assert tokens[0]["metric"]["model_name"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert len(buckets) == 23
    health = _query(port, 'scrape_samples_scraped{job="patio"}')
    assert int(health[0]["value"][1]) > 400
