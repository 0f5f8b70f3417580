"""AIBrix's ModelClaim controller and gateway against Patio's runtime API, byte for byte.

Replayed from vllm-project/aibrix at e3e10f9e (the controller side of AIBrix 0.8.0's
runtime API):

- ``pkg/controller/modelclaim/runtime_client.go``: the request structs (lines 63-120,
  field order and ``omitempty`` as ``encoding/json`` writes them), ``postJSON`` (200 or 201
  is success, anything else an error; a 1 MiB read limit) and ``getJSON`` (200 only);
- ``modelclaim_controller.go`` line 413 (the activation it sends), 659/679 (deactivate);
- ``pool_policy_controller.go`` lines 321-326 (kv-limit, its operation id) and 447-452
  (sleep level 1, its operation id);
- ``pkg/plugins/gateway/modelclaim_wake.go`` lines 94-120 (the gateway's wake: 2xx is success).

Requests go out as Go's net/http writes them (Host, User-Agent, Content-Length,
Content-Type, Accept-Encoding: gzip); answers are decoded with Go's rules for the
response structs: a field of the wrong JSON type is an error, unknown fields are ignored,
``null`` leaves a string empty, a ``time.Time`` must be RFC 3339.
"""

import json
import re
import socket
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
from runtime_support import Rt, runtime_patios


@pytest.fixture
def rt_factory(tmp_path: Path, monkeypatch: Any) -> Iterator[Any]:
    yield from runtime_patios(tmp_path, monkeypatch)


@pytest.fixture
def rt(rt_factory: Any) -> Rt:
    return rt_factory()


def go_json(value: Any) -> bytes:
    """``encoding/json.Marshal``: no spaces, map keys sorted, <, > and & escaped."""

    def sort_maps(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: sort_maps(v) for k, v in item.items()}
        return item

    text = json.dumps(sort_maps(value), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def go_request(method: str, path: str, port: int, body: Optional[bytes] = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 10.1.2.3:{port}", "User-Agent: Go-http-client/1.1"]
    if body is not None:
        lines += [f"Content-Length: {len(body)}", "Content-Type: application/json"]
    lines.append("Accept-Encoding: gzip")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def exchange(rt: Rt, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
    """One request on a keep-alive connection, as Go's client sends it; the answer read by its length."""
    with socket.create_connection(("127.0.0.1", rt.patio.port), timeout=60) as sock:
        sock.sendall(go_request(method, path, rt.patio.port, body))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert length is not None, head
        while len(payload) < int(length.group(1)):
            chunk = sock.recv(65536)
            assert chunk, payload
            payload += chunk
    assert len(payload) <= 1 << 20  # postJSON/getJSON read at most 1 MiB
    return int(head.split(b" ", 2)[1]), payload


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# Go field kinds of the response structs (runtime_client.go lines 90-190).
ACTIVATE_RESPONSE = {"status": str, "model_name": str, "port": int, "ipc_name": str, "message": str}
OPERATION_RESPONSE = {"status": str, "model_name": str, "operation_id": str, "applied": bool, "phase": str}
MODEL_INFO = {
    "model_name": str,
    "port": int,
    "ipc_name": str,
    "phase": str,
    "ready": bool,
    "kv_used_bytes": int,
    "kv_total_bytes": int,
}
SNAPSHOT_MODEL = {
    "model_name": str,
    "artifact_url": str,
    "claim_ref": {"namespace": str, "name": str, "uid": str},
    "port": int,
    "ipc_name": str,
    "phase": str,
    "alive": bool,
    "ready": bool,
    "restart_count": int,
    "last_error": str,
    "last_transition": "time",
    "kv_used_bytes": int,
    "kv_capacity_bytes": int,
    "hbm_peak_bytes": int,
    "hbm_reservation_fraction": float,
    "request_metrics_observed": bool,
    "requests_running": int,
    "requests_waiting": int,
    "request_success_total": int,
}
ACCELERATOR = {"id": str, "hbm_total_bytes": int, "hbm_free_bytes": int}


def go_decode(value: Any, shape: Any, where: str = "$") -> None:
    """``json.Unmarshal`` into a struct of ``shape``: raises AssertionError where Go returns an error."""
    if value is None:
        return  # null: the field keeps its zero value (a pointer stays nil)
    if shape == "time":
        assert isinstance(value, str) and RFC3339.match(value), f"{where}: not RFC 3339: {value!r}"
    elif isinstance(shape, dict):
        assert isinstance(value, dict), f"{where}: want an object"
        for key, sub in shape.items():
            if key in value:
                go_decode(value[key], sub, f"{where}.{key}")
    elif isinstance(shape, list):
        assert isinstance(value, list), f"{where}: want an array"
        for index, item in enumerate(value):
            go_decode(item, shape[0], f"{where}[{index}]")
    elif shape is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: want a number, got {value!r}"
    elif shape is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: want a number"
    else:
        assert isinstance(value, shape), f"{where}: want {shape.__name__}, got {value!r}"


def activation(rt: Rt, name: str = "default-claim") -> Dict[str, Any]:
    # modelclaim_controller.go:413 ActivateRequest{ModelName, ArtifactURL, Engine, IPCName, EngineConfig, ClaimRef}
    return {
        "model_name": name,
        "artifact_url": str(rt.tmp / "models" / "tiny"),
        "engine": "vllm",
        "ipc_name": f"kvc_{name}",
        "engine_config": {"args": {"--max-model-len": "2048", "--enforce-eager": ""}},
        "claim_ref": {"namespace": "default", "name": name, "uid": "8d4b5c52-0b7e-4f5e-9a57-5b1f3e0c2a10"},
    }


def test_the_controllers_whole_conversation(rt: Rt) -> None:
    # Activate: 200, decoded as ActivateResponse; the port is what the controller annotates.
    status, payload = exchange(rt, "POST", "/v1/runtime/models/activate", go_json(activation(rt)))
    assert status == 200, payload
    answer = json.loads(payload)
    go_decode(answer, ACTIVATE_RESPONSE)
    assert (answer["status"], answer["model_name"], answer["ipc_name"]) == (
        "success",
        "default-claim",
        "kvc_default-claim",
    )
    port = answer["port"]
    assert port > 0

    # ListModels until ready (reconcileInstanceHealth gates routability on it).
    rt.ready("default-claim")
    status, payload = exchange(rt, "GET", "/v1/runtime/models")
    assert status == 200
    listed = json.loads(payload)
    go_decode(listed, {"models": [MODEL_INFO]})
    assert listed["models"] == [
        {
            "model_name": "default-claim",
            "port": port,
            "ipc_name": "kvc_default-claim",
            "phase": "active",
            "ready": True,
            "kv_used_bytes": 0,
            "kv_total_bytes": 0,
        }
    ]

    # Snapshot: RuntimeSnapshot; the claim is matched by ClaimRef.UID (snapshot.go).
    status, payload = exchange(rt, "GET", "/v1/runtime/snapshot")
    assert status == 200
    snapshot = json.loads(payload)
    go_decode(
        snapshot,
        {"observed_at": "time", "accelerators": [ACCELERATOR], "models": [SNAPSHOT_MODEL], "cached_artifacts": [str]},
    )
    model = snapshot["models"][0]
    assert model["claim_ref"]["uid"] == "8d4b5c52-0b7e-4f5e-9a57-5b1f3e0c2a10"
    assert (model["alive"], model["ready"], model["phase"], model["port"]) == (True, True, "active", port)
    assert model["kv_used_bytes"] == -1 and model["kv_capacity_bytes"] == -1  # no kvcached segment: unknown
    assert model["request_metrics_observed"] is True and model["request_success_total"] == 0
    assert snapshot["cached_artifacts"] == [model["artifact_url"]]

    # Pool policy's kv-limit (pool_policy_controller.go:321): no segment here, so 409.
    kv = {
        "model_name": "default-claim",
        "limit_bytes": 4 << 30,
        "operation_id": "pool-policy-kv/default/pool/pod-uid/activity/4294967296/1768000000000000000",
    }
    status, payload = exchange(rt, "POST", "/v1/runtime/models/kv-limit", go_json(kv))
    assert status == 409 and json.loads(payload)["type"] == "unsupported"

    # Pool policy's sleep (pool_policy_controller.go:447): level 1; CPU: the platform cannot.
    sleep = {
        "model_name": "default-claim",
        "level": 1,
        "operation_id": "pool-policy-sleep/default/pool/pod-uid/activity/1768000000000000000",
    }
    status, payload = exchange(rt, "POST", "/v1/runtime/models/sleep", go_json(sleep))
    assert status == 409
    refusal = json.loads(payload)
    assert refusal["type"] == "unsupported" and refusal["detail"] == refusal["message"]

    # The gateway's wake (modelclaim_wake.go): an awake engine is 2xx, applied false.
    wake = {"model_name": "default-claim", "operation_id": "gateway-wake/pod-uid/default-claim/6f1c..."}
    status, payload = exchange(rt, "POST", "/v1/runtime/models/wake", go_json(wake))
    assert 200 <= status < 300
    woke = json.loads(payload)
    go_decode(woke, OPERATION_RESPONSE)
    assert (woke["applied"], woke["phase"]) == (False, "active")

    # Deactivate (scaleDown): 200; the controller decodes nothing.
    status, payload = exchange(
        rt, "POST", "/v1/runtime/models/deactivate", go_json({"model_name": "default-claim", "mode": "stop"})
    )
    assert (status, json.loads(payload)) == (200, {"status": "success"})
    assert json.loads(exchange(rt, "GET", "/v1/runtime/models")[1]) == {"models": []}


def test_sleep_and_wake_as_the_pool_policy_and_gateway_send_them(rt_factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_SLEEP_MODE", "1")
    rt = rt_factory()
    assert exchange(rt, "POST", "/v1/runtime/models/activate", go_json(activation(rt, "c")))[0] == 200
    rt.ready("c")
    sleep = {"model_name": "c", "level": 1, "operation_id": "pool-policy-sleep/default/pool/uid/a/1"}
    for applied in (True, False):  # the controller retries a sleep it did not see answered
        status, payload = exchange(rt, "POST", "/v1/runtime/models/sleep", go_json(sleep))
        answer = json.loads(payload)
        go_decode(answer, OPERATION_RESPONSE)
        assert (status, answer["applied"], answer["phase"]) == (200, applied, "sleeping")
    wake = {"model_name": "c", "operation_id": "gateway-wake/uid/c/1"}
    status, payload = exchange(rt, "POST", "/v1/runtime/models/wake", go_json(wake))
    assert status == 200 and json.loads(payload)["applied"] is True


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"model_name": "m", "artifact_url": "hf://o/m", "hbm_reservation_fraction": 0.45}, 400, "unknown field"),
        ({"model_name": "m", "artifact_url": "hf://o/m", "engine": "tgi"}, 400, "not supported"),
        ({"model_name": "m", "artifact_url": "file:///etc"}, 400, "file:// URLs are refused"),
        ({"model_name": "m", "artifact_url": "/etc"}, 400, "outside the model roots"),
        ({"model_name": "m", "artifact_url": "pvc://../../etc"}, 400, "outside the model roots"),
        ({"model_name": "m", "artifact_url": "/models/../etc/passwd"}, 400, "without '..'"),
    ],
    ids=[
        "a field AIBrix 0.8.0's runtime refuses too (its test_activate_endpoint_rejects_hbm_reservation_fraction)",
        "an unknown engine",
        "a file URL",
        "a local path outside the roots",
        "a pvc path that climbs out",
        "a path with ..",
    ],
)
def test_refused_activations_keep_aibrixs_body_and_patios_fields(
    rt: Rt, body: Dict[str, Any], status: int, words: str
) -> None:
    got, payload = exchange(rt, "POST", "/v1/runtime/models/activate", go_json(body))
    answer = json.loads(payload)
    go_decode(answer, ACTIVATE_RESPONSE)
    assert got == status and answer["status"] == "error" and answer["model_name"] == "m"
    assert answer["object"] == "error" and answer["code"] == status and words in answer["message"]


def test_a_symlink_out_of_the_roots_is_refused(rt: Rt) -> None:
    link = rt.tmp / "models" / "escape"
    link.symlink_to("/etc")
    got, payload = exchange(
        rt, "POST", "/v1/runtime/models/activate", go_json({"model_name": "m", "artifact_url": str(link)})
    )
    assert got == 400 and "outside the model roots" in json.loads(payload)["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/runtime/models/sleep", {"model_name": "ghost", "level": 1, "operation_id": "o"}),
        ("/v1/runtime/models/wake", {"model_name": "ghost", "operation_id": "o"}),
        ("/v1/runtime/models/kv-limit", {"model_name": "ghost", "limit_bytes": 1, "operation_id": "o"}),
    ],
    ids=["sleep", "wake", "kv-limit"],
)
def test_unknown_models_are_404(rt: Rt, path: str, body: Dict[str, Any]) -> None:
    status, payload = exchange(rt, "POST", path, go_json(body))
    answer = json.loads(payload)
    assert status == 404 and answer["type"] == "not_found" and "'ghost' is not active" in answer["message"]
