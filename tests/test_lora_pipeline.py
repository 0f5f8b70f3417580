"""One LoRA load pipeline: one frozen ``LoadRequest`` valid by construction, one call into the
artifacts seam per load, and reconciliation that leaves a sleeping engine alone.

Before, a remote load entered the artifacts layer three times from two rooms (``is_remote``
from the API and again from the manager, ``plan`` through the manager's private accessor,
then ``materialize``) and checked the name and source twice.
"""

import asyncio
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from artifacts_fakes import FileServer
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

from patio.artifacts.adapters import AdapterArtifacts
from patio.artifacts.component import ArtifactsComponent
from patio.component import AppContext, Pools
from patio.engines.health import EngineHealth
from patio.errors import BadRequest
from patio.lora.component import LoraComponent
from patio.lora.request import LoadRequest
from patio.metrics.registry import Registry

ACCEPTED = [
    ("absolute_path", "lora_path", "/models/a", "/models/a", False),
    ("stripped", "lora_path", "  /models/a  ", "/models/a", False),
    ("s3_uri", "artifact_url", "s3://bucket/a/", "s3://bucket/a/", True),
    ("pvc_is_resolved_first", "lora_path", "pvc://loras/a", "pvc://loras/a", True),
    ("file_uri_is_read_in_place", "lora_path", "file:///models/a", "file:///models/a", False),
    ("kthena_bare_repo_is_the_hub", "source", "org/name", "hf://org/name", True),
]


@pytest.mark.parametrize("field,raw,source,remote", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_a_load_request_normalises_its_source(field: str, raw: str, source: str, remote: bool) -> None:
    request = LoadRequest("a", raw, field)
    assert (request.source, request.remote) == (source, remote)


REFUSED = [
    ("bad_name", "../etc", "lora_path", "/models/a", "lora_name"),
    ("newline_in_name", "a\n", "lora_path", "/models/a", "lora_name"),
    ("relative_path", "a", "lora_path", "org/name", "lora_path"),
    ("empty_source", "a", "artifact_url", "   ", "artifact_url"),
    ("control_character", "a", "source", "/models/a\nFORGED", "source"),
    ("credentials_in_uri", "a", "lora_path", "s3://KEY:SECRET@bucket/a", "lora_path"),
]


@pytest.mark.parametrize("name,field,raw,param", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_load_request_cannot_be_built_invalid(name: str, field: str, raw: str, param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        LoadRequest(name, raw, field)
    assert caught.value.param == param
    assert "SECRET" not in caught.value.message and "FORGED" not in caught.value.message


def test_a_load_request_is_frozen_and_hides_the_engine_key() -> None:
    request = LoadRequest("a", "/models/a", engine_key="sk-engine")
    with pytest.raises(AttributeError):
        request.source = "/elsewhere"  # type: ignore[misc]
    assert "sk-engine" not in repr(request)


def _patio(engine: FakeEngine, tmp: Path) -> RunningPatio:
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp / "state"),
        "PATIO_ADAPTER_DIR": str(tmp / "adapters"),
    }
    return RunningPatio(make_settings(["--lora-reconcile-interval", "0"], env))


@pytest.fixture()
def seam_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[str]]:
    """Every call into the adapters seam, by method name."""
    calls: List[str] = []
    for method in ("is_remote", "plan", "materialize"):
        real = getattr(AdapterArtifacts, method)

        def counted(self: Any, *args: Any, _real: Any = real, _name: str = method, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(AdapterArtifacts, method, counted)
    yield calls


def test_a_remote_load_crosses_the_artifacts_seam_once_each_way(tmp_path: Path, seam_calls: List[str]) -> None:
    files = FileServer({"/v1/adapter_model.safetensors": b"w" * 1000})
    try:
        with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
            body = {"lora_name": "a", "lora_path": files.url + "/v1/adapter_model.safetensors"}
            status, answer = http_json("POST", patio.url + "/v1/load_lora_adapter", body)
            assert status == 200, answer
            # The API plans the download half (before anything starts); the manager fetches.
            assert seam_calls == ["plan", "materialize"]
            seam_calls.clear()
            status, answer = http_json(
                "POST", patio.url + "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": "/m/b"}
            )
            assert status == 200 and seam_calls == []  # a local path never enters the seam
    finally:
        files.stop()


def test_reconcile_reloads_nothing_while_the_engine_sleeps(tmp_path: Path) -> None:
    """The engine lifecycle hands LoRA a predicate at assembly: while the engine sleeps, its
    listing may lack adapters it still holds, and a load would wake it (or fail)."""
    asleep = {"now": True}
    with FakeEngine("vllm") as engine:
        settings = make_settings(
            ["--lora-reconcile-interval", "0"],
            {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(tmp_path)},
        )

        async def scenario() -> List[int]:
            context = AppContext(core=settings.core, registry=Registry(), pools=Pools.create())
            try:
                health = EngineHealth(settings.core, context.run_blocking)
                artifacts = ArtifactsComponent(context, settings.artifacts).adapters
                lora = LoraComponent(context, settings.lora, health, artifacts, engine_asleep=lambda: asleep["now"])
                await lora.manager.load(LoadRequest("a", "/m/a"))
                engine.adapters.clear()  # what the engine lists now
                loads = len(engine.calls_to(engine.load_path()))
                while_asleep = await lora.reconciler.reconcile("interval")
                calls_while_asleep = len(engine.calls_to(engine.load_path())) - loads
                asleep["now"] = False
                awake = await lora.reconciler.reconcile("interval")
                return [while_asleep, calls_while_asleep, awake]
            finally:
                context.pools.shutdown()

        assert asyncio.run(scenario()) == [0, 0, 1]
        assert engine.adapters == {"a": "/m/a"}


def test_the_listing_renders_records_without_secrets(tmp_path: Path) -> None:
    """The JSON views moved from the manager to the API: the same fields, still no key in them."""
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        body: Dict[str, Any] = {
            "lora_name": "a",
            "lora_path": "/m/a",
            "additional_config": {"api-key": "sk-adapter-key"},
        }
        assert http_json("POST", patio.url + "/v1/lora_adapter/load", body)[0] == 200
        status, listing = http_json("GET", patio.url + "/v1/lora_adapters")
        assert status == 200 and "sk-adapter-key" not in str(listing)
        (view,) = listing["data"]
        assert set(view) == {
            "name",
            "source",
            "path",
            "state",
            "last_error",
            "loaded_at",
            "engine_confirmed",
            "remote",
            "origin",
        }
