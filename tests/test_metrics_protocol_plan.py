"""The protocol view on the scrape path against the view of a full parse: identical, plan or not.

The scrape path reads the view's input from the payload as it reads the payload: parsed in full
(``Reading.view`` from the parse), or matched against the last plan, when there are no parsed
families and the plan's recorded slots are filled with the matched values (``ViewPlan.fill``).
Either way, the families the view computes (renamed and router, HELP and TYPE included, and the
problems it reports) must be exactly what ``ProtocolView.families`` makes of a plain full parse
of the same payload.  Over every engine's capture, randomized values (canonical, NaN, infinities,
negatives: the plan matches those) and odd ones (which take the full path), structural mutations
(new and gone series, TYPE lines, junk, timestamps, repeats), in every scheme and mode, for an
engine up, down and with adapters.
"""

import random
from pathlib import Path
from typing import List, Tuple

import pytest
from support import shared_path
from test_metrics_plan import MODES, SCHEMES, _mutate, _new_values

from patio.metrics import protocol_input
from patio.metrics.parse import decode_payload, parse
from patio.metrics.pipeline import EngineText
from patio.metrics.protocol import LORA_INFO, ROUTER_KV, ProtocolOutput, ProtocolState, ProtocolView, by_name
from patio.metrics.rules import RuleSet
from patio.metrics.write import render

FAKES = Path(__file__).parent / "fakes"
CAPTURES = {
    "vllm-0.33-single.txt": "vllm",
    "vllm-0.33-multiproc.txt": "vllm",
    "sglang-0.5.23.txt": "sglang",
    "tgi-3.3.txt": "tgi",
    "triton-trtllm.txt": "triton",
    "llamacpp-server.txt": "llamacpp",
}
STATES = [
    ProtocolState(True, (), None, 1795342400.5),
    ProtocolState(True, ("chat-lora", "sql,lora", "sql-lora"), 3, 1795342401.5),
    ProtocolState(False, ("sql-lora",), None, 1795342402.5),
]


def capture(name: str) -> bytes:
    local = FAKES / name
    return (local if local.exists() else shared_path("fixtures", "metrics", name)).read_bytes()


def written(output: ProtocolOutput) -> Tuple[str, str, Tuple[str, ...]]:
    """What the view's output writes (renamed, router) and says: NaN compares equal as text."""
    return render(output.renamed), render(output.router), output.problems


def full_view(view: ProtocolView, data: bytes, state: ProtocolState) -> ProtocolOutput:
    """The view of a plain full parse: no plan, no offsets, no line cache."""
    return view.families(by_name(parse(decode_payload(data), None, verbatim=True).families), state)


def check_sequence(engine: str, scheme: str, mode: str, payloads: List[bytes], label: str) -> int:
    """Each payload through one EngineText, as the component runs it; returns how many were matched."""
    view = ProtocolView.for_engine(engine, scheme)
    text = EngineText(RuleSet.for_scheme(scheme, engine), mode, view=view)
    matched = 0
    for number, data in enumerate(payloads):
        reading = text.read(data)
        hit = reading.plan is not None and text.reuse(reading, []) is not None
        if not hit:
            text.assemble(reading, [])  # the full pass, which makes the next plan
        assert reading.view is not None
        for state in STATES:
            got = written(view.compute(reading.view, state))
            assert got == written(full_view(view, data, state)), f"{label}: payload {number} ({hit=}) {state}"
        matched += hit
    return matched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_the_view_through_the_plan_is_the_view_of_the_full_parse(name, scheme, mode):
    engine, base = CAPTURES[name], capture(name)
    rng = random.Random(f"{name}{scheme}{mode}")
    # New values at every scrape, the common case: all but the first matched.
    values = [base] + [_new_values(rng, base) for _ in range(6)]
    assert check_sequence(engine, scheme, mode, values, f"{name} values") == 6
    # Odd values (the full path), then values the plan matches again.
    odd = [base, _new_values(rng, base, odd=0.3), _new_values(rng, base), _new_values(rng, base)]
    assert check_sequence(engine, scheme, mode, odd, f"{name} odd values") >= 1
    for round_number in range(6):
        mutated = _mutate(rng, base)
        sequence = [base, mutated, _new_values(rng, mutated), _new_values(rng, mutated)]
        check_sequence(engine, scheme, mode, sequence, f"{name} mutation {round_number}")


def test_the_plan_path_reads_the_new_values_not_the_planned_ones():
    """Not a cached answer: a queue that grows between two matched scrapes grows in the view."""
    base = capture("vllm-0.33-single.txt")
    view = ProtocolView.for_engine("vllm", "patio")
    text = EngineText(RuleSet.for_scheme("patio", "vllm"), "both", view=view)
    text.assemble(text.read(base), [])
    line = b'vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} '
    for queued in (b"7.0", b"0", b"NaN", b"12"):
        data = base.replace(line + b"1.0\n", line + queued + b"\n")
        reading = text.read(data)
        assert reading.plan is not None, "not matched"
        assert reading.view is not None
        out = view.compute(reading.view, STATES[0])
        assert written(out) == written(full_view(view, data, STATES[0]))
        router = render(out.router)
        if queued == b"NaN":  # never written; the pod reads full
            assert "patio:router_num_requests_waiting " not in router and f"{ROUTER_KV} 1\n" in router
        else:
            assert f"patio:router_num_requests_waiting {int(float(queued))}\n" in router


def test_a_failed_scrape_still_gives_the_router_families():
    view = ProtocolView.for_engine("vllm", "patio")
    up = render(view.compute(view.nothing, STATES[0]).router)
    assert f"{ROUTER_KV} 1\n" in up  # load unknown: no capacity offered
    down = render(view.compute(view.nothing, STATES[2]).router)
    assert "patio:router_num_requests_waiting 0\n" in down and f'{LORA_INFO}{{max_lora="0"' in down


def test_a_family_with_more_series_than_the_view_reads_fails_closed_on_both_paths():
    lines = ["# TYPE vllm:num_requests_waiting gauge"]
    lines += [f'vllm:num_requests_waiting{{rank="{i}"}} 1' for i in range(protocol_input.MAX_SERIES + 1)]
    lines += ["# TYPE vllm:num_requests_running gauge", "vllm:num_requests_running 2"]
    lines += ["# TYPE vllm:kv_cache_usage_perc gauge", "vllm:kv_cache_usage_perc 0.25"]
    data = ("\n".join(lines) + "\n").encode()
    view = ProtocolView.for_engine("vllm", "patio")
    out = full_view(view, data, STATES[0])
    router = render(out.router)
    assert "patio:router_num_requests_waiting" not in router and f"{ROUTER_KV} 1\n" in router
    assert any(f"more than {protocol_input.MAX_SERIES} series" in p for p in out.problems)
    assert check_sequence("vllm", "patio", "standard", [data, data.replace(b"} 1\n", b"} 2\n")], "bound") == 1


def test_a_slotted_value_the_view_would_not_read_refuses_the_view_plan():
    """The check that backs the plan path: a slot is used only when it holds the very value text the
    view reads of its line; anything else makes no view plan (and so no scrape plan)."""
    data = b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 3\n"
    view = ProtocolView.for_engine("vllm", "patio")
    families = by_name(parse(data.decode(), None, verbatim=True).families)
    slots = {"vllm:num_requests_waiting": [0]}
    assert view.plan(families, slots, [b"3"]) is not None
    assert view.plan(families, slots, [b"4"]) is None
