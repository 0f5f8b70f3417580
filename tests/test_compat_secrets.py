"""Issue 12: AIBrix's ``credentials_secret`` end to end against moto S3 with signature checking on.

The only valid keys are the ones in the mounted secret (the environment holds a
different, unknown key pair), so a download that succeeds proves the secret's keys
signed it.  The secret is laid out as the kubelet mounts one (``KEY -> ..data/KEY``,
``..data -> ..TIMESTAMP``), and rotated the way the kubelet rotates it (a new
timestamped directory, then ``..data`` swapped atomically).  The load request is
the AIBrix controller's, byte for byte (``pkg/controller/modeladapter/lora_client.go``).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from artifacts_fakes import MotoServer
from compat_fakes import go_request, kubernetes_secret, replay, tree
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

pytestmark = pytest.mark.slow

ADAPTER = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": os.urandom(50_000)}


@pytest.fixture(scope="module")
def moto() -> Iterator[Dict[str, Any]]:
    server = MotoServer()
    try:
        first = server.iam_user("aibrix-a")
        second = server.iam_user("aibrix-b")
        s3 = server.client("s3")
        s3.create_bucket(Bucket="adapters")
        for path, data in ADAPTER.items():
            s3.put_object(Bucket="adapters", Key=f"sql-lora/{path}", Body=data)
        server.enable_auth()
        yield {"server": server, "first": first, "second": second}
    finally:
        server.stop()


@pytest.fixture()
def world(moto: Dict[str, Any], tmp_path: Path) -> Iterator[Dict[str, Any]]:
    dirs = {n: tmp_path / n for n in ("adapters", "secrets", "state")}
    for path in dirs.values():
        path.mkdir()
    key, secret = moto["first"]
    kubernetes_secret(
        dirs["secrets"],
        "s3-creds",
        {"aws_access_key_id": key, "aws_secret_access_key": secret, "aws_region": "us-east-1"},
    )
    env = {
        "INFERENCE_ENGINE": "vllm",
        "PATIO_STATE_DIR": str(dirs["state"]),
        "PATIO_ADAPTER_DIR": str(dirs["adapters"]),
        "PATIO_CREDENTIALS_DIR": str(dirs["secrets"]),
        "AWS_ENDPOINT_URL": moto["server"].endpoint,
        "AWS_REGION": "us-east-1",
        # Well-formed but unknown to moto: only the secret's keys can sign a request it accepts.
        "AWS_ACCESS_KEY_ID": "AKIAENVIRONMENTWRONG",
        "AWS_SECRET_ACCESS_KEY": "not-the-secret-from-the-mounted-volume",
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    with FakeEngine("vllm") as engine:
        env["INFERENCE_ENGINE_ENDPOINT"] = engine.url
        with RunningPatio(make_settings(["--lora-reconcile-interval", "0"], env)) as patio:
            yield {"patio": patio, "engine": engine, "moto": moto, **dirs}


def _load(w: Dict[str, Any], name: str, secret: str) -> Any:
    payload = {"lora_name": name, "artifact_url": "s3://adapters/sql-lora", "credentials_secret": secret}
    status, _, body = replay(
        w["patio"].port, go_request(w["patio"].port, "POST", "/v1/lora_adapter/load", payload, None)
    )
    return status, json.loads(body)


def test_only_the_mounted_secrets_keys_sign(world: Dict[str, Any]) -> None:
    # The environment's keys alone are refused by moto: the download fails, and says so.
    status, body = http_json(
        "POST",
        world["patio"].url + "/v1/lora_adapter/load",
        {"lora_name": "env", "artifact_url": "s3://adapters/sql-lora"},
    )
    assert status == 403 and body["object"] == "error", body
    status, body = _load(world, "sql", "s3-creds")
    assert status == 200, body
    assert tree(world["adapters"] / "sql") == ADAPTER
    assert world["engine"].adapters == {"sql": str(world["adapters"] / "sql")}
    key, secret = world["moto"]["first"]
    assert secret not in json.dumps(body) and key not in json.dumps(body)


def test_a_rotated_secret_is_read_at_load_time(world: Dict[str, Any]) -> None:
    folder = world["secrets"] / "s3-creds"
    key, secret = world["moto"]["second"]
    fresh = folder / "..2099_01_01_00_00_00.000000001"
    fresh.mkdir()
    (fresh / "aws_access_key_id").write_text(key)
    (fresh / "aws_secret_access_key").write_text(secret)
    (fresh / "aws_region").write_text("us-east-1")
    os.symlink(fresh.name, folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")  # the kubelet's atomic swap
    status, body = _load(world, "rotated", "s3-creds")
    assert status == 200, body
    assert tree(world["adapters"] / "rotated") == ADAPTER


def test_a_secret_with_a_wrong_key_fails_the_load(world: Dict[str, Any]) -> None:
    key, _secret = world["moto"]["first"]
    kubernetes_secret(world["secrets"], "stale", {"aws_access_key_id": key, "aws_secret_access_key": "revoked"})
    status, body = _load(world, "stale", "stale")
    assert status == 403 and body["object"] == "error", body  # never 200/201: the controller sees the failure
    assert world["engine"].adapters == {}
