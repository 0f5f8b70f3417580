"""Text Generation Inference's contract (huggingface/text-generation-inference db931fc,
``router/src/server.rs``).

- ``GET /health``: 200 empty, or 503 ``{"error":"unhealthy","error_type":"healthcheck"}``.
- ``GET /metrics`` on the API port: ``tgi_*`` families (metrics-exporter-prometheus).
- ``GET /v1/models``: the base model only.
- LoRA: adapters are given at launch (``--lora-adapters`` / ``LORA_ADAPTERS``) and chosen per
  request (``adapter_id``); no API loads, unloads or lists them: every load or unload is refused
  with that reason (409).
"""

from patio.engines.base import EngineSpec, classify_by_status

LORA_HINT = "TGI takes adapters only at launch: set LORA_ADAPTERS (--lora-adapters) and restart it"


SPEC = EngineSpec(
    name="tgi",
    load_path="",
    unload_path="",
    models_path="/v1/models",
    load_fields=frozenset(),
    unload_fields=frozenset(),
    classify_body=classify_by_status,
    lora_hint=LORA_HINT,
    static_lora=True,
)
