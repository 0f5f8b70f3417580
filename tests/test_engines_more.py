"""INFERENCE_ENGINE=tgi and triton, against scripted servers that answer as their source does
(TGI db931fc router/src/server.rs: /health 200 empty or 503 {"error":"unhealthy",
"error_type":"healthcheck"}, /metrics on the API port; Triton: /v2/health/ready, no /health,
metrics on port 8002), and the contracts of all three added engines as data.  llama.cpp runs for
real in tests/test_llamacpp_peer.py."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from support import RunningPatio, http_call, make_settings

from patio.config import load_settings
from patio.core_settings import ENGINES
from patio.engines import llamacpp
from patio.engines.base import REFUSED
from patio.engines.client import SPECS, EngineClient

FAKES = Path(__file__).parent / "fakes"
TGI_UNHEALTHY = json.dumps({"error": "unhealthy", "error_type": "healthcheck"}).encode()

Answer = Tuple[int, Dict[str, str], bytes]


class Scripted:
    """An HTTP server answering from a table {(method, path): (status, headers, body)}; 404 else."""

    def __init__(self, table: Dict[Tuple[str, str], Answer]) -> None:
        self.table = table
        self.calls: List[Tuple[str, str]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                scripted.calls.append((self.command, path))
                status, headers, body = scripted.table.get((self.command, path), (404, {}, b'{"error":"Not Found"}'))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Scripted":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def tgi_table(healthy: bool = True) -> Dict[Tuple[str, str], Answer]:
    metrics = (FAKES / "tgi-3.3.txt").read_bytes()
    return {
        ("GET", "/health"): (200, {}, b"") if healthy else (503, {"Content-Type": "application/json"}, TGI_UNHEALTHY),
        ("GET", "/metrics"): (200, {"Content-Type": "text/plain; charset=utf-8"}, metrics),
        ("GET", "/v1/models"): (200, {"Content-Type": "application/json"}, b'{"object":"list","data":[{"id":"m"}]}'),
    }


def triton_table(ready: bool = True) -> Dict[Tuple[str, str], Answer]:
    return {("GET", "/v2/health/ready"): (200 if ready else 400, {}, b""), ("GET", "/v2/health/live"): (200, {}, b"")}


def test_every_engine_is_accepted_and_has_a_contract():
    assert set(ENGINES) == set(SPECS) == {"vllm", "sglang", "llamacpp", "tgi", "triton"}
    for engine in ENGINES:
        settings = load_settings([], {"INFERENCE_ENGINE": engine, "PATIO_STATE_DIR": "/tmp/patio-test-engines"})
        assert settings.core.engine == engine


@pytest.mark.parametrize(
    ("engine", "table", "up"),
    [
        ("tgi", tgi_table(True), 200),
        ("tgi", tgi_table(False), 503),
        ("triton", triton_table(True), 200),
        ("triton", triton_table(False), 503),
    ],
    ids=["tgi-healthy", "tgi-unhealthy", "triton-ready", "triton-not-ready"],
)
def test_readiness_follows_the_engines_own_health_endpoint(engine, table, up):
    with Scripted(table) as server, RunningPatio(
        make_settings(env={"INFERENCE_ENGINE": engine, "INFERENCE_ENGINE_ENDPOINT": server.url})
    ) as patio:
        status, _, body = http_call("GET", patio.url + "/ready")
        assert status == up, body
        path = SPECS[engine].health_path
        assert ("GET", path) in server.calls
        assert ("GET", "/health") not in server.calls or path == "/health"


@pytest.mark.parametrize("engine", ["tgi", "triton"])
@pytest.mark.parametrize("op", ["load", "unload"])
def test_loads_and_unloads_are_refused_with_the_engines_reason(engine, op):
    table = tgi_table() if engine == "tgi" else triton_table()
    with Scripted(table) as server, RunningPatio(
        make_settings(env={"INFERENCE_ENGINE": engine, "INFERENCE_ENGINE_ENDPOINT": server.url})
    ) as patio:
        body = {"lora_name": "sql", "lora_path": "/models/sql"} if op == "load" else {"lora_name": "sql"}
        status, _, answer = http_call("POST", patio.url + f"/v1/{op}_lora_adapter", body)
        error = json.loads(answer)
        assert status == 409, error
        assert error["object"] == "error" and error["code"] == 409
        assert f"cannot {op}" in error["message"] and SPECS[engine].lora_hint in error["message"]
        assert not [c for c in server.calls if c[0] == "POST"]  # nothing was sent to the engine
        status, _, listing = http_call("GET", patio.url + "/v1/lora_adapters")
        # Never a fake success: the refusal is what the listing shows, if anything.
        assert status == 200 and all(a["state"] == "failed" for a in json.loads(listing)["data"])


def test_tgi_metrics_pass_through_with_stable_names_available():
    with Scripted(tgi_table()) as server, RunningPatio(
        make_settings(env={"INFERENCE_ENGINE": "tgi", "INFERENCE_ENGINE_ENDPOINT": server.url})
    ) as patio:
        status, _, body = http_call("GET", patio.url + "/metrics")
        text = body.decode()
        assert status == 200
        assert "\ntgi_queue_size 2\n" in text and "\ntgi_batch_current_size 4\n" in text
        assert "patio_engine_up 1" in text


def test_kv_events_stay_off_for_engines_that_publish_none():
    env = {"INFERENCE_ENGINE": "tgi", "REDIS_HOST": "redis", "POD_NAME": "p", "MODEL_NAME": "m"}
    settings = load_settings([], {**env, "PATIO_STATE_DIR": "/tmp/patio-test-engines"})
    assert not settings.kvevents.enabled and "publishes no KV-cache events" in settings.kvevents.reason


def test_triton_metrics_live_on_their_own_port():
    assert SPECS["triton"].metrics_port == 8002 and SPECS["triton"].health_path == "/v2/health/ready"
    assert all(SPECS[e].metrics_port is None for e in ("vllm", "sglang", "llamacpp", "tgi"))


# -- llama.cpp's adapter list (tools/server: GET /lora-adapters) -------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[{"id":0,"path":"/m/sql-lora.gguf","scale":1.0}]', {"sql-lora": "/m/sql-lora.gguf"}),
        (
            '[{"id":0,"path":"/a/x.gguf","scale":1.0},{"id":1,"path":"/b/x.gguf","scale":0.5}]',
            {"x": "/a/x.gguf", "x-1": "/b/x.gguf"},
        ),
        ('[{"id":0,"path":"/m/plain","scale":1.0,"task_name":"","prompt_prefix":""}]', {"plain": "/m/plain"}),
        ("[]", {}),
    ],
    ids=["one", "same-file-name-told-apart-by-id", "extra-fields-and-no-suffix", "none"],
)
def test_llamacpp_adapter_list(body, expected):
    assert llamacpp.parse_adapters(body) == expected


@pytest.mark.parametrize("body", ['{"id":0}', '[{"path":1,"id":0}]', "not json"], ids=["object", "bad-path", "garbage"])
def test_llamacpp_adapter_list_that_is_not_one_is_an_error(body):
    with pytest.raises(ValueError):
        llamacpp.parse_adapters(body)


def test_llamacpp_load_of_a_preloaded_adapter_is_done_and_of_anything_else_refused():
    listing = b'[{"id":0,"path":"/m/sql-lora.gguf","scale":1.0}]'
    with Scripted({("GET", "/lora-adapters"): (200, {"Content-Type": "application/json"}, listing)}) as server:
        client = EngineClient(SPECS["llamacpp"], server.url, None)
        done = client.lora("load", {"lora_name": "sql-lora", "lora_path": "/m/sql-lora.gguf"}, timeout=5)
        assert done.kind == "ok"
        for payload in (
            {"lora_name": "sql-lora", "lora_path": "/elsewhere/sql-lora.gguf"},
            {"lora_name": "other", "lora_path": "/m/sql-lora.gguf"},
        ):
            refused = client.lora("load", payload, timeout=5)
            assert refused.kind == REFUSED and refused.status == 409
            assert "sql-lora (/m/sql-lora.gguf)" in refused.message  # what it does serve
        assert client.lora("unload", {"lora_name": "sql-lora"}, timeout=5).kind == REFUSED
        assert [c for c in server.calls if c[0] == "POST"] == []
        assert client.adapters(timeout=5) == {"sql-lora": "/m/sql-lora.gguf"}
