"""Which engine is beside Patio, and which version: the setting, else what the engine answers as.

Each engine names itself on a route of its own (read from their source):

- vLLM: ``GET /version`` -> ``{"version": "0.11.0"}`` (``show_version`` in
  ``vllm/entrypoints/serve/instrumentator/basic.py``; ``vllm/entrypoints/openai/api_server.py``
  before the move).  Not behind ``--api-key``: vLLM guards only ``/v1``, ``/v2``, ``/inference``
  and ``/cohere`` (``vllm/entrypoints/serve/middleware/authenticate.py`` ``GUARDED_PREFIX``).
- SGLang: ``GET /server_info`` (newer releases) or ``GET /get_server_info`` (its older name, kept
  as a deprecated alias) -> ``{**server_args, **scheduler_info, "internal_states", "version"}``
  (``python/sglang/srt/entrypoints/http_server.py`` ``get_server_info``).  vLLM's own dev-mode
  ``/server_info`` answers ``{"vllm_config", "vllm_env", "system_env"}``; SGLang's answer is
  told apart by ``model_path``, one of its server args.

``EngineKind`` holds the answer: ``INFERENCE_ENGINE`` (or ``-E``) always wins; unset, the
engine found decides; until one is found, the start profile's default.  The version likewise:
``INFERENCE_ENGINE_VERSION``, else the engine's, else the profile's documented default.  The
engine health watch asks ``identify`` (blocking, in its worker thread) when the engine answers
``/health`` and no identity is known, so whoever is told "the engine is up" (LoRA reconcile,
topology) already sees the right engine.  A setting that disagrees with the engine is kept,
logged, reported in ``/ready`` and added to LoRA errors (``DetectedSpec.lora_hint``).
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

from patio import jsontext
from patio.core_settings import CoreSettings
from patio.engines.base import OK, EngineSpec, Outcome
from patio.engines.client import SPECS
from patio.errors import PatioError
from patio.http.client import bearer, http_request
from patio.logs import redact_url
from patio.profiles import PROFILES

log = logging.getLogger("patio.engine")

# (engine, route) in the order asked; the first that answers as its engine wins.
PROBES: Tuple[Tuple[str, str], ...] = (("vllm", "/version"), ("sglang", "/server_info"), ("sglang", "/get_server_info"))
# SGLang's server info carries every server arg and the scheduler's internal state: tens of KB.
MAX_IDENTITY_BODY = 1024 * 1024
# Healthy probes that may each ask the engine which it is before Patio stops asking until the
# engine next goes down and comes back (an engine that answers none of the routes is not asked
# three routes every health interval forever).
IDENTIFY_ATTEMPTS = 3
NAMES = {"vllm": "vLLM", "sglang": "SGLang"}

Fetch = Callable[[str], Tuple[int, bytes]]  # path -> (status, body); raises PatioError when unreachable


@dataclass(frozen=True)
class Identity:
    kind: str  # "vllm" or "sglang"
    version: str
    evidence: str  # the route that said so

    def describe(self) -> str:
        return f"{NAMES[self.kind]} {self.version or '(version not given)'}"


def read_answer(kind: str, route: str, status: int, body: bytes) -> Optional[Identity]:
    """Sans-IO: the identity in one answer of ``route``, or None when it is not ``kind``'s answer."""
    if status != 200:
        return None
    try:
        value: Any = jsontext.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    version = value.get("version")
    version = version.strip() if isinstance(version, str) else ""
    if kind == "vllm":
        if "version" not in value or "model_path" in value:
            return None
    elif "model_path" not in value:  # SGLang's server args; vLLM's dev /server_info has none
        return None
    return Identity(kind, version[:64], f"GET {route}")


def identify(fetch: Fetch, probes: Sequence[Tuple[str, str]] = PROBES) -> Optional[Identity]:
    """Blocking: ask each route in turn; the first engine that answers as itself."""
    for kind, route in probes:
        try:
            status, body = fetch(route)
        except PatioError:
            continue
        found = read_answer(kind, route, status, body)
        if found is not None:
            return found
    return None


class EngineKind:
    """The engine Patio talks to: what was set, what the engine said, what the profile assumes."""

    def __init__(self, core: CoreSettings, fetch: Optional[Fetch] = None) -> None:
        self.configured: Optional[str] = core.engine if core.engine_configured else None
        self.assumed = core.engine
        self.configured_version = core.engine_version
        # The profile's documented version belongs to the profile's engine (RoleBasedGroup's
        # "v0.5.3" is an SGLang release): for the other engine the version is simply unknown.
        self.default_version = core.engine_version_default
        self.default_engine = PROFILES[core.profile].engine
        self.endpoint = core.engine_endpoint
        self._fetch = fetch or self._http_fetch(core)
        self.found: Optional[Identity] = None  # replaced whole (one reference write: safe across threads)
        self._attempts_left = IDENTIFY_ATTEMPTS
        self.spec: EngineSpec = DetectedSpec(self)

    @staticmethod
    def _http_fetch(core: CoreSettings) -> Fetch:
        headers = dict(bearer(core.engine_api_key))  # SGLang with --api-key guards every route

        def fetch(route: str) -> Tuple[int, bytes]:
            result = http_request(
                "GET",
                core.engine_endpoint + route,
                headers=headers,
                timeout=core.engine_health_timeout,
                max_bytes=MAX_IDENTITY_BODY,
            )
            return result.status, result.body

        return fetch

    # -- what the rest of Patio reads -------------------------------------------------------
    @property
    def name(self) -> str:
        found = self.found
        return self.configured or (found.kind if found else self.assumed)

    @property
    def version(self) -> str:
        found = self.found
        if self.configured_version:
            return self.configured_version
        if found and found.version:
            return found.version
        return self.default_version if self.name == self.default_engine else ""

    def mismatch(self) -> Optional[str]:
        found = self.found
        if self.configured is None or found is None or found.kind == self.configured:
            return None
        return (
            f"INFERENCE_ENGINE={self.configured} but the engine at {redact_url(self.endpoint)} answers as "
            f"{found.describe()} ({found.evidence}); set INFERENCE_ENGINE={found.kind}, or leave it unset"
        )

    def describe(self) -> str:
        """One line for /ready and the banner: which engine, and how Patio knows."""
        found = self.found
        mismatch = self.mismatch()
        if mismatch:
            return mismatch
        if self.configured and found:
            return f"{found.describe()} as set by INFERENCE_ENGINE ({found.evidence} agrees)"
        if self.configured:
            return f"{NAMES[self.configured]} as set by INFERENCE_ENGINE (not confirmed by the engine yet)"
        if found:
            return f"{found.describe()} (INFERENCE_ENGINE unset; the engine answered {found.evidence})"
        return (
            f"not identified yet (INFERENCE_ENGINE unset and the engine has not answered GET /version, "
            f"/server_info or /get_server_info); assuming {NAMES[self.assumed]}"
        )

    # -- the health watch's hooks ---------------------------------------------------------------
    def on_health(self, up: bool) -> None:
        """Health subscriber: after the engine was down, ask again (it may have been replaced)."""
        if not up:
            self._attempts_left = IDENTIFY_ATTEMPTS

    def identify(self) -> None:
        """Blocking (the health probe's thread): ask the engine which it is, when not known yet."""
        if self._attempts_left <= 0:
            return
        self._attempts_left -= 1
        found = identify(self._fetch)
        if found is None:
            if self._attempts_left == 0:
                level = logging.DEBUG if self.configured else logging.WARNING
                log.log(level, "engine at %s: %s", redact_url(self.endpoint), self.describe())
            return
        self._attempts_left = 0
        previous, self.found = self.found, found
        if previous == found:
            return
        mismatch = self.mismatch()
        if mismatch:
            log.warning("engine mismatch: %s", mismatch)
        else:
            log.info("engine at %s is %s (%s)", redact_url(self.endpoint), found.describe(), found.evidence)


class DetectedSpec(EngineSpec):
    """An ``EngineSpec`` whose every field is read, at each use, from the engine ``EngineKind``
    names then (the setting, else the identified engine), so the LoRA client built at start
    speaks to whichever engine turns out to be there.  On a mismatch every refusal names it."""

    def __init__(self, kind: EngineKind) -> None:  # no dataclass fields of its own
        object.__setattr__(self, "_kind", kind)

    def __getattribute__(self, name: str) -> Any:
        if name in _SPEC_FIELDS:
            kind: EngineKind = object.__getattribute__(self, "_kind")
            if name == "lora_hint":
                return kind.mismatch() or SPECS[kind.name].lora_hint
            return getattr(SPECS[kind.name], name)
        return object.__getattribute__(self, name)

    def classify(self, op: str, status: int, body: bytes) -> Outcome:
        outcome = self.classify_body(op, status, body.decode("utf-8", errors="replace"))
        mismatch = object.__getattribute__(self, "_kind").mismatch()
        if mismatch and outcome.kind != OK:
            # The answer came from routes of the other engine: say so in the caller's error.
            return Outcome(outcome.kind, f"{outcome.message} ({mismatch})", outcome.status)
        return outcome

    def __repr__(self) -> str:
        return f"DetectedSpec({self.name!r})"


_SPEC_FIELDS = frozenset(EngineSpec.__dataclass_fields__)
