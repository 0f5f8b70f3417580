"""What differs between engines, as data: LoRA paths, accepted fields, and how an
answer is read (success, duplicate, not found, validation, internal).

``EngineSpec.classify(op, status, body)`` turns a raw engine answer into an
``Outcome``; ``engines/vllm.py`` and ``engines/sglang.py`` fill the specs in.
No I/O.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Mapping, NamedTuple, Optional

from patio import jsontext

# Outcome kinds of a LoRA call, engine-neutral.
OK = "ok"
DUPLICATE = "duplicate"
NOT_FOUND = "not_found"
INVALID = "invalid"
UNAUTHORIZED = "unauthorized"
UNAVAILABLE = "unavailable"  # 503: the engine refused before acting; safe to retry
INTERNAL = "internal"
NO_LORA_ROUTES = "no_lora_routes"  # LoRA runtime updating not enabled in the engine
BAD_ANSWER = "bad_answer"  # a success status with a body that is not the engine's contract: the engine's fault
# The engine cannot do this at all (its adapters are fixed at start): heard as 409 Conflict with
# the engine's reason, the answer to a duplicate (patio.lora.manager.outcome_error), whose
# handling it shares: a load of what the engine already serves under that name succeeds.
REFUSED = DUPLICATE


class Outcome(NamedTuple):
    kind: str
    message: str
    status: int


@dataclass(frozen=True)
class EngineSpec:
    name: str
    load_path: str
    unload_path: str
    models_path: str
    load_fields: FrozenSet[str]  # engine-specific optional fields Patio passes through on load
    unload_fields: FrozenSet[str]
    classify_body: Callable[[str, int, str], Outcome]
    lora_hint: str  # how to enable runtime LoRA in this engine, for error messages
    health_path: str = "/health"  # answers 200 when the engine serves (readiness and the health watch)
    # Where the engine's /metrics listens when not on its API port (Triton: 8002).
    metrics_port: Optional[int] = None
    # Engines whose adapters are fixed at start (llama.cpp, TGI, Triton): loads and unloads are
    # refused (REFUSED, 409) unless the engine already serves that very adapter.
    static_lora: bool = False
    # Where the engine lists the adapters it serves, when not its model list, and how to read it.
    adapters_path: Optional[str] = None
    parse_adapters: Optional[Callable[[str], Dict[str, str]]] = None

    def classify(self, op: str, status: int, body: bytes) -> Outcome:
        return self.classify_body(op, status, body.decode("utf-8", errors="replace"))


def by_status(status: int, message: str) -> Outcome:
    """What the status alone says, once an engine's specific answers are ruled out."""
    if status in (401, 403):
        return Outcome(UNAUTHORIZED, message, status)
    if status == 503:
        return Outcome(UNAVAILABLE, message, status)
    if 400 <= status < 500:
        return Outcome(INVALID, message, status)
    return Outcome(INTERNAL, message, status)


def json_or_none(text: str) -> Optional[Any]:
    try:
        return jsontext.loads(text)
    except ValueError:
        return None


def message_of(value: Any, text: str) -> str:
    """The human message inside an engine's error body, whatever its shape."""
    if isinstance(value, Mapping):
        error = value.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("error_message", "message", "detail"):
            if isinstance(value.get(key), str) and value[key]:
                return str(value[key])
    return text.strip()[:500] or "(empty answer)"


def classify_by_status(op: str, status: int, text: str) -> Outcome:
    """For engines with no LoRA routes of their own (their answers are only ever read by status)."""
    if 200 <= status < 300:
        return Outcome(OK, text.strip() or "success", status)
    return by_status(status, message_of(json_or_none(text), text))
