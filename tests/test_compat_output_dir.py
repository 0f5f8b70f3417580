"""Kthena's ``output_dir`` into a directory that does not exist yet.

Kthena's runtime README (volcano-sh/kthena python/kthena/runtime/README.md) loads with
``"output_dir": "/models/my-lora"`` and downloads with ``"output_dir": "/models/mistral"``: on a
fresh pod neither exists, and the models root itself may not.  Before, Patio answered 400
"... resolves outside ... through a symlink" although there was no symlink.  The directory is
created; containment still holds; the symlink message is kept for a real symlink.  Requests are
replayed as Kthena's httpx client writes them (compat_fakes.httpx_request).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from compat_fakes import httpx_request, replay, tree
from fakes.engine import FakeEngine
from support import RunningPatio, make_settings

from patio.artifacts.targets import confine
from patio.errors import BadRequest

FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": os.urandom(20_000)}


@pytest.fixture()
def pod(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    pvc = tmp_path / "pvc" / "loras" / "a"
    pvc.mkdir(parents=True)
    for name, data in FILES.items():
        (pvc / name).write_bytes(data)
    models = tmp_path / "fresh" / "models"  # neither exists yet
    env = {
        "INFERENCE_ENGINE": "vllm",
        "PATIO_MODELS_ROOT": str(models),
        "PATIO_ADAPTER_DIR": str(tmp_path / "adapters"),
        "PATIO_PVC_ROOT": str(tmp_path / "pvc"),
    }
    with FakeEngine("vllm") as engine:
        env["INFERENCE_ENGINE_ENDPOINT"] = engine.url
        with RunningPatio(make_settings(["--lora-reconcile-interval", "0"], env)) as patio:
            yield {"patio": patio, "engine": engine, "models": models, "tmp": tmp_path}


def _kthena(pod: Dict[str, Any], path: str, payload: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    status, _, body = replay(pod["patio"].port, httpx_request(pod["patio"].port, path, payload))
    return status, json.loads(body)


def test_load_into_a_directory_that_does_not_exist_yet(pod):
    out = pod["models"] / "my-lora"
    status, body = _kthena(
        pod, "/v1/load_lora_adapter", {"lora_name": "my-lora", "source": "pvc://loras/a", "output_dir": str(out)}
    )
    assert status == 200, body
    assert tree(out) == FILES and pod["engine"].adapters == {"my-lora": str(out)}


def test_download_model_into_nested_new_directories(pod):
    out = pod["models"] / "team" / "mistral"
    status, body = _kthena(pod, "/v1/download_model", {"source": "pvc://loras/a", "output_dir": str(out)})
    assert status == 200, body
    assert body["status"] == "completed" and tree(out) == FILES


def test_a_real_symlink_out_is_still_refused_and_named(pod):
    pod["models"].mkdir(parents=True)
    outside = pod["tmp"] / "outside"
    outside.mkdir()
    (pod["models"] / "link").symlink_to(outside)
    status, body = _kthena(
        pod, "/v1/download_model", {"source": "pvc://loras/a", "output_dir": str(pod["models"] / "link" / "x")}
    )
    assert status == 400 and "through a symlink" in body["message"], body
    assert list(outside.iterdir()) == []


def test_outside_the_roots_is_refused_without_the_symlink_message(pod):
    status, body = _kthena(
        pod, "/v1/download_model", {"source": "pvc://loras/a", "output_dir": str(pod["tmp"] / "elsewhere")}
    )
    assert status == 400 and "must lie inside" in body["message"] and "symlink" not in body["message"], body
    assert not (pod["tmp"] / "elsewhere").exists()


CONFINE = [
    # (id, layout to make, output_dir relative to tmp, expected: "ok" or the message's words)
    ("root_missing", [], "models/new", "ok"),
    ("root_and_parents_missing", [], "models/a/b/c", "ok"),
    ("root_exists_child_missing", ["models/"], "models/new", "ok"),
    ("link_inside_the_root", ["models/", "models/real/", "models/alias->models/real"], "models/alias/x", "ok"),
    ("link_out_of_the_root", ["models/", "out/", "models/esc->out"], "models/esc/x", "through a symlink"),
    ("the_root_itself", ["models/"], "models", "not the root itself"),
    ("a_sibling_of_the_root", [], "models-2/x", "must lie inside"),
]


@pytest.mark.parametrize("layout,target,expected", [c[1:] for c in CONFINE], ids=[c[0] for c in CONFINE])
def test_confine(tmp_path, layout, target, expected):
    for entry in layout:
        if "->" in entry:
            link, dest = entry.split("->")
            (tmp_path / link).symlink_to(tmp_path / dest)
        else:
            (tmp_path / entry).mkdir(parents=True)
    root = str(tmp_path / "models")
    if expected == "ok":
        assert confine(str(tmp_path / target), (root,), "output_dir", root).startswith(os.path.realpath(root))
        return
    with pytest.raises(BadRequest) as info:
        confine(str(tmp_path / target), (root,), "output_dir", root)
    assert expected in info.value.message
