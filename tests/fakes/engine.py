"""Fake vLLM and SGLang servers built from ``shared/reference/engines.md``.

Status codes and bodies follow the documented contracts exactly (vLLM's plain
text success with no Content-Type, SGLang's JSON ``success`` flag with 400 on
failure).  Faults no real engine produces on demand are switches: slow
answers, 503 bursts, a dead health endpoint, a restart that forgets adapters,
garbage or truncated metrics.  Every call is recorded for assertions.
"""

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class Call:
    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeEngine:
    """A fake engine on 127.0.0.1; ``kind`` is ``"vllm"`` or ``"sglang"``."""

    def __init__(self, kind: str = "vllm", port: int = 0, api_key: Optional[str] = None) -> None:
        assert kind in ("vllm", "sglang")
        self.kind = kind
        self.api_key = api_key
        self.adapters: Dict[str, str] = {}  # name -> path
        self.valid_paths: Optional[set] = None  # None: every path is an adapter; else only these
        self.calls: List[Call] = []
        self.lock = threading.Lock()
        self.health_status = 200
        # What the engine says it is: vLLM's GET /version, SGLang's GET /server_info and
        # /get_server_info (patio.engines.detect cites the sources).  None (the default, which
        # tests written before identification rely on): those routes are a 404.
        self.version: Optional[str] = None
        self.metrics_body: bytes = b""
        self.metrics_status = 200
        self.metrics_delay = 0.0
        self.metrics_truncate = False  # announce a longer body than sent, then close
        self.metrics_gzip = False
        self.lora_delay = 0.0
        # While set to an unset Event, LoRA calls wait on it (at most GATE_LIMIT s): a load that
        # stays in the engine as long as the test wants.
        self.lora_gate: Optional[threading.Event] = None
        self.models_delay = 0.0
        self.models_body: Optional[bytes] = None  # set: GET /v1/models answers these bytes as they are
        self.health_delay = 0.0
        self.fail_next: List[Tuple[int, Any]] = []  # queued (status, body) answers for LoRA calls
        self.internal_error_paths: set = set()  # load of these paths -> 500
        self._port = port
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.start()

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        handler = _make_handler(self)
        server = _QuietServer(("127.0.0.1", self._port), handler)
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restart(self, forget: bool = True) -> None:
        """Stop and start on the same port; a real engine restart drops runtime-loaded adapters."""
        self.stop()
        if forget:
            with self.lock:
                self.adapters.clear()
        self.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def calls_to(self, path: str, method: str = "POST") -> List[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == path and c.method == method]

    def __enter__(self) -> "FakeEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- contract -------------------------------------------------------------------
    def load_path(self) -> str:
        return "/v1/load_lora_adapter" if self.kind == "vllm" else "/load_lora_adapter"

    def unload_path(self) -> str:
        return "/v1/unload_lora_adapter" if self.kind == "vllm" else "/unload_lora_adapter"

    def models(self) -> Dict[str, Any]:
        owner = self.kind
        data = [{"id": BASE_MODEL, "object": "model", "root": BASE_MODEL, "parent": None, "owned_by": owner}]
        with self.lock:
            for name, path in self.adapters.items():
                data.append({"id": name, "object": "model", "root": path, "parent": BASE_MODEL, "owned_by": owner})
        return {"object": "list", "data": data}


def _vllm_error(message: str, type_: str, code: int, param: Any = None) -> Tuple[int, Dict[str, str], bytes]:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return code, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _sglang_answer(engine: FakeEngine, success: bool, message: str = "") -> Tuple[int, Dict[str, str], bytes]:
    body = {
        "rid": None,
        "http_worker_ipc": None,
        "success": success,
        "error_message": message,
        "loaded_adapters": dict(engine.adapters),
    }
    return (200 if success else 400), {"Content-Type": "application/json"}, json.dumps(body).encode()


# The longest a gated LoRA call waits (so a test that forgets to open the gate still ends).
GATE_LIMIT = 60.0


def _lora(engine: FakeEngine, path: str, payload: Any) -> Tuple[int, Dict[str, str], bytes]:
    if engine.lora_delay:
        time.sleep(engine.lora_delay)
    gate = engine.lora_gate
    if gate is not None:
        gate.wait(GATE_LIMIT)
    with engine.lock:
        if engine.fail_next:
            status, body = engine.fail_next.pop(0)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            return status, {"Content-Type": "application/json"}, raw
    if not isinstance(payload, dict):
        payload = {}
    name = payload.get("lora_name")
    lora_path = payload.get("lora_path")
    loading = path == engine.load_path()
    if engine.kind == "vllm":
        if not name or (loading and not lora_path):
            field = "lora_name" if not name else "lora_path"
            body = {"object": "error", "message": "Field required", "type": "Bad Request", "param": f"body.{field}"}
            return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
        with engine.lock:
            if loading:
                if name == BASE_MODEL:
                    return _vllm_error("The lora adapter name must not be the base model.", "InvalidUserInput", 400)
                if name in engine.adapters and not payload.get("load_inplace"):
                    msg = (
                        f"The lora adapter '{name}' has already been loaded. "
                        "If you want to load the adapter in place, set 'load_inplace' to True."
                    )
                    return _vllm_error(msg, "InvalidUserInput", 400)
                if lora_path in engine.internal_error_paths:
                    return _vllm_error("LoRA rank 64 is greater than max_lora_rank 8.", "InternalServerError", 500)
                if engine.valid_paths is not None and lora_path not in engine.valid_paths:
                    msg = f"Loading lora {name} failed: No adapter found for <path>/{os.path.basename(str(lora_path))}"
                    return _vllm_error(msg, "NotFoundError", 404)
                engine.adapters[name] = lora_path
                return 200, {}, f"Success: LoRA adapter '{name}' added successfully.".encode()
            if name not in engine.adapters:
                return _vllm_error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            del engine.adapters[name]
            return 200, {}, f"Success: LoRA adapter '{name}' removed successfully.".encode()
    # SGLang
    if not name or (loading and not lora_path):
        body = {"object": "error", "message": "Field required", "type": "Bad Request", "param": None, "code": 400}
        return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
    with engine.lock:
        if loading:
            if name in engine.adapters:
                return _sglang_answer(engine, False, f"Failed to load LoRA adapter {name} because it is already loaded")
            if engine.valid_paths is not None and lora_path not in engine.valid_paths:
                return _sglang_answer(
                    engine,
                    False,
                    f"Failed to load LoRA adapter {name}: Can't find 'adapter_config.json' at '{lora_path}'",
                )
            engine.adapters[name] = lora_path
            return _sglang_answer(engine, True)
        if name not in engine.adapters:
            loaded = ", ".join(engine.adapters)
            return _sglang_answer(engine, False, f"LoRA with name {name} does not exist. Loaded LoRAs: {loaded}")
        del engine.adapters[name]
        return _sglang_answer(engine, True)


class _QuietServer(ThreadingHTTPServer):
    """A client that hung up mid-answer is what timeout tests do on purpose: no traceback for it."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(engine: FakeEngine) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, headers: Dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            with engine.lock:
                engine.calls.append(Call(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body))
            if path == "/health" or path == "/health_generate":
                if engine.health_delay:
                    time.sleep(engine.health_delay)
                return self._send(engine.health_status, {}, b"")
            if path == "/metrics":
                return self._metrics()
            if self.command == "GET" and engine.version is not None:
                if engine.kind == "vllm" and path == "/version":
                    return self._send(
                        200, {"Content-Type": "application/json"}, json.dumps({"version": engine.version}).encode()
                    )
                if engine.kind == "sglang" and path in ("/server_info", "/get_server_info"):
                    info = {"model_path": BASE_MODEL, "tp_size": 1, "internal_states": [{}], "version": engine.version}
                    return self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode())
            guarded = path.startswith("/v1") if engine.kind == "vllm" else path != "/health"
            if engine.api_key and guarded:
                if self.headers.get("Authorization") != f"Bearer {engine.api_key}":
                    return self._send(401, {"Content-Type": "application/json"}, b'{"error":"Unauthorized"}')
            if path == "/v1/models" and self.command == "GET":
                if engine.models_delay:
                    time.sleep(engine.models_delay)
                answer = engine.models_body if engine.models_body is not None else json.dumps(engine.models()).encode()
                return self._send(200, {"Content-Type": "application/json"}, answer)
            if self.command == "POST" and path in (engine.load_path(), engine.unload_path()):
                if engine.kind == "vllm" and self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    return self._send(*_vllm_error("Unsupported Media Type", "Bad Request", 400))
                try:
                    payload = json.loads(body) if body else {}
                except ValueError:
                    payload = {}
                return self._send(*_lora(engine, path, payload))
            if engine.kind == "vllm":
                return self._send(404, {"Content-Type": "application/json"}, b'{"detail":"Not Found"}')
            return self._send(404, {"Content-Type": "application/json"}, b'{"detail":"Not Found"}')

        def _metrics(self) -> None:
            if engine.metrics_delay:
                time.sleep(engine.metrics_delay)
            body = engine.metrics_body
            headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
            if engine.metrics_gzip and "gzip" in (self.headers.get("Accept-Encoding") or ""):
                import gzip

                body = gzip.compress(body)
                headers["Content-Encoding"] = "gzip"
            if engine.metrics_truncate:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + 1000))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._send(engine.metrics_status, headers, body)

        do_GET = _handle
        do_POST = _handle
        do_HEAD = _handle
        do_DELETE = _handle

    return Handler
