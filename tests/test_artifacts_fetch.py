"""The fetch engine: retries and their limits, resume, integrity, disk full, unsafe names,
cancellation and progress, over real sockets (a local HTTP server with scripted faults)
and an in-memory source for listings no real store would produce."""

import argparse
import errno
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from artifacts_fakes import FileServer
from support import PEERS_ALLOWED, ROOT

from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import (
    ArtifactAccessDenied,
    ArtifactError,
    ArtifactNotFound,
    ArtifactUnavailable,
    DownloadCancelled,
    LocalWriteError,
)
from patio.artifacts.fetch import run as fetch_module
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.options import FetchOptions
from patio.artifacts.fetch.retry import DownloadRetry
from patio.artifacts.fetch.run import FetchResult, fetch
from patio.artifacts.settings import from_sources
from patio.artifacts.sources import open_source
from patio.artifacts.uri import parse_uri

MiB = 1024 * 1024
BIG = os.urandom(3 * MiB + 11)
FAST = DownloadRetry(attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=2.0)


@pytest.fixture()
def files() -> Iterator[FileServer]:
    server = FileServer({"/m/big.bin": BIG, "/m/small.json": b'{"ok": true}'})
    try:
        yield server
    finally:
        server.stop()


def _http(url: str, target: Path, credentials: Optional[dict] = None, **options: Any) -> FetchResult:
    env = {"DOWNLOADER_PART_SIZE": "1MiB", "DOWNLOADER_MAX_RETRIES": "3", "DOWNLOADER_BACKOFF_BASE": "0.01"}
    settings = from_sources(argparse.Namespace(), {**PEERS_ALLOWED, **env}, None)
    source = open_source(parse_uri(url), settings, parse_credentials(credentials))
    opts = FetchOptions(**{"part_size": MiB, "num_threads": 4, "retry": FAST, **options})
    try:
        return fetch(source, str(target), opts)
    finally:
        source.close()


def _gets(server: FileServer, path: str) -> List[Dict[str, str]]:
    return [s.headers for s in server.seen if s.method == "GET" and s.path == path]


def test_http_file_in_ranged_parts(files: FileServer, tmp_path: Path) -> None:
    result = _http(files.url + "/m/big.bin", tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    ranges = sorted(h["range"] for h in _gets(files, "/m/big.bin"))
    assert ranges == [f"bytes={i * MiB}-{min(len(BIG), (i + 1) * MiB) - 1}" for i in range(4)]
    assert result.bytes_downloaded == len(BIG)


def test_http_headers_stay_on_their_origin(files: FileServer, tmp_path: Path) -> None:
    with FileServer({"/elsewhere.bin": b"moved"}) as other:
        files.redirect["/m/moved.bin"] = other.url + "/elsewhere.bin"
        _http(files.url + "/m/moved.bin", tmp_path, {"headers": {"Authorization": "Bearer s3cret"}})
        assert (tmp_path / "moved.bin").read_bytes() == b"moved"
        assert all(s.headers.get("authorization") == "Bearer s3cret" for s in files.seen)
        assert other.seen and all("authorization" not in s.headers for s in other.seen)


def test_headers_and_signed_queries_never_reach_the_logs(files: FileServer, tmp_path: Path, caplog: Any) -> None:
    files.faults["/m/small.json"] = [(503, {}), (503, {}), (503, {})]
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ArtifactUnavailable) as caught:
            _http(
                files.url + "/m/small.json?X-Amz-Signature=sig-secret", tmp_path, {"headers": {"X-Key": "hdr-secret"}}
            )
    text = caught.value.message + "\n".join(r.getMessage() for r in caplog.records)
    assert "/m/small.json?…" in text
    assert "sig-secret" not in text and "hdr-secret" not in text


def test_server_refusing_head_is_probed_with_a_range(files: FileServer, tmp_path: Path) -> None:
    files.no_head.add("/m/big.bin")
    _http(files.url + "/m/big.bin", tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert _gets(files, "/m/big.bin")[0]["range"] == "bytes=0-0"


def test_server_without_ranges_gets_one_stream(files: FileServer, tmp_path: Path) -> None:
    files.no_ranges.add("/m/big.bin")
    _http(files.url + "/m/big.bin", tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert [h.get("range") for h in _gets(files, "/m/big.bin")] == [None]


@pytest.mark.parametrize(
    "faults",
    [
        [(503, {"Retry-After": "0"})],
        [(429, {"Retry-After": "1"})],
        [(500, {}), (502, {})],
    ],
    ids=["503-retry-after", "429-throttled", "500-then-502"],
)
def test_transient_statuses_are_retried(files: FileServer, tmp_path: Path, faults: List[Any]) -> None:
    files.faults["/m/small.json"] = list(faults)
    _http(files.url + "/m/small.json", tmp_path)
    assert (tmp_path / "small.json").read_bytes() == b'{"ok": true}'
    assert len([s for s in files.seen if s.path == "/m/small.json"]) == len(faults) + 2  # HEAD + faults + GET


def test_retries_are_bounded(files: FileServer, tmp_path: Path) -> None:
    files.faults["/m/small.json"] = [(503, {})] * 10
    with pytest.raises(ArtifactUnavailable, match="gave up after 3 attempts"):
        _http(files.url + "/m/small.json", tmp_path)
    assert len(files.seen) == 3


def test_retry_after_longer_than_the_limit_fails_fast(files: FileServer, tmp_path: Path) -> None:
    files.faults["/m/small.json"] = [(503, {"Retry-After": "3600"})]
    with pytest.raises(ArtifactUnavailable, match="3600"):
        _http(files.url + "/m/small.json", tmp_path)
    assert len(files.seen) == 1


@pytest.mark.parametrize(
    "status,error,requests",
    # A 403 to HEAD may be a presigned GET URL: one ranged GET probe, then no retry.
    [(401, ArtifactAccessDenied, 1), (403, ArtifactAccessDenied, 2), (404, ArtifactNotFound, 1)],
    ids=["401", "403", "404"],
)
def test_auth_and_missing_fail_at_once(
    files: FileServer, tmp_path: Path, status: int, error: Any, requests: int
) -> None:
    files.faults["/m/x.bin"] = [(status, {})] * 5
    with pytest.raises(error) as caught:
        _http(files.url + "/m/x.bin", tmp_path)
    assert "/m/x.bin" in caught.value.message
    assert len(files.seen) == requests


def test_connection_cut_mid_body_resumes_from_the_offset(files: FileServer, tmp_path: Path) -> None:
    files.no_ranges.discard("/m/big.bin")
    files.cut["/m/big.bin"] = 256 * 1024
    _http(files.url + "/m/big.bin", tmp_path, part_size=8 * MiB)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    ranges = [h.get("range") for h in _gets(files, "/m/big.bin")]
    assert len(ranges) == 2
    resumed_at = int(ranges[1].split("=")[1].split("-")[0])
    assert resumed_at >= 256 * 1024 - 64 * 1024 and resumed_at > 0


def test_cut_on_a_server_without_ranges_starts_the_file_over(files: FileServer, tmp_path: Path) -> None:
    files.no_ranges.add("/m/big.bin")
    files.cut["/m/big.bin"] = 512 * 1024
    result = _http(files.url + "/m/big.bin", tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    gets = _gets(files, "/m/big.bin")
    assert len(gets) == 2 and gets[1]["range"].startswith("bytes=") and gets[1]["range"] != "bytes=0-"
    assert result.bytes_downloaded == len(BIG)  # the restart's bytes replaced the first attempt's


def test_disk_full_is_a_clear_error_and_resumable(files: FileServer, tmp_path: Path, monkeypatch: Any) -> None:
    real_pwrite = os.pwrite
    written = [0]

    def full_after_2mib(fd: int, data: Any, offset: int) -> int:
        if written[0] >= 2 * MiB:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_after_2mib)
    with pytest.raises(LocalWriteError) as caught:
        _http(files.url + "/m/big.bin", tmp_path, num_threads=1)
    assert "no space left on the device" in caught.value.message and "big.bin.part" in caught.value.message
    assert caught.value.status == 507
    assert not (tmp_path / ".patio/manifest.json").exists() and not (tmp_path / "big.bin").exists()
    monkeypatch.setattr(os, "pwrite", real_pwrite)  # space freed
    before = len(_gets(files, "/m/big.bin"))
    result = _http(files.url + "/m/big.bin", tmp_path, num_threads=1)
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert len(_gets(files, "/m/big.bin")) - before == 2  # the two finished parts were kept
    assert result.bytes_downloaded == len(BIG) - 2 * MiB


def test_file_size_limit_in_a_subprocess(files: FileServer, tmp_path: Path) -> None:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    cmd = [sys.executable, str(ROOT / "patio.py"), "download", "--model-uri", files.url + "/m/big.bin"]
    run = subprocess.run(
        [*cmd, "--local-dir", str(tmp_path), "--part-size", "8MiB"],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **PEERS_ALLOWED},
    )
    assert run.returncode == 1
    assert "file size limit exceeded" in run.stderr and "big.bin.part" in run.stderr
    assert not (tmp_path / ".patio/manifest.json").exists() and not (tmp_path / "big.bin").exists()


def test_cli_progress_bar_and_summary(files: FileServer, tmp_path: Path) -> None:
    files.files["/m/a.json"] = b"{}"
    cmd = [sys.executable, str(ROOT / "patio.py"), "download", "--model-uri", files.url + "/m/big.bin"]
    run = subprocess.run(
        [
            *cmd,
            "--local-dir",
            str(tmp_path),
            "--part-size",
            "1MiB",
            "--enable-progress-bar",
            "--allow-file-suffix",
            "json",
            "bin",
        ],
        capture_output=True,
        env={**os.environ, **PEERS_ALLOWED},
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"\[#+\] 100\.0% 1/1 files 3\.0 MiB/3\.0 MiB", run.stderr), run.stderr
    assert f"{len(BIG)} bytes fetched" in run.stderr
    assert (tmp_path / "big.bin").read_bytes() == BIG


def test_not_enough_free_space_fails_before_downloading(files: FileServer, tmp_path: Path, monkeypatch: Any) -> None:
    real = os.statvfs

    class Tiny:
        def __init__(self, st: Any) -> None:
            self.f_frsize, self.f_bavail = st.f_frsize, 1

    monkeypatch.setattr(os, "statvfs", lambda path: Tiny(real(path)))
    with pytest.raises(LocalWriteError, match=r"only 4\.0 KiB free"):
        _http(files.url + "/m/big.bin", tmp_path)
    assert not _gets(files, "/m/big.bin")


def test_unwritable_target(files: FileServer, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LocalWriteError, match="not a directory"):
        _http(files.url + "/m/small.json", tmp_path / "file" / "sub")


class MemorySource:
    def __init__(self, files: Dict[str, bytes], etags: Optional[Dict[str, str]] = None) -> None:
        self.files = files
        self.etags = etags or {}
        self.display = "mem://test"
        self.opened: List[str] = []
        self.gate: Optional[threading.Event] = None

    def list_files(self) -> List[RemoteFile]:
        return [RemoteFile(path=p, size=len(d), etag=self.etags.get(p, "e1"), ref=p) for p, d in self.files.items()]

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> Any:
        self.opened.append(file.path)
        if self.gate is not None:
            self.gate.wait(5)
        data = self.files[file.ref][start : None if end is None else end + 1]

        class Stream:
            offset = start

            def __init__(self) -> None:
                self.pos = 0

            def read(self, size: int) -> bytes:
                chunk = data[self.pos : self.pos + size]
                self.pos += len(chunk)
                return chunk

            def close(self) -> None:
                return None

        return Stream()

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    "names,message",
    [
        (["../escape"], "unsafe file name"),
        (["/abs"], "unsafe file name"),
        (["a//b"], "unsafe file name"),
        (["a/./b"], "unsafe file name"),
        ([".patio/manifest.json"], "bookkeeping"),
        (["a", "a/b"], "both a file and a directory"),
        (["w.bin", "w.bin.part"], "cannot both be downloaded"),
    ],
    ids=["dotdot", "absolute", "empty-segment", "dot", "reserved", "file-and-dir", "part-collision"],
)
def test_unsafe_listings_are_refused(tmp_path: Path, names: List[str], message: str) -> None:
    source = MemorySource({n: b"x" for n in names})
    with pytest.raises(ArtifactError, match=message):
        fetch(source, str(tmp_path / "t"), FetchOptions(retry=FAST))
    assert not source.opened
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("link", ["sub", "sub/w.bin.part"], ids=["dir-link", "part-link"])
def test_symlinks_inside_the_target_never_lead_out(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin.part").write_text("precious")
    target = tmp_path / "t"
    (target / "sub").mkdir(parents=True) if link != "sub" else target.mkdir()
    os.symlink(str(outside if link == "sub" else outside / "w.bin.part"), str(target / link))
    with pytest.raises(LocalWriteError, match="symlink leads outside"):
        fetch(MemorySource({"sub/w.bin": b"data"}), str(target), FetchOptions(retry=FAST))
    assert (outside / "w.bin.part").read_text() == "precious" and sorted(os.listdir(outside)) == ["w.bin.part"]


def test_empty_listing_and_filtered_out_listing(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="no files found"):
        fetch(MemorySource({}), str(tmp_path / "e"), FetchOptions(retry=FAST))
    with pytest.raises(ArtifactNotFound, match="allowed suffix"):
        fetch(MemorySource({"a.bin": b"x"}), str(tmp_path / "f"), FetchOptions(allow_suffixes=("json",)))


def test_cancel_leaves_a_resumable_directory(tmp_path: Path) -> None:
    data = {f"f{i}.bin": os.urandom(1000) for i in range(20)}
    source = MemorySource(data)
    source.gate = threading.Event()
    cancel = threading.Event()
    errors: List[BaseException] = []

    def run() -> None:
        try:
            fetch(source, str(tmp_path), FetchOptions(num_threads=2, retry=FAST), cancel=cancel)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    cancel.set()
    source.gate.set()
    thread.join(10)
    assert errors and isinstance(errors[0], DownloadCancelled)
    assert not (tmp_path / ".patio/manifest.json").exists()
    source.gate = None
    result = fetch(source, str(tmp_path), FetchOptions(num_threads=2, retry=FAST))
    assert result.downloaded + result.skipped == 20
    assert all((tmp_path / name).read_bytes() == body for name, body in data.items())


def test_progress_lines_are_logged(tmp_path: Path, caplog: Any) -> None:
    data = {f"f{i}.bin": os.urandom(50_000) for i in range(30)}
    source = MemorySource(data)
    seen: List[Any] = []
    with caplog.at_level(logging.INFO, logger="patio.artifacts"):
        fetch(
            source,
            str(tmp_path),
            FetchOptions(num_threads=2, retry=FAST, progress_interval=0.0),
            on_progress=seen.append,
            progress_every=0.001,
        )
    lines = [r.getMessage() for r in caplog.records if "files," in r.getMessage()]
    assert any("/30 files" in line and "ETA" in line and "/s" in line for line in lines)
    assert seen[-1].phase == "complete" and seen[-1].files_done == 30 and seen[-1].bytes_done == 1_500_000


def test_local_and_pvc_sources(tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    (root / "models/a/sub").mkdir(parents=True)
    (root / "models/a/config.json").write_text("{}")
    (root / "models/a/sub/w.bin").write_bytes(b"w" * 1000)
    os.symlink("/etc", root / "models/a/escape")  # a link out of the PVC is not followed
    settings = from_sources(argparse.Namespace(), {"PATIO_PVC_ROOT": str(root)}, None)
    source = open_source(parse_uri("pvc://models/a"), settings)
    fetch(source, str(tmp_path / "copy"), FetchOptions(retry=FAST))
    copied = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert [c for c in copied if not c.startswith(".patio")] == ["config.json", "sub/w.bin"]
    os.symlink("/etc", root / "outside")
    for uri in ("pvc://outside", "pvc://models/../../x"):
        with pytest.raises(Exception, match=r"outside the PVC root|must not contain"):
            open_source(parse_uri(uri), settings)


@pytest.mark.parametrize(
    "module", sorted(p.name for p in Path(fetch_module.__file__).parent.glob("*.py")), ids=lambda name: name
)
def test_the_fetch_modules_stay_focused(module: str) -> None:
    # Style guard: one concern per module; none may grow into everything.
    assert len((Path(fetch_module.__file__).parent / module).read_text().splitlines()) < 600
