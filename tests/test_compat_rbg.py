"""Issue 25 item 7: RoleBasedGroup's sidecar moved to rolebasedgroup/inference-engine-runtime
(RBG PR #366).  Its clients, routes, environment and topology client at its newest commit,
a6acbfe434a6ac09b1b5e6cc9dd38877f63f658a, replayed against Patio as test_compat_clients.py
replays AIBrix's and Kthena's:

- routes on 9091, no ``/v1`` prefix (api/server_router.py: ``GET /``, ``GET /health``,
  ``GET /metrics``; api/lora_router.py: ``POST /load_lora_adapter``, ``POST /unload_lora_adapter``
  with ``{lora_name, lora_path}`` / ``{lora_name}``; errors as api/protocol.py ``ErrorResponse``
  ``{code, type, message, object, param}``), called as its README and tests/e2e/test_lora.sh call
  them (curl, byte for byte);
- the engine calls behind them (engine/sglang_engine.py ``/load_lora_adapter``,
  engine/vllm_engine.py ``/v1/load_lora_adapter``, body ``{lora_name, lora_path}``);
- the environment (envs.py) and flags (app.py ``main``);
- the topology client (topo/client/sgl_topo_client.py): the router at
  ``{GROUP_NAME}-{SGL_ROUTER_ROLE_NAME}-0.s-{GROUP_NAME}-{SGL_ROUTER_ROLE_NAME}:{SGL_ROUTER_PORT}``,
  the worker at ``POD_IP:port`` else ``{GROUP}-{ROLE}-{INDEX}.s-{GROUP}-{ROLE}:port``,
  ``POST /workers`` with the instance info's ``data`` less ``port`` plus ``url`` (python-requests
  ``json=``), 202 with ``worker_id`` expected; ``DELETE /workers/{worker_id}``, 202 expected.
  Replayed against the real smg 1.13 router, then compared with what Patio registers.

Differences found, and what became of them: every field of ``data`` goes to the router (Patio sent
only url, worker_type and bootstrap_port: smg's ``priority``/``cost`` were lost; fixed);
``TOPO_TYPE`` without ``--instance-info`` registers nothing (Patio exited 2; fixed in
patio/topology/settings.py); ``python -m patio.app`` runs Patio (test_entrypoints.py).  Kept as
they are, on purpose: a load answers Patio's object (``status``, ``message``, ``lora_name``,
``lora_path`` ...), not RBG's bare JSON string ``"Success: LoRA adapter 'x' added successfully."``;
a bare Hub id as ``lora_path`` (its e2e script's ``AiStudent1023/qwen3-8b-korean-lora``) is refused
with a message naming ``hf://`` (issue 13, row 22); unknown body fields are accepted, not a 422.
"""

import json
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pytest
from compat_fakes import replay
from fakes.engine import FakeEngine
from peers.routers import GENERATIONS, RealRouter
from support import PatioProcess, RunningPatio, make_settings

from patio.config import load_settings

pytestmark = pytest.mark.slow


def curl(port: int, method: str, path: str, body: Optional[str] = None) -> bytes:
    """What ``curl -X METHOD URL [-H "Content-Type: application/json" -d BODY]`` writes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: localhost:{port}", "User-Agent: curl/8.5.0", "Accept: */*"]
    data = b""
    if body is not None:
        data = body.encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def requests_bytes(host: str, method: str, path: str, payload: Optional[Dict[str, Any]] = None) -> bytes:
    """What python-requests writes for ``requests.post(url, json=payload, headers={"Content-Type":
    "application/json"})`` and ``requests.delete(url)`` (the topology client's calls)."""
    data = b"" if payload is None else json.dumps(payload).encode()  # requests: complexjson.dumps(json)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: python-requests/2.32.3"]
    lines += ["Accept-Encoding: gzip, deflate", "Accept: */*", "Connection: keep-alive"]
    if payload is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


# --- routes: api/server_router.py, api/lora_router.py ---------------------------------------------


@pytest.fixture(params=["sglang", "vllm"])
def world(request: Any) -> Iterator[Dict[str, Any]]:
    with FakeEngine(request.param) as engine:
        engine.metrics_body = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2\n"
        engine.metrics_body += b"# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 2\n"
        env = {"INFERENCE_ENGINE": request.param, "INFERENCE_ENGINE_ENDPOINT": engine.url}
        with RunningPatio(make_settings(["--enable-fastapi-docs", "--lora-reconcile-interval", "0"], env)) as patio:
            yield {"patio": patio, "engine": engine, "kind": request.param}


def _call(w: Dict[str, Any], raw: bytes) -> Tuple[int, Dict[str, str], bytes]:
    return replay(w["patio"].port, raw)


def row_root(w: Dict[str, Any]) -> None:
    status, _, body = _call(w, curl(9091, "GET", "/"))
    assert status == 200 and json.loads(body)["message"] == "Patio Server is running"


def row_health(w: Dict[str, Any]) -> None:
    status, _, body = _call(w, curl(9091, "GET", "/health"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def row_metrics(w: Dict[str, Any]) -> None:
    status, headers, body = _call(w, curl(9091, "GET", "/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert "patio:num_requests_running 2" in body.decode()  # engine_metric_rules.py's rename


def row_readme_load_and_unload(w: Dict[str, Any]) -> None:
    # README "LoRA Adapter Management", verbatim.
    body = '{"lora_name": "my-adapter", "lora_path": "/models/my-adapter"}'
    status, _, answer = _call(w, curl(9091, "POST", "/load_lora_adapter", body))
    assert status == 200, answer
    engine = w["engine"]
    load = "/v1/load_lora_adapter" if w["kind"] == "vllm" else "/load_lora_adapter"
    assert [c.json() for c in engine.calls_to(load)] == [{"lora_name": "my-adapter", "lora_path": "/models/my-adapter"}]
    status, _, answer = _call(w, curl(9091, "POST", "/unload_lora_adapter", '{"lora_name": "my-adapter"}'))
    assert status == 200, answer
    unload = "/v1/unload_lora_adapter" if w["kind"] == "vllm" else "/unload_lora_adapter"
    assert [c.json()["lora_name"] for c in engine.calls_to(unload)] == ["my-adapter"]


def row_e2e_script_load(w: Dict[str, Any]) -> None:
    # tests/e2e/test_lora.sh's curl, its multi-line body verbatim: a bare Hub id as lora_path.
    body = (
        '{\n      "lora_name": "qwen3-8b-korean-lora",\n      "lora_path": "AiStudent1023/qwen3-8b-korean-lora"\n    }'
    )
    status, _, answer = _call(w, curl(9091, "POST", "/load_lora_adapter", body))
    error = json.loads(answer)
    assert status == 400 and "hf://" in error["message"]  # kept on purpose (module docstring)
    assert set(error) >= {"code", "type", "message", "object", "param"} and error["object"] == "error"


def row_engine_refusal_is_rbgs_error_shape(w: Dict[str, Any]) -> None:
    w["engine"].fail_next.append((500, {"error": {"message": "boom", "type": "InternalServerError"}}))
    body = '{"lora_name": "x", "lora_path": "/models/x"}'
    status, _, answer = _call(w, curl(9091, "POST", "/load_lora_adapter", body))
    error = json.loads(answer)
    assert status >= 500 and error["code"] == status and error["object"] == "error"
    assert set(error) >= {"code", "type", "message", "object", "param"}


def row_fastapi_docs_flag(w: Dict[str, Any]) -> None:
    for path in ("/docs", "/openapi.json"):
        status, _, _ = _call(w, curl(9091, "GET", path))
        assert status == 200, path


ROUTE_ROWS = [
    ("root", row_root),
    ("health", row_health),
    ("metrics", row_metrics),
    ("readme_load_and_unload", row_readme_load_and_unload),
    ("e2e_script_load_bare_hub_id", row_e2e_script_load),
    ("engine_refusal_error_shape", row_engine_refusal_is_rbgs_error_shape),
    ("enable_fastapi_docs", row_fastapi_docs_flag),
]


@pytest.mark.parametrize("row", [r[1] for r in ROUTE_ROWS], ids=[r[0] for r in ROUTE_ROWS])
def test_rbg_routes(world: Dict[str, Any], row: Callable[[Dict[str, Any]], None]) -> None:
    row(world)


# --- environment and flags: envs.py, app.py main -------------------------------------------------

ENV_ROWS = [
    # (id, argv, env, expected core fields)
    ("defaults", [], {}, {"port": 9091, "host": "0.0.0.0", "engine": "sglang", "engine_version_default": "v0.5.3"}),
    ("engine_any_case", [], {"INFERENCE_ENGINE": "SGLang"}, {"engine": "sglang", "engine_configured": True}),
    ("version", [], {"INFERENCE_ENGINE_VERSION": "v0.5.4"}, {"engine_version": "v0.5.4"}),
    ("metric_scrape_path", [], {"METRIC_SCRAPE_PATH": "/stats"}, {"metrics_path": "/stats"}),
    ("rbg_names", [], {"GROUP_NAME": "g", "ROLE_NAME": "r", "ROLE_INDEX": "1"}, {"group_name": "g", "role_index": "1"}),
    ("heartbeat", [], {"HEARTBEAT_INTERVAL": "10"}, {"heartbeat_interval": 10.0}),
    (
        "flags",
        ["--host", "127.0.0.1", "--port", "8080", "--log-level", "DEBUG"],
        {},
        {"port": 8080, "log_level": "DEBUG"},
    ),
]


@pytest.mark.parametrize("argv,env,expected", [r[1:] for r in ENV_ROWS], ids=[r[0] for r in ENV_ROWS])
def test_rbg_environment(argv, env, expected):
    core = load_settings(argv, env, program="patio.app").core
    assert {key: getattr(core, key) for key in expected} == expected


def test_topo_type_alone_registers_nothing():
    """app.py main: the topology client starts only with --instance-info (its README's profile sets
    TOPO_TYPE on every pod, without a router)."""
    assert load_settings([], {"TOPO_TYPE": "SGLang"}).topology.enabled is False
    info = ["--instance-info", '{"data": {"port": 8000}}']
    env = {"TOPO_TYPE": "SGLang", "GROUP_NAME": "g", "SGL_ROUTER_ROLE_NAME": "router", "SGL_ROUTER_PORT": "8000"}
    assert load_settings(info, {**env, "POD_IP": "10.1.2.3"}).topology.enabled is True


# --- topology: topo/client/sgl_topo_client.py -------------------------------------------------------


def rbg_router_endpoint(env: Dict[str, str]) -> str:
    """get_sgl_router_endpoint, as written there."""
    group, role, port = env["GROUP_NAME"], env["SGL_ROUTER_ROLE_NAME"], env["SGL_ROUTER_PORT"]
    return f"{group}-{role}-0.s-{group}-{role}:{port}"


def rbg_worker_endpoint(data: Dict[str, Any], env: Dict[str, str]) -> str:
    """get_worker_endpoint, as written there."""
    port = data.get("port", "8000")
    if env.get("POD_IP") is not None:
        return f"{env['POD_IP']}:{port}"
    group, role, index = env["GROUP_NAME"], env["ROLE_NAME"], env["ROLE_INDEX"]
    return f"{group}-{role}-{index}.s-{group}-{role}:{port}"


def rbg_register_body(data: Dict[str, Any], env: Dict[str, str]) -> Dict[str, Any]:
    """SGLangGroupTopoClient.register: the data less port, plus url."""
    body = dict(data)
    body["url"] = f"http://{rbg_worker_endpoint(data, env)}"
    del body["port"]
    return body


TOPO_ENV = {
    "TOPO_TYPE": "SGLang",
    "GROUP_NAME": "sglang-pd",
    "SGL_ROUTER_ROLE_NAME": "router",
    "SGL_ROUTER_PORT": "8000",
}
DERIVATION = [
    # (id, env beyond TOPO_ENV, instance-info data)
    ("pod_ip", {"POD_IP": "10.0.0.7"}, {"port": 8000, "worker_type": "prefill", "bootstrap_port": 34000}),
    ("headless_name", {"ROLE_NAME": "decode", "ROLE_INDEX": "0"}, {"port": 8000, "worker_type": "decode"}),
]


@pytest.mark.parametrize("env,data", [d[1:] for d in DERIVATION], ids=[d[0] for d in DERIVATION])
def test_router_and_worker_addresses_are_rbgs(env, data):
    full = {**TOPO_ENV, **env}
    topology = load_settings(["--instance-info", json.dumps({"data": data})], full).topology
    assert topology.router_url == f"http://{rbg_router_endpoint(full)}"
    assert topology.worker_url == f"http://{rbg_worker_endpoint(data, full)}"


def _wait(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


REGISTRATION_FIELDS = ("url", "worker_type", "priority", "cost", "bootstrap_port")


@pytest.fixture()
def smg() -> Iterator[RealRouter]:
    router = RealRouter(next(g for g in GENERATIONS if g.name == "smg-1.13.0"))
    try:
        yield router
    finally:
        router.stop()


def test_registration_is_rbgs_against_the_real_router(smg):
    """RBG's register/unregister bytes replayed against smg 1.13, then Patio registering the same
    worker: the router holds the same record (before, Patio dropped priority and cost)."""
    with FakeEngine("sglang") as engine:
        data = {"port": engine.port, "worker_type": "regular", "priority": 7, "cost": 2.5}
        env = {**TOPO_ENV, "POD_IP": "127.0.0.1"}
        host = f"127.0.0.1:{smg.port}"
        status, _, answer = replay(smg.port, requests_bytes(host, "POST", "/workers", rbg_register_body(data, env)))
        assert status == 202, answer  # the client requires 202 ...
        worker_id = json.loads(answer)["worker_id"]  # ... and a worker_id
        url = f"http://127.0.0.1:{engine.port}"
        theirs = _wait(lambda: smg.listed(url))
        status, _, answer = replay(smg.port, requests_bytes(host, "DELETE", f"/workers/{worker_id}"))
        assert status == 202, answer  # unregister requires 202
        _wait(lambda: smg.routable(url) is None)

        patio_env = {
            **env,
            "SGL_ROUTER_ENDPOINT": smg.url,  # the name above does not resolve on this machine
            "INFERENCE_ENGINE_ENDPOINT": engine.url,
            "HEARTBEAT_INTERVAL": "0.3",
        }
        patio = PatioProcess(
            ["--instance-info", json.dumps({"data": data}), "--scrape-engine-metrics", "false"], env=patio_env
        )
        try:
            ours = _wait(lambda: smg.routable(url))
            assert {k: ours.get(k) for k in REGISTRATION_FIELDS} == {k: theirs.get(k) for k in REGISTRATION_FIELDS}
            assert ours["priority"] == 7 and ours["cost"] == 2.5
            assert patio.stop() == 0
        finally:
            patio.kill()
        _wait(lambda: smg.routable(url) is None)  # unregistered on SIGTERM, by the id the router gave
