"""Scenario 7: vLLM started with --api-key."""

import pytest
from conftest import Vllm, get

KEY = "e2e-secret"


@pytest.fixture(scope="module")
def keyed_vllm(assets):
    server = Vllm("--api-key", KEY)
    try:
        yield server.start()
    finally:
        server.stop()


def test_7_api_key(keyed_vllm, assets, patio_factory):
    path = str(assets / "adapters" / "a")
    patio = patio_factory(keyed_vllm.url, env={"INFERENCE_ENGINE_API_KEY": KEY})
    status, body = patio.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path})
    assert status == 200, body
    assert get(keyed_vllm.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    assert patio.post("/unload_lora_adapter", {"lora_name": "a"})[0] == 200

    keyless = patio_factory(keyed_vllm.url)
    status, body = keyless.post("/load_lora_adapter", {"lora_name": "a", "lora_path": path})
    assert (status, body["type"]) == (502, "engine_unauthorized"), body
    assert "401" in body["message"] and "INFERENCE_ENGINE_API_KEY" in body["message"]
