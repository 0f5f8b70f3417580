"""An engine's refusal of a LoRA call (``patio.engines.base.Outcome``) as the error the caller hears.

The engine's answer is mapped faithfully: if the engine says no, the caller hears no,
with the engine's own message and a status that says whose fault it is.
"""

from patio.engines.base import (
    BAD_ANSWER,
    DUPLICATE,
    INTERNAL,
    INVALID,
    NO_LORA_ROUTES,
    NOT_FOUND,
    UNAUTHORIZED,
    UNAVAILABLE,
    Outcome,
)
from patio.errors import BadRequest, Conflict, EngineError, EngineUnavailable, NotFound, PatioError


def outcome_error(outcome: Outcome, op: str, name: str, lora_hint: str) -> PatioError:
    """An engine refusal as the error the caller hears."""
    kind, message = outcome.kind, outcome.message
    if kind == DUPLICATE:
        return Conflict(message, param="lora_name")
    if kind == NOT_FOUND:
        return NotFound(message, param="lora_path" if op == "load" else "lora_name")
    if kind == INVALID:
        return BadRequest(f"engine rejected the {op}: {message}")
    if kind == UNAUTHORIZED:
        return EngineError(
            f"engine refused Patio's credentials ({outcome.status}): {message}; "
            "set INFERENCE_ENGINE_API_KEY to the engine's API key",
            engine_status=outcome.status,
            error_type="engine_unauthorized",
        )
    if kind == NO_LORA_ROUTES:
        return EngineError(
            f"engine has no runtime LoRA API ({lora_hint})",
            engine_status=outcome.status,
            error_type="engine_lora_disabled",
        )
    if kind == UNAVAILABLE:
        return EngineUnavailable(f"engine unavailable ({outcome.status}): {message}")
    if kind == BAD_ANSWER:
        return EngineError(
            f"engine's answer to the {op} of {name} is not its LoRA contract: {message}",
            engine_status=outcome.status,
            error_type="engine_bad_answer",
        )
    assert kind == INTERNAL, kind
    return EngineError(f"engine failed to {op} {name} ({outcome.status}): {message}", engine_status=outcome.status)
