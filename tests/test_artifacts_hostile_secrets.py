"""Mounted secrets as an attacker (or a broken mount) lays them out.

Patio runs as a real process (the zipapp) against moto S3 with signature checks on (only the
keys of the mounted secret ``good`` sign a request moto accepts), loading adapters the way
AIBrix's controller asks (``credentials_secret: NAME``).  The secrets directory is laid out as
the kubelet mounts it (``KEY -> ..data/KEY``, ``..data -> ..TIMESTAMP``), with hostile
neighbours: a key that links out of the credentials directory, one that links into another
secret mounted beside it (followed before), a 1 GB key, binary content, a CR/LF in a key,
and the good secret rotated while a download from it runs.  Each refusal names the secret and
the key, never a value; Patio stays up and bounded; and no secret value appears in any output
of the test: Patio's log, every answer, /metrics, the listings, the state and adapter files.
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from artifacts_fakes import MotoServer, ThrottleProxy
from compat_fakes import kubernetes_secret
from fakes.engine import FakeEngine
from hostile_support import Vitals, leaks, probes_honest
from support import PatioProcess, http_json

pytestmark = pytest.mark.slow

ADAPTER = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": os.urandom(3 * 1024 * 1024)}
OUTSIDE_SECRET = "outside-the-mount-1f6c2b"
RSS_BUDGET_MB = 40.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    root = tmp_path_factory.mktemp("secrets")
    secrets, outside = root / "secrets", root / "outside"
    for folder in (secrets, outside, root / "adapters", root / "state"):
        folder.mkdir()
    server = MotoServer()
    first, second = server.iam_user("aibrix-a"), server.iam_user("aibrix-b")
    s3 = server.client("s3")
    s3.create_bucket(Bucket="adapters")
    for path, data in ADAPTER.items():
        s3.put_object(Bucket="adapters", Key=f"sql-lora/{path}", Body=data)
    server.enable_auth()
    proxy = ThrottleProxy(server.port, rate=1.0 * 1024 * 1024)  # a 3 MB adapter takes ~3 s

    def secret(name: str, **values: str) -> Path:
        return kubernetes_secret(secrets, name, values)

    good = {"aws_access_key_id": first[0], "aws_secret_access_key": first[1], "aws_region": "us-east-1"}
    secret("good", **good)
    (outside / "stolen").write_text(OUTSIDE_SECRET)
    escape = secret("escape", aws_access_key_id=first[0], aws_region="us-east-1")
    os.symlink("../../outside/stolen", escape / "aws_secret_access_key")
    other = secret("into-other", aws_access_key_id=first[0], aws_region="us-east-1")
    os.symlink("../good/aws_secret_access_key", other / "aws_secret_access_key")
    huge = secret("huge", aws_access_key_id=first[0])
    with open(huge / "..data" / "aws_secret_access_key", "wb") as handle:
        handle.truncate(1024**3)  # sparse: 1 GB to read, no disk
    os.symlink("..data/aws_secret_access_key", huge / "aws_secret_access_key")
    binary = secret("binary", aws_access_key_id=first[0])
    (binary / "..data" / "aws_secret_access_key").write_bytes(b"\xff\xfe\x00\x81" * 64)
    os.symlink("..data/aws_secret_access_key", binary / "aws_secret_access_key")
    secret("crlf", aws_access_key_id=first[0] + "\r\nX-Injected: 1", aws_secret_access_key=first[1])
    engine = FakeEngine("vllm")
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(root / "state"),
        "PATIO_ADAPTER_DIR": str(root / "adapters"),
        "PATIO_CREDENTIALS_DIR": str(secrets),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
        "AWS_REGION": "us-east-1",
        "DOWNLOADER_MAX_RETRIES": "1",
        "DOWNLOADER_NUM_THREADS": "2",
    }
    patio = PatioProcess(["--lora-reconcile-interval", "0"], env=env)
    w: Dict[str, Any] = {
        "patio": patio,
        "engine": engine,
        "root": root,
        "secrets": secrets,
        "outside": outside,
        "first": first,
        "second": second,
        "answers": [],
    }
    try:
        with Vitals(patio.proc.pid) as vitals:
            w["vitals"] = vitals
            yield w
    finally:
        patio.kill()
        engine.stop()
        proxy.stop()
        server.stop()


def _load(w: Dict[str, Any], name: str, secret: str) -> Tuple[int, Dict[str, Any]]:
    body = {"lora_name": name, "artifact_url": "s3://adapters/sql-lora", "credentials_secret": secret}
    status, answer = http_json("POST", w["patio"].url + "/v1/lora_adapter/load", body, timeout=60)
    w["answers"].append(json.dumps(answer))
    return status, answer


HOSTILE = [
    # (secret, status, words): each names the secret and the key, never a value
    ("escape", 400, "key 'aws_secret_access_key' is a link that leaves the secret's directory"),
    ("into-other", 400, "key 'aws_secret_access_key' is a link that leaves the secret's directory"),
    ("huge", 500, "key 'aws_secret_access_key' is larger than 1048576 bytes"),
    ("binary", 500, "key 'aws_secret_access_key' is not UTF-8 text"),
    ("crlf", 400, "holds control characters"),
    ("absent", 400, "no such secret mounted"),
    ("../secrets/good", 400, "must be a secret name"),
]


@pytest.mark.parametrize("secret,status,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_secret_is_refused_by_name(world: Dict[str, Any], secret: str, status: int, words: str) -> None:
    got, answer = _load(world, f"x-{len(world['answers'])}", secret)
    assert (got, answer["object"]) == (status, "error"), answer
    assert words in answer["message"], answer
    assert world["engine"].adapters.keys() <= {"sql", "during"}
    probes_honest(world["patio"])


def test_a_secret_rotated_during_a_download(world: Dict[str, Any]) -> None:
    """The kubelet swaps ``..data`` while the download signed with the old keys runs: the
    download finishes with the keys it started with; the next load reads the new ones."""
    import threading

    results: List[Tuple[int, Dict[str, Any]]] = []
    thread = threading.Thread(target=lambda: results.append(_load(world, "during", "good")))
    thread.start()
    partial = world["root"] / "adapters" / "during" / ".patio" / "partial"
    deadline = time.monotonic() + 30
    while not (partial.is_dir() or (world["root"] / "adapters" / "during" / "adapter_config.json").exists()):
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.02)
    key, secret = world["second"]
    folder = world["secrets"] / "good"
    fresh = folder / "..2099_01_01_00_00_00.000000002"
    fresh.mkdir()
    for name, value in {"aws_access_key_id": key, "aws_secret_access_key": secret, "aws_region": "us-east-1"}.items():
        (fresh / name).write_text(value)
    os.symlink(fresh.name, folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")
    thread.join(60)
    status, answer = results[0]
    assert status == 200, answer
    status, answer = _load(world, "after", "good")
    assert status == 200, answer
    assert set(world["engine"].adapters) >= {"during", "after"}


def test_no_secret_value_in_any_output(world: Dict[str, Any]) -> None:
    probes_honest(world["patio"])
    vitals = world["vitals"]
    assert vitals.peak_rss - vitals.start_rss < RSS_BUDGET_MB, vitals.summary()  # the 1 GB key read 1 MiB
    values = [world["first"][1], world["second"][1], OUTSIDE_SECRET]
    trees = [world["root"] / "state", world["root"] / "adapters"]
    for value in values:
        assert leaks(value, world["patio"], world["answers"], trees) == [], value[:6]
    assert (world["outside"] / "stolen").read_text() == OUTSIDE_SECRET  # read by nobody, changed by nobody
    print(vitals.summary())
