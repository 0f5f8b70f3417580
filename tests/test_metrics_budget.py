"""The cost of ``/metrics``, counted, not timed: Python function calls for one answer.

The vLLM fixture (``vllm-0.33-multiproc.txt``, 495 lines) in standard mode, after a warm-up
scrape, through the metrics component's handler as ``build_app`` wires it (every component's own
metrics on the registry), the engine fetch replaced by the fixture's bytes and worker-thread
calls run inline, so that ``sys.setprofile`` sees every call on one thread.  No clock: the figure
is the same on a loaded machine.

Counted: Patio's own functions (asyncio's loop, which the answer runs on, varies with the Python
version and is left out).  Measured (CPython 3.11): 4,712 calls in all, 4,411 of them Patio's,
before the scrape plan (the parser's ~9 calls per line, the writer's ~5 per own sample); 367 with
it, 264 of them Patio's (269 by f9f78a0).  The engine's protocol view, wired into the answer,
costs 50 more (319): its five router families made and written (30: a Family, a Sample and a
value formatted per family, then their header and line), its arithmetic on the matched values
(17: sums, the cache geometry, the latest LoRA series) and the state it is given (3: the health
watch's answer, the adapters the engine confirmed).  No parse: the matched payload's values fill
the slots the plan recorded.  A change that adds cost fails here, naming the functions that grew.
"""

import asyncio
import collections
import sys
from pathlib import Path
from typing import Counter, Dict, Tuple

from support import make_settings, shared_path

from patio.app import build_app
from patio.http.types import Request

ROOT = Path(__file__).resolve().parent.parent

# Patio's calls for one warm /metrics answer, and the margin a later change may add before this fails.
BUDGET = 319
MARGIN = 30

# Patio's functions in that figure, with their counts (the rest is asyncio's loop): a failure
# lists those that grew.
MEASURED: Dict[str, int] = {
    "patio/metrics/write.py:item_line": 66,
    "patio/metrics/model.py:__init__": 42,
    "patio/metrics/write.py:header_lines": 32,
    "patio/metrics/write.py:format_value": 22,
    "patio/metrics/registry.py:family": 18,
    "patio/metrics/write.py:escape_label_value": 13,
    "patio/metrics/model.py:labels": 7,
    "patio/metrics/write.py:sample_line": 7,
    "patio/metrics/write.py:_label_text": 7,
    "patio/metrics/write.py:<listcomp>": 7,
    "patio/metrics/process.py:gauge": 6,
    "patio/metrics/protocol.py:_family": 5,
    "patio/metrics/write.py:metric_name_text": 5,
    "patio/metrics/write.py:escape_help": 5,
    "patio/metrics/registry.py:_family": 4,
    "patio/metrics/registry.py:_sample": 4,
    "patio/engines/detect.py:name": 3,
    "patio/metrics/component.py:serve": 2,
    "patio/metrics/component.py:exposition": 2,
    "patio/metrics/scrape.py:up": 2,
    "patio/metrics/registry.py:set": 2,
    "patio/metrics/registry.py:_key": 2,
    "patio/metrics/registry.py:<genexpr>": 2,
    "patio/metrics/protocol.py:_count": 2,
    "patio/metrics/protocol_input.py:whole": 2,
    "patio/metrics/registry.py:<listcomp>": 2,
    "patio/metrics/component.py:_cycle": 1,
    "patio/metrics/component.py:path": 1,
    "patio/metrics/scrape.py:scrape": 1,
    "patio/metrics/pipeline.py:match": 1,
    "patio/metrics/plan.py:match": 1,
    "patio/metrics/plan.py:<lambda>": 1,
    "patio/metrics/plan.py:_free_values": 1,
    "patio/metrics/protocol_input.py:fill": 1,
    "patio/metrics/plan.py:render": 1,
    "patio/metrics/component.py:_account": 1,
    "patio/metrics/component.py:_protocol": 1,
    "patio/app/__init__.py:<lambda>": 1,
    "patio/app/__init__.py:facts": 1,
    "patio/app/__init__.py:<listcomp>": 1,
    "patio/metrics/protocol.py:compute": 1,
    "patio/metrics/protocol.py:__init__": 1,
    "patio/metrics/protocol.py:_router_view": 1,
    "patio/metrics/protocol.py:_utilization": 1,
    "patio/metrics/protocol.py:_cache": 1,
    "patio/metrics/protocol.py:_lora": 1,
    "patio/metrics/protocol.py:_latest": 1,
    "patio/metrics/protocol.py:_lora_family": 1,
    "patio/metrics/component.py:_own": 1,
    "patio/metrics/registry.py:collect": 1,
    "patio/artifacts/jobs.py:<lambda>": 1,
    "patio/artifacts/jobs.py:<genexpr>": 1,
    "patio/lora/manager.py:<lambda>": 1,
    "patio/lora/manager.py:<genexpr>": 1,
    "patio/api/core.py:<lambda>": 1,
    "patio/lora/residency.py:collect": 1,
    "patio/lora/manager.py:reload_failures": 1,
    "patio/lora/manager.py:<dictcomp>": 1,
    "patio/lora/residency.py:residents": 1,
    "patio/lora/residency.py:<listcomp>": 1,
    "patio/lora/residency.py:families": 1,
    "patio/lora/residency.py:<dictcomp>": 1,
    "patio/api/core.py:_build_info": 1,
    "patio/engines/detect.py:version": 1,
    "patio/metrics/process.py:collect": 1,
    "patio/metrics/pipeline.py:reuse": 1,
    "patio/metrics/plan.py:reserves": 1,
    "patio/metrics/plan.py:own_reservation": 1,
    "patio/metrics/plan.py:<genexpr>": 1,
    "patio/metrics/component.py:_account_share": 1,
    "patio/metrics/exposition.py:compose": 1,
    "patio/metrics/write.py:render": 1,
    "patio/http/types.py:header": 1,
    "patio/metrics/exposition.py:accepts_gzip": 1,
}


def _name(code) -> str:
    path = Path(code.co_filename)
    try:
        where = path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        where = path.name  # the standard library (asyncio's loop, selectors)
    return f"{where}:{code.co_name}"


def count_calls() -> Tuple[int, Counter]:
    settings = make_settings(
        ["--metrics-mode", "standard"],
        {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9"},
    )
    app = build_app(settings)

    async def inline(func, *args):
        return func(*args)

    app.context.run_blocking = inline  # type: ignore[method-assign]
    metrics = next(c for c in app.components if c.name == "metrics")
    payload = shared_path("fixtures", "metrics", "vllm-0.33-multiproc.txt").read_bytes()
    metrics.scraper._fetch = lambda: payload
    request = Request("GET", "/metrics", "/metrics", {}, [])
    loop = asyncio.new_event_loop()
    try:
        for _ in range(2):  # the first makes the plan, the second is what every later one costs
            loop.run_until_complete(metrics.serve(request))
        calls: Counter = collections.Counter()

        def profile(frame, event, arg):
            if event == "call":
                calls[_name(frame.f_code)] += 1

        sys.setprofile(profile)
        try:
            response = loop.run_until_complete(metrics.serve(request))
        finally:
            sys.setprofile(None)
    finally:
        loop.close()
        app.context.pools.shutdown()
    assert response.status == 200 and b"patio:num_requests_running" in b"".join(response.shared_tail)
    assert b"\npatio:router_num_requests_waiting 1\n" in response.body  # the view is in the answer
    assert metrics.text.matched == 2, "the warm answers did not come from the plan"
    return sum(calls.values()), calls


def test_metrics_answer_stays_within_its_call_budget():
    _, calls = count_calls()
    total = sum(count for name, count in calls.items() if name.startswith("patio/"))
    if total > BUDGET + MARGIN:
        grew = [
            f"{name}: {count} (was {MEASURED.get(name, 0)})"
            for name, count in calls.most_common()
            if count > MEASURED.get(name, 0) and name.startswith("patio/")
        ]
        top = [f"{name}: {count}" for name, count in calls.most_common(12)]
        raise AssertionError(
            f"/metrics took {total} calls of Patio functions, budget {BUDGET} + {MARGIN}.\n"
            "Patio functions above their measured counts:\n  " + "\n  ".join(grew[:15]) + "\n"
            "Most called:\n  " + "\n  ".join(top)
        )
