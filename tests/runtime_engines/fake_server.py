"""A fake vLLM / SGLang OpenAI server that Patio launches as a real process (tests only).

Put ``tests/runtime_engines`` on the engine's PYTHONPATH and ``python -m
vllm.entrypoints.openai.api_server`` / ``python -m sglang.launch_server`` run this instead
of the engine: the real argv, the real process group, the real HTTP.  The control routes
follow the engines' source (the citations are on each route); the rest is the least an
engine does for Patio to see it (``/health``, ``/v1/models``, completions, ``/metrics``).

What a real engine does when it is asked the wrong thing is kept, because Patio must
never ask it: a vLLM put to sleep while requests decode dies (vllm-project/vllm#45520,
CUDA illegal access); an SGLang asked to release memory while it serves dies (the
scheduler's ``assert self.is_fully_idle(...)``, weight_updater.py).

Test switches (flags, passed through ``engine_config.args`` like any engine flag):
``--fake-exit-at-once``, ``--fake-never-ready``, ``--fake-start-delay S``,
``--fake-token-delay S``, ``--fake-worker`` (a child in the process group),
``--fake-worker-ignores-term``, ``--fake-log-spam BYTES`` (log written per second).
Every request is appended to ``$FAKE_ENGINE_JOURNAL`` (one JSON line: method, target,
headers, body), so a test can read exactly what Patio sent.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def parse_args(argv):
    args = {"flags": set()}
    i = 0
    valued = {
        "--model",
        "--model-path",
        "--served-model-name",
        "--host",
        "--port",
        "--fake-start-delay",
        "--fake-token-delay",
        "--fake-log-spam",
        "--max-model-len",
        "--max-num-seqs",
    }
    while i < len(argv):
        item = argv[i]
        if item in valued and i + 1 < len(argv):
            args[item] = argv[i + 1]
            i += 2
            continue
        args["flags"].add(item)
        i += 1
    return args


class State:
    def __init__(self, kind, args):
        self.kind = kind
        self.args = args
        self.served = args.get("--served-model-name") or args.get("--model") or args.get("--model-path")
        self.cond = threading.Condition()
        self.running = 0  # decoding now
        self.waiting = 0  # held while scheduling is paused
        self.success = 0
        self.paused = False
        self.sleep_level = 0
        self.released = False  # SGLang memory released
        self.token_delay = float(args.get("--fake-token-delay", "0.01"))
        self.max_seqs = int(args.get("--max-num-seqs", "256"))
        self.never_ready = "--fake-never-ready" in args["flags"]
        self.sleep_mode = "--enable-sleep-mode" in args["flags"] or "--enable-memory-saver" in args["flags"]
        self.dev_mode = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
        self.adapters = {}  # LoRA name -> path (vLLM's runtime LoRA routes)
        self.journal = os.environ.get("FAKE_ENGINE_JOURNAL")
        self.journal_lock = threading.Lock()


def die(message):
    """What a crashing engine does: a last log line, then the process is gone (workers too)."""
    print(f"ERROR {message}", flush=True)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            return

        def _journal(self, body):
            if not state.journal:
                return
            entry = {
                "method": self.command,
                "target": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
            }
            with state.journal_lock, open(state.journal, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

        def _send(self, status, value, content_type="application/json"):
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            self._journal(b"")
            self._route("GET", b"")

        def do_POST(self):
            body = self._body()
            self._journal(body)
            self._route("POST", body)

        def _route(self, method, body):
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            if path == "/health" and method == "GET":
                return self._send(503 if state.never_ready else 200, b"", "text/plain")
            if path == "/v1/models" and method == "GET":
                cards = [{"id": state.served, "object": "model", "root": state.served, "parent": None}]
                for name, root in sorted(state.adapters.items()):
                    cards.append({"id": name, "object": "model", "root": root, "parent": state.served})
                return self._send(200, {"object": "list", "data": cards})
            if state.kind == "vllm" and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/fake/forget"):
                return self._lora(path, body)
            if path == "/metrics" and method == "GET":
                return self._send(200, self._metrics().encode(), "text/plain; version=0.0.4")
            if path == "/v1/completions" and method == "POST":
                return self._complete(body)
            if state.kind == "vllm":
                return self._vllm(method, path, query)
            return self._sglang(method, path, body)

        def _lora(self, path, body):
            """vLLM's runtime LoRA routes (plain-text 200, 400 for a duplicate, 404 unknown)."""
            if path == "/fake/forget":  # test hook: the engine lost its adapters
                state.adapters.clear()
                return self._send(200, {})
            request = json.loads(body or b"{}")
            name = request.get("lora_name")
            if state.sleep_level:
                die("a LoRA adapter loaded into a sleeping engine")
            if path == "/v1/load_lora_adapter":
                if name in state.adapters:
                    return self._send(400, {"error": {"message": "already loaded", "type": "InvalidUserInput"}})
                state.adapters[name] = request.get("lora_path")
                return self._send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), "")
            if name not in state.adapters:
                return self._send(404, {"error": {"message": "cannot be found", "type": "NotFoundError"}})
            del state.adapters[name]
            return self._send(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), "")

        def _metrics(self):
            label = f'{{model_name="{state.served}"}}'
            if state.kind == "vllm":
                return (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f"vllm:num_requests_running{label} {state.running}\n"
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f"vllm:num_requests_waiting{label} {state.waiting}\n"
                    "# TYPE vllm:request_success_total counter\n"
                    f"vllm:request_success_total{label} {state.success}\n"
                )
            return (
                "# TYPE sglang:num_running_reqs gauge\n"
                f"sglang:num_running_reqs{label} {state.running}\n"
                "# TYPE sglang:num_queue_reqs gauge\n"
                f"sglang:num_queue_reqs{label} {state.waiting}\n"
            )

        def _complete(self, body):
            request = json.loads(body or b"{}")
            tokens = int(request.get("max_tokens", 4))
            text = ""
            finish = "length"
            with state.cond:
                # Queued behind --max-num-seqs, or while scheduling is paused (vLLM's PAUSED_NEW).
                while state.paused or state.sleep_level or state.released or state.running >= state.max_seqs:
                    state.waiting += 1
                    state.cond.wait()
                    state.waiting -= 1
                state.running += 1
            try:
                for index in range(tokens):
                    time.sleep(state.token_delay)
                    with state.cond:
                        # SGLang's retract pause puts a running request back in the queue.
                        while state.kind == "sglang" and state.paused:
                            state.running -= 1
                            state.waiting += 1
                            state.cond.wait()
                            state.waiting -= 1
                            state.running += 1
                    text += f" t{index}"
            finally:
                with state.cond:
                    state.running -= 1
                    state.success += 1
                    state.cond.notify_all()
            answer = {
                "object": "text_completion",
                "model": state.served,
                "choices": [{"text": text, "finish_reason": finish}],
            }
            return self._send(200, answer)

        # vllm/entrypoints/serve/dev/sleep/api_router.py (vLLM 0.32): /sleep, /wake_up, /is_sleeping;
        # vllm/entrypoints/serve/dev/server_info/api_router.py: /server_info.  Dev mode only.
        def _vllm(self, method, path, query):
            dev = {"/sleep": "POST", "/wake_up": "POST", "/is_sleeping": "GET", "/server_info": "GET"}
            if path not in dev or not state.dev_mode:
                return self._send(404, {"detail": "Not Found"})
            if dev[path] != method:
                return self._send(405, {"detail": "Method Not Allowed"})
            if path == "/server_info":
                config = {"model_config": {"enable_sleep_mode": "--enable-sleep-mode" in state.args["flags"]}}
                return self._send(200, {"vllm_config": config, "vllm_env": {}, "system_env": {}})
            if path == "/is_sleeping":
                return self._send(200, {"is_sleeping": state.sleep_level > 0})
            if path == "/sleep":
                # level: Annotated[int, Query(ge=0, le=2)] = 1; mode: PauseMode = "abort"
                raw_level = query.get("level", ["1"])[-1]
                mode = query.get("mode", ["abort"])[-1]
                if not raw_level.lstrip("-").isdigit() or not 0 <= int(raw_level) <= 2:
                    return self._send(422, {"detail": [{"loc": ["query", "level"], "msg": "bad level"}]})
                if mode not in ("abort", "wait", "keep"):
                    return self._send(422, {"detail": [{"loc": ["query", "mode"], "msg": "bad mode"}]})
                level = int(raw_level)
                with state.cond:
                    state.paused = True  # pause_scheduler: PAUSED_NEW, new requests queue
                    if mode == "wait":
                        while state.running:
                            state.cond.wait()
                    if level >= 1:
                        if state.running:
                            die("CUDA error: an illegal memory access was encountered (sleep with requests in flight)")
                        state.sleep_level = level
                return self._send(200, {"status": "sleeping", "level": level})
            if path == "/wake_up":
                tags = query.get("tags") or None
                with state.cond:
                    rest = None if tags is None else [t for t in tags if t != "scheduling"]
                    if rest is None or rest:
                        state.sleep_level = 0
                    fully_awake = state.sleep_level == 0
                    if fully_awake:
                        state.paused = False
                        state.cond.notify_all()
                return self._send(200, {"status": "awake" if fully_awake else "sleeping", "tags": tags})
            return None

        # python/sglang/srt/entrypoints/http_server.py (SGLang 0.5.23), lines 1575-1597 and 1831-1855.
        def _sglang(self, method, path, body):
            if path == "/get_server_info" and method == "GET":
                return self._send(200, {"enable_memory_saver": "--enable-memory-saver" in state.args["flags"]})
            if method != "POST" or path not in (
                "/release_memory_occupation",
                "/resume_memory_occupation",
                "/pause_generation",
                "/continue_generation",
            ):
                return self._send(404, {"detail": "Not Found"})
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):  # Body() model: RequestValidationError, turned into 400
                error = {
                    "object": "error",
                    "message": "Field required",
                    "type": "Bad Request",
                    "param": None,
                    "code": 400,
                }
                return self._send(400, error)
            with state.cond:
                if path == "/pause_generation":
                    state.paused = True
                    if payload.get("mode") == "retract":
                        while state.running:
                            state.cond.wait(0.01)
                    return self._send(200, {"message": "Generation paused successfully.", "status": "ok"})
                if path == "/continue_generation":
                    state.paused = False
                    state.cond.notify_all()
                    return self._send(200, {"message": "Generation continued successfully.", "status": "ok"})
                if path == "/release_memory_occupation":
                    if state.running or (state.waiting and not state.paused):
                        die("AssertionError: release_memory_occupation should be called only when server is idle.")
                    state.released = True
                    return self._send(200, b"null")
                if not state.released:  # offload_tags.remove(tag): KeyError kills the scheduler
                    die("KeyError: 'weights'")
                state.released = False
                state.cond.notify_all()
                return self._send(200, b"null")

    return Handler


def _worker(ignore_term):
    """A child that stays in the engine's process group, as vLLM's EngineCore does."""
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "while True: time.sleep(1)\n"
    return subprocess.Popen([sys.executable, "-c", code])


def _spam(count):
    line = "INFO spam " + "x" * 100 + "\n"
    while True:
        sys.stdout.write(line * max(1, count // len(line)))
        sys.stdout.flush()
        time.sleep(1.0)


def main(kind):
    args = parse_args(sys.argv[1:])
    print(f"INFO fake {kind} starting: {sys.argv[1:]}", flush=True)
    if "--fake-exit-at-once" in args["flags"]:
        print("ERROR fake engine: cannot load the model (exiting at once)", flush=True)
        sys.exit(3)
    if kind == "vllm" and "--enable-sleep-mode" in args["flags"] and os.environ.get("FAKE_SLEEP_MODE") != "1":
        # vllm/config/model.py: "Sleep mode is not supported on current platform."
        print("ValueError: Sleep mode is not supported on current platform.", flush=True)
        sys.exit(1)
    time.sleep(float(args.get("--fake-start-delay", "0")))
    workers = []
    if "--fake-worker" in args["flags"]:
        workers.append(_worker("--fake-worker-ignores-term" in args["flags"]))
    if "--fake-log-spam" in args:
        threading.Thread(target=_spam, args=(int(args["--fake-log-spam"]),), daemon=True).start()
    state = State(kind, args)
    server = ThreadingHTTPServer((args.get("--host", "127.0.0.1"), int(args["--port"])), make_handler(state))
    server.daemon_threads = True

    def on_term(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"INFO fake {kind} serving {state.served} on port {args['--port']}", flush=True)
    server.serve_forever(poll_interval=0.05)
    for worker in workers:  # a clean engine stops its workers; one that ignores SIGTERM stays
        worker.terminate()
    print("INFO fake engine stopped", flush=True)
