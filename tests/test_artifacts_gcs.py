"""GCS: the pure-Python RS256 signer against ``cryptography``, the JWT bearer grant, and
listing/download against a local JSON API whose token endpoint verifies our JWT with
``cryptography`` (so a wrong signature is refused there, not waved through)."""

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import pytest
from artifacts_fakes import BaseFake, FakeGcs, send
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fakes.engine import FakeEngine
from support import PEERS_ALLOWED, ROOT, RunningPatio, http_call, http_json, make_settings

from patio.artifacts.auth import rs256
from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import (
    ArtifactAccessDenied,
    ArtifactCorrupt,
    ArtifactNotFound,
    CredentialsInvalid,
    CredentialsMisconfigured,
)
from patio.artifacts.fetch.egress import EgressRefused
from patio.artifacts.fetch.net import HttpClient
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig
from patio.artifacts.fetch.run import FetchResult, fetch
from patio.artifacts.settings import from_sources
from patio.artifacts.sources import open_source
from patio.artifacts.stores.gcs import ServiceAccountToken
from patio.artifacts.uri import parse_uri

MiB = 1024 * 1024


def _key(bits: int) -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pem(key: Any, fmt: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


KEY = _key(2048)
OTHER_KEY = _key(2048)


@pytest.mark.parametrize(
    "bits,fmt",
    [
        (2048, serialization.PrivateFormat.PKCS8),
        (3072, serialization.PrivateFormat.PKCS8),
        (2048, serialization.PrivateFormat.TraditionalOpenSSL),
        (1024, serialization.PrivateFormat.PKCS8),
    ],
    ids=["2048-pkcs8", "3072-pkcs8", "2048-pkcs1", "1024-pkcs8"],
)
def test_rs256_is_byte_identical_to_cryptography(bits: int, fmt: Any) -> None:
    key = KEY if bits == 2048 else _key(bits)
    ours = rs256.parse_pem_private_key(_pem(key, fmt))
    for message in (b"", b"header.claims", os.urandom(1000)):
        signature = rs256.sign_pkcs1v15_sha256(ours, message)
        assert signature == key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize(
    "text,error",
    [
        ("not a key", "not PEM"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "unsupported PEM type"),
        ("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----", "not base64"),
        ("-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----", "fewer than 9"),
    ],
    ids=["garbage", "public-key", "bad-base64", "short-der"],
)
def test_unusable_keys_are_named_errors(text: str, error: str) -> None:
    with pytest.raises(rs256.InvalidKey) as caught:
        rs256.parse_pem_private_key(text)
    assert error in str(caught.value)


def test_ec_keys_are_refused() -> None:
    pem = _pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8)
    with pytest.raises(rs256.InvalidKey, match="not an RSA key"):
        rs256.parse_pem_private_key(pem)


def _b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jwt(assertion: str, key: Any = KEY) -> Optional[str]:
    """What a token endpoint does: check the RS256 signature and the claims."""
    try:
        header_b64, claims_b64, signature_b64 = assertion.split(".")
        key.public_key().verify(
            _b64d(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except (ValueError, InvalidSignature):
        return None
    header, claims = json.loads(_b64d(header_b64)), json.loads(_b64d(claims_b64))
    if header != {"alg": "RS256", "typ": "JWT", "kid": "key-1"}:
        return None
    if claims["aud"] != "https://oauth2.googleapis.com/token" or claims["exp"] - claims["iat"] != 3600:
        return None
    if claims["scope"] != "https://www.googleapis.com/auth/devstorage.read_only":
        return None
    return str(claims["iss"])


def _service_account(gcs_url: str, key: Any = KEY) -> Dict[str, Any]:
    return {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "key-1",
        "private_key": _pem(key, serialization.PrivateFormat.PKCS8),
        "client_email": "patio@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{gcs_url}/token",
    }


def test_jwt_verifies_with_cryptography() -> None:
    info = _service_account("http://127.0.0.1:1")
    token = ServiceAccountToken(HttpClient(NetConfig(timeout=5)), info, DownloadRetry(attempts=1))
    assertion = token.assertion(now=1_700_000_000)
    assert verify_jwt(assertion) == "patio@p.iam.gserviceaccount.com"
    assert verify_jwt(assertion, OTHER_KEY) is None
    claims = json.loads(_b64d(assertion.split(".")[1]))
    assert claims["iat"] == 1_700_000_000 and claims["exp"] == 1_700_003_600


FILES = {
    "llama/config.json": b'{"a": 1}',
    "llama/tok/tokenizer.json": b"t" * 5000,
    "llama/weights with space.bin": os.urandom(2 * MiB + 7),
    "other/x.json": b"{}",
}


@pytest.fixture()
def gcs() -> Iterator[FakeGcs]:
    server = FakeGcs(verify_jwt=verify_jwt, page_size=2)
    for name, data in FILES.items():
        server.put("bucket", name, data)
    try:
        yield server
    finally:
        server.stop()


def _download(uri: str, target: Path, env: Dict[str, str], credentials: Optional[dict] = None) -> FetchResult:
    settings = from_sources(argparse.Namespace(), {**PEERS_ALLOWED, "DOWNLOADER_PART_SIZE": "1MiB", **env}, None)
    source = open_source(parse_uri(uri), settings, parse_credentials(credentials))
    try:
        return fetch(source, str(target), settings.fetch_options())
    finally:
        source.close()


def _tree(root: Path) -> Dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".patio" not in p.parts
    }


def test_service_account_file_lists_pages_and_downloads(gcs: FakeGcs, tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(_service_account(gcs.url)))
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file), "STORAGE_EMULATOR_HOST": gcs.url}
    result = _download("gs://bucket/llama", tmp_path / "m", env)
    expected = {k[len("llama/") :]: v for k, v in FILES.items() if k.startswith("llama/")}
    assert _tree(tmp_path / "m") == expected
    assert result.downloaded == 3
    assert sum(1 for s in gcs.seen if s.path.startswith("/token")) == 1  # one token, cached
    lists = [s for s in gcs.seen if s.path.startswith("/storage/v1/b/bucket/o?")]
    assert len(lists) == 2  # three objects at two per page
    media = [s for s in gcs.seen if s.path.startswith("/download/") and "weights" in s.path]
    assert len(media) == 3 and all("generation=1000" in s.path for s in media)  # 1 MiB parts, pinned


@pytest.mark.parametrize("kind", ["service_account_json", "access_token"])
def test_request_supplied_credentials(gcs: FakeGcs, tmp_path: Path, kind: str) -> None:
    if kind == "access_token":
        gcs.tokens["ya29.given"] = "someone"
        creds: Dict[str, Any] = {"access_token": "ya29.given"}
    else:
        creds = {"service_account_json": _service_account(gcs.url)}
    _download("gs://bucket/other", tmp_path / "o", {"STORAGE_EMULATOR_HOST": gcs.url}, creds)
    assert _tree(tmp_path / "o") == {"x.json": b"{}"}


def test_key_the_token_endpoint_rejects(gcs: FakeGcs, tmp_path: Path) -> None:
    creds = {"service_account_json": _service_account(gcs.url, OTHER_KEY)}
    with pytest.raises(ArtifactAccessDenied, match="invalid_grant"):
        _download("gs://bucket/llama", tmp_path / "x", {"STORAGE_EMULATOR_HOST": gcs.url}, creds)


def test_md5_mismatch_is_caught(gcs: FakeGcs, tmp_path: Path) -> None:
    gcs.bad_md5.add("llama/config.json")
    creds = {"service_account_json": _service_account(gcs.url)}
    with pytest.raises(ArtifactCorrupt, match="md5"):
        _download("gs://bucket/llama", tmp_path / "x", {"STORAGE_EMULATOR_HOST": gcs.url}, creds)


def test_missing_bucket_and_single_object(gcs: FakeGcs, tmp_path: Path) -> None:
    creds = {"service_account_json": _service_account(gcs.url)}
    env = {"STORAGE_EMULATOR_HOST": gcs.url}
    with pytest.raises(ArtifactNotFound, match="gs://nope"):
        _download("gs://nope/x", tmp_path / "x", env, creds)
    _download("gs://bucket/llama/config.json", tmp_path / "one", env, creds)
    assert _tree(tmp_path / "one") == {"config.json": b'{"a": 1}'}


class FakeMetadata(BaseFake):
    def handle(self, h: Any, method: str) -> None:
        if h.headers.get("Metadata-Flavor") != "Google":
            send(h, 403, b"Missing Metadata-Flavor header")
            return
        if h.path.startswith("/computeMetadata/v1/instance/service-accounts/default/token"):
            send(h, 200, json.dumps({"access_token": "ya29.metadata", "expires_in": 3599}).encode())
            return
        send(h, 404)


def test_metadata_server_token(gcs: FakeGcs, tmp_path: Path) -> None:
    gcs.tokens["ya29.metadata"] = "default"
    with FakeMetadata() as metadata:
        env = {"STORAGE_EMULATOR_HOST": gcs.url, "GCE_METADATA_HOST": f"127.0.0.1:{metadata.port}"}
        _download("gs://bucket/other", tmp_path / "o", env)
        assert metadata.seen and "scopes=" in metadata.seen[0].path
    assert _tree(tmp_path / "o") == {"x.json": b"{}"}


def test_the_metadata_host_is_the_one_exception_to_the_egress_policy(tmp_path: Path) -> None:
    # The store (STORAGE_EMULATOR_HOST) is allowed by the setting; the metadata server, on an
    # address the policy refuses, is reached only by Patio's own token client.
    store = FakeGcs(verify_jwt=verify_jwt, host="127.0.0.2")
    store.put("bucket", "other/x.json", b"{}")
    store.tokens["ya29.metadata"] = "default"
    try:
        with FakeMetadata() as metadata:
            env = {
                "PATIO_EGRESS_ALLOW": "127.0.0.2",
                "STORAGE_EMULATOR_HOST": store.url,
                "GCE_METADATA_HOST": f"127.0.0.1:{metadata.port}",
            }
            _download("gs://bucket/other", tmp_path / "o", env)
            assert metadata.seen
            # A request naming the metadata host as its own token endpoint gets no exemption.
            creds = {"service_account_json": _service_account(f"http://127.0.0.1:{metadata.port}")}
            with pytest.raises(EgressRefused):
                _download("gs://bucket/other", tmp_path / "p", env, creds)
            assert len(metadata.seen) == 1
    finally:
        store.stop()
    assert _tree(tmp_path / "o") == {"x.json": b"{}"}


def test_no_metadata_server_means_anonymous(gcs: FakeGcs, tmp_path: Path) -> None:
    gcs.require_token = False  # a public bucket
    env = {"STORAGE_EMULATOR_HOST": gcs.url, "GCE_METADATA_HOST": "127.0.0.1:9"}  # nothing listens there
    _download("gs://bucket/other", tmp_path / "o", env)
    assert all("authorization" not in s.headers for s in gcs.seen)


# -- gcs:// wherever gs:// ------------------------------------------------------------------
# AIBrix's runtime knows GCS only as gcs:// (python/aibrix/aibrix/runtime/downloaders.py at
# bc37abba, get_downloader's downloader_map: "gcs"), its docs as gs://.  Every
# entry point is driven as its caller drives it and must fetch the same bytes for both spellings.


def _wait(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _via_download_api(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    status, job = http_json("POST", patio.url + "/v1/model/download", {"model_uri": uri, "local_dir": "m"})
    assert status == 202, job
    done = _wait(
        lambda: (lambda j: j if j["status"] in ("completed", "failed") else None)(
            http_json("GET", patio.url + job["status_url"])[1]
        )
    )
    assert done["status"] == "completed", done
    return dirs["models"] / "m"


def _via_kthena_download(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    target = dirs["models"] / "k"
    status, body = http_json(
        "POST", patio.url + "/v1/download_model", {"source": uri, "output_dir": str(target)}, timeout=30
    )
    assert (status, body["status"]) == (200, "completed"), body
    return target


def _lora_loaded(patio: RunningPatio, engine: FakeEngine, path: str, body: Dict[str, Any]) -> Path:
    status, answer = http_json("POST", patio.url + path, body, timeout=30)
    assert status == 200, answer
    text = http_call("GET", patio.url + "/metrics")[2].decode()
    assert 'adapter="a",state="loaded",source_scheme="gs"' in text  # one label for both spellings
    return Path(engine.adapters["a"])


def _via_aibrix_lora(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    return _lora_loaded(patio, patio.engine, "/v1/lora_adapter/load", {"lora_name": "a", "artifact_url": uri})


def _via_kthena_lora(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    body = {"lora_name": "a", "source": uri, "output_dir": str(dirs["adapters"] / "k")}
    return _lora_loaded(patio, patio.engine, "/v1/load_lora_adapter", body)


def _via_lora_path(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    return _lora_loaded(patio, patio.engine, "/load_lora_adapter", {"lora_name": "a", "lora_path": uri})


def _via_adapters_file(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    (dirs["root"] / "adapters.json").write_text(json.dumps({"adapters": [{"name": "a", "source": uri}]}))
    _wait(lambda: "a" in patio.engine.adapters)
    return Path(patio.engine.adapters["a"])


def _via_cli(patio: RunningPatio, uri: str, dirs: Dict[str, Path]) -> Path:
    target = dirs["models"] / "cli"
    env = {"PATH": os.environ.get("PATH", ""), **patio.env}
    cmd = [sys.executable, str(ROOT / "patio.py"), "download", "--model-uri", uri, "--local-dir", str(target)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return target


ENTRY_POINTS = {
    "download_api": _via_download_api,
    "kthena_download": _via_kthena_download,
    "aibrix_lora_artifact_url": _via_aibrix_lora,
    "kthena_lora_source": _via_kthena_lora,
    "lora_path": _via_lora_path,
    "adapters_file": _via_adapters_file,
    "cli": _via_cli,
}


@pytest.mark.parametrize("scheme", ["gs", "gcs"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_gcs_scheme_is_accepted_wherever_gs_is(gcs: FakeGcs, tmp_path: Path, entry: str, scheme: str) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(_service_account(gcs.url)))
    dirs = {"root": tmp_path, "models": tmp_path / "models", "adapters": tmp_path / "adapters"}
    for made in ("models", "adapters"):
        dirs[made].mkdir()
    env = {
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
        "STORAGE_EMULATOR_HOST": gcs.url,
        "PATIO_MODELS_ROOT": str(dirs["models"]),
        "PATIO_ADAPTER_DIR": str(dirs["adapters"]),
        **PEERS_ALLOWED,
    }
    with FakeEngine("vllm") as engine:
        env.update(INFERENCE_ENGINE="vllm", INFERENCE_ENGINE_ENDPOINT=engine.url)
        args = ["--adapters-file", str(tmp_path / "adapters.json"), "--adapters-file-interval", "0.05"]
        if entry == "adapters_file":
            (tmp_path / "adapters.json").write_text('{"adapters": []}')
        with RunningPatio(make_settings(args if entry == "adapters_file" else [], env)) as patio:
            patio.engine, patio.env = engine, env  # type: ignore[attr-defined]
            target = ENTRY_POINTS[entry](patio, f"{scheme}://bucket/llama", dirs)
    expected = {k[len("llama/") :]: v for k, v in FILES.items() if k.startswith("llama/")}
    assert _tree(target) == expected


# Malformed service-account JSON is a configuration error, never a 403 that blames the store:
# the caller's credentials -> 400, the operator's file -> 500.
MALFORMED = [
    ("not_json", "{not json"),
    ("not_an_object", "[1, 2]"),
    ("unknown_type", json.dumps({"type": "external_account"})),
    ("missing_fields", json.dumps({"type": "service_account", "client_email": "x@p"})),
    ("unusable_key", json.dumps({"type": "service_account", "client_email": "x@p", "private_key": "nope"})),
    ("user_missing_fields", json.dumps({"type": "authorized_user", "client_id": "c"})),
]


@pytest.mark.parametrize("text", [t for _n, t in MALFORMED], ids=[n for n, _t in MALFORMED])
def test_malformed_service_account_json_is_a_configuration_error(gcs: FakeGcs, tmp_path: Path, text: str) -> None:
    env = {"STORAGE_EMULATOR_HOST": gcs.url}
    with pytest.raises(CredentialsInvalid) as caught:
        _download("gs://bucket/llama", tmp_path / "r", env, {"service_account_json": text})
    assert caught.value.status == 400 and caught.value.param == "credentials"
    key_file = tmp_path / "sa.json"
    key_file.write_text(text)
    with pytest.raises(CredentialsMisconfigured) as operator:
        _download("gs://bucket/llama", tmp_path / "e", {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)})
    assert operator.value.status == 500 and str(key_file) in operator.value.message
    assert not any(s.path.startswith("/storage") for s in gcs.seen)  # nothing was asked of the store
