"""Sleep, wake and probes of one engine over HTTP: each engine's contract as data, one driver.

vLLM (``vllm/entrypoints/serve/dev/sleep/api_router.py``, served with
``VLLM_SERVER_DEV_MODE=1``): ``POST /sleep?level=N&mode=M`` (level 0..2; mode abort,
wait or keep), ``POST /wake_up[?tags=...]``, ``GET /is_sleeping``.  Level 0 with
``mode=wait`` only pauses scheduling and waits for the requests in flight
(``EngineCore.sleep`` -> ``pause_scheduler(mode="wait")``): the drain.  A drain that does
not finish within the drain timeout means the engine is serving: ``POST
/wake_up?tags=scheduling`` resumes it (``EngineCore.wake_up`` strips the tag and resumes
the scheduler) and the sleep is refused, 409 (AIBrix ``EngineServingError``).  A sleep
issued while requests decode crashes vLLM (vllm-project/vllm#45520); the drain is what
keeps it from happening, and the level and mode always travel in the query string
(production-stack#953 lost them on the way).

SGLang (``python/sglang/srt/entrypoints/http_server.py``): ``POST
/release_memory_occupation`` and ``/resume_memory_occupation`` with a JSON body (``{}``:
every memory tag).  Its scheduler asserts that it is idle before releasing
(``release_memory_occupation should be called only when server is idle``), so the sleep
first waits for its request gauges to read zero, then pauses with ``mode: retract``
(what slipped in meanwhile goes back to the queue, which a release tolerates) and releases;
a wake resumes and continues generation.

Blocking: run in worker threads.  Errors are the Patio family: ``EngineBusy`` and
``Unsupported`` (409), ``ControlFailed`` (the engine refused; AIBrix answers 500).
"""

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

from patio import jsontext
from patio.errors import Conflict, EngineError, EngineTimeout, PatioError
from patio.http.client import HttpResult, bearer, http_request
from patio.metrics.model import Sample
from patio.metrics.parse import parse

# Answers of the control routes are small JSON; /server_info is the largest (~100 KiB).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# A /metrics page of a busy engine (AIBrix reads ~200 KB pages with seven engines).
MAX_METRICS_BYTES = 16 * 1024 * 1024
# vLLM fails a sleep when the card has less free memory after it than before, which another
# engine can cause; asked again it finishes (AIBrix VLLM_SLEEP_ATTEMPTS, one second apart).
SLEEP_RETRY_DELAY = 1.0
IDLE_POLL = 0.1
# The queue read after a drain: a busy engine's /metrics can take a while; unread, the sleep
# goes on (with mode=wait a request still queued waits through it rather than being aborted).
QUEUE_READ_TIMEOUT = 5.0


class EngineBusy(Conflict):
    """The engine is still serving requests: not put to sleep (AIBrix EngineServingError)."""

    error_type = "engine_busy"


class Unsupported(Conflict):
    """The engine cannot do this (AIBrix UnsupportedModelControlError)."""

    error_type = "unsupported"


class ControlFailed(EngineError):
    """The engine answered the control call with a failure."""

    status = 500
    error_type = "engine_control_failed"


@dataclass(frozen=True)
class Step:
    method: str
    target: str  # may hold {level}
    body: Optional[bytes] = None  # None: no body; b"" sends Content-Length: 0


@dataclass(frozen=True)
class Contract:
    engine: str
    drain: Optional[Step]  # waits for the requests in flight; times out while serving
    undrain: Optional[Step]  # lets a drained or paused engine serve again
    pause: Optional[Step]  # after the idle check: stop taking new work
    sleep: Step
    wake: Tuple[Step, ...]
    is_sleeping: Optional[Step]
    capability: Step  # where the engine says whether it was started able to sleep
    capability_key: Tuple[str, ...]
    sleep_attempts: int
    # Request gauges (labelled model_name) read for the idle check and the snapshot.
    running: Tuple[str, ...]
    waiting: Tuple[str, ...]
    success: Tuple[str, ...]
    unobserved_is_idle: bool  # no gauges: proceed (the pause makes it safe) or refuse


VLLM = Contract(
    engine="vllm",
    drain=Step("POST", "/sleep?level=0&mode=wait", b""),
    undrain=Step("POST", "/wake_up?tags=scheduling", b""),
    pause=None,
    # mode=wait, not vLLM's default abort: a request that reached the engine after the drain
    # stays queued through the sleep and runs after the wake instead of being aborted.
    sleep=Step("POST", "/sleep?level={level}&mode=wait", b""),
    wake=(Step("POST", "/wake_up", b""),),
    is_sleeping=Step("GET", "/is_sleeping"),
    capability=Step("GET", "/server_info?config_format=json"),
    capability_key=("vllm_config", "model_config", "enable_sleep_mode"),
    sleep_attempts=3,
    # vLLM has used both spellings across releases (AIBrix _requests_running_metrics).
    running=("vllm:num_requests_running", "vllm_num_requests_running"),
    waiting=("vllm:num_requests_waiting", "vllm_num_requests_waiting"),
    success=(
        "vllm:request_success_total",
        "vllm_request_success_total",
        "vllm:num_requests_success_total",
        "vllm_num_requests_success_total",
    ),
    unobserved_is_idle=False,
)
SGLANG = Contract(
    engine="sglang",
    drain=None,
    undrain=Step("POST", "/continue_generation", b"{}"),
    pause=Step("POST", "/pause_generation", b'{"mode":"retract"}'),
    sleep=Step("POST", "/release_memory_occupation", b"{}"),
    wake=(Step("POST", "/resume_memory_occupation", b"{}"), Step("POST", "/continue_generation", b"{}")),
    is_sleeping=None,
    capability=Step("GET", "/get_server_info"),
    capability_key=("enable_memory_saver",),
    sleep_attempts=1,
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    success=(),
    unobserved_is_idle=True,
)
CONTRACTS = {"vllm": VLLM, "sglang": SGLANG}
_STEMS = ("num_requests_running", "num_requests_waiting", "request_success", "num_running_reqs", "num_queue_reqs")


@dataclass(frozen=True)
class Activity:
    """Request activity read from the engine's /metrics (AIBrix EngineRequestActivity)."""

    observed: bool = False
    running: int = 0
    waiting: int = 0
    success_total: Optional[int] = None


def read_activity(contract: Contract, text: str, model_name: str) -> Activity:
    """The gauges of ``model_name`` in a /metrics page; unobserved when none is there.

    Only lines naming a request metric are parsed (a page can hold every engine's metrics
    when they share a multiprocess directory; AIBrix _request_metric_lines)."""
    lines = "\n".join(line for line in text.splitlines() if any(stem in line for stem in _STEMS))
    sums = {"running": 0.0, "waiting": 0.0, "success": 0.0}
    found = {"running": False, "waiting": False, "success": False}
    names = {"running": contract.running, "waiting": contract.waiting, "success": contract.success}
    for family in parse(lines).families:
        for sample in family.samples:
            if not isinstance(sample, Sample) or dict(sample.labels).get("model_name") != model_name:
                continue
            for key, wanted in names.items():
                if sample.name in wanted:
                    sums[key] += sample.value
                    found[key] = True
    return Activity(
        observed=any(found.values()),
        running=max(0, int(sums["running"])),
        waiting=max(0, int(sums["waiting"])),
        success_total=max(0, int(sums["success"])) if found["success"] else None,
    )


def _dig(value: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


class EngineControl:
    """One engine at ``base_url`` (``http://127.0.0.1:PORT`` for a launched engine)."""

    def __init__(
        self,
        contract: Contract,
        base_url: str,
        api_key: Optional[str] = None,
        *,
        request: Callable[..., HttpResult] = http_request,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.contract = contract
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._request = request
        self._sleep = sleep
        self._clock = clock

    def _call(self, step: Step, timeout: float, level: int = 0, max_bytes: int = MAX_ANSWER_BYTES) -> HttpResult:
        headers = dict(bearer(self.api_key))
        if step.body is not None:
            headers["Content-Type"] = "application/json"
        return self._request(
            step.method,
            self.base_url + step.target.format(level=level),
            body=step.body,
            headers=headers,
            timeout=timeout,
            max_bytes=max_bytes,
        )

    def _must(self, step: Step, timeout: float, what: str, level: int = 0) -> HttpResult:
        result = self._call(step, timeout, level)
        if result.status == 404:
            raise Unsupported(
                f"the engine has no {step.target.split('?')[0]} route"
                + (" (start vLLM with VLLM_SERVER_DEV_MODE=1)" if self.contract.engine == "vllm" else "")
            )
        if not 200 <= result.status < 300:
            raise ControlFailed(
                f"the engine refused to {what} ({result.status}): {result.text()[:300]}",
                engine_status=result.status,
            )
        return result

    # -- probes ---------------------------------------------------------------------------
    def healthy(self, timeout: float) -> bool:
        try:
            return self._call(Step("GET", "/health"), timeout, max_bytes=64 * 1024).status == 200
        except PatioError:
            return False

    def sleep_capable(self, timeout: float) -> Tuple[bool, str]:
        """Whether the engine was started able to sleep, and why not."""
        try:
            result = self._call(self.contract.capability, timeout)
        except PatioError as exc:
            return False, f"cannot ask the engine whether it sleeps: {exc.message}"
        if result.status == 404:
            hint = (
                "VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode"
                if self.contract.engine == "vllm"
                else "its server info"
            )
            return False, f"the engine does not serve {self.contract.capability.target.split('?')[0]} ({hint})"
        try:
            value = _dig(jsontext.loads(result.text()), self.contract.capability_key)
        except ValueError:
            value = None
        if value is True:
            return True, ""
        flag = "--enable-sleep-mode" if self.contract.engine == "vllm" else "--enable-memory-saver"
        return False, f"the engine was not started with {flag}"

    def is_sleeping(self, timeout: float) -> Optional[bool]:
        step = self.contract.is_sleeping
        if step is None:
            return None
        try:
            result = self._call(step, timeout)
            value = jsontext.loads(result.text()) if result.status == 200 else None
        except (PatioError, ValueError):
            return None
        flag = value.get("is_sleeping") if isinstance(value, dict) else None
        return flag if isinstance(flag, bool) else None

    def activity(self, model_name: str, timeout: float) -> Activity:
        try:
            result = self._request(
                "GET",
                self.base_url + "/metrics",
                headers={**bearer(self.api_key), "Accept": "text/plain;version=0.0.4"},
                timeout=timeout,
                max_bytes=MAX_METRICS_BYTES,
            )
        except PatioError:
            return Activity()
        if result.status != 200:
            return Activity()
        return read_activity(self.contract, result.text(), model_name)

    def served_name(self, timeout: float) -> Optional[str]:
        """The base model's id in the engine's /v1/models (adapters carry a parent)."""
        try:
            result = self._call(Step("GET", "/v1/models"), timeout)
            data = jsontext.loads(result.text()).get("data") if result.status == 200 else None
        except (PatioError, ValueError, AttributeError):
            return None
        for card in data if isinstance(data, list) else ():
            if isinstance(card, dict) and isinstance(card.get("id"), str) and not card.get("parent"):
                return str(card["id"])
        return None

    # -- sleep and wake -------------------------------------------------------------------
    def _wait_idle(self, model_name: str, budget: float, probe_timeout: float) -> Activity:
        deadline = self._clock() + budget
        while True:
            seen = self.activity(model_name, probe_timeout)
            if seen.observed and seen.running + seen.waiting == 0:
                return seen
            if not seen.observed and self.contract.unobserved_is_idle:
                return seen
            if self._clock() >= deadline:
                if not seen.observed:
                    raise EngineBusy(
                        "cannot tell whether the engine is idle (no request gauges in its /metrics); not put to sleep"
                    )
                raise EngineBusy(
                    f"the engine is still serving requests ({seen.running} running, {seen.waiting} waiting), "
                    "so it is not put to sleep"
                )
            self._sleep(IDLE_POLL)

    def sleep(self, model_name: str, level: int, drain_timeout: float, call_timeout: float) -> None:
        contract = self.contract
        gate = contract.drain is None
        if contract.drain is not None:
            try:
                drained = self._call(contract.drain, drain_timeout)
            except EngineTimeout:
                # Still serving after the drain timeout: serve on (what arrived meanwhile too).
                if contract.undrain is not None:
                    self._must(contract.undrain, call_timeout, "resume scheduling")
                raise EngineBusy("the engine is still serving requests, so it is not put to sleep") from None
            if drained.status == 404:
                raise Unsupported("the engine has no /sleep route (start vLLM with VLLM_SERVER_DEV_MODE=1)")
            if drained.status in (400, 422):
                gate = True  # a vLLM older than the level-0 pause: check idleness by its gauges
            elif not 200 <= drained.status < 300:
                raise ControlFailed(
                    f"the engine refused to drain ({drained.status}): {drained.text()[:300]}",
                    engine_status=drained.status,
                )
            else:
                # The pause waits only for the requests running; queued ones stay queued
                # (vLLM's scheduler under PAUSED_NEW: get_num_unfinished_requests).  Observed on
                # vLLM 0.32: the drain answered in 0.27 s with 39 requests waiting.  Those are
                # work the engine still has: not idle.
                queued = self.activity(model_name, min(call_timeout, QUEUE_READ_TIMEOUT))
                if queued.observed and queued.waiting:
                    if contract.undrain is not None:
                        self._must(contract.undrain, call_timeout, "resume scheduling")
                    raise EngineBusy(
                        f"the engine still has {queued.waiting} request(s) waiting, so it is not put to sleep"
                    )
        if gate:
            self._wait_idle(model_name, drain_timeout, min(call_timeout, 1.0))
        paused = False
        try:
            if contract.pause is not None:
                self._must(contract.pause, call_timeout, "pause generation")
                paused = True
            for attempt in range(1, contract.sleep_attempts + 1):
                try:
                    self._must(contract.sleep, call_timeout, "sleep", level)
                    break
                except ControlFailed:
                    if attempt == contract.sleep_attempts:
                        raise
                    self._sleep(SLEEP_RETRY_DELAY)
        except PatioError:
            # The engine was drained or paused and did not fall asleep: let it serve again.
            if contract.undrain is not None and (paused or contract.drain is not None):
                try:
                    self._call(contract.undrain, call_timeout)
                except PatioError:
                    pass
            raise

    def wake(self, call_timeout: float) -> None:
        for step in self.contract.wake:
            result = self._must(step, call_timeout, "wake")
            if self.contract.engine == "vllm":
                try:
                    answer = jsontext.loads(result.text())
                except ValueError:
                    answer = None
                if isinstance(answer, dict) and answer.get("status") == "sleeping":
                    raise ControlFailed("the engine woke only in part (it answered status sleeping)")
