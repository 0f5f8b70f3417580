"""The original Patio design, for comparison only: FastAPI + prometheus_client + requests.

GET /metrics fetches the engine's metrics with a blocking ``requests`` call,
parses them with ``prometheus_client``, renames the table's families and
re-renders the text, as the incumbent sidecars do.  Run under uvicorn.
"""

import os

import requests
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client.parser import text_string_to_metric_families

ENGINE = os.environ.get("INFERENCE_ENGINE_ENDPOINT", "http://127.0.0.1:8000")
RENAME = {
    "vllm:num_requests_running": "patio:num_requests_running",
    "vllm:num_requests_waiting": "patio:num_requests_waiting",
    "vllm:kv_cache_usage_perc": "patio:gpu_cache_usage_perc",
    "vllm:time_to_first_token_seconds": "patio:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds": "patio:e2e_request_latency_seconds",
    "sglang:num_running_reqs": "patio:num_requests_running",
    "sglang:num_queue_reqs": "patio:num_requests_waiting",
    "sglang:token_usage": "patio:gpu_cache_usage_perc",
    "sglang:time_to_first_token_seconds": "patio:time_to_first_token_seconds",
    "sglang:e2e_request_latency_seconds": "patio:e2e_request_latency_seconds",
}

app = FastAPI()


def transform(text: str) -> str:
    out = []
    for family in text_string_to_metric_families(text):
        for name in (family.name, RENAME.get(family.name)):
            if name is None:
                continue
            out.append(f"# HELP {name} {family.documentation}")
            out.append(f"# TYPE {name} {family.type}")
            for sample in family.samples:
                sample_name = name + sample.name[len(family.name) :]
                labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
                out.append(f"{sample_name}{{{labels}}} {sample.value}")
    return "\n".join(out) + "\n"


@app.get("/health")
def health():
    return {"status": "ok"}


@app.get("/metrics", response_class=PlainTextResponse)
def metrics():
    return transform(requests.get(ENGINE + "/metrics", timeout=5).text)
