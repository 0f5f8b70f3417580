"""What the llm-d endpoint picker computes from Patio, with its own code replayed (tests/epp_replay.py,
llm-d/llm-d-router at ebab687: extractor.go, spec.go, loraspec.go, factories.go) and the engine config
Patio ships (deploy/kubernetes/gateway/patio-epp.yaml).

For vLLM, the EPP pointed at Patio computes what it computes pointed at vLLM itself; for SGLang it
gains LoRA affinity and the cache geometry its built-in config misses on 0.5.23; for an engine that
goes down it sees a full pod, where pointed at the engine it would keep the last (idle) numbers."""

from pathlib import Path
from typing import Dict

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
from support import shared_path

from patio.metrics.assemble import assemble
from patio.metrics.parse import parse
from patio.metrics.protocol import ProtocolState, ProtocolView, by_name
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
