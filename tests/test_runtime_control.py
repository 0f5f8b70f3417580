"""Sleep and wake on the wire, as the engines' sources define their routes.

vLLM 0.32 ``vllm/entrypoints/serve/dev/sleep/api_router.py`` (lines 26-61): ``POST
/sleep?level=&mode=`` (level ``Query(ge=0, le=2)``, mode abort|wait|keep), ``POST
/wake_up`` with repeated ``tags``, ``GET /is_sleeping``; ``vllm/v1/engine/core.py``
``EngineCore.sleep``/``wake_up`` (level 0 only pauses; ``tags=scheduling`` only resumes).
SGLang 0.5.23 ``python/sglang/srt/entrypoints/http_server.py`` lines 1575-1597
(``/release_memory_occupation``, ``/resume_memory_occupation``, a JSON body) and 1831-1855
(``/pause_generation``, ``/continue_generation``).  The fake engines
(``tests/runtime_engines/fake_server.py``) run as real processes and journal every
request; what they do when asked wrongly is the engines' own failure: vLLM dies when
put to sleep while it decodes (vllm-project/vllm#45520), SGLang when asked to release
memory while it serves (its scheduler's idle assertion).
"""

import json
import threading
from typing import Any, Dict, List, Optional, Tuple

import pytest
from runtime_support import EngineProcess
from support import http_json

from patio.errors import EngineTimeout
from patio.http.client import HttpResult
from patio.runtime.control import (
    SGLANG,
    VLLM,
    Activity,
    ControlFailed,
    EngineBusy,
    EngineControl,
    Unsupported,
    read_activity,
)


def wire(engine: EngineProcess) -> List[Tuple[str, str, str]]:
    """The control calls the engine received, in order (not the traffic or the gauges read)."""
    return [
        (e["method"], e["target"], e["body"])
        for e in engine.requests()
        if e["target"] not in ("/metrics", "/v1/completions")
    ]


def completions(engine: EngineProcess, count: int, tokens: int) -> Tuple[List[threading.Thread], List[Any]]:
    answers: List[Any] = []

    def one() -> None:
        try:
            answers.append(
                http_json("POST", engine.url + "/v1/completions", {"model": "m", "max_tokens": tokens}, timeout=60)
            )
        except OSError as exc:  # the engine died under it (the tests that show why Patio drains)
            answers.append(("dropped", repr(exc)))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def wait_running(engine: EngineProcess, contract: Any, count: int) -> None:
    control = EngineControl(contract, engine.url)
    for _ in range(200):
        if control.activity("m", 1.0).running >= count:
            return
        threading.Event().wait(0.02)
    raise AssertionError("the requests never ran")


@pytest.fixture
def vllm():
    engine = EngineProcess("vllm", "--enable-sleep-mode", "--fake-token-delay", "0.02", env={"FAKE_SLEEP_MODE": "1"})
    yield engine
    engine.stop()


@pytest.fixture
def sglang():
    engine = EngineProcess("sglang", "--enable-memory-saver", "--fake-token-delay", "0.02")
    yield engine
    engine.stop()


def test_vllm_idle_sleep_drains_then_sleeps_with_level_and_mode_in_the_query(vllm: EngineProcess) -> None:
    control = EngineControl(VLLM, vllm.url)
    control.sleep("m", 2, drain_timeout=1.0, call_timeout=10.0)
    # production-stack#953 lost level and mode on the way: both are in the request line.
    assert wire(vllm) == [("POST", "/sleep?level=0&mode=wait", ""), ("POST", "/sleep?level=2&mode=wait", "")]
    sent = vllm.requests()[0]
    assert dict((k.lower(), v) for k, v in sent["headers"])["content-length"] == "0"
    assert control.is_sleeping(2.0) is True
    control.wake(10.0)
    assert wire(vllm)[-1] == ("POST", "/wake_up", "")  # no tags: everything wakes
    assert control.is_sleeping(2.0) is False


def test_vllm_45520_a_sleep_without_the_drain_kills_the_engine(vllm: EngineProcess) -> None:
    """The report's scenario on the fake: what Patio's drain exists to prevent (the test can fail)."""
    threads, _answers = completions(vllm, 3, 200)
    wait_running(vllm, VLLM, 1)
    try:
        http_json("POST", vllm.url + "/sleep?level=1", b"", timeout=5)
    except OSError:
        pass
    vllm.proc.wait(10)
    assert not vllm.alive(), "the fake no longer reproduces vLLM#45520"
    for thread in threads:
        thread.join(10)


def test_vllm_45520_sleep_with_requests_in_flight_is_refused_and_every_request_finishes(vllm: EngineProcess) -> None:
    threads, answers = completions(vllm, 4, 100)
    wait_running(vllm, VLLM, 4)
    control = EngineControl(VLLM, vllm.url)
    with pytest.raises(EngineBusy, match="still serving"):
        control.sleep("m", 1, drain_timeout=0.3, call_timeout=10.0)
    assert wire(vllm)[:2] == [("POST", "/sleep?level=0&mode=wait", ""), ("POST", "/wake_up?tags=scheduling", "")]
    assert not any(target.startswith("/sleep?level=1") for _m, target, _b in wire(vllm))
    for thread in threads:
        thread.join(30)
    assert vllm.alive()
    assert [status for status, _ in answers] == [200] * 4
    assert all(body["choices"][0]["finish_reason"] == "length" for _, body in answers)  # none aborted
    # Scheduling resumed: a new request is served, and the engine never slept.
    status, _body = http_json("POST", vllm.url + "/v1/completions", {"model": "m", "max_tokens": 2}, timeout=10)
    assert status == 200 and control.is_sleeping(2.0) is False


def test_vllm_drain_with_requests_queued_behind_the_running_ones_is_still_serving() -> None:
    """vLLM's level-0 pause waits only for the running batch: queued requests stay queued
    (observed on vLLM 0.32 CPU: the drain answered in 0.27 s with 39 waiting).  Not idle."""
    engine = EngineProcess(
        "vllm", "--enable-sleep-mode", "--max-num-seqs", "2", "--fake-token-delay", "0.02", env={"FAKE_SLEEP_MODE": "1"}
    )
    try:
        threads, answers = completions(engine, 6, 40)
        wait_running(engine, VLLM, 2)
        with pytest.raises(EngineBusy, match="4 request"):
            EngineControl(VLLM, engine.url).sleep("m", 1, drain_timeout=10.0, call_timeout=10.0)
        assert [t for _m, t, _b in wire(engine)] == ["/sleep?level=0&mode=wait", "/wake_up?tags=scheduling"]
        for thread in threads:
            thread.join(30)
        assert [status for status, _ in answers] == [200] * 6
    finally:
        engine.stop()


def test_vllm_sleep_after_the_requests_finish_succeeds(vllm: EngineProcess) -> None:
    threads, answers = completions(vllm, 2, 10)
    wait_running(vllm, VLLM, 2)  # both started: one still arriving would wait in the queue (busy)
    EngineControl(VLLM, vllm.url).sleep("m", 1, drain_timeout=10.0, call_timeout=10.0)
    for thread in threads:
        thread.join(10)
    assert [status for status, _ in answers] == [200, 200]
    assert vllm.alive()


def test_vllm_capability_is_read_from_server_info() -> None:
    able = EngineProcess("vllm", "--enable-sleep-mode", env={"FAKE_SLEEP_MODE": "1"})
    unable = EngineProcess("vllm")
    no_dev = EngineProcess("vllm", dev_mode=False)
    try:
        assert EngineControl(VLLM, able.url).sleep_capable(5.0) == (True, "")
        assert wire(able) == [("GET", "/server_info?config_format=json", "")]
        capable, why = EngineControl(VLLM, unable.url).sleep_capable(5.0)
        assert not capable and "--enable-sleep-mode" in why
        capable, why = EngineControl(VLLM, no_dev.url).sleep_capable(5.0)
        assert not capable and "VLLM_SERVER_DEV_MODE=1" in why
        with pytest.raises(Unsupported, match="VLLM_SERVER_DEV_MODE=1"):
            EngineControl(VLLM, no_dev.url).sleep("m", 1, 1.0, 5.0)
    finally:
        for engine in (able, unable, no_dev):
            engine.stop()


def test_sglang_idle_sleep_and_wake_on_the_wire(sglang: EngineProcess) -> None:
    control = EngineControl(SGLANG, sglang.url)
    assert control.sleep_capable(5.0) == (True, "")
    control.sleep("m", 1, drain_timeout=1.0, call_timeout=10.0)
    control.wake(10.0)
    assert wire(sglang) == [
        ("GET", "/get_server_info", ""),
        ("POST", "/pause_generation", '{"mode":"retract"}'),
        ("POST", "/release_memory_occupation", "{}"),
        ("POST", "/resume_memory_occupation", "{}"),
        ("POST", "/continue_generation", "{}"),
    ]
    types = {
        dict((k.lower(), v) for k, v in e["headers"]).get("content-type")
        for e in sglang.requests()
        if e["method"] == "POST"
    }
    assert types == {"application/json"}
    assert sglang.alive()


def test_sglang_release_while_serving_kills_it_so_patio_waits_for_idle(sglang: EngineProcess) -> None:
    threads, answers = completions(sglang, 2, 150)
    wait_running(sglang, SGLANG, 2)
    with pytest.raises(EngineBusy, match="2 running"):
        EngineControl(SGLANG, sglang.url).sleep("m", 1, drain_timeout=0.3, call_timeout=10.0)
    assert all(target != "/release_memory_occupation" for _m, target, _b in wire(sglang))
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in answers] == [200, 200] and sglang.alive()
    # The fake's assertion is real: released while serving, it dies (so the test above can fail).
    threads, _ = completions(sglang, 1, 150)
    wait_running(sglang, SGLANG, 1)
    try:
        http_json("POST", sglang.url + "/release_memory_occupation", {}, timeout=5)
    except OSError:
        pass
    sglang.proc.wait(10)
    assert not sglang.alive()
    for thread in threads:
        thread.join(10)


class Scripted:
    """A transport answering from a script: (status, body) per call, or an exception to raise."""

    def __init__(self, answers: List[Any]) -> None:
        self.answers = list(answers)
        self.calls: List[Tuple[str, str]] = []

    def __call__(self, method: str, url: str, **kwargs: Any) -> HttpResult:
        self.calls.append((method, url.split("127.0.0.1:1", 1)[1]))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return HttpResult(status, {}, body.encode() if isinstance(body, str) else json.dumps(body).encode())


def scripted(contract: Any, answers: List[Any]) -> Tuple[EngineControl, Scripted]:
    transport = Scripted(answers)
    return EngineControl(contract, "http://127.0.0.1:1", request=transport, sleep=lambda s: None), transport


def test_a_sleep_the_engine_keeps_refusing_resumes_scheduling() -> None:
    idle = (200, 'vllm:num_requests_running{model_name="m"} 0\nvllm:num_requests_waiting{model_name="m"} 0\n')
    control, transport = scripted(VLLM, [(200, {}), idle, (500, "no"), (500, "no"), (500, "no"), (200, {})])
    with pytest.raises(ControlFailed, match="refused to sleep"):
        control.sleep("m", 1, 1.0, 5.0)
    assert [t for _m, t in transport.calls] == [
        "/sleep?level=0&mode=wait",
        "/metrics",  # nothing left queued behind the drained batch
        "/sleep?level=1&mode=wait",
        "/sleep?level=1&mode=wait",
        "/sleep?level=1&mode=wait",  # AIBrix VLLM_SLEEP_ATTEMPTS: asked three times
        "/wake_up?tags=scheduling",
    ]


def test_a_sleep_that_succeeds_on_the_second_attempt() -> None:
    control, transport = scripted(VLLM, [(200, {}), (200, ""), (500, "card busy"), (200, {"status": "sleeping"})])
    control.sleep("m", 1, 1.0, 5.0)
    assert len(transport.calls) == 4


def test_a_drain_timeout_resumes_then_refuses() -> None:
    control, transport = scripted(VLLM, [EngineTimeout("slow"), (200, {"status": "awake", "tags": ["scheduling"]})])
    with pytest.raises(EngineBusy):
        control.sleep("m", 1, 0.1, 5.0)
    assert [t for _m, t in transport.calls] == ["/sleep?level=0&mode=wait", "/wake_up?tags=scheduling"]


def test_an_older_vllm_without_the_level_0_pause_is_gated_by_its_gauges() -> None:
    busy = 'vllm:num_requests_running{model_name="m"} 2\nvllm:num_requests_waiting{model_name="m"} 0\n'
    control, transport = scripted(VLLM, [(422, {"detail": "level"}), (200, busy), (200, busy), (200, busy)])
    clock = iter([0.0, 0.0, 0.5, 2.0, 5.0])
    control._clock = lambda: next(clock)
    with pytest.raises(EngineBusy, match="2 running"):
        control.sleep("m", 1, 1.0, 5.0)
    assert not any("level=1" in t for _m, t in transport.calls)


def test_a_partial_wake_is_a_failure() -> None:
    control, _ = scripted(VLLM, [(200, {"status": "sleeping", "tags": None})])
    with pytest.raises(ControlFailed, match="in part"):
        control.wake(5.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            'vllm:num_requests_running{model_name="m"} 3\nvllm:num_requests_waiting{model_name="m"} 1\n'
            'vllm:request_success_total{model_name="m"} 7\n',
            Activity(True, 3, 1, 7),
        ),
        (
            'vllm_num_requests_running{model_name="m"} 1\nvllm_num_requests_running{model_name="other"} 9\n',
            Activity(True, 1, 0, None),
        ),
        ("vllm:num_requests_running 4\n", Activity()),
        ("garbage { here\n", Activity()),
        ("", Activity()),
    ],
    ids=[
        "colon names, this model",
        "underscore names, another model's samples ignored",
        "no model_name label: unobserved",
        "unparseable: unobserved",
        "empty page: unobserved",
    ],
)
def test_request_activity_is_aibrixs_reading(text: str, expected: Optional[Dict[str, Any]]) -> None:
    assert read_activity(VLLM, text, "m") == expected
