"""Topology against the real SGLang router (sglang-router from PyPI), Patio as a real process."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from fakes.engine import FakeEngine
from support import PatioProcess, free_port, http_json

HEARTBEAT = 1.0


class Router:
    def __init__(self, *extra, port=None):
        self.port = port or free_port()
        self.extra = extra
        self.proc = None
        self.start()

    def start(self):
        args = [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(free_port()),
            "--health-check-interval-secs",
            "1",
            "--health-failure-threshold",
            "2",
            "--health-success-threshold",
            "1",
            "--health-check-timeout-secs",
            "1",
            "--worker-startup-timeout-secs",
            "10",
            "--log-level",
            "warn",
            *self.extra,
        ]
        env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9")
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("router did not start")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def workers(self, key=None):
        request = urllib.request.Request(self.url + "/workers")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())["workers"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture()
def router():
    r = Router()
    yield r
    r.stop()


@pytest.fixture()
def engine():
    e = FakeEngine("sglang")
    yield e
    e.stop()


def patio(router_url, engine, worker_type="prefill", bootstrap=34000, extra_env=None, args=()):
    info = {"data": {"port": engine.port, "worker_type": worker_type}}
    if bootstrap:
        info["data"]["bootstrap_port"] = bootstrap
    env = {
        "TOPO_TYPE": "SGLang",
        "SGL_ROUTER_ENDPOINT": router_url,
        "POD_IP": "127.0.0.1",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "HEARTBEAT_INTERVAL": str(HEARTBEAT),
    }
    env.update(extra_env or {})
    return PatioProcess(["--instance-info", json.dumps(info), "--scrape-engine-metrics", "false", *args], env=env)


def wait_for(predicate, timeout=15.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(step)
    return False


def listed(router, url, **want):
    for w in router.workers(want.pop("key", None)):
        if w["url"] == url and all(w.get(k) == v for k, v in want.items()):
            return w
    return None


def test_registers_and_worker_is_healthy_with_type_and_bootstrap(router, engine):
    with patio(router.url, engine) as p:
        assert wait_for(
            lambda: listed(router, engine.url, worker_type="prefill", bootstrap_port=34000, is_healthy=True)
        )
        status, topo = http_json("GET", p.url + "/v1/topology")
        assert status == 200 and topo["registered"] and topo["worker_url"] == engine.url
        assert topo["worker_id"] == listed(router, engine.url)["id"]
        assert wait_for(lambda: http_json("GET", p.url + "/ready")[0] == 200, timeout=5)
        assert p.stop() == 0


def test_waits_for_engine_health_before_registering(router, engine):
    engine.health_status = 503
    with patio(router.url, engine) as p:
        time.sleep(2.5)
        assert router.workers() == []
        status, body = http_json("GET", p.url + "/ready")
        assert status == 503 and "waiting for the engine" in body["message"]
        engine.health_status = 200
        assert wait_for(lambda: listed(router, engine.url))
        p.stop()


def test_router_restart_relearns_worker_within_one_heartbeat(router, engine):
    with patio(router.url, engine) as p:
        assert wait_for(lambda: listed(router, engine.url))
        first = listed(router, engine.url)["id"]
        router.stop()
        router.start()
        restarted = time.monotonic()
        assert wait_for(lambda: listed(router, engine.url), timeout=HEARTBEAT * 3 + 2)
        assert time.monotonic() - restarted < HEARTBEAT * 3 + 2
        assert wait_for(lambda: http_json("GET", p.url + "/v1/topology")[1]["worker_id"] != first, timeout=5)
        _, _, metrics = __import__("support").http_call("GET", p.url + "/metrics")
        assert b"patio_topology_router_restarts_total 1" in metrics
        p.stop()


def test_sigterm_unregisters_before_exit_within_budget(router, engine):
    p = patio(router.url, engine, args=("--shutdown-timeout", "6"))
    try:
        assert wait_for(lambda: listed(router, engine.url))
        started = time.monotonic()
        code = p.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
        assert code == 0 and elapsed < 6
        assert listed(router, engine.url) is None
        assert "unregistered" in p.output()
    finally:
        p.kill()


def test_router_down_at_shutdown_still_exits_within_budget(router, engine):
    p = patio(router.url, engine, args=("--shutdown-timeout", "4", "--drain-timeout", "1"))
    try:
        assert wait_for(lambda: listed(router, engine.url))
        router.stop()
        started = time.monotonic()
        assert p.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 4.5
        assert "could not unregister" in p.output()
    finally:
        p.kill()


def test_router_api_key():
    keyed = Router("--api-key", "router-secret")
    engine = FakeEngine("sglang")
    try:
        with patio(keyed.url, engine, extra_env={"SGL_ROUTER_API_KEY": "router-secret"}) as p:
            assert wait_for(lambda: listed(keyed, engine.url, key="router-secret"))
            assert p.stop() == 0
        assert listed(keyed, engine.url, key="router-secret") is None
        with patio(keyed.url, engine) as p:
            assert wait_for(lambda: http_json("GET", p.url + "/v1/topology")[1]["last_heartbeat_result"] == "error")
            topo = http_json("GET", p.url + "/v1/topology")[1]
            assert not topo["registered"] and "SGL_ROUTER_API_KEY" in topo["last_heartbeat_error"]
            assert http_json("GET", p.url + "/ready")[0] == 503
            assert listed(keyed, engine.url, key="router-secret") is None
            p.stop()
    finally:
        keyed.stop()
        engine.stop()


def test_prefill_and_decode_side_by_side_with_pd_router():
    pd = Router("--pd-disaggregation")
    prefill_engine, decode_engine = FakeEngine("sglang"), FakeEngine("sglang")
    try:
        with patio(pd.url, prefill_engine, "prefill", 34000) as p1, patio(pd.url, decode_engine, "decode", None) as p2:
            assert wait_for(lambda: listed(pd, prefill_engine.url, worker_type="prefill", bootstrap_port=34000))
            assert wait_for(lambda: listed(pd, decode_engine.url, worker_type="decode"))
            assert p1.stop() == 0 and p2.stop() == 0
        assert pd.workers() == []
    finally:
        pd.stop()
        prefill_engine.stop()
        decode_engine.stop()
