"""Every scheme x engine fixture, with the expected renamed families written out."""

import pytest
from support import shared_path

from patio.metrics.assemble import assemble
from patio.metrics.model import Family, Sample
from patio.metrics.parse import parse
from patio.metrics.rules import RuleSet

FIXTURES = {
    "vllm-single": ("vllm", "vllm-0.33-single.txt"),
    "vllm-multiproc": ("vllm", "vllm-0.33-multiproc.txt"),
    "sglang": ("sglang", "sglang-0.5.23.txt"),
}

# (target family, type, number of samples, value of the first sample for counters)
H, G, C = "histogram", "gauge", "counter"
EXPECTED = {
    ("patio", "vllm-single"): [
        ("patio:num_requests_running", G, 1, None),
        ("patio:num_requests_waiting", G, 1, None),
        ("patio:gpu_cache_usage_perc", G, 1, None),
        ("patio:time_to_first_token_seconds", H, 25, None),
        ("patio:time_to_first_token_seconds_created", G, 1, None),
        ("patio:time_per_output_token_seconds", H, 22, None),
        ("patio:time_per_output_token_seconds_created", G, 1, None),
        ("patio:inter_token_latency_seconds", H, 22, None),
        ("patio:inter_token_latency_seconds_created", G, 1, None),
        ("patio:e2e_request_latency_seconds", H, 24, None),
        ("patio:e2e_request_latency_seconds_created", G, 1, None),
        ("patio:request_queue_time_seconds", H, 24, None),
        ("patio:request_queue_time_seconds_created", G, 1, None),
        ("patio:input_tokens_total", C, 1, 812.0),
        ("patio:input_tokens_created", G, 1, None),
        ("patio:output_tokens_total", C, 1, 256.0),
        ("patio:output_tokens_created", G, 1, None),
    ],
    ("patio", "vllm-multiproc"): [
        ("patio:num_requests_running", G, 1, None),
        ("patio:num_requests_waiting", G, 1, None),
        ("patio:gpu_cache_usage_perc", G, 1, None),
        ("patio:time_to_first_token_seconds", H, 25, None),
        ("patio:time_per_output_token_seconds", H, 22, None),
        ("patio:inter_token_latency_seconds", H, 22, None),
        ("patio:e2e_request_latency_seconds", H, 24, None),
        ("patio:request_queue_time_seconds", H, 24, None),
        ("patio:input_tokens_total", C, 1, 812.0),
        ("patio:output_tokens_total", C, 1, 256.0),
    ],
    ("patio", "sglang"): [
        ("patio:num_requests_running", G, 1, None),
        ("patio:num_requests_waiting", G, 1, None),
        ("patio:gpu_cache_usage_perc", G, 1, None),
        ("patio:time_to_first_token_seconds", H, 21, None),
        ("patio:time_per_output_token_seconds", H, 26, None),
        ("patio:inter_token_latency_seconds", H, 26, None),
        ("patio:e2e_request_latency_seconds", H, 25, None),
        ("patio:request_queue_time_seconds", H, 43, None),
        ("patio:input_tokens_total", C, 1, 812.0),
        ("patio:output_tokens_total", C, 1, 256.0),
    ],
    ("aibrix", "vllm-single"): [
        ("aibrix:queue_size", G, 1, None),
        ("aibrix:kv_cache_usage_perc", G, 1, None),
        ("aibrix:prompt_tokens_total", C, 1, 812.0),
        ("aibrix:prompt_tokens_created", G, 1, None),
        ("aibrix:generation_tokens_total", C, 1, 256.0),
        ("aibrix:generation_tokens_created", G, 1, None),
        ("aibrix:time_to_first_token_seconds", H, 25, None),
        ("aibrix:time_to_first_token_seconds_created", G, 1, None),
        ("aibrix:e2e_request_latency_seconds", H, 24, None),
        ("aibrix:e2e_request_latency_seconds_created", G, 1, None),
        ("aibrix:request_success_total", C, 5, 1.0),
        ("aibrix:request_success_created", G, 5, None),
    ],
    ("aibrix", "vllm-multiproc"): [
        ("aibrix:queue_size", G, 1, None),
        ("aibrix:kv_cache_usage_perc", G, 1, None),
        ("aibrix:prompt_tokens_total", C, 1, 812.0),
        ("aibrix:generation_tokens_total", C, 1, 256.0),
        ("aibrix:time_to_first_token_seconds", H, 25, None),
        ("aibrix:e2e_request_latency_seconds", H, 24, None),
        ("aibrix:request_success_total", C, 5, 1.0),
    ],
    ("aibrix", "sglang"): [
        ("aibrix:queue_size", G, 1, None),
        ("aibrix:generation_throughput", G, 1, None),
        ("aibrix:prompt_tokens_total", C, 1, 812.0),
        ("aibrix:generation_tokens_total", C, 1, 256.0),
        ("aibrix:time_to_first_token_seconds", H, 21, None),
        ("aibrix:e2e_request_latency_seconds", H, 25, None),
        ("aibrix:cache_hit_rate", G, 1, None),
        ("aibrix:token_usage", G, 1, None),
    ],
    ("kthena", "vllm-single"): [
        ("kthena:generation_tokens_total", C, 1, 256.0),
        ("kthena:generation_tokens_created", G, 1, None),
        ("kthena:num_requests_waiting", G, 1, None),
        ("kthena:time_to_first_token_seconds", H, 25, None),
        ("kthena:time_to_first_token_seconds_created", G, 1, None),
        ("kthena:time_per_output_token_seconds", H, 22, None),
        ("kthena:time_per_output_token_seconds_created", G, 1, None),
        ("kthena:e2e_request_latency_seconds", H, 24, None),
        ("kthena:e2e_request_latency_seconds_created", G, 1, None),
    ],
    ("kthena", "vllm-multiproc"): [
        ("kthena:generation_tokens_total", C, 1, 256.0),
        ("kthena:num_requests_waiting", G, 1, None),
        ("kthena:time_to_first_token_seconds", H, 25, None),
        ("kthena:time_per_output_token_seconds", H, 22, None),
        ("kthena:e2e_request_latency_seconds", H, 24, None),
    ],
    ("kthena", "sglang"): [
        ("kthena:generation_tokens_total", C, 1, 256.0),
        ("kthena:num_requests_waiting", G, 1, None),
        ("kthena:time_to_first_token_seconds", H, 21, None),
        ("kthena:time_per_output_token_seconds", H, 26, None),
        ("kthena:e2e_request_latency_seconds", H, 25, None),
    ],
}


def _families(fixture):
    engine, name = FIXTURES[fixture]
    parsed = parse(shared_path("fixtures", "metrics", name).read_text(encoding="utf-8"))
    return engine, {f.name: f for f in parsed.families}


@pytest.mark.parametrize("scheme,fixture", sorted(EXPECTED), ids=[f"{s}-{f}" for s, f in sorted(EXPECTED)])
def test_scheme_over_fixture(scheme, fixture):
    engine, families = _families(fixture)
    renamed = RuleSet.for_scheme(scheme, engine).apply(families)
    got = [(f.name, f.type, len(f.samples), f.samples[0].value if f.type == C else None) for f in renamed]
    assert got == EXPECTED[(scheme, fixture)]
    for family in renamed:
        assert family.help, f"{family.name} has its own HELP"
        assert all(s.name.startswith(family.name.replace("_total", "")) for s in family.samples)


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_renamed_histograms_carry_every_bucket_and_labels(fixture):
    engine, families = _families(fixture)
    source = families[f"{engine}:time_to_first_token_seconds"]
    target = {f.name: f for f in RuleSet.for_scheme("patio", engine).apply(families)}[
        "patio:time_to_first_token_seconds"
    ]
    assert [(s.labels, s.value) for s in target.samples] == [(s.labels, s.value) for s in source.samples]
    assert [s.name for s in target.samples] == [s.name.replace(f"{engine}:", "patio:", 1) for s in source.samples]


def test_first_present_source_wins_when_both_exported():
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 0.25\n"
    )
    families = {f.name: f for f in parse(text).families}
    renamed = RuleSet.for_scheme("patio", "vllm").apply(families)
    assert [(f.name, f.samples[0].value) for f in renamed] == [("patio:gpu_cache_usage_perc", 0.25)]
    # ...and with only the older name, it is used.
    del families["vllm:kv_cache_usage_perc"]
    renamed = RuleSet.for_scheme("patio", "vllm").apply(families)
    assert [(f.name, f.samples[0].value) for f in renamed] == [("patio:gpu_cache_usage_perc", 0.5)]


def test_counter_declared_by_base_name_is_renamed():
    families = {f.name: f for f in parse("# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total 7\n").families}
    renamed = RuleSet.for_scheme("kthena", "vllm").apply(families) + RuleSet.for_scheme("patio", "vllm").apply(families)
    assert [(f.name, [s.name for s in f.samples]) for f in renamed] == [
        ("patio:input_tokens", ["patio:input_tokens_total"])
    ]


MODES = [
    ("standard", True, False),
    ("both", True, True),
    ("raw", False, True),
]


@pytest.mark.parametrize("mode,renamed,raw", MODES, ids=[m[0] for m in MODES])
def test_modes(mode, renamed, raw):
    engine, families = _families("vllm-single")
    own = [Family("patio_x", "gauge", "own", [Sample("patio_x", (), 1.0)])]
    text = assemble(own, list(families.values()), RuleSet.for_scheme("patio", engine), mode).text
    assert "patio_x 1\n" in text
    assert ("# TYPE patio:input_tokens_total counter" in text) is renamed
    assert ("# TYPE vllm:prompt_tokens_total counter" in text) is raw


def test_clash_with_own_family_resolved_for_patio():
    engine_families = parse("# TYPE process_open_fds gauge\nprocess_open_fds 999\n# TYPE g gauge\ng 1\n").families
    own = [Family("process_open_fds", "gauge", "ours", [Sample("process_open_fds", (), 7.0)])]
    result = assemble(own, engine_families, RuleSet.for_scheme("patio", "vllm"), "both")
    assert "process_open_fds 7\n" in result.text and "999" not in result.text
    assert result.clashes == 1
