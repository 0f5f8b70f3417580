"""HuggingFace: Patio against a local Hub that speaks the endpoints both clients use.

The oracle is ``huggingface_hub.snapshot_download`` pointed at the same server:
same file set, same bytes.  Then what the official client does not do: the token
never leaves the configured endpoint, and a corrupted LFS body of the right size
is caught (the official client accepts it; the test shows that too).
"""

import argparse
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from support import PEERS_ALLOWED, build_pyz

from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import ArtifactCorrupt, ArtifactNotFound
from patio.artifacts.fetch.run import FetchResult, fetch
from patio.artifacts.settings import from_sources
from patio.artifacts.sources import open_source
from patio.artifacts.uri import parse_uri

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
TOKEN = "hf_configured_secret_token"
FILES: Dict[str, bytes] = {
    "config.json": b'{"model_type": "llama"}',
    "README.md": b"# tiny\n",
    "sub/tokenizer.json": b'{"version": "1.0"}' * 50,
    "model.safetensors": os.urandom(300_000),
    "big.bin": os.urandom(3 * MiB + 5),
}
LFS = ("model.safetensors", "big.bin")


@pytest.fixture()
def hub() -> Iterator[Tuple[FakeHub, FakeCdn]]:
    cdn = FakeCdn()
    server = FakeHub(cdn, page_size=2)
    server.add(HubRepo("acme/tiny-model", FILES, LFS))
    tagged = HubRepo("acme/tiny-model", FILES, LFS)
    server.repos["acme/tiny-model"].revisions["v1"] = tagged.sha
    try:
        yield server, cdn
    finally:
        server.stop()
        cdn.stop()


def _env(hub: FakeHub, **extra: str) -> Dict[str, str]:
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "DOWNLOADER_PART_SIZE": "1MiB", "DOWNLOADER_MAX_RETRIES": "2"}
    env.update(PEERS_ALLOWED)
    env.update(extra)
    return env


def _download(uri: str, target: Path, env: Mapping[str, str], credentials: Optional[dict] = None) -> FetchResult:
    settings = from_sources(argparse.Namespace(), {**PEERS_ALLOWED, **env}, None)
    source = open_source(parse_uri(uri), settings, parse_credentials(credentials))
    try:
        return fetch(source, str(target), settings.fetch_options())
    finally:
        source.close()


def _tree(root: Path, skip: str) -> Dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and skip not in p.relative_to(root).parts
    }


def _snapshot(hub: FakeHub, target: Path, cache: Path, token: Optional[str]) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        "acme/tiny-model", local_dir=str(target), cache_dir=str(cache), endpoint=hub.url, token=token, max_workers=2
    )


@pytest.mark.parametrize("uri", ["hf://acme/tiny-model", "huggingface://acme/tiny-model", "acme/tiny-model"])
def test_same_files_and_bytes_as_snapshot_download(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path, uri: str) -> None:
    server, _cdn = hub
    result = _download(uri, tmp_path / "patio", _env(server))
    _snapshot(server, tmp_path / "official", tmp_path / "cache", TOKEN)
    ours = _tree(tmp_path / "patio", ".patio")
    theirs = _tree(tmp_path / "official", ".cache")
    assert ours == theirs == FILES
    assert result.downloaded == len(FILES)
    # Tree pages followed through Link headers (page size 2).
    assert sum(1 for s in server.seen if "/tree/" in s.path) >= 3


def test_token_goes_to_the_configured_endpoint_only(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path) -> None:
    server, cdn = hub
    _download("hf://acme/tiny-model", tmp_path / "t", _env(server))
    assert server.seen and all(a == f"Bearer {TOKEN}" for a in server.auth_seen())
    assert cdn.seen and all("authorization" not in s.headers for s in cdn.seen)  # cross-origin redirect: dropped


def test_token_never_reaches_the_logs(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path, caplog: Any) -> None:
    server, _cdn = hub
    server.corrupt.add("big.bin")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ArtifactCorrupt) as caught:
            _download("hf://acme/tiny-model", tmp_path / "t", _env(server))
    assert TOKEN not in caught.value.message
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_request_named_endpoint_never_gets_the_configured_token(tmp_path: Path) -> None:
    configured_cdn, other_cdn = FakeCdn(), FakeCdn()
    configured, other = FakeHub(configured_cdn), FakeHub(other_cdn)
    try:
        other.add(HubRepo("acme/tiny-model", FILES, LFS))
        env = _env(configured)
        _download("hf://acme/tiny-model", tmp_path / "a", env, credentials={"endpoint": other.url})
        assert other.seen and all(a is None for a in other.auth_seen())
        assert not configured.seen
        # With a token of its own, the request's endpoint gets that token (and only that one).
        _download("hf://acme/tiny-model", tmp_path / "b", env, credentials={"hf_endpoint": other.url, "token": "req"})
        assert "Bearer req" in other.auth_seen() and f"Bearer {TOKEN}" not in other.auth_seen()
    finally:
        for server in (configured, other, configured_cdn, other_cdn):
            server.stop()


def test_corrupted_lfs_body_of_the_right_size_is_caught(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path) -> None:
    server, _cdn = hub
    server.corrupt.add("model.safetensors")
    with pytest.raises(ArtifactCorrupt) as caught:
        _download("hf://acme/tiny-model", tmp_path / "p", _env(server))
    assert "model.safetensors" in caught.value.message and "sha256" in caught.value.message
    assert not (tmp_path / "p/.patio/manifest.json").exists()
    assert not (tmp_path / "p/model.safetensors").exists()
    # The official client takes the same corrupted body without complaint.
    _snapshot(server, tmp_path / "official", tmp_path / "cache", TOKEN)
    official = (tmp_path / "official/model.safetensors").read_bytes()
    assert len(official) == len(FILES["model.safetensors"]) and official != FILES["model.safetensors"]


@pytest.mark.parametrize(
    "uri,expect",
    [
        ("hf://acme/no-such-repo", "not found"),
        ("hf://acme/tiny-model@no-such-branch", "RevisionNotFound"),
    ],
    ids=["missing-repo", "missing-revision"],
)
def test_missing_repo_or_revision_fails(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path, uri: str, expect: str) -> None:
    server, _cdn = hub
    with pytest.raises(ArtifactNotFound) as caught:
        _download(uri, tmp_path / "x", _env(server))
    assert expect in caught.value.message
    assert not (tmp_path / "x/.patio/manifest.json").exists()


def test_private_hub_without_token_says_so(tmp_path: Path) -> None:
    cdn = FakeCdn()
    server = FakeHub(cdn, token=TOKEN)
    try:
        server.add(HubRepo("acme/tiny-model", FILES, LFS))
        with pytest.raises(ArtifactNotFound) as caught:
            _download("hf://acme/tiny-model", tmp_path / "x", {"HF_ENDPOINT": server.url})
        assert "token" in caught.value.message
        _download("hf://acme/tiny-model", tmp_path / "y", {"HF_ENDPOINT": server.url, "HF_AUTH_TOKEN": TOKEN})
        assert _tree(tmp_path / "y", ".patio") == FILES
    finally:
        server.stop()
        cdn.stop()


def test_revision_subfolder_and_pinned_commit(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path) -> None:
    server, _cdn = hub
    _download("hf://acme/tiny-model@v1/sub", tmp_path / "s", _env(server))
    assert _tree(tmp_path / "s", ".patio") == {"tokenizer.json": FILES["sub/tokenizer.json"]}
    assert any(s.path.endswith("/revision/v1") for s in server.seen)
    sha = server.repos["acme/tiny-model"].sha
    count = len([s for s in server.seen if "/revision/" in s.path])
    _download(f"hf://acme/tiny-model@{sha}", tmp_path / "c", _env(server, HF_REVISION="ignored"))
    assert len([s for s in server.seen if "/revision/" in s.path]) == count  # a commit needs no lookup
    assert all(sha in s.path for s in server.seen if "/resolve/" in s.path)


def test_kill_9_with_the_zipapp_then_resume(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path) -> None:
    server, cdn = hub
    cdn.delay = 0.03  # ~2 MB/s per stream: the big LFS file takes a while
    pyz = build_pyz()
    target = tmp_path / "model"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_env(server, DOWNLOADER_NUM_THREADS="2")}
    cmd = [
        sys.executable,
        "-I",
        str(pyz),
        "download",
        "--model-uri",
        "hf://acme/tiny-model",
        "--local-dir",
        str(target),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = target / ".patio/partial"
    try:
        deadline = time.monotonic() + 60
        while not (partial.is_dir() and any(partial.iterdir())):
            assert time.monotonic() < deadline, "no part finished"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not (target / ".patio/manifest.json").exists()
    cdn.delay = 0.0
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert _tree(target, ".patio") == FILES
    manifest = json.loads((target / ".patio/manifest.json").read_text())
    digests = {f["path"]: f.get("sha256") for f in manifest["files"]}
    assert digests["big.bin"] == hashlib.sha256(FILES["big.bin"]).hexdigest()


def test_cli_exit_status_is_1_on_failure(hub: Tuple[FakeHub, FakeCdn], tmp_path: Path) -> None:
    server, _cdn = hub
    server.corrupt.add("big.bin")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_env(server)}
    cmd = [
        sys.executable,
        "-I",
        str(build_pyz()),
        "download",
        "--model-uri",
        "acme/tiny-model",
        "--local-dir",
        str(tmp_path),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "big.bin" in run.stderr and "sha256" in run.stderr
    assert TOKEN not in run.stderr
