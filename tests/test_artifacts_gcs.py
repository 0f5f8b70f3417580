"""GCS: the pure-Python RS256 signer against ``cryptography``, the JWT bearer grant, and
listing/download against a local JSON API whose token endpoint verifies our JWT with
``cryptography`` (so a wrong signature is refused there, not waved through)."""

import argparse
import base64
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from artifacts_fakes import BaseFake, FakeGcs, send
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from patio.artifacts.auth import rs256
from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactNotFound
from patio.artifacts.fetch.engine import FetchResult, fetch
from patio.artifacts.fetch.net import HttpClient
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig
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
    settings = from_sources(argparse.Namespace(), {"DOWNLOADER_PART_SIZE": "1MiB", **env}, None)
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


def test_no_metadata_server_means_anonymous(gcs: FakeGcs, tmp_path: Path) -> None:
    gcs.require_token = False  # a public bucket
    env = {"STORAGE_EMULATOR_HOST": gcs.url, "GCE_METADATA_HOST": "127.0.0.1:9"}  # nothing listens there
    _download("gs://bucket/other", tmp_path / "o", env)
    assert all("authorization" not in s.headers for s in gcs.seen)
