"""Unregistration by the id the router gave, on the real routers (sglang-router 0.3.2, smg 1.13.0,
vllm-router 0.1.17; tests/peers/routers.py).

RoleBasedGroup's old sidecar removed a worker with ``DELETE /workers/{url-quoted endpoint}``;
smg and sglang-router answer that with 400 "Invalid worker_id ... (expected UUID)" and keep the
worker (rbg PR #177, sgl-project/rbg python/patio/topo/client/sgl_topo_client.py).  smg's own
answers (smg-project/smg model_gateway/src/worker/service.rs at f8daa8835, which carries PRs
#1977 and #1967): ``POST /workers`` -> 202 with ``worker_id`` and ``Location: /workers/{id}``;
``DELETE /workers/{id}``; a URL without a lowercase http(s) scheme refused with 400
(model_gateway/src/config/validation.rs validate_worker_url, PR #1977).  A router restarts
with new ids for everyone (UUIDv7 on smg), and may list the worker again by itself
(``--worker-urls``, smg's service discovery) before Patio's next heartbeat.

A recording relay (tests/peers/recording_proxy.py) between Patio and the router shows every
request Patio sent and every answer it got.
"""

import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import quote

import pytest
from fakes.engine import FakeEngine
from peers.polling import wait_for
from peers.recording_proxy import RecordingProxy
from peers.routers import BY_NAME, GENERATIONS, Generation, RealRouter
from support import PatioProcess, http_json

pytestmark = pytest.mark.slow

HEARTBEAT = 0.3


@pytest.fixture(params=GENERATIONS, ids=[g.name for g in GENERATIONS])
def generation(request: Any) -> Generation:
    return request.param


@pytest.fixture()
def engine() -> Iterator[FakeEngine]:
    e = FakeEngine("sglang")
    yield e
    e.stop()


def start_patio(
    router_url: str,
    engine_url: str,
    engine_port: int,
    topo_type: str,
    *,
    pod_ip: str = "127.0.0.1",
    interval: float = HEARTBEAT,
    env: Optional[Dict[str, str]] = None,
) -> PatioProcess:
    full_env = {
        "TOPO_TYPE": topo_type,
        "SGL_ROUTER_ENDPOINT": router_url,
        "POD_IP": pod_ip,
        "INFERENCE_ENGINE_ENDPOINT": engine_url,
        "HEARTBEAT_INTERVAL": str(interval),
        "PATIO_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    argv = ["--instance-info", json.dumps({"data": {"port": engine_port}}), "--scrape-engine-metrics", "false"]
    return PatioProcess(argv, env=full_env)


def topology(p: PatioProcess) -> Dict[str, Any]:
    return http_json("GET", p.url + "/v1/topology")[1]


def test_patio_removes_the_worker_by_the_id_the_router_gave(generation: Generation, engine: FakeEngine) -> None:
    router = RealRouter(generation)
    proxy = RecordingProxy(router.port)
    p = start_patio(proxy.url, engine.url, engine.port, generation.topo_type)
    try:
        assert wait_for(lambda: router.listed(engine.url)), p.output()
        assert wait_for(lambda: topology(p)["registered"]), p.output()
        assert p.stop(signal.SIGTERM) == 0
        assert router.routable(engine.url) is None, router.workers()
        posts, deletes = proxy.calls("POST", "/workers"), proxy.calls("DELETE")
        assert posts and deletes, proxy.exchanges
        if generation.detected == "vllm-router":  # no ids: its DELETE is keyed by URL (src/server.rs)
            assert {d.path for d in deletes} == {"/workers/" + quote(engine.url, safe="")}
            return
        answer = posts[0].json_answer()
        worker_id = answer["worker_id"]
        assert posts[0].status == 202 and posts[0].headers["location"] == f"/workers/{worker_id}", posts[0]
        assert {d.path for d in deletes} == {f"/workers/{worker_id}"}, deletes
        assert proxy.calls("GET", f"/workers/{worker_id}"), "heartbeats look the worker up by that id"
        # What rbg PR #177 fixed: the URL where the id belongs is refused and removes nothing.
        other = f"http://localhost:{engine.port}"  # smg still lists the first as draining: 409
        status, _ = router.add(other)
        assert status == 202 and wait_for(lambda: router.listed(other))
        status, body = _delete(router.url + "/workers/" + quote(other, safe=""))
        assert status == 400 and "expected UUID" in body, (status, body)
        assert router.listed(other) is not None
    finally:
        p.kill()
        proxy.close()
        router.stop()


def test_patio_never_sends_a_schemeless_url_and_brackets_ipv6(generation: Generation) -> None:
    """An IPv6 pod (POD_IP=::1): the worker URL is http://[::1]:PORT.  Unbracketed it is
    refused by smg (400 "empty host") and never reached by sglang-router."""
    v6 = SmallEngine("::1")
    router = RealRouter(generation)
    proxy = RecordingProxy(router.port)
    worker = f"http://[::1]:{v6.port}"
    p = start_patio(proxy.url, worker, v6.port, generation.topo_type, pod_ip="::1")
    try:
        # Registered for real: the router's add job checked the worker (pending entries say false).
        assert wait_for(lambda: (router.listed(worker) or {}).get("is_healthy") is True, timeout=20), (
            router.workers(),
            p.output(),
        )
        assert wait_for(lambda: topology(p)["registered"]), p.output()
        posts = proxy.calls("POST", "/workers")
        assert posts and {e.json_body()["url"] for e in posts} == {worker}, posts
        assert p.stop(signal.SIGTERM) == 0
        assert router.routable(worker) is None
        if generation.detected == "smg":  # PR #1977: what Patio must never send
            for url in (f"[::1]:{v6.port}", f"HTTP://[::1]:{v6.port}", f"http://::1:{v6.port}"):
                status, body = router.add(url)
                assert status == 400, (url, status, body)
    finally:
        p.kill()
        proxy.close()
        router.stop()
        v6.stop()


def test_a_router_that_renumbered_after_a_restart_is_left_without_a_ghost(
    generation: Generation, engine: FakeEngine
) -> None:
    """The router restarts and lists the worker again by itself, under a new id, before Patio's
    next heartbeat (here 30 s away).  On SIGTERM the DELETE of the old id answers 404: Patio
    finds the new id by URL and removes that.  Before, it took the 404 as "gone" and exited,
    leaving a worker routers never evict."""
    first = RealRouter(generation)
    env = {"PATIO_HEARTBEAT_JITTER": "0"}
    p = start_patio(first.url, engine.url, engine.port, generation.topo_type, interval=30.0, env=env)
    second: Optional[RealRouter] = None
    try:
        assert wait_for(lambda: topology(p)["registered"] and first.listed(engine.url)), p.output()
        old_id = topology(p)["worker_id"]
        first.kill()
        second = RealRouter(generation, "--worker-urls", engine.url, port=first.port)
        renumbered = wait_for(lambda: second.listed(engine.url))
        assert renumbered, second.workers()
        if generation.detected != "vllm-router":
            assert renumbered["id"] != old_id
        assert topology(p)["worker_id"] == old_id  # Patio has not looked yet
        assert p.stop(signal.SIGTERM) == 0
        assert second.routable(engine.url) is None, (second.workers(), p.output())
    finally:
        p.kill()
        first.stop()
        if second is not None:
            second.stop()


def _delete(url: str) -> Any:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("flags", [(), ("pd",)], ids=["regular", "pd_mode"])
def test_heartbeats_look_the_worker_up_and_post_once(generation: Generation, engine: FakeEngine, flags: Any) -> None:
    """Each heartbeat is a membership check by the router's key (the id where lookups take one,
    the URL on vLLM's router in both its modes), never a blind re-POST.  vllm-router
    --enable-igw answers a lookup by the id it gave with 404 (observed on 0.1.17)."""
    extra = generation.pd_flags if flags else ()
    router = RealRouter(generation, *extra)
    proxy = RecordingProxy(router.port)
    p = start_patio(proxy.url, engine.url, engine.port, generation.topo_type)
    try:
        assert wait_for(lambda: topology(p)["registered"] and router.listed(engine.url)), p.output()
        time.sleep(8 * HEARTBEAT)
        lookups = [e for e in proxy.calls("GET", "/workers/")]
        assert len(lookups) >= 4 and all(e.status == 200 for e in lookups[-4:]), lookups[-4:]
        assert len(proxy.calls("POST", "/workers")) == 1, proxy.calls("POST")
        assert topology(p)["router_restarts"] == 0
        assert p.stop(signal.SIGTERM) == 0
        assert router.routable(engine.url) is None, router.workers()
    finally:
        p.kill()
        proxy.close()
        router.stop()


# smg re-checks a worker whose first startup check failed every --worker-startup-check-interval
# (default 30 s; smg main.rs, workflow/steps/mod.rs detect_connection_mode): 1 s here.
ADD_JOB_FLAGS = {"sglang-router-0.3.2": (), "smg-1.13.0": ("--worker-startup-check-interval", "1")}


@pytest.mark.parametrize("name", sorted(ADD_JOB_FLAGS))
def test_a_sigterm_during_the_routers_add_job_leaves_no_worker(name: str) -> None:
    """sglang-router and smg answer POST /workers at once and add the worker in a background
    job that first checks its health; a DELETE sent while that job runs is lost (smg's
    RemoveWorker fails "Worker ... not found"; sglang-router's is overtaken) and the job lists
    the worker anyway.  Here the engine answers the router's health checks 503 for 1 s
    (Patio's own /health at once), and SIGTERM comes right after the 202.  (vllm-router
    answers its POST only once the worker is added: no job runs after it.)"""
    router = RealRouter(BY_NAME[name], *ADD_JOB_FLAGS[name])
    engine = SmallEngine(hold=1.0)
    p = start_patio(router.url, engine.url, engine.port, "SGLang")
    try:
        assert wait_for(lambda: topology(p)["worker_id"]), p.output()
        assert p.stop(signal.SIGTERM) == 0
        assert "unregistered" in p.output(), p.output()
        # The previous code's DELETE was lost: the add job listed the worker 1.5 s later, for good.
        for _ in range(20):
            assert router.routable(engine.url) is None, (router.workers(), p.output())
            time.sleep(0.25)
    finally:
        p.kill()
        router.stop()
        engine.stop()


class SmallEngine:
    """An SGLang-like engine on ``host``: /health and /v1/models (smg's add job looks the served
    model up; a 404 there makes it retry for seconds), 404 for the routers' other probes.  With
    ``hold``, /health answers a router 503 for its first ``hold`` seconds (told apart by
    User-Agent; Patio's own probe answers at once), so the router's add job takes that long."""

    def __init__(self, host: str = "127.0.0.1", hold: float = 0.0) -> None:
        first: List[float] = []
        models = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = 404, b'{"detail":"Not Found"}'
                if self.path == "/health":
                    code, body = 200, b""
                    if hold and not self.headers.get("User-Agent", "").startswith("patio/"):
                        first.append(time.monotonic())
                        code = 200 if time.monotonic() - first[0] >= hold else 503
                elif self.path == "/v1/models":
                    code, body = 200, models
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
