"""What the llm-d endpoint picker computes from Patio, with its own code replayed (tests/epp_replay.py,
llm-d/llm-d-router at ebab687: extractor.go, spec.go, loraspec.go, factories.go) and the engine config
Patio ships (deploy/kubernetes/gateway/patio-epp.yaml).

For vLLM, the EPP pointed at Patio computes what it computes pointed at vLLM itself; for SGLang it
gains LoRA affinity and the cache geometry its built-in config misses on 0.5.23; for an engine that
goes down it sees a full pod, where pointed at the engine it would keep the last (idle) numbers."""

import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml
from epp_replay import (
    GO_INT_INDEFINITE,
    EndpointMetrics,
    Extractor,
    atoi,
    engine_type,
    parse_spec,
    registry,
    text_families,
)
from fakes.engine import FakeEngine
from support import RunningPatio, http_call, http_json, make_settings, shared_path

from patio.metrics.assemble import assemble
from patio.metrics.parse import parse
from patio.metrics.protocol import ProtocolState, ProtocolView, by_name
from patio.metrics.protocol_tables import PROTOCOLS, Gauge
from patio.metrics.rules import RuleSet
from patio.metrics.write import render

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "gateway" / "patio-epp.yaml"
NOW = 1795342400.5


def shipped_extractor_params() -> Dict:
    for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")):
        if doc and doc["kind"] == "ConfigMap":
            config = yaml.safe_load(doc["data"]["config.yaml"])
            return next(p["parameters"] for p in config["plugins"] if p["type"] == "core-metrics-extractor")
    raise AssertionError("no EPP ConfigMap in the manifest")


def patio_extractor(pod_labels: Dict[str, str] = {}) -> Extractor:  # noqa: B006 - read only
    mappings = registry(shipped_extractor_params())
    return Extractor(mappings.get(engine_type(pod_labels), mappings["default"]))


def engine_extractor(engine: str) -> Extractor:
    return Extractor(registry()[engine])


def patio_metrics(engine: str, text: str, state: ProtocolState) -> str:
    """What Patio's /metrics holds for a router: the engine's families (mode both) and the view."""
    families = parse(text, verbatim=True).families
    output = ProtocolView.for_engine(engine, "patio").families(by_name(families), state)
    engine_share = assemble([], families, RuleSet.for_scheme("patio", engine), "both").text
    return engine_share + render(output.renamed + output.router)


def capture(name: str) -> str:
    return shared_path("fixtures", "metrics", name).read_text(encoding="utf-8")


def observed(metrics: EndpointMetrics) -> Dict:
    return {
        "queue": metrics.waiting_queue_size,
        "running": metrics.running_requests_size,
        "kv": metrics.kv_cache_usage_percent,
        "active": sorted(metrics.active_models),
        "waiting": sorted(metrics.waiting_models),
        "max": metrics.max_active_models,
        "block": metrics.cache_block_size,
        "blocks": metrics.cache_num_blocks,
    }


def test_the_shipped_config_is_what_the_picker_accepts():
    params = shipped_extractor_params()
    assert set(params) <= {"engineLabelKey", "defaultEngine", "engineConfigs"}
    mappings = registry(params)
    patio = mappings["patio"]
    assert mappings["default"] is patio
    assert (patio.queue.name, patio.lora.name, patio.cache_info.name) == (
        "patio:router_num_requests_waiting",
        "patio:lora_requests_info",
        "patio:cache_config_info",
    )
    # Every pod, labelled or not, is read with Patio's names.
    for labels in ({}, {"llm-d.ai/engine-type": "patio"}, {"llm-d.ai/engine-type": "sglang-typo"}):
        assert patio_extractor(labels).mapping == patio


@pytest.mark.parametrize("name", ["vllm-0.33-single.txt", "vllm-0.33-multiproc.txt"])
def test_vllm_through_patio_computes_what_vllm_itself_gives(name):
    text = capture(name)
    direct = engine_extractor("vllm").poll(text)
    through = patio_extractor().poll(patio_metrics("vllm", text, ProtocolState(True, now=NOW)))
    assert (
        observed(through)
        == observed(direct)
        == {
            "queue": 1,
            "running": 3,
            "kv": 0.0734,
            "active": ["chat-lora", "sql-lora"],
            "waiting": [],
            "max": 4,
            "block": 16,
            "blocks": 27306,
        }
    )


def test_sglang_through_patio_gains_lora_affinity_and_cache_geometry():
    text = capture("sglang-0.5.23.txt")
    direct = engine_extractor("sglang")
    direct.poll(text)
    # The built-in SGLang config reads sglang:cache_config_info, which 0.5.23 no longer writes.
    assert any("sglang:cache_config_info" in e for e in direct.errors)
    assert observed(direct.metrics)["active"] == [] and direct.metrics.cache_block_size == 0
    through = patio_extractor()
    through.poll(patio_metrics("sglang", text, ProtocolState(True, ("sql-lora", "chat-lora"), None, NOW)))
    assert through.errors == []
    assert observed(through.metrics) == {
        "queue": 1,
        "running": 3,
        "kv": 0.07,
        "active": ["chat-lora", "sql-lora"],
        "waiting": [],
        "max": 8,
        "block": 1,
        "blocks": 64512,
    }


def test_latest_lora_update_wins_and_comma_lists_split_as_the_epp_splits_them():
    first = 'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters=""}'
    newer = (
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora, math-lora",'
        'waiting_lora_adapters="chat-lora"}'
    )
    old_line = first + " 1.7953422136615288e+09"
    text = capture("vllm-0.33-single.txt").replace(old_line, old_line + "\n" + newer + " 1.7953422236615288e+09")
    assert text.count("vllm:lora_requests_info{") == 2
    direct = engine_extractor("vllm").poll(text)
    through = patio_extractor().poll(patio_metrics("vllm", text, ProtocolState(True, now=NOW)))
    assert (sorted(through.active_models), sorted(through.waiting_models)) == (["math-lora", "sql-lora"], ["chat-lora"])
    assert observed(through) == observed(direct)


def test_a_down_engine_is_a_full_pod_not_a_stale_idle_one():
    text = capture("vllm-0.33-single.txt").replace("vllm:num_requests_waiting{", "vllm:num_requests_waiting_x{")
    idle = text.replace(
        'vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0',
        'vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0',
    )
    # Pointed at the engine: it dies, its /metrics stops answering, the EPP keeps the last numbers
    # and UpdateTime stops: the default profile (queue, KV, prefix scorers) still scores them.
    direct = engine_extractor("vllm")
    direct.poll(idle)
    before = observed(direct.metrics)
    direct.poll("")
    assert observed(direct.metrics) == before and direct.metrics.update_time == 1
    # Pointed at Patio: the engine's families vanish, Patio says it is down.
    through = patio_extractor()
    through.poll(patio_metrics("vllm", idle, ProtocolState(True, ("sql-lora",), None, NOW)))
    through.poll(patio_metrics("vllm", "", ProtocolState(False, ("sql-lora",), None, NOW + 1)))
    seen = observed(through.metrics)
    assert through.metrics.update_time == 2  # fresh: the filters act on these values
    assert (seen["queue"], seen["running"], seen["kv"], seen["active"], seen["max"]) == (0, 0, 1.0, [], 0)
    # What the picker's plugins then make of it (utilization/detector.go, kvcache_utilization.go,
    # lora_affinity.go): filtered out at the shipped kvCacheUtilThreshold, scored 0 on KV and LoRA.
    assert not seen["kv"] < 0.8 * (1 + 0.0)
    assert 1 - seen["kv"] == 0.0
    assert not (len(seen["active"]) + len(seen["waiting"]) < seen["max"])


def test_an_engine_that_writes_inf_lies_to_the_epp_directly_but_not_through_patio():
    text = capture("vllm-0.33-single.txt").replace(
        'vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0',
        'vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} +Inf',
    )
    assert engine_extractor("vllm").poll(text).waiting_queue_size == GO_INT_INDEFINITE  # the shortest queue of all
    through = patio_extractor().poll(patio_metrics("vllm", text, ProtocolState(True, now=NOW)))
    assert through.waiting_queue_size == 0  # never written: the EPP's initial value
    assert through.kv_cache_usage_percent == 1.0  # and the pod reads full, so it is not preferred


def test_an_engine_restart_between_scrapes_clears_the_adapters_the_epp_holds():
    text = capture("vllm-0.33-single.txt")
    restarted = "\n".join(line for line in text.split("\n") if not line.startswith("vllm:lora_requests_info{"))
    through = patio_extractor()
    through.poll(patio_metrics("vllm", text, ProtocolState(True, ("sql-lora", "chat-lora"), None, NOW)))
    assert sorted(through.metrics.active_models) == ["chat-lora", "sql-lora"]
    through.poll(patio_metrics("vllm", restarted, ProtocolState(True, (), None, NOW + 2)))
    assert through.metrics.active_models == {} and through.metrics.max_active_models == 0
    # The engine itself: an absent LoRA family leaves the old adapters in place (loraspec.go).
    direct = engine_extractor("vllm")
    direct.poll(text)
    direct.poll(restarted)
    assert sorted(direct.metrics.active_models) == ["chat-lora", "sql-lora"]


def test_adapter_names_the_epp_would_misread_never_reach_it():
    through = patio_extractor().poll(
        patio_metrics("sglang", capture("sglang-0.5.23.txt"), ProtocolState(True, ("a,b", 'quo"te', " sp"), None, NOW))
    )
    assert sorted(through.active_models) == ['quo"te']


def test_thousands_of_adapters_never_let_the_epp_offer_room_it_cannot_vouch_for():
    names = tuple(f"tenant-{i:05d}-adapter" for i in range(2500))
    through = patio_extractor().poll(
        patio_metrics("sglang", capture("sglang-0.5.23.txt"), ProtocolState(True, names, None, NOW))
    )
    # lora_pool_slots_total is 8; 2500 held: "room for one more" must be false, and is.
    assert through.max_active_models == 8
    assert not len(through.active_models) + len(through.waiting_models) < through.max_active_models
    assert set(through.active_models) <= set(names)


def test_the_replayed_spec_parser_matches_the_picker_on_its_own_examples():
    """spec_test.go's cases (llm-d-router ebab687), so the replay is trusted on the shipped specs."""
    assert parse_spec("vllm:num_requests_waiting").labels == ()
    assert parse_spec("nv_trt_llm_request_metrics{request_type=waiting}").labels == (("request_type", "waiting"),)
    assert parse_spec('m{a="b",c=d}').labels == (("a", "b"), ("c", "d"))
    assert parse_spec("") is None
    for bad in ("1bad", "m{1a=b}", "m{a}"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError):
        atoi("4.0")
    assert text_families("# TYPE x gauge\nx 1\n")["x"].metrics[0].value == 1.0


# -- the picker over a running Patio's /metrics ---------------------------------------------------
# Patio in front of an engine serving its capture, scraped over HTTP as the picker's data source
# scrapes it (metrics-data-source, path /metrics), in every scheme and mode.  Two scrapes with
# the same series set are enough for Patio's scrape plan: the later ones are matched against it
# (no parse), and their values move, so the view is read from the matched payload.

FAKES = Path(__file__).parent / "fakes"
MODES = ("standard", "both", "raw")
SCHEMES = ("patio", "aibrix", "kthena")
FAST = ["--engine-health-interval", "0.1", "--ready-cache-ttl", "0"]


class CaptureEngine:
    """An engine that answers its health route and serves a capture as its /metrics (TGI,
    Triton, llama.cpp: their captures and routes, tests/test_engines_more.py cites the sources)."""

    def __init__(self, routes: Dict[str, bytes], metrics: bytes = b"") -> None:
        self.routes = dict(routes)  # path -> JSON or empty body, answered 200
        self.metrics = metrics
        self.healthy = True
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and engine.metrics:
                    status, body, kind = 200, engine.metrics, "text/plain; version=0.0.4; charset=utf-8"
                elif path in engine.routes:
                    status, body, kind = (200 if engine.healthy else 503), engine.routes[path], "application/json"
                else:
                    status, body, kind = 404, b'{"error":"Not Found"}', "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def engine_capture(name: str) -> bytes:
    local = FAKES / name
    return (local if local.exists() else shared_path("fixtures", "metrics", name)).read_bytes()


def with_queue_grown(data: bytes, engine: str, by: float) -> Tuple[bytes, int]:
    """The capture with each series of the engine's queue family ``by`` higher (same series set),
    and how many series that is."""
    gauge = PROTOCOLS[engine].queued[0]
    assert isinstance(gauge, Gauge)
    lines, grown = data.decode("utf-8").split("\n"), 0
    for number, line in enumerate(lines):
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name == gauge.family and all(f'{k}="{v}"' in line for k, v in gauge.where):
            head, value = line.rsplit(" ", 1)
            lines[number] = f"{head} {float(value) + by}"
            grown += 1
    assert grown, f"no {gauge.family} series in the capture"
    return "\n".join(lines).encode("utf-8"), grown


VLLM_SEEN = {
    "queue": 1,
    "running": 3,
    "kv": 0.0734,
    "active": ["chat-lora", "sql-lora"],
    "waiting": [],
    "max": 4,
    "block": 16,
    "blocks": 27306,
}
NO_LORA = {"active": [], "waiting": [], "max": 0}
NO_CACHE = {"block": 0, "blocks": 0}
# (capture, engine, what the picker sees): the values of tests/test_metrics_protocol.py's captures.
THROUGH_PATIO = [
    pytest.param("vllm-0.33-single.txt", "vllm", VLLM_SEEN, id="vllm-single"),
    pytest.param("vllm-0.33-multiproc.txt", "vllm", VLLM_SEEN, id="vllm-multiproc"),
    pytest.param(
        "sglang-0.5.23.txt",
        "sglang",
        # Adapters loaded through Patio; max_lora from lora_pool_slots_total (8).
        {
            **{"queue": 1, "running": 3, "kv": 0.07, "active": ["chat-lora", "sql-lora"], "waiting": []},
            **{"max": 8, "block": 1, "blocks": 64512},
        },
        id="sglang",
    ),
    pytest.param("tgi-3.3.txt", "tgi", {"queue": 2, "running": 4, "kv": 0.384, **NO_LORA, **NO_CACHE}, id="tgi"),
    pytest.param(
        "triton-trtllm.txt",
        "triton",
        {"queue": 2, "running": 3, "kv": 0.200032056419298, **NO_LORA, "block": 64, "blocks": 6239},
        id="triton-metrics-on-their-own-port",
    ),
    pytest.param(
        "llamacpp-server.txt",
        "llamacpp",
        # No KV gauge in current builds: left out, the picker keeps its initial 0.  The two
        # adapters llama-server loaded at start (GET /lora-adapters), all applied: max_lora 2.
        {"queue": 0, "running": 0, "kv": 0.0, "active": ["a", "b"], "waiting": [], "max": 2, **NO_CACHE},
        id="llamacpp-preloaded-adapters",
    ),
]


def start_engine(engine: str, metrics: bytes) -> Tuple[Any, Optional[CaptureEngine], List[str]]:
    """The engine serving ``metrics``, a second server for Triton's metrics port, Patio's extra args."""
    if engine in ("vllm", "sglang"):
        fake = FakeEngine(engine)
        fake.metrics_body = metrics
        return fake, None, []
    if engine == "tgi":
        return CaptureEngine({"/health": b""}, metrics), None, []
    if engine == "llamacpp":
        listing = b'[{"id":0,"path":"/m/a.gguf","scale":1.0},{"id":1,"path":"/m/b.gguf","scale":0.5}]'
        return CaptureEngine({"/health": b'{"status":"ok"}', "/lora-adapters": listing}, metrics), None, []
    # Triton: health on its API port, /metrics on the metrics port (8002 unless --metrics-port).
    api, exporter = CaptureEngine({"/v2/health/ready": b""}), CaptureEngine({}, metrics)
    return api, exporter, ["--metrics-engine-port", str(exporter.port)]


def serve_metrics(engine: Any, body: bytes) -> None:
    if isinstance(engine, FakeEngine):
        engine.metrics_body = body
    else:
        engine.metrics = body


def poll(extractor: Extractor, patio: RunningPatio) -> str:
    status, _, body = http_call("GET", patio.url + "/metrics")
    assert status == 200
    text = body.decode("utf-8")
    extractor.poll(text)  # expfmt's parser over all of it: a second TYPE line for a name fails here
    return text


def poll_until(extractor: Extractor, patio: RunningPatio, expected: Dict, what: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = poll(extractor, patio)
        if observed(extractor.metrics) == expected:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: the picker sees {observed(extractor.metrics)}, not {expected}")
        time.sleep(0.05)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("name", "engine", "expected"), THROUGH_PATIO)
def test_the_picker_over_patios_real_metrics(name, engine, expected, scheme, mode):
    data = engine_capture(name)
    grown, series = with_queue_grown(data, engine, 5.0)
    api, exporter, args = start_engine(engine, data)
    env = {"INFERENCE_ENGINE": engine, "INFERENCE_ENGINE_ENDPOINT": api.url, "METRICS_SCHEME": scheme}
    env["METRICS_MODE"] = mode
    try:
        with RunningPatio(make_settings(FAST + args, env)) as patio:
            if engine == "sglang":
                for adapter in ("sql-lora", "chat-lora"):
                    load = {"lora_name": adapter, "lora_path": f"/adapters/{adapter}"}
                    assert http_json("POST", patio.url + "/load_lora_adapter", load)[0] == 200
            extractor = patio_extractor()
            poll_until(extractor, patio, expected, f"{engine} {scheme} {mode}")
            # What the picker reports missing: only what the engine does not have (no KV gauge in
            # llama.cpp, no cache geometry in TGI or llama.cpp), never a router family.
            missing = {re.sub(r".*'(.*)'.*", r"\1", e) for e in extractor.errors}
            assert missing == {
                "patio:router_kv_cache_utilization" if expected["kv"] == 0.0 else "",
                "patio:cache_config_info" if expected["blocks"] == 0 else "",
            } - {""}, extractor.errors
            # The engine's queue grows; the series set does not: matched scrapes, new values.
            serve_metrics(exporter or api, grown)
            metrics = next(c for c in patio.app.components if c.name == "metrics")
            matched = metrics.text.matched
            for _ in range(2):
                text = poll(extractor, patio)
                assert observed(extractor.metrics) == {**expected, "queue": expected["queue"] + 5 * series}
            assert metrics.text.matched >= matched + 2, "the scrapes did not come from the plan"
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode in (0, 3) and "parsing error" not in check.stderr, check.stderr[-2000:]
    finally:
        api.stop()
        if exporter is not None:
            exporter.stop()


DOWN = {"queue": 0, "running": 0, "kv": 1.0, "active": [], "waiting": [], "max": 0}


def test_over_real_metrics_a_down_engine_is_a_full_pod_and_comes_back():
    """The engine's /health fails while its /metrics still answers (a stalled scheduler), then both
    fail (it is gone), then it is back: Patio's router view follows the health watch, never idle."""
    data = engine_capture("vllm-0.33-single.txt")
    engine = FakeEngine("vllm")
    engine.metrics_body = data
    env = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url}
    try:
        with RunningPatio(make_settings(FAST, env)) as patio:
            extractor = patio_extractor()
            poll_until(extractor, patio, VLLM_SEEN, "up")
            engine.health_status = 503
            down = {**DOWN, "block": 16, "blocks": 27306}  # the geometry is not re-read: kept, harmless
            before = extractor.metrics.update_time
            text = poll_until(extractor, patio, down, "unhealthy, metrics still served")
            assert extractor.metrics.update_time > before  # fresh values: the picker's filters act on them
            assert "patio_engine_healthy 0" in text and "patio_engine_up 1" in text
            engine.metrics_status = 503
            text = poll_until(extractor, patio, down, "gone")
            assert "patio_engine_up 0" in text
            engine.health_status = engine.metrics_status = 200
            poll_until(extractor, patio, VLLM_SEEN, "back")
    finally:
        engine.stop()


def test_over_real_metrics_a_failed_scrape_of_a_healthy_engine_offers_no_capacity():
    """The engine is healthy but its /metrics fails: Patio still writes the router view, with the
    load unknown: KV utilization 1, so the picker's utilization filter takes the pod out."""
    engine = FakeEngine("vllm")
    engine.metrics_body = engine_capture("vllm-0.33-single.txt")
    env = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url}
    try:
        with RunningPatio(make_settings(FAST, env)) as patio:
            extractor = patio_extractor()
            poll_until(extractor, patio, VLLM_SEEN, "up")
            engine.metrics_status = 500
            text = poll_until(extractor, patio, {**VLLM_SEEN, "kv": 1.0}, "scrape failing")
            assert "patio_engine_up 0" in text and "patio:router_kv_cache_utilization 1\n" in text
            assert "patio:router_num_requests_waiting" not in text  # unknown: left out, not 0
            assert not extractor.metrics.kv_cache_usage_percent < 0.8  # utilization-detector: filtered
    finally:
        engine.stop()
