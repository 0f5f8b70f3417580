"""vLLM's LoRA contract (vllm/entrypoints/serve/lora/api_router.py and
``OpenAIServingModels.load_lora_adapter`` in vllm/entrypoints/openai/serving_models.py, at
27873cab): plain-text 200 on success; JSON errors
``{"error":{"message","type","code"}}``; 400 ``InvalidUserInput`` for a duplicate,
404 ``NotFoundError`` for a bad path or unknown name; 404 ``{"detail":"Not Found"}``
when runtime LoRA updating is off."""

from patio.engines.base import (
    DUPLICATE,
    NO_LORA_ROUTES,
    NOT_FOUND,
    OK,
    EngineSpec,
    Outcome,
    by_status,
    json_or_none,
    message_of,
)


def classify(op: str, status: int, text: str) -> Outcome:
    body = json_or_none(text)
    message = message_of(body, text)
    if 200 <= status < 300:
        return Outcome(OK, text.strip() or "success", status)
    if status == 404:
        if isinstance(body, dict) and body.get("detail") == "Not Found":
            return Outcome(NO_LORA_ROUTES, message, status)
        return Outcome(NOT_FOUND, message, status)
    if status == 400 and "already been loaded" in message:
        return Outcome(DUPLICATE, message, status)
    return by_status(status, message)


SPEC = EngineSpec(
    name="vllm",
    load_path="/v1/load_lora_adapter",
    unload_path="/v1/unload_lora_adapter",
    models_path="/v1/models",
    load_fields=frozenset({"load_inplace"}),
    unload_fields=frozenset({"lora_int_id"}),
    classify_body=classify,
    lora_hint="start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
)
