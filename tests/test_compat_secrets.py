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
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest
from artifacts_fakes import MotoServer
from compat_fakes import go_request, kubernetes_secret, replay, tree
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

from patio.lora.held_set import STATE_FILE

pytestmark = pytest.mark.slow

REGION = {"aws_region": "us-east-1"}  # a rotation keeps the key set (each key is a link into ..data)
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


def _world(moto: Dict[str, Any], tmp_path: Path) -> Tuple[Dict[str, Path], Dict[str, str]]:
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
    return dirs, env


@pytest.fixture()
def world(moto: Dict[str, Any], tmp_path: Path) -> Iterator[Dict[str, Any]]:
    dirs, env = _world(moto, tmp_path)
    with FakeEngine("vllm") as engine:
        env["INFERENCE_ENGINE_ENDPOINT"] = engine.url
        with RunningPatio(make_settings(["--lora-reconcile-interval", "0"], env)) as patio:
            yield {"patio": patio, "engine": engine, "moto": moto, **dirs}


def _rotate(folder: Path, values: Dict[str, str], stamp: str) -> None:
    """The kubelet's rotation: a new timestamped directory, then ``..data`` swapped atomically."""
    fresh = folder / stamp
    fresh.mkdir()
    for key, value in values.items():
        (fresh / key).write_text(value)
    os.symlink(fresh.name, folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")


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
    key, secret = world["moto"]["second"]
    values = {"aws_access_key_id": key, "aws_secret_access_key": secret, "aws_region": "us-east-1"}
    _rotate(world["secrets"] / "s3-creds", values, "..2099_01_01_00_00_00.000000001")
    status, body = _load(world, "rotated", "s3-creds")
    assert status == 200, body
    assert tree(world["adapters"] / "rotated") == ADAPTER


def test_a_secret_with_a_wrong_key_fails_the_load(world: Dict[str, Any]) -> None:
    key, _secret = world["moto"]["first"]
    kubernetes_secret(world["secrets"], "stale", {"aws_access_key_id": key, "aws_secret_access_key": "revoked"})
    status, body = _load(world, "stale", "stale")
    assert status == 403 and body["object"] == "error", body  # never 200/201: the controller sees the failure
    assert world["engine"].adapters == {}


def _wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_reconcile_reload_that_downloads_again_reads_the_secret_anew(moto: Dict[str, Any], tmp_path: Path) -> None:
    """The local copy is gone and the engine forgot the adapter: the reconcile downloads again,
    signed with the keys in the secret NOW (it was rotated), by the name kept in the state file."""
    dirs, env = _world(moto, tmp_path)
    folder = dirs["secrets"] / "s3-creds"
    first_key, first_secret = moto["first"]
    with FakeEngine("vllm") as engine:
        env["INFERENCE_ENGINE_ENDPOINT"] = engine.url
        settings = make_settings(["--lora-reconcile-interval", "0.2"], env)

        def lost_and_reloaded(patio: RunningPatio) -> None:
            shutil.rmtree(engine.adapters["sql"])
            engine.restart()  # a real engine restart forgets runtime-loaded adapters
            path = Path(_wait_for(lambda: engine.adapters.get("sql")))
            assert tree(path) == ADAPTER

        def last_error(patio: RunningPatio) -> str:
            adapters = http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"]
            return str(next(a for a in adapters if a["name"] == "sql")["last_error"] or "")

        with RunningPatio(settings) as patio:
            status, body = _load({"patio": patio}, "sql", "s3-creds")
            assert status == 200, body
            state = (dirs["state"] / STATE_FILE).read_text()
            assert json.loads(state)["adapters"][0]["credentials_secret"] == "s3-creds"
            assert first_key not in state and first_secret not in state  # the name, never the values
            # Revoked in the secret: the reload reads it at reload time, so it fails and says so.
            _rotate(folder, {**REGION, "aws_access_key_id": first_key, "aws_secret_access_key": "revoked"}, "..2099_01")
            shutil.rmtree(engine.adapters["sql"])
            engine.restart()
            assert "403" in _wait_for(lambda: last_error(patio)) and "sql" not in engine.adapters
            # Rotated to the second user's keys: the next reconcile downloads with them.
            second_key, second_secret = moto["second"]
            second = {**REGION, "aws_access_key_id": second_key, "aws_secret_access_key": second_secret}
            _rotate(folder, second, "..2099_02")
            path = Path(_wait_for(lambda: engine.adapters.get("sql")))
            assert tree(path) == ADAPTER
        # Patio restarted too: the secret's name comes back from the state file.
        with RunningPatio(settings) as patio:
            _wait_for(lambda: engine.adapters.get("sql"))
            lost_and_reloaded(patio)
            assert not last_error(patio)
