"""S3 end to end against moto in server mode with signature checking on.

A wrong signature is a 403 from moto, so every passing download here proves the
signer, the request encoding and the Host handling on the wire.  Also: TOS/OBS
and GCS-HMAC through the same S3 API, STS web identity, virtual-hosted style
through an HTTP proxy, pagination past 1000 keys, multi-part files, resume after
kill -9, changed objects, 403 and 404.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import pytest
from artifacts_fakes import FileServer, MotoServer, ThrottleProxy
from support import PEERS_ALLOWED, ROOT

from patio.artifacts.auth.aws import WebIdentityProvider
from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import ArtifactAccessDenied, ArtifactNotFound
from patio.artifacts.fetch.net import HttpClient
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig
from patio.artifacts.fetch.run import FetchResult, fetch
from patio.artifacts.settings import from_sources
from patio.artifacts.sources import open_source
from patio.artifacts.uri import parse_uri

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
BIG = os.urandom(5 * MiB + 123)  # six 1 MiB parts
LLAMA: Dict[str, bytes] = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "tokenizer/tokenizer.json": os.urandom(20_000),
    "sub dir/é+ü ~x.txt": b"unicode, space, plus and tilde in a key",
    "deep/a/b/c/weights.bin": os.urandom(70_000),
    "model.safetensors": BIG,
}
MANY = 1005


@pytest.fixture(scope="module")
def moto() -> Iterator[Dict[str, Any]]:
    server = MotoServer()
    try:
        key, secret = server.iam_user()
        s3 = server.client("s3")
        for bucket in ("models", "many", "single", "changing"):
            s3.create_bucket(Bucket=bucket)
        for path, data in LLAMA.items():
            s3.put_object(Bucket="models", Key=f"llama/{path}", Body=data)
        s3.put_object(Bucket="models", Key="llama/", Body=b"")  # a console "folder" marker
        s3.put_object(Bucket="models", Key="llama-2/not-this.json", Body=b"{}")  # sibling prefix
        s3.put_object(Bucket="single", Key="dir/only.bin", Body=b"one object")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket="many", Key=f"m/f{i:04d}.json", Body=b"%d" % i), range(MANY)))
        server.enable_auth()
        yield {"server": server, "key": key, "secret": secret}
    finally:
        server.stop()


def _env(moto: Mapping[str, Any], **extra: str) -> Dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": moto["server"].endpoint,
        "AWS_ACCESS_KEY_ID": moto["key"],
        "AWS_SECRET_ACCESS_KEY": moto["secret"],
        "AWS_REGION": "us-east-1",
        "DOWNLOADER_PART_SIZE": "1MiB",
        "DOWNLOADER_NUM_THREADS": "4",
        "DOWNLOADER_MAX_RETRIES": "2",
        **PEERS_ALLOWED,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def _download(
    uri: str, target: Path, env: Mapping[str, str], credentials: Optional[dict] = None, **opts: Any
) -> FetchResult:
    settings = from_sources(argparse.Namespace(), {**PEERS_ALLOWED, **env}, None)
    source = open_source(parse_uri(uri), settings, parse_credentials(credentials))
    try:
        return fetch(source, str(target), settings.fetch_options(**opts))
    finally:
        source.close()


def _tree(root: Path) -> Dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".patio" not in p.relative_to(root).parts
    }


def _moto_log(moto: Mapping[str, Any]) -> List[str]:
    text = Path(moto["server"].log.name).read_text(errors="replace")
    return re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()  # werkzeug colours its request lines


def _moto_gets(moto: Mapping[str, Any], key_path: str) -> int:
    return sum(1 for line in _moto_log(moto) if f'"GET /{key_path} ' in line)


def test_prefix_with_nested_keys_unicode_and_parts(moto: Dict[str, Any], tmp_path: Path) -> None:
    before = _moto_gets(moto, "models/llama/model.safetensors")
    result = _download("s3://models/llama", tmp_path / "llama", _env(moto))
    assert _tree(tmp_path / "llama") == LLAMA  # no folder marker, no llama-2 sibling
    assert result.downloaded == len(LLAMA) and result.skipped == 0
    manifest = json.loads((tmp_path / "llama/.patio/manifest.json").read_text())
    assert manifest["complete"] is True and manifest["file_count"] == len(LLAMA)
    # The 5 MiB file came as six signed ranged GETs.
    assert _moto_gets(moto, "models/llama/model.safetensors") - before == 6
    again = _download("s3://models/llama/", tmp_path / "llama", _env(moto))
    assert again.downloaded == 0 and again.skipped == len(LLAMA)


def test_pagination_past_1000_keys(moto: Dict[str, Any], tmp_path: Path) -> None:
    result = _download("s3://many/m", tmp_path / "m", _env(moto, DOWNLOADER_NUM_THREADS="16"))
    files = _tree(tmp_path / "m")
    assert len(files) == MANY == len(result.files)
    assert files["f1004.json"] == b"1004"


def test_single_object_uri(moto: Dict[str, Any], tmp_path: Path) -> None:
    _download("s3://single/dir/only.bin", tmp_path / "one", _env(moto))
    assert _tree(tmp_path / "one") == {"only.bin": b"one object"}


@pytest.mark.parametrize(
    "env_change,code",
    [
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "SignatureDoesNotMatch"),
        ({"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1"}, "InvalidAccessKeyId"),
    ],
    ids=["wrong-secret", "unknown-key"],
)
def test_wrong_credentials_fail_at_once_with_403(
    moto: Dict[str, Any], tmp_path: Path, env_change: Dict[str, str], code: str
) -> None:
    lines_before = len(_moto_log(moto))
    with pytest.raises(ArtifactAccessDenied) as caught:
        _download("s3://models/llama", tmp_path / "x", _env(moto, **env_change))
    assert code in caught.value.message and "s3://models/llama/" in caught.value.message
    assert caught.value.status == 403
    new_lines = _moto_log(moto)[lines_before:]
    assert sum(1 for line in new_lines if '"GET /models?' in line) == 1  # not retried
    assert not (tmp_path / "x/.patio/manifest.json").exists()


def test_missing_bucket_is_404_naming_it(moto: Dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound) as caught:
        _download("s3://no-such-bucket/x", tmp_path / "x", _env(moto))
    assert "s3://no-such-bucket/x" in caught.value.message and "NoSuchBucket" in caught.value.message


def test_empty_prefix_is_an_error_not_a_success(moto: Dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound) as caught:
        _download("s3://models/nothing-here", tmp_path / "x", _env(moto))
    assert "no files found" in caught.value.message
    assert not (tmp_path / "x/.patio/manifest.json").exists()


def test_changed_object_is_downloaded_again(moto: Dict[str, Any], tmp_path: Path) -> None:
    s3 = moto["server"].client("s3", moto["key"], moto["secret"])
    s3.put_object(Bucket="changing", Key="m/a.json", Body=b"v1")
    s3.put_object(Bucket="changing", Key="m/b.bin", Body=b"stays")
    _download("s3://changing/m", tmp_path / "m", _env(moto))
    s3.put_object(Bucket="changing", Key="m/a.json", Body=b"version two")
    s3.delete_object(Bucket="changing", Key="m/b.bin")
    s3.put_object(Bucket="changing", Key="m/c.txt", Body=b"new")
    result = _download("s3://changing/m", tmp_path / "m", _env(moto))
    assert _tree(tmp_path / "m") == {"a.json": b"version two", "c.txt": b"new"}  # b.bin was ours: removed
    assert result.downloaded == 2 and result.skipped == 0


def test_force_and_suffix_filter(moto: Dict[str, Any], tmp_path: Path) -> None:
    _download("s3://models/llama", tmp_path / "f", _env(moto, DOWNLOADER_ALLOW_FILE_SUFFIX="json,txt"))
    assert set(_tree(tmp_path / "f")) == {"config.json", "tokenizer/tokenizer.json", "sub dir/é+ü ~x.txt"}
    again = _download(
        "s3://models/llama", tmp_path / "f", _env(moto, DOWNLOADER_ALLOW_FILE_SUFFIX="json,txt"), force=True
    )
    assert again.downloaded == 3 and again.skipped == 0


@pytest.mark.parametrize(
    "uri,extra",
    [
        (
            "tos://models/llama",
            {
                "TOS_ACCESS_KEY": "{key}",
                "TOS_SECRET_KEY": "{secret}",
                "TOS_ENDPOINT": "{endpoint}",
                "TOS_REGION": "ap-southeast-1",
            },
        ),
        (
            "obs://models/llama",
            {"ACCESS_KEY": "{key}", "SECRET_KEY": "{secret}", "ENDPOINT": "{endpoint}", "OBS_REGION": "ap-southeast-1"},
        ),
    ],
    ids=["tos-env", "obs-kthena-env"],
)
# Regions outside moto's "cn-" partition: the IAM user lives in the "aws" partition.
def test_tos_and_obs_through_the_s3_api(moto: Dict[str, Any], tmp_path: Path, uri: str, extra: Dict[str, str]) -> None:
    values = {"key": moto["key"], "secret": moto["secret"], "endpoint": moto["server"].endpoint}
    env = {k: v.format(**values) for k, v in extra.items()}
    env["DOWNLOADER_PART_SIZE"] = "1MiB"
    _download(uri, tmp_path / "t", env)
    assert _tree(tmp_path / "t") == LLAMA


def test_gcs_hmac_keys_through_the_s3_api(moto: Dict[str, Any], tmp_path: Path) -> None:
    creds = {"access_key_id": moto["key"], "secret_access_key": moto["secret"], "endpoint": moto["server"].endpoint}
    _download("gs://models/llama", tmp_path / "g", {"DOWNLOADER_PART_SIZE": "1MiB"}, credentials=creds)
    assert _tree(tmp_path / "g") == LLAMA


def test_request_credentials_win_over_the_environment(moto: Dict[str, Any], tmp_path: Path) -> None:
    creds = {"aws_access_key_id": moto["key"], "aws_secret_access_key": moto["secret"]}
    env = _env(moto, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="nope")
    _download("s3://single/dir", tmp_path / "r", env, credentials=creds)
    assert _tree(tmp_path / "r") == {"only.bin": b"one object"}


@pytest.mark.parametrize("named_by", ["request", "environment"], ids=["request-endpoint", "configured-endpoint"])
def test_environment_keys_go_only_to_the_configured_endpoint(tmp_path: Path, named_by: str) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAPODKEYPODKEYPOD1",
        "AWS_SECRET_ACCESS_KEY": "pod-secret",
        "DOWNLOADER_MAX_RETRIES": "1",
    }
    with FileServer({}) as capture:
        if named_by == "environment":
            env["AWS_ENDPOINT_URL"] = capture.url
            creds = None
        else:
            creds = {"endpoint": capture.url}  # a request naming its own endpoint, without keys
        with pytest.raises(ArtifactNotFound):
            _download("s3://bucket/x", tmp_path / "e", env, credentials=creds)
        auth = [s.headers.get("authorization", "") for s in capture.seen]
    assert auth
    if named_by == "request":
        assert all(a == "" for a in auth)
    else:
        assert all("AKIAPODKEYPODKEYPOD1" in a for a in auth)


def test_virtual_hosted_style_through_an_http_proxy(moto: Dict[str, Any], tmp_path: Path) -> None:
    # bucket.s3.amazonaws.com does not resolve here: the proxy (moto itself) receives the
    # absolute URL, and moto checks the signature over the virtual Host header.
    env = _env(
        moto,
        AWS_ENDPOINT_URL="http://s3.amazonaws.com",
        PATIO_S3_ADDRESSING_STYLE="virtual",
    )
    env["HTTP_PROXY"] = moto["server"].endpoint
    _download("s3://models/llama", tmp_path / "v", env)
    assert _tree(tmp_path / "v") == LLAMA
    assert any("GET http://models.s3.amazonaws.com/llama/config.json" in line for line in _moto_log(moto))


def test_web_identity_through_sts(tmp_path: Path) -> None:
    # moto's STS answers only while signature checks are off: its own server.
    server = MotoServer()
    try:
        s3 = server.client("s3")
        s3.create_bucket(Bucket="irsa")
        s3.put_object(Bucket="irsa", Key="adapter/adapter_config.json", Body=b"{}")
        token = tmp_path / "token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpwYXRpbyJ9.c2ln")
        provider = WebIdentityProvider(
            HttpClient(NetConfig(timeout=10, egress=from_sources(argparse.Namespace(), PEERS_ALLOWED, None).egress)),
            server.endpoint,
            "arn:aws:iam::123456789012:role/patio",
            str(token),
            "patio-test",
            DownloadRetry(attempts=2),
        )
        creds = provider.get()
        assert creds is not None and creds.access_key.startswith("ASIA") and creds.session_token
        assert provider.get() is creds  # cached until shortly before expiry
        env = {
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/patio",
        }
        _download("s3://irsa/adapter", tmp_path / "a", env)
        assert _tree(tmp_path / "a") == {"adapter_config.json": b"{}"}
    finally:
        server.stop()


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _part_states(partial: Path) -> List[Path]:
    """Part-state files in place (``<id>.json``), not atomic-write temporaries (``.<id>.json.<pid>.<rand>.tmp``)."""
    return sorted(p for p in partial.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


def test_kill_9_mid_download_then_resume(moto: Dict[str, Any], tmp_path: Path) -> None:
    """The CLI is killed while the big file is half there: nothing claims completion, and a
    re-run finishes it from the parts already on disk, byte for byte."""
    proxy = ThrottleProxy(moto["server"].port, rate=1.5 * MiB)
    target = tmp_path / "resume"
    env = dict(os.environ)
    env.update(_env(moto, AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", DOWNLOADER_NUM_THREADS="2"))
    cmd = [
        sys.executable,
        str(ROOT / "patio.py"),
        "download",
        "--model-uri",
        "s3://models/llama",
        "--local-dir",
        str(target),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        partial = target / ".patio" / "partial"
        _wait_for(lambda: partial.is_dir() and _part_states(partial), 60, "a finished part")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proxy.stop()
    assert proc.returncode == -signal.SIGKILL
    assert not (target / ".patio/manifest.json").exists()
    assert (target / "model.safetensors.part").exists()
    # The state file itself: a kill can leave the atomic writer's temporary beside it, holding a
    # newer state that was never renamed into place (and that the resume rightly ignores).
    state = json.loads(_part_states(partial)[0].read_text())
    done_before = len(state["done"])
    assert 1 <= done_before < 6

    finished = {json.loads(line)["path"] for line in (target / ".patio/journal.jsonl").read_text().splitlines()}
    run = subprocess.run(
        cmd, env={**env, "AWS_ENDPOINT_URL": moto["server"].endpoint}, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert _tree(target) == LLAMA
    assert hashlib.sha256((target / "model.safetensors").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    # Only what was missing was fetched again: unfinished files, minus the big file's finished parts.
    fetched = int(re.search(r"(\d+) bytes fetched", run.stderr).group(1))  # type: ignore[union-attr]
    expected = sum(len(data) for path, data in LLAMA.items() if path not in finished) - done_before * MiB
    assert "model.safetensors" not in finished and fetched == expected
    assert not (target / "model.safetensors.part").exists() and not partial.exists()
