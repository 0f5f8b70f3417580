"""production-stack's LoRA controller drives a download sidecar; Patio answers as that sidecar does.

The controller (vllm-project/production-stack operator/internal/controller/loraadapter_controller.go
at a6c01db05f65, ``downloadHuggingFaceAdapter`` and ``sendRequest``) posts, to the pod's IP on port
30090, ``json.Marshal(map[string]string{"model_id": repo, "token": the secret's value, "local_dir":
adapter name with "/" as "-"})`` with ``Content-Type: application/json`` (and ``Authorization: Bearer
KEY`` when the LoraAdapter names a vLLM API key), requires 200, and reads the body into a
``map[string]string``, keeping ``"path"``.  The sidecar it talks to (scripts/huggingface_downloader.py)
``snapshot_download``s the repo into ``LORA_DOWNLOAD_BASE_DIR/local_dir`` and answers
``{"message": "Successfully downloaded ...", "path": target_dir}``.  Here the controller's bytes are
replayed to Patio as shipped (dist/patio.pyz), against the fake Hub of the artifact tests holding a
private repo: the token must reach the Hub and nothing else (log, answers, job views, metrics, disk).
"""

import json
import os
import socket
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from support import PatioProcess, http_call, http_json

TOKEN = "hf_productionstackSecret0123456789"
API_KEY = "sk-vllm-key"
FILES = {"adapter_config.json": b'{"peft_type": "LORA", "r": 8}', "adapter_model.safetensors": b"w" * 40_000}


def go_marshal(payload: Dict[str, str]) -> bytes:
    """encoding/json.Marshal of a map[string]string: keys sorted, no spaces, <>& escaped as \\u003c..."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("utf-8")


def controller_request(host: str, body: bytes, api_key: Optional[str]) -> bytes:
    """The request as net/http writes it: Host, User-Agent, Content-Length, the headers sendRequest set
    (sorted), then the Transport's Accept-Encoding."""
    lines = [
        "POST /model/download HTTP/1.1",
        f"Host: {host}",
        "User-Agent: Go-http-client/1.1",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    lines += ["Content-Type: application/json", "Accept-Encoding: gzip"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def replay(port: int, raw: bytes) -> Tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])}
    if headers.get(b"transfer-encoding") == b"chunked":
        body, rest2 = b"", rest
        while True:
            size_line, _, rest2 = rest2.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body, rest2 = body + rest2[:size], rest2[size + 2 :]
        return status, body
    return status, rest[: int(headers.get(b"content-length", len(rest)))]


def as_go_string_map(body: bytes) -> Dict[str, str]:
    """What json.Unmarshal into map[string]string accepts: an object of strings, nothing else."""
    value = json.loads(body)
    assert isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), value
    return value


@pytest.fixture()
def hub() -> Iterator[FakeHub]:
    cdn = FakeCdn()
    server = FakeHub(cdn, token=TOKEN)  # a private repo: without the token, nothing
    server.add(HubRepo("acme/sql-lora", FILES, ("adapter_model.safetensors",)))
    try:
        yield server
    finally:
        server.stop()
        cdn.stop()


def _patio(hub: FakeHub, tmp_path: Path, *args: str) -> PatioProcess:
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9",  # the controller talks to vLLM itself
        "PATIO_MODELS_ROOT": str(tmp_path / "lora-adapters"),  # the sidecar's LORA_DOWNLOAD_BASE_DIR
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "HF_ENDPOINT": hub.url,
    }
    return PatioProcess(["--log-level", "DEBUG", *args], env)


def test_production_stack_controller_download_is_answered_as_its_sidecar_does(tmp_path: Path, hub: FakeHub) -> None:
    with _patio(hub, tmp_path, "--api-key", API_KEY) as patio:
        # LoraAdapter spec.adapterSource: {adapterName: "team/sql-lora", repository: "acme/sql-lora"}.
        body = go_marshal({"model_id": "acme/sql-lora", "token": TOKEN, "local_dir": "team-sql-lora"})
        assert body == b'{"local_dir":"team-sql-lora","model_id":"acme/sql-lora","token":"' + TOKEN.encode() + b'"}'
        status, answer = replay(patio.port, controller_request(f"10.0.0.5:{patio.port}", body, API_KEY))
        assert status == 200, answer
        fields = as_go_string_map(answer)
        target = tmp_path / "lora-adapters" / "team-sql-lora"
        assert fields == {"message": f"Successfully downloaded acme/sql-lora to {target}", "path": str(target)}
        assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == FILES
        assert f"Bearer {TOKEN}" in hub.auth_seen()  # the token reached the Hub

        # The same request again (the controller reconciles): answered, no file fetched twice.
        fetched = [s.path for s in hub.seen if "/resolve/" in s.path]
        assert fetched
        status, again = replay(patio.port, controller_request(f"10.0.0.5:{patio.port}", body, API_KEY))
        assert status == 200 and as_go_string_map(again)["path"] == str(target)
        assert [s.path for s in hub.seen if "/resolve/" in s.path] == fetched

        # The token never leaves: not in the log, the listings, the metrics, or anything on disk.
        auth = {"Authorization": f"Bearer {API_KEY}"}
        views = [http_call("GET", patio.url + path, headers=auth)[2] for path in ("/v1/model/list", "/metrics")]
        assert b"team-sql-lora" in views[0] and b"patio_http_requests" in views[1]
        patio.stop()
        assert TOKEN not in patio.output()
        assert all(TOKEN.encode() not in view for view in views)
        for folder, _dirs, names in os.walk(tmp_path):
            for name in names:
                assert TOKEN.encode() not in (Path(folder) / name).read_bytes(), Path(folder) / name


def test_production_stack_without_the_api_key_is_refused(tmp_path: Path, hub: FakeHub) -> None:
    with _patio(hub, tmp_path, "--api-key", API_KEY) as patio:
        body = go_marshal({"model_id": "acme/sql-lora", "token": TOKEN, "local_dir": "sql"})
        status, answer = replay(patio.port, controller_request("pod:30090", body, None))
        assert status == 401 and TOKEN.encode() not in answer
        assert not (tmp_path / "lora-adapters" / "sql").exists()


REFUSED = [
    ("escapes_the_base_dir", {"model_id": "acme/sql-lora", "token": TOKEN, "local_dir": "../etc"}, 400, "local_dir"),
    ("absolute_outside", {"model_id": "acme/sql-lora", "token": TOKEN, "local_dir": "/etc/x"}, 400, "local_dir"),
    ("not_a_hub_repo", {"model_id": "s3://bucket/a", "token": TOKEN, "local_dir": "a"}, 400, "model_id"),
    ("token_splits_headers", {"model_id": "acme/sql-lora", "token": "x\r\nX-Evil: 1", "local_dir": "a"}, 400, "token"),
    ("missing_model_id", {"token": TOKEN, "local_dir": "a"}, 400, "model_id"),
    ("no_token_for_a_private_repo", {"model_id": "acme/sql-lora", "token": "", "local_dir": "a"}, 404, None),
]


@pytest.mark.parametrize("payload,status,param", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_production_stack_bad_requests_are_errors_the_controller_sees(
    tmp_path: Path, hub: FakeHub, payload: Dict[str, str], status: int, param: Optional[str]
) -> None:
    with _patio(hub, tmp_path) as patio:
        got, body = http_json("POST", patio.url + "/model/download", payload)
        # The controller fails on anything but 200 and logs the body: Patio's JSON error, no secret in it.
        assert got == status, body
        assert body["object"] == "error" and body["code"] == status
        if param is not None:
            assert body["param"] == param
        assert TOKEN not in json.dumps(body) and "X-Evil" not in json.dumps(body)
        patio.stop()
        assert TOKEN not in patio.output()
