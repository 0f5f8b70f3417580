"""Triton Inference Server's contract (KServe v2 protocol; TensorRT-LLM backend metrics in
NVIDIA/TensorRT-LLM 89fd9b7 ``triton_backend/inflight_batcher_llm/src/custom_metrics_reporter``).

- ``GET /v2/health/ready``: 200 when the server and its models are ready (``/v2/health/live``:
  the process only).
- ``GET /metrics`` on the metrics port, 8002 by default (``--metrics-port``), not the API port.
- ``GET /v1/models``: only with Triton's OpenAI-compatible frontend.
- LoRA: the TensorRT-LLM backend takes LoRA weights with each request (``lora_task_id``,
  ``lora_weights``, ``lora_config``); there is no adapter to load: loads and unloads are refused
  with that reason (409).
"""

from patio.engines.base import EngineSpec, classify_by_status

LORA_HINT = "Triton's TensorRT-LLM backend takes LoRA weights per request (lora_task_id, lora_weights, lora_config)"
METRICS_PORT = 8002  # tritonserver --metrics-port default


SPEC = EngineSpec(
    name="triton",
    load_path="",
    unload_path="",
    models_path="/v1/models",
    load_fields=frozenset(),
    unload_fields=frozenset(),
    classify_body=classify_by_status,
    lora_hint=LORA_HINT,
    health_path="/v2/health/ready",
    metrics_port=METRICS_PORT,
    static_lora=True,
)
