"""SGLang's LoRA contract (python/sglang/srt/entrypoints/http_server.py ``load_lora_adapter``,
at 0025436e): routes without ``/v1``; JSON answers with a
``success`` flag, 400 on failure with ``error_message`` saying why."""

from patio.engines.base import (
    BAD_ANSWER,
    DUPLICATE,
    INVALID,
    NOT_FOUND,
    OK,
    EngineSpec,
    Outcome,
    by_status,
    json_or_none,
    message_of,
)

# Phrases in SGLang's error_message that mean "no such adapter or path".
_NOT_FOUND_PHRASES = ("does not exist", "not found", "no such file", "can't find", "cannot find", "doesn't exist")


def classify(op: str, status: int, text: str) -> Outcome:
    body = json_or_none(text)
    message = message_of(body, text)
    if status == 200 and isinstance(body, dict) and body.get("success") is True:
        return Outcome(OK, "success", status)
    if status == 200 and not (isinstance(body, dict) and isinstance(body.get("success"), bool)):
        # Not SGLang's answer at all (a proxy page, truncated JSON): the engine side is broken, not the
        # caller's request, and nothing says whether the change happened.
        return Outcome(BAD_ANSWER, f"engine answered 200 without SGLang's JSON: {text.strip()[:200]!r}", status)
    if status == 200:
        # success=false is SGLang refusing (its error_message says why); never report it as done.
        return Outcome(INVALID, message or "engine did not confirm success", status)
    lowered = message.lower()
    if status == 400 and "already loaded" in lowered:
        return Outcome(DUPLICATE, message, status)
    if status in (400, 404) and any(p in lowered for p in _NOT_FOUND_PHRASES):
        return Outcome(NOT_FOUND, message, status)
    return by_status(status, message)


SPEC = EngineSpec(
    name="sglang",
    load_path="/load_lora_adapter",
    unload_path="/unload_lora_adapter",
    models_path="/v1/models",
    load_fields=frozenset({"pinned"}),
    unload_fields=frozenset(),
    classify_body=classify,
    lora_hint="start SGLang with --enable-lora",
)
