"""The protocol view (patio.metrics.protocol): what each engine's capture becomes for a router,
and what hostile or broken input becomes.  Captures: ../shared/fixtures/metrics (vLLM 0.33,
SGLang 0.5.23, from their own metric code) and tests/fakes: TGI in metrics-exporter-prometheus
0.15.3's format (recorder.rs render(); TGI db931fc router/src/server.rs and backends/v3), Triton
with TensorRT-LLM as prometheus-cpp writes it (NVIDIA/TensorRT-LLM 89fd9b7
triton_backend/.../custom_metrics_reporter.cc), llama.cpp from a real llama-server
(tests/test_llamacpp_peer.py checks it still is)."""

import math
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from support import shared_path

from patio.metrics.model import Family, Sample
from patio.metrics.parse import parse
from patio.metrics.protocol import (
    CACHE_INFO,
    LORA_INFO,
    MAX_ADAPTER_LIST_CHARS,
    ROUTER_FAMILIES,
    ROUTER_KV,
    ROUTER_RUNNING,
    ROUTER_WAITING,
    ProtocolState,
    ProtocolView,
    by_name,
)
from patio.metrics.protocol_tables import PROTOCOLS
from patio.metrics.write import render

FAKES = Path(__file__).parent / "fakes"
NOW = 1795342300.25


def assert_promtool_parses(text: str) -> None:
    """promtool reports no parse error (exit 1); exit 3 is its lint (colons in names) only."""
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode in (0, 3) and "parsing error" not in check.stderr, check.stderr[-2000:]


def capture(name: str) -> str:
    local = FAKES / name
    path = local if local.exists() else shared_path("fixtures", "metrics", name)
    return path.read_text(encoding="utf-8")


def families_of(text: str, verbatim: bool = True) -> Dict[str, Family]:
    return by_name(parse(text, verbatim=verbatim).families)


def view(engine: str, text: str, state: ProtocolState, scheme: str = "patio", verbatim: bool = True):
    return ProtocolView.for_engine(engine, scheme).families(families_of(text, verbatim), state)


def router(output) -> Dict[str, List[Tuple[Dict[str, str], float]]]:
    """The router families, as {name: [(labels, value)]}, read back from the written text."""
    out: Dict[str, List[Tuple[Dict[str, str], float]]] = {}
    for family in parse(render(output.router)).families:
        assert family.type == "gauge", family
        out[family.name] = [(dict(s.labels), s.value) for s in family.samples]
    return out


def lora_of(output) -> Optional[Tuple[Dict[str, str], float]]:
    series = router(output).get(LORA_INFO)
    if series is None:
        return None
    assert len(series) == 1, series
    return series[0]


UP = ProtocolState(engine_up=True, now=NOW)

# (engine, capture, state, waiting, running, kv, cache (block size, blocks), lora labels or None)
CAPTURES = [
    pytest.param(
        "vllm",
        "vllm-0.33-single.txt",
        UP,
        1,
        3,
        0.0734,
        ("16", "27306"),
        {"max_lora": "4", "running_lora_adapters": "sql-lora,chat-lora", "waiting_lora_adapters": ""},
        id="vllm-single-lora-from-its-own-family",
    ),
    pytest.param(
        "vllm",
        "vllm-0.33-multiproc.txt",
        UP,
        1,
        3,
        0.0734,
        ("16", "27306"),
        {"max_lora": "4", "running_lora_adapters": "sql-lora,chat-lora", "waiting_lora_adapters": ""},
        id="vllm-multiproc",
    ),
    pytest.param(
        "sglang",
        "sglang-0.5.23.txt",
        ProtocolState(True, ("sql-lora", "chat-lora"), None, NOW),
        1,
        3,
        0.07,
        ("1", "64512"),
        # SGLang has no LoRA info: the adapters Patio loaded, max_lora from lora_pool_slots_total.
        {"max_lora": "8", "running_lora_adapters": "chat-lora,sql-lora", "waiting_lora_adapters": ""},
        id="sglang-lora-synthesized",
    ),
    pytest.param(
        "sglang", "sglang-0.5.23.txt", UP, 1, 3, 0.07, ("1", "64512"), None, id="sglang-no-adapters-lora-pool-says-8"
    ),
    pytest.param("tgi", "tgi-3.3.txt", UP, 2, 4, 6144 / 16000, None, None, id="tgi-kv-from-token-budget"),
    pytest.param(
        "triton", "triton-trtllm.txt", UP, 2, 3, 0.200032056419298, ("64", "6239"), None, id="triton-tensorrt-llm"
    ),
    pytest.param(
        "llamacpp",
        "llamacpp-server.txt",
        ProtocolState(True, ("a", "b"), None, NOW),
        0,
        0,
        None,
        None,
        # llama.cpp applies every adapter it loaded at start: max_lora is their number.
        {"max_lora": "2", "running_lora_adapters": "a,b", "waiting_lora_adapters": ""},
        id="llamacpp-no-kv-gauge",
    ),
]


@pytest.mark.parametrize(("engine", "name", "state", "waiting", "running", "kv", "cache", "lora"), CAPTURES)
@pytest.mark.parametrize("verbatim", [True, False], ids=["as-scraped", "parsed"])
def test_each_engine_capture_gives_the_router_view(engine, name, state, waiting, running, kv, cache, lora, verbatim):
    sglang_state = engine == "sglang" and lora is None
    output = view(engine, capture(name), state, verbatim=verbatim)
    seen = router(output)
    assert output.problems == ()
    assert seen[ROUTER_WAITING] == [({}, waiting)]
    assert seen[ROUTER_RUNNING] == [({}, running)]
    if kv is None:
        assert ROUTER_KV not in seen
    else:
        assert seen[ROUTER_KV][0][1] == pytest.approx(kv)
    if cache is None:
        assert CACHE_INFO not in seen
    else:
        assert seen[CACHE_INFO] == [({"block_size": cache[0], "num_gpu_blocks": cache[1]}, 1.0)]
    got = lora_of(output)
    if sglang_state:
        # The engine says it has LoRA slots: LoRA is in play, nothing is loaded.
        assert got == ({"max_lora": "8", "running_lora_adapters": "", "waiting_lora_adapters": ""}, NOW)
    elif lora is None:
        assert got is None
    else:
        assert got is not None and got[0] == lora
        assert got[1] == (NOW if engine != "vllm" else pytest.approx(1.795342e9, rel=1e-6))


def test_the_view_needs_only_the_families_it_reads():
    for protocol in PROTOCOLS.values():
        output = ProtocolView.for_engine(protocol.engine, "patio").families({}, UP)
        # Nothing to read: load unknown, so no capacity is offered; nothing raises.
        assert router(output).get(ROUTER_KV) == [({}, 1.0)]
        assert ROUTER_WAITING not in router(output)


@pytest.mark.parametrize("engine", sorted(PROTOCOLS))
def test_engine_down_reads_saturated_never_idle(engine):
    """A down engine: nothing queued or running, no KV cache to give, no adapter servable; every
    family present, because one left out keeps its last value in the EPP (extractor.go)."""
    state = ProtocolState(engine_up=False, adapters=("a", "b"), max_lora=8, now=NOW)
    output = ProtocolView.for_engine(engine, "patio").families({}, state)
    assert router(output) == {
        ROUTER_WAITING: [({}, 0.0)],
        ROUTER_RUNNING: [({}, 0.0)],
        ROUTER_KV: [({}, 1.0)],
        LORA_INFO: [({"max_lora": "0", "running_lora_adapters": "", "waiting_lora_adapters": ""}, NOW)],
    }


def test_down_wins_over_stale_engine_metrics():
    """SGLang answering /metrics while /health fails (a stalled scheduler serves old gauges)."""
    output = view("sglang", capture("sglang-0.5.23.txt"), ProtocolState(False, ("a",), None, NOW))
    assert router(output)[ROUTER_KV] == [({}, 1.0)]
    assert router(output)[ROUTER_WAITING] == [({}, 0.0)]


def _vllm(lines: List[str]) -> str:
    return "\n".join(lines) + "\n"


QUEUE_LINES = {
    "wrong-type-histogram": [
        "# TYPE vllm:num_requests_waiting histogram",
        'vllm:num_requests_waiting_bucket{le="+Inf"} 4',
        "vllm:num_requests_waiting_sum 9",
        "vllm:num_requests_waiting_count 4",
    ],
    "nan": ["# TYPE vllm:num_requests_waiting gauge", "vllm:num_requests_waiting NaN"],
    "plus-inf": ["# TYPE vllm:num_requests_waiting gauge", "vllm:num_requests_waiting +Inf"],
    "negative": ["# TYPE vllm:num_requests_waiting gauge", "vllm:num_requests_waiting -3"],
    "one-rank-negative": [
        "# TYPE vllm:num_requests_waiting gauge",
        'vllm:num_requests_waiting{engine="0"} 5',
        'vllm:num_requests_waiting{engine="1"} -1',
    ],
}
BASE = [
    "# TYPE vllm:num_requests_running gauge",
    "vllm:num_requests_running 2",
    "# TYPE vllm:kv_cache_usage_perc gauge",
    "vllm:kv_cache_usage_perc 0.25",
]


@pytest.mark.parametrize("case", sorted(QUEUE_LINES))
def test_a_queue_that_is_not_a_count_is_left_out_and_the_pod_offers_no_capacity(case):
    output = view("vllm", _vllm(QUEUE_LINES[case] + BASE), UP)
    seen = router(output)
    assert ROUTER_WAITING not in seen  # never NaN, Inf or negative: Go's int() of those is garbage
    assert seen[ROUTER_RUNNING] == [({}, 2.0)]
    assert seen[ROUTER_KV] == [({}, 1.0)]  # its load is unknown: it reads full
    assert output.problems


def test_an_untyped_queue_is_still_its_value():
    """The EPP reads an untyped family as 0 (extractValue: no gauge, no counter); Patio says the number."""
    output = view("vllm", _vllm(["vllm:num_requests_waiting 7", *BASE]), UP)
    assert router(output)[ROUTER_WAITING] == [({}, 7.0)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("NaN", 1.0), ("+Inf", 1.0), ("-0.5", 1.0), ("73.4", 1.0), ("1.0000000001", 1.0), ("0", 0.0), ("1", 1.0)],
    ids=["nan", "inf", "negative", "percent-scale", "float-noise", "zero", "full"],
)
def test_kv_utilization_is_always_a_fraction(value, expected):
    lines = ["# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc {value}"]
    lines += ["# TYPE vllm:num_requests_running gauge", "vllm:num_requests_running 0"]
    lines += ["# TYPE vllm:num_requests_waiting gauge", "vllm:num_requests_waiting 0"]
    output = view("vllm", _vllm(lines), UP)
    assert router(output)[ROUTER_KV] == [({}, expected)]


def test_data_parallel_ranks_are_summed_into_one_series():
    """The EPP takes the first series of a family (timestamps all 0): one series, all ranks."""
    lines = ["# TYPE vllm:num_requests_waiting gauge"]
    lines += [f'vllm:num_requests_waiting{{engine="{i}",model_name="m"}} {i + 1}' for i in range(4)]
    lines += ["# TYPE vllm:num_requests_running gauge"]
    lines += [f'vllm:num_requests_running{{engine="{i}",model_name="m"}} 2' for i in range(4)]
    lines += ["# TYPE vllm:kv_cache_usage_perc gauge"]
    lines += [
        f'vllm:kv_cache_usage_perc{{engine="{i}",model_name="m"}} {v}' for i, v in enumerate((0.1, 0.2, 0.3, 0.4))
    ]
    lines += ["# TYPE vllm:cache_config_info gauge"]
    lines += [
        f'vllm:cache_config_info{{block_size="{b}",engine="{i}",num_gpu_blocks="100"}} 1' for i, b in enumerate((16, 8))
    ]
    seen = router(view("vllm", _vllm(lines), UP))
    assert seen[ROUTER_WAITING] == [({}, 10.0)]
    assert seen[ROUTER_RUNNING] == [({}, 8.0)]
    assert seen[ROUTER_KV][0][1] == pytest.approx(0.25)
    assert seen[CACHE_INFO] == [({"block_size": "8", "num_gpu_blocks": "200"}, 1.0)]


def test_cache_info_before_profiling_is_left_out():
    lines = ["# TYPE vllm:cache_config_info gauge", 'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1']
    assert CACHE_INFO not in router(view("vllm", _vllm(lines + BASE), UP))


@pytest.mark.parametrize(
    ("adapters", "running"),
    [
        (("a,b", "ok"), "ok"),
        ((" pad", "ok"), "ok"),
        (('q"uote', "back\\slash", "new\nline"), 'back\\slash,new\nline,q"uote'),
        (("", "ok", "ok"), "ok"),
    ],
    ids=["comma", "edge-blank", "quotes-backslash-newline-kept-exact", "empty-and-duplicate"],
)
def test_adapter_names_are_written_only_when_the_epp_reads_them_back_unchanged(adapters, running):
    output = view("sglang", "", ProtocolState(True, adapters, 4, NOW))
    labels, _ = lora_of(output)
    assert labels["running_lora_adapters"] == running
    assert_promtool_parses(render(output.router))


def test_commas_inside_vllm_names_cannot_be_recovered_and_are_passed_as_the_epp_splits_them():
    lines = [
        "# TYPE vllm:lora_requests_info gauge",
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters=" a , b,,",waiting_lora_adapters="c"} 17.0',
    ]
    labels, value = lora_of(view("vllm", _vllm(lines + BASE), UP))
    assert labels == {"max_lora": "4", "running_lora_adapters": "a,b", "waiting_lora_adapters": "c"}
    assert value == 17.0


def test_thousands_of_adapters_are_cut_at_a_whole_name_and_max_lora_keeps_the_epp_honest():
    names = tuple(f"adapter-{i:05d}" for i in range(3000))
    output = view("sglang", "", ProtocolState(True, names, 64, NOW))
    labels, _ = lora_of(output)
    kept = labels["running_lora_adapters"].split(",")
    assert len(labels["running_lora_adapters"]) <= MAX_ADAPTER_LIST_CHARS
    assert kept == sorted(names)[: len(kept)] and len(kept) < len(names)
    # 3000 listed >= 64 slots: the EPP must see no room for another, and it does (len(kept) >= max_lora).
    assert int(labels["max_lora"]) == 64 <= len(kept)
    assert any("cut" in p for p in output.problems)


def test_a_cut_keeps_the_epps_room_for_one_more_answer_true():
    names = tuple(f"a-very-long-adapter-name-for-the-test-{i:05d}" for i in range(400))
    labels, _ = lora_of(view("sglang", "", ProtocolState(True, names, 1000, NOW)))
    kept = labels["running_lora_adapters"].split(",")
    assert len(kept) < 400
    assert labels["max_lora"] == "1000"  # 400 held < 1000 slots: room is true, and stays offered
    labels, _ = lora_of(view("sglang", "", ProtocolState(True, names, 300, NOW)))
    # 400 held >= 300 slots: no room; the EPP compares what it sees, so max_lora drops to the kept count.
    assert int(labels["max_lora"]) == len(labels["running_lora_adapters"].split(",")) == len(kept)


def test_latest_lora_series_is_the_one_the_epp_would_keep():
    lines = [
        "# TYPE vllm:lora_requests_info gauge",
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters=""} 100.0',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="new",waiting_lora_adapters="w"} 300.0',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="mid",waiting_lora_adapters=""} 200.0',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="nan",waiting_lora_adapters=""} NaN',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="inf",waiting_lora_adapters=""} +Inf',
    ]
    labels, value = lora_of(view("vllm", _vllm(lines + BASE), UP))
    assert (labels["running_lora_adapters"], labels["waiting_lora_adapters"], value) == ("new", "w", 300.0)


@pytest.mark.parametrize("raw", ["4.0", "four", "", "-1"], ids=["float", "word", "empty", "negative"])
def test_a_max_lora_the_epp_cannot_read_becomes_a_count_it_can(raw):
    lines = [
        "# TYPE vllm:lora_requests_info gauge",
        f'vllm:lora_requests_info{{max_lora="{raw}",running_lora_adapters="a,b",waiting_lora_adapters=""}} 5.0',
    ]
    labels, _ = lora_of(view("vllm", _vllm(lines + BASE), UP))
    if raw == "4.0":
        assert labels["max_lora"] == "4"
    else:
        assert labels["max_lora"] == "2"  # what is known to fit: no room the EPP cannot vouch for


def test_configured_max_lora_is_used_where_the_engine_says_nothing():
    labels, _ = lora_of(view("sglang", "", ProtocolState(True, ("a",), 6, NOW)))
    assert labels["max_lora"] == "6"


def test_an_engine_restart_between_scrapes_does_not_leave_old_adapters_active():
    """Before: vLLM serves a and b.  It restarts: counters reset, its LoRA family is declared
    with no series yet, and Patio has not confirmed any adapter on the new process."""
    before = _vllm(
        [
            "# TYPE vllm:lora_requests_info gauge",
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters=""} 1000.0',
            *BASE,
        ]
    )
    declared = [
        "# HELP vllm:lora_requests_info Running stats on lora requests.",
        "# TYPE vllm:lora_requests_info gauge",
    ]
    after = _vllm([*declared, *BASE])
    first = lora_of(view("vllm", before, ProtocolState(True, ("a", "b"), None, NOW)))
    second = lora_of(view("vllm", after, ProtocolState(True, (), None, NOW + 5)))
    assert first is not None and first[0]["running_lora_adapters"] == "a,b"
    # A series is still written, so the EPP replaces its ActiveModels (an absent family would keep a,b).
    assert second == ({"max_lora": "0", "running_lora_adapters": "", "waiting_lora_adapters": ""}, NOW + 5)


def test_a_pod_without_lora_writes_no_lora_family():
    assert (
        lora_of(
            view("vllm", _vllm([*BASE, "# TYPE vllm:num_requests_waiting gauge", "vllm:num_requests_waiting 0"]), UP)
        )
        is None
    )


# -- layer one: stable names for the engines the rename tables lack ------------------------
RENAMES = [
    (
        "tgi",
        "tgi-3.3.txt",
        "patio",
        {"patio:num_requests_running": 4, "patio:num_requests_waiting": 2, "patio:gpu_cache_usage_perc": 0.384},
    ),
    ("tgi", "tgi-3.3.txt", "aibrix", {"aibrix:queue_size": 2, "aibrix:kv_cache_usage_perc": 0.384}),
    ("tgi", "tgi-3.3.txt", "kthena", {"kthena:num_requests_waiting": 2}),
    (
        "triton",
        "triton-trtllm.txt",
        "patio",
        {
            "patio:num_requests_running": 3,
            "patio:num_requests_waiting": 2,
            "patio:gpu_cache_usage_perc": 0.200032056419298,
        },
    ),
    (
        "triton",
        "triton-trtllm.txt",
        "aibrix",
        {"aibrix:queue_size": 2, "aibrix:kv_cache_usage_perc": 0.200032056419298},
    ),
    ("vllm", "vllm-0.33-single.txt", "patio", {}),
    ("sglang", "sglang-0.5.23.txt", "aibrix", {}),
]


@pytest.mark.parametrize(("engine", "name", "scheme", "expected"), RENAMES, ids=[f"{e}-{s}" for e, _, s, _ in RENAMES])
def test_layer_one_names_for_engines_without_a_rename_table(engine, name, scheme, expected):
    output = view(engine, capture(name), UP, scheme=scheme)
    got = {}
    for family in parse(render(output.renamed)).families:
        assert len(family.samples) == 1, family
        got[family.name] = family.samples[0].value
        if engine == "triton":
            # The selector label is gone, the model's labels stay.
            assert dict(family.samples[0].labels) == {"model": "tensorrt_llm", "version": "1"}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)


def test_llamacpp_token_counters_keep_their_type():
    output = view("llamacpp", capture("llamacpp-server.txt"), UP)
    types = {f.name: f.type for f in output.renamed}
    assert types["patio:input_tokens_total"] == "counter"
    assert types["patio:num_requests_running"] == "gauge"


@pytest.mark.parametrize(
    ("engine", "name"), [(p.values[0], p.values[1]) for p in CAPTURES], ids=[p.id for p in CAPTURES]
)
def test_output_passes_promtool_and_names_no_engine_family(engine, name):
    output = view(engine, capture(name), ProtocolState(True, ("a", 'b"q'), None, NOW))
    assert_promtool_parses(render(output.renamed + output.router))
    assert {f.name for f in output.router} <= set(ROUTER_FAMILIES)


def test_never_raises_for_any_content():
    """Every family the view reads, given every kind of value and type: only families come out."""
    values = ["0", "1", "-1", "NaN", "+Inf", "-Inf", "1e308", "4.5", "1e-320"]
    names = sorted(
        {
            s.family
            for p in PROTOCOLS.values()
            for group in (p.queued, p.running, p.kv, p.max_lora)
            for src in group
            for s in ((src,) if not hasattr(src, "used") else (src.used, src.capacity))
        }
    )
    for kind in ("gauge", "counter", "untyped", "histogram", "summary"):
        for value in values:
            lines: List[str] = []
            for name in names:
                lines += [
                    f"# TYPE {name} {kind}",
                    f'{name}{{request_type="waiting",kv_cache_block_type="fraction"}} {value}',
                ]
            families = families_of("\n".join(lines) + "\n")
            for engine in PROTOCOLS:
                output = ProtocolView.for_engine(engine, "patio").families(families, UP)
                for family in output.router:
                    for sample in family.samples:
                        assert isinstance(sample, Sample) and math.isfinite(sample.value)
                        if family.name == ROUTER_KV:
                            assert 0 <= sample.value <= 1


def test_mapping_of_families_keeps_the_first_of_a_name():
    first, second = Family("x", "gauge"), Family("x", "counter")
    assert by_name([first, second]) == {"x": first}
