"""Resolver-directory mode against a real vLLM (issue 15): vLLM runs with
VLLM_PLUGINS=lora_filesystem_resolver and VLLM_LORA_RESOLVER_CACHE_DIR pointing at Patio's
--resolver-dir.  An adapter named in the adapters file (the LoRA syncer's ConfigMap shape), served
from moto S3, answers a completion with ``model: NAME`` without any load call; dropping it from
the file makes that completion fail.  One vLLM start for the module."""

import json
import os
import time

import pytest
from conftest import Vllm, get, post_json, record_timing


@pytest.fixture(scope="module")
def resolver_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("resolver")  # vLLM checks that it exists when it starts


@pytest.fixture(scope="module")
def vllm_resolver(assets, resolver_dir):
    server = Vllm(env={"VLLM_PLUGINS": "lora_filesystem_resolver", "VLLM_LORA_RESOLVER_CACHE_DIR": str(resolver_dir)})
    try:
        server.start()
        record_timing("vllm_resolver_ready_seconds", server.ready_seconds)
        yield server
    finally:
        server.stop()


def completion(vllm, model):
    body = {"model": model, "prompt": "Hello world", "max_tokens": 8, "temperature": 0}
    status, raw = post_json(vllm.url + "/v1/completions", body)
    return status, json.loads(raw)


def write_configmap(path, present):
    """The syncer's shape, replaced whole (as kubelet swaps a ConfigMap)."""
    lines = ["vLLMLoRAConfig:", "  name: e2e", "  ensureExist:", "    models:" if present else "    models: []"]
    lines += [f"    - id: {name}\n      source: {source}" for name, source in present.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_file_adapter_from_s3_is_served_by_the_resolver_then_removed(
    vllm_resolver, resolver_dir, assets, patio_factory, moto_s3, tmp_path
):
    import boto3

    vllm = vllm_resolver
    s3 = boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="adapters")
    for path in (assets / "adapters" / "a").iterdir():
        s3.upload_file(str(path), "adapters", f"a/{path.name}")
    config = tmp_path / "configmap.yaml"
    write_configmap(config, {"fromfile": "s3://adapters/a/"})
    started = time.monotonic()
    patio = patio_factory(
        vllm.url,
        env={
            "AWS_ENDPOINT_URL": moto_s3,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_REGION": "us-east-1",
            "PATIO_ADAPTERS_FILE": str(config),
            "PATIO_ADAPTERS_FILE_INTERVAL": "0.2",
            "PATIO_RESOLVER_DIR": str(resolver_dir),
        },
    )

    def state():
        return {a["name"]: a["state"] for a in patio.get_json("/v1/lora_adapters")[1]["desired"]["adapters"]}

    assert wait_until(lambda: state().get("fromfile") == "ok", 60), patio.get_json("/v1/lora_adapters")
    record_timing("resolver_file_to_available_seconds", round(time.monotonic() - started, 2))
    assert (resolver_dir / "fromfile" / "adapter_config.json").is_file()
    assert patio.adapters()["fromfile"]["origin"] == "resolver"

    started = time.monotonic()
    status, body = completion(vllm, "fromfile")
    record_timing("resolver_first_completion_seconds", round(time.monotonic() - started, 2))
    assert status == 200, body
    log = vllm.log.read_text(errors="replace")
    assert "Resolved and loaded LoRA adapter 'fromfile'" in log
    # vLLM's access log lists every request: a completion, and no load call from Patio or anyone.
    assert '"POST /v1/completions HTTP/1.1" 200' in log
    assert '"POST /v1/load_lora_adapter' not in log
    # The weights are adapter a's: the same greedy text as a loaded straight into vLLM.
    path_a = str(assets / "adapters" / "a")
    assert post_json(vllm.url + "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": path_a})[0] == 200
    assert completion(vllm, "a")[1]["choices"][0]["text"] == body["choices"][0]["text"]
    assert post_json(vllm.url + "/v1/unload_lora_adapter", {"lora_name": "a"})[0] == 200
    models = {m["id"]: m["root"] for m in json.loads(get(vllm.url + "/v1/models")[1])["data"]}
    assert models["fromfile"] == str(resolver_dir / "fromfile")

    write_configmap(config, {})
    assert wait_until(lambda: "fromfile" not in patio.adapters(), 30)
    assert not (resolver_dir / "fromfile").exists()
    status, body = completion(vllm, "fromfile")
    assert status == 404, body  # gone from the directory and from the engine's memory
    models = {m["id"] for m in json.loads(get(vllm.url + "/v1/models")[1])["data"]}
    assert "fromfile" not in models
    text = get(patio.url + "/metrics")[1].decode()
    assert 'patio_lora_adapters{state="available"} 0' in text
