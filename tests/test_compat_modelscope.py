"""ModelScope (``ms://``) against a local hub that the real ``modelscope`` client downloads from.

The oracle is ``modelscope_hub`` (what ``modelscope.snapshot_download`` delegates to since
modelscope 1.38): it downloads from ``FakeModelScope`` first, which proves the fake serves
the contract the client reads; then Patio downloads the same repository and must send the
same listing and file requests, verify every file, and keep the token on the hub's origin.
"""

import argparse
import hashlib
import os
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from artifacts_fakes import FakeCdn
from compat_fakes import FakeModelScope, tree
from support import PEERS_ALLOWED

from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import ArtifactAccessDenied, ArtifactCorrupt, ArtifactError, ArtifactNotFound
from patio.artifacts.fetch.run import FetchResult, fetch
from patio.artifacts.settings import from_sources
from patio.artifacts.sources import open_source
from patio.artifacts.uri import parse_uri

pytestmark = pytest.mark.slow

TOKEN = "ms-token-for-the-hub-only"
REPO = {
    "configuration.json": b'{"framework": "pytorch"}',
    "adapter_config.json": b'{"r": 8}',
    "weights/adapter model.safetensors": os.urandom(400_000),  # a space: quote_plus on the wire
}
V1 = {"adapter_config.json": b'{"r": 4}'}


@pytest.fixture()
def hub() -> Iterator[Dict[str, Any]]:
    cdn = FakeCdn()
    ms = FakeModelScope(cdn, token=TOKEN)
    ms.add("acme/lora", REPO, cdn=("weights/adapter model.safetensors",))
    ms.add("acme/lora", V1, revision="v1.0")
    try:
        yield {"ms": ms, "cdn": cdn}
    finally:
        ms.stop()
        cdn.stop()


def _requests(ms: FakeModelScope) -> List[str]:
    """The hub API requests, without the client's optional acceleration probe."""
    return sorted(urllib.parse.unquote_plus(s.path) for s in ms.seen if "/models/" in s.path)


def _patio(uri: str, target: Path, env: Dict[str, str], credentials: Optional[dict] = None) -> FetchResult:
    settings = from_sources(argparse.Namespace(), {**PEERS_ALLOWED, **env}, None)
    source = open_source(parse_uri(uri), settings, parse_credentials(credentials))
    try:
        return fetch(source, str(target), settings.fetch_options())
    finally:
        source.close()


def test_patio_sends_what_the_modelscope_client_sends(hub: Dict[str, Any], tmp_path: Path, monkeypatch: Any) -> None:
    ms: FakeModelScope = hub["ms"]
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.url)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    from modelscope_hub.compat.snapshot_download import snapshot_download

    # Kthena's call (python/kthena/downloader/modelscope_downloader.py), unchanged.
    snapshot_download(
        model_id="acme/lora", revision=None, local_dir=str(tmp_path / "oracle"), token=TOKEN, max_workers=2
    )
    assert tree(tmp_path / "oracle") == REPO  # the fake serves what the client reads
    theirs = _requests(ms)
    ms.seen.clear()
    hub["cdn"].seen.clear()  # (the client's cookie jar sends m_session_id to any port of the hub's host)
    result = _patio("ms://acme/lora", tmp_path / "patio", {"MODELSCOPE_ENDPOINT": ms.url, "MS_TOKEN": TOKEN})
    assert tree(tmp_path / "patio") == REPO and result.downloaded == len(REPO)
    # Same listing request, same file requests (Patio may split big files into ranges of the same URL).
    assert sorted(set(_requests(ms))) == sorted(set(theirs))
    hub_auth = {(s.headers.get("authorization"), s.headers.get("cookie")) for s in ms.seen}
    assert hub_auth == {(f"Bearer {TOKEN}", f"m_session_id={TOKEN}")}
    assert all("authorization" not in s.headers and "cookie" not in s.headers for s in hub["cdn"].seen)


@pytest.mark.parametrize(
    "uri,credentials,expected",
    [
        ("ms://acme/lora@v1.0", None, V1),
        ("ms://acme/lora", {"ms_revision": "v1.0"}, V1),
        ("ms://acme/lora/weights", None, {"adapter model.safetensors": REPO["weights/adapter model.safetensors"]}),
    ],
    ids=["revision_in_uri", "kthena_ms_revision", "sub_directory"],
)
def test_revisions_and_sub_directories(
    hub: Dict[str, Any], tmp_path: Path, uri: str, credentials: Optional[dict], expected: Dict[str, bytes]
) -> None:
    env = {"MODELSCOPE_ENDPOINT": hub["ms"].url, "MS_TOKEN": TOKEN}
    _patio(uri, tmp_path / "out", env, credentials)
    assert tree(tmp_path / "out") == expected


def test_a_corrupted_body_of_the_right_size_is_caught(hub: Dict[str, Any], tmp_path: Path) -> None:
    data = REPO["weights/adapter model.safetensors"]
    hub["cdn"].blobs[hashlib.sha256(data).hexdigest()] = bytes([data[0] ^ 0xFF]) + data[1:]
    with pytest.raises(ArtifactCorrupt):
        _patio("ms://acme/lora", tmp_path / "out", {"MODELSCOPE_ENDPOINT": hub["ms"].url, "MS_TOKEN": TOKEN})


@pytest.mark.parametrize("cdn_url", ["file:///etc", "ftp://example.com"], ids=["file", "ftp"])
def test_a_redirect_off_http_is_refused(hub: Dict[str, Any], tmp_path: Path, cdn_url: str) -> None:
    # The hub's Location is the server's word, not the operator's: the same check as the HF store's.
    hub["cdn"].url = cdn_url
    with pytest.raises(ArtifactError) as caught:
        _patio("ms://acme/lora", tmp_path / "out", {"MODELSCOPE_ENDPOINT": hub["ms"].url, "MS_TOKEN": TOKEN})
    assert "non-HTTP" in caught.value.message
    assert not (tmp_path / "out" / ".patio" / "manifest.json").exists()


@pytest.mark.parametrize(
    "uri,env,error",
    [
        ("ms://acme/missing", {"MS_TOKEN": TOKEN}, ArtifactNotFound),
        ("ms://acme/lora", {"MS_TOKEN": "wrong"}, ArtifactAccessDenied),
        ("ms://acme/lora", {}, ArtifactAccessDenied),
    ],
    ids=["unknown_repo", "wrong_token", "no_token"],
)
def test_failures_name_the_repo(
    hub: Dict[str, Any], tmp_path: Path, uri: str, env: Dict[str, str], error: type
) -> None:
    with pytest.raises(error) as caught:
        _patio(uri, tmp_path / "out", {"MODELSCOPE_ENDPOINT": hub["ms"].url, **env})
    assert "acme/" in caught.value.message and TOKEN not in caught.value.message
    assert not (tmp_path / "out" / ".patio" / "manifest.json").exists()


def test_a_token_never_leaves_for_an_endpoint_the_request_named(hub: Dict[str, Any], tmp_path: Path) -> None:
    other = FakeModelScope(hub["cdn"])  # an endpoint the caller chose: public, no token needed
    other.add("acme/lora", V1)
    try:
        _patio(
            "ms://acme/lora",
            tmp_path / "out",
            {"MODELSCOPE_ENDPOINT": hub["ms"].url, "MS_TOKEN": TOKEN},
            {"endpoint": other.url},
        )
    finally:
        other.stop()
    assert tree(tmp_path / "out") == V1
    assert all("authorization" not in s.headers and "cookie" not in s.headers for s in other.seen)
