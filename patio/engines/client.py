"""Blocking engine client for LoRA calls and the model list, with bounded retries.

Run in worker threads only.  A call is retried only when the engine cannot have
acted on it: the connection was refused before the request was sent, or the
engine answered 503.  Backoff starts at ``retry_base`` seconds and doubles,
bounded by ``retry_attempts`` and a total ``retry_deadline``.
"""

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from patio import jsontext
from patio.engines import llamacpp, sglang, tgi, triton, vllm
from patio.engines.base import OK, REFUSED, UNAVAILABLE, EngineSpec, Outcome
from patio.errors import EngineError
from patio.http.client import HttpResult, PeerUnavailable, bearer, http_request

log = logging.getLogger("patio.engine")

SPECS: Mapping[str, EngineSpec] = {s.name: s for s in (vllm.SPEC, sglang.SPEC, llamacpp.SPEC, tgi.SPEC, triton.SPEC)}
# A model list is small JSON; refuse more than this.
MAX_MODELS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class EngineCallRetry:
    """Retries of one engine call the engine cannot have acted on (connection refused before
    sending, a 503): doubling from ``base``, at most ``attempts`` tries within ``deadline`` seconds.
    Downloads have their own (``patio.artifacts.fetch.retry.DownloadRetry``)."""

    attempts: int = 5
    base: float = 0.5
    deadline: float = 30.0


class EngineClient:
    def __init__(
        self,
        spec: EngineSpec,
        base_url: str,
        api_key: Optional[str],
        retry: EngineCallRetry = EngineCallRetry(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.base_url = base_url
        self.api_key = api_key
        self.retry = retry
        self._sleep = sleep

    def key_for(self, adapter_key: Optional[str]) -> Optional[str]:
        """The configured engine key wins; else a key the caller gave for its adapter (AIBrix's api-key)."""
        return self.api_key or adapter_key

    def _headers(self, api_key: Optional[str] = None) -> Dict[str, str]:
        headers = {"Content-Type": "application/json"}
        headers.update(bearer(self.key_for(api_key)))
        return headers

    def _with_retry(self, what: str, call: Callable[[], HttpResult], classify: Callable[[HttpResult], Any]) -> Any:
        started = time.monotonic()
        delay = self.retry.base
        attempt = 0
        while True:
            attempt += 1
            retryable = False
            try:
                result = call()
                value = classify(result)
                retryable = isinstance(value, Outcome) and value.kind == UNAVAILABLE
                if not retryable:
                    return value
                reason = f"engine answered {result.status}"
            except PeerUnavailable as exc:
                if exc.sent:
                    raise  # the engine may have acted: never repeat a possibly applied change
                reason = exc.message
                value = exc
            out_of_budget = attempt >= self.retry.attempts or time.monotonic() + delay - started > self.retry.deadline
            if out_of_budget:
                if isinstance(value, PeerUnavailable):
                    raise value
                return value
            log.info("%s: %s; retry %d/%d in %.1fs", what, reason, attempt, self.retry.attempts - 1, delay)
            self._sleep(delay)
            delay *= 2

    def lora(self, op: str, payload: Mapping[str, Any], timeout: float, api_key: Optional[str] = None) -> Outcome:
        """``op`` is ``load`` or ``unload``; the classified answer (retries included)."""
        if self.spec.static_lora:
            return self._static_lora(op, payload, timeout, api_key)
        path = self.spec.load_path if op == "load" else self.spec.unload_path
        url = self.base_url + path
        body = json.dumps(dict(payload)).encode("utf-8")
        result: Outcome = self._with_retry(
            f"{op} {payload.get('lora_name')}",
            lambda: http_request("POST", url, body=body, headers=self._headers(api_key), timeout=timeout),
            lambda r: self.spec.classify(op, r.status, r.body),
        )
        return result

    def _static_lora(self, op: str, payload: Mapping[str, Any], timeout: float, api_key: Optional[str]) -> Outcome:
        """An engine whose adapters are fixed at start: a load of what it serves is done; the rest
        is refused with the engine's reason, never reported as done."""
        name, path = payload.get("lora_name"), payload.get("lora_path")
        if op == "load" and self.spec.adapters_path is not None:
            served = self.adapters(timeout, api_key)
            if name in served and served[name] == path:
                return Outcome(OK, f"{self.spec.name} serves '{name}' from {path} since its start", 200)
            listed = ", ".join(f"{n} ({p})" for n, p in sorted(served.items())) or "none"
            return Outcome(
                REFUSED,
                f"{self.spec.name} cannot load '{name}' at run time ({self.spec.lora_hint}); it serves: {listed}",
                409,
            )
        return Outcome(REFUSED, f"{self.spec.name} cannot {op} LoRA adapters at run time ({self.spec.lora_hint})", 409)

    def models_raw(self, timeout: float, api_key: Optional[str] = None) -> HttpResult:
        headers = bearer(self.key_for(api_key))
        return http_request(
            "GET", self.base_url + self.spec.models_path, headers=headers, timeout=timeout, max_bytes=MAX_MODELS_BYTES
        )

    def adapters(self, timeout: float, api_key: Optional[str] = None) -> Dict[str, str]:
        """Adapters the engine serves now: name -> root (its path).  Raises on failure."""
        if self.spec.adapters_path is not None and self.spec.parse_adapters is not None:
            return self._listed_adapters(self.spec.adapters_path, self.spec.parse_adapters, timeout, api_key)
        if self.spec.static_lora:
            return {}  # fixed at launch and listed nowhere (TGI, Triton)
        result = self.models_raw(timeout, api_key)
        if result.status != 200:
            raise EngineError(f"engine {self.spec.models_path} answered {result.status}", engine_status=result.status)
        try:
            data = jsontext.loads(result.body)
            cards: List[Any] = data["data"]
        except (ValueError, KeyError, TypeError):
            raise EngineError(f"engine {self.spec.models_path} answer is not a model list") from None
        adapters: Dict[str, str] = {}
        for card in cards:
            if isinstance(card, dict) and card.get("parent") and isinstance(card.get("id"), str):
                adapters[card["id"]] = str(card.get("root") or "")
        return adapters

    def _listed_adapters(
        self, path: str, parse: Callable[[str], Dict[str, str]], timeout: float, api_key: Optional[str]
    ) -> Dict[str, str]:
        headers = bearer(self.key_for(api_key))
        result = http_request("GET", self.base_url + path, headers=headers, timeout=timeout, max_bytes=MAX_MODELS_BYTES)
        if result.status != 200:
            raise EngineError(f"engine {path} answered {result.status}", engine_status=result.status)
        try:
            return parse(result.body.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise EngineError(f"engine {path} answer is not its adapter list: {exc}") from None
