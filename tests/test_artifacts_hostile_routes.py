"""The incumbents' download routes against hostile requests.

Patio runs as a real process (the zipapp).  Each request below is sent as the AIBrix or Kthena
client would send it, but with a hostile field: ``file://`` and local paths where the route
takes none, ``output_dir`` escapes (``..``, absolute paths elsewhere, a symlink planted in the
models root, control characters, a path longer than the OS allows), a 10 MB body, JSON nested
10,000 deep, numbers like ``1e999``.  Loopback, link-local and metadata targets and redirect
chains to them are tests/test_artifacts_egress.py.  Every answer is a 4xx in the error shape,
nothing is written outside the roots, Patio stays alive and honest in its probes, and its memory
and threads stay bounded.
"""

import json
import os
import socket
from typing import Any, Dict, Iterator, Tuple

import pytest
from fakes.engine import FakeEngine
from hostile_support import Vitals, probes_honest
from support import PatioProcess, http_call

# What one hostile request may add to Patio's RSS (the 10 MB body is refused before it is read).
RSS_BUDGET_MB = 25.0
# Threads started on demand by the pools during the run (a leak per request would add one each).
THREAD_BUDGET = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    root = tmp_path_factory.mktemp("routes")
    models, adapters, outside = root / "models", root / "adapters", root / "outside"
    for folder in (models, adapters, outside):
        folder.mkdir()
    os.symlink(outside, models / "planted")  # a symlink out of the models root, planted beforehand
    engine = FakeEngine("vllm")
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_MODELS_ROOT": str(models),
        "PATIO_ADAPTER_DIR": str(adapters),
        "PATIO_EGRESS_ALLOW": "",  # nothing but the policy's defaults
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    patio = PatioProcess(["--lora-reconcile-interval", "0"], env=env)
    try:
        with Vitals(patio.proc.pid) as vitals:
            yield {"patio": patio, "models": models, "outside": outside, "root": root, "vitals": vitals}
    finally:
        patio.kill()
        engine.stop()


def _post(w: Dict[str, Any], path: str, body: Any) -> Tuple[int, Dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _headers, data = http_call(
        "POST", w["patio"].url + path, raw, headers={"Content-Type": "application/json"}, timeout=30
    )
    answer = json.loads(data)
    assert set(answer) >= {"object", "type", "message", "param", "code"} and answer["code"] == status, answer
    return status, answer


KTHENA = "/v1/download_model"
AIBRIX_DOWNLOAD = "/v1/model/download"
AIBRIX_LOAD = "/v1/lora_adapter/load"
KTHENA_LOAD = "/v1/load_lora_adapter"


def _output_dir(w: Dict[str, Any], value: str) -> str:
    return value.format(models=w["models"], outside=w["outside"], root=w["root"])


CASES = [
    # (route, body, status, words in the message)
    ("file_source", KTHENA, {"source": "file:///etc/passwd", "output_dir": "{models}/x"}, 400, "pvc://"),
    ("file_model_uri", AIBRIX_DOWNLOAD, {"model_uri": "file:///etc/passwd"}, 400, "pvc://"),
    ("local_path_source", KTHENA, {"source": "/etc", "output_dir": "{models}/x"}, 400, "pvc://"),
    ("gopher_source", KTHENA, {"source": "gopher://127.0.0.1:70/x", "output_dir": "{models}/x"}, 400, "scheme"),
    ("dotdot_output_dir", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}/../outside/x"}, 400, ".."),
    ("absolute_elsewhere", KTHENA, {"source": "s3://bk/m", "output_dir": "/etc/patio-x"}, 400, "must lie inside"),
    ("planted_symlink", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}/planted/x"}, 400, "symlink"),
    ("the_root_itself", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}"}, 400, "not the root"),
    ("meta_dir", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}/m/.patio"}, 400, ".patio"),
    ("newline_output_dir", KTHENA, {"source": "s3://bk/m", "output_dir": "a\nb"}, 400, "control characters"),
    ("nul_output_dir", KTHENA, {"source": "s3://bk/m", "output_dir": "a\u0000b"}, 400, "control characters"),
    ("line_separator", KTHENA, {"source": "s3://bk/m", "output_dir": "a\u2028b"}, 400, "control characters"),
    ("lone_surrogate", KTHENA, {"source": "s3://bk/m", "output_dir": "a\ud800b"}, 400, "surrogate"),
    ("path_5000_chars", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}/" + "a/" * 2500}, 400, "at most 4096"),
    ("long_path_elsewhere", KTHENA, {"source": "s3://bk/m", "output_dir": "/" + "a/" * 1900}, 400, "characters)"),
    ("component_300", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}/" + "a" * 300}, 400, "255 bytes"),
    ("newline_local_dir", AIBRIX_DOWNLOAD, {"model_uri": "s3://bk/m", "local_dir": "a\nb"}, 400, "control"),
    ("long_model_name", AIBRIX_DOWNLOAD, {"model_uri": "s3://bk/m", "model_name": "n" * 5000}, 400, "4096"),
    (
        "lora_output_dir_escape",
        KTHENA_LOAD,
        {"lora_name": "a", "source": "s3://bk/m", "output_dir": "{outside}/x"},
        400,
        "must lie inside",
    ),
    ("lora_newline_output_dir", KTHENA_LOAD, {"lora_name": "a", "source": "s3://bk/m", "output_dir": "x\ny"}, 400, ""),
    (
        "lora_local_dir_escape",
        AIBRIX_LOAD,
        {"lora_name": "a", "artifact_url": "s3://bk/m", "local_dir": "/etc"},
        400,
        "",
    ),
    (
        "infinite_max_workers",
        KTHENA,
        {"source": "s3://bk/m", "output_dir": "{models}/x", "max_workers": 1e999},
        400,
        "",
    ),
    ("nan_literal", KTHENA, b'{"source": "s3://bk/m", "output_dir": "x", "max_workers": NaN}', 400, ""),
    (
        "infinity_in_config",
        KTHENA,
        {"source": "s3://bk/m", "output_dir": "{models}/x", "config": {"hf_token": 1e999}},
        400,
        "",
    ),
    ("huge_integer", KTHENA, {"source": "s3://bk/m", "output_dir": "{models}/x", "max_workers": 10**400}, 400, ""),
    ("nested_10k", KTHENA, b'{"source": ' + b"[" * 10000 + b"]" * 10000 + b"}", 400, "deeper"),
    (
        "nested_10k_config",
        KTHENA,
        b'{"source": "s3://bk/m", "output_dir": "x", "config": "' + b"[" * 10000 + b'"}',
        400,
        "",
    ),
]


def _body(w: Dict[str, Any], body: Any) -> Any:
    if isinstance(body, bytes):
        return body
    return {k: _output_dir(w, v) if isinstance(v, str) else v for k, v in body.items()}


@pytest.mark.parametrize("route,body,status,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_is_refused_cleanly(
    world: Dict[str, Any], route: str, body: Any, status: int, words: str
) -> None:
    before = sorted(str(p) for p in world["root"].rglob("*"))
    got, answer = _post(world, route, _body(world, body))
    assert got == status, answer
    assert words in answer["message"], answer
    assert len(answer["message"]) <= 1000, "a refused value must not be echoed whole"
    assert "\n" not in answer["message"] and "\u2028" not in answer["message"]
    assert sorted(str(p) for p in world["root"].rglob("*")) == before, "a refused request wrote something"
    probes_honest(world["patio"])


def test_a_10_mb_body_is_413_and_costs_no_memory(world: Dict[str, Any]) -> None:
    body = b'{"source": "s3://bk/m", "output_dir": "x", "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    with socket.create_connection(("127.0.0.1", world["patio"].port), timeout=10) as sock:
        head = f"POST {KTHENA} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode())
        try:
            sock.sendall(body)
        except OSError:
            pass  # Patio may answer and close before the body is all sent: that is the point
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    probes_honest(world["patio"])


def test_the_process_stayed_bounded(world: Dict[str, Any]) -> None:
    vitals = world["vitals"]
    probes_honest(world["patio"])
    assert vitals.peak_rss - vitals.start_rss < RSS_BUDGET_MB, vitals.summary()
    assert vitals.peak_threads - vitals.start_threads <= THREAD_BUDGET, vitals.summary()
    assert "Traceback" not in world["patio"].output()
    assert list(world["outside"].iterdir()) == []
    print(vitals.summary())
