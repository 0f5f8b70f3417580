"""vLLM's resolver directory under attack (issue 24 item 3; issue 28 item 9).

vLLM's ``lora_filesystem_resolver`` (vllm/plugins/lora_resolvers/filesystem_resolver.py) loads
``DIR/NAME`` the first time a request names ``NAME``, whenever that is: it must never find a
partial adapter.  Patio runs as a real process (the zipapp), filling ``DIR`` from a Hub (the fake
Hub of the artifact tests, on real sockets) as the adapters file asks, while a watcher thread
plays vLLM: every few milliseconds it reads every adapter directory it can see and records any
that is not one complete version.  Attacks: names with traversal or NUL, a symlink planted at
``DIR/NAME``, at ``DIR/.patio-staging`` (an in-progress download was written through it) and at
``DIR/.patio-trash``, one name's source flipped back and forth during slow downloads, and a fill
interrupted by ``kill -9``.  Nothing outside ``DIR`` is written or deleted, and the engine never
sees a partial adapter.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from fakes.engine import BASE_MODEL, FakeEngine
from hostile_support import Vitals, probes_honest
from support import PatioProcess, http_json

# vLLM's resolver takes a LoRA config naming the served base model (filesystem_resolver.py, 0.32.0).
BASE = b'"base_model_name_or_path": "%s"' % BASE_MODEL.encode()
V1 = {
    "adapter_config.json": b'{"peft_type": "LORA", "r": 8, "v": 1, %s}' % BASE,
    "adapter_model.safetensors": b"1" * 600_000,
}
V2 = {
    "adapter_config.json": b'{"peft_type": "LORA", "r": 8, "v": 2, %s}' % BASE,
    "adapter_model.safetensors": b"2" * 700_000,
}
VERSIONS = (V1, V2)


class ResolverWatcher(threading.Thread):
    """What vLLM's resolver would read, sampled continuously: every visible DIR/NAME must be whole."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.halt = threading.Event()
        self.partial: List[str] = []
        self.seen: Dict[str, int] = {}

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                names = []
            for name in names:
                path = self.directory / name
                if name.startswith(".") or path.is_symlink() or not path.is_dir():
                    continue
                try:
                    before = os.stat(path, follow_symlinks=False).st_ino
                    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
                    after = os.stat(path, follow_symlinks=False).st_ino
                except (FileNotFoundError, NotADirectoryError):
                    continue  # renamed out of sight mid-read: vLLM's reads by path would fail, not load half
                if before != after:
                    continue  # replaced mid-read (a new copy renamed in): likewise

                if not any(files == version for version in VERSIONS):
                    self.partial.append(f"{name}: {sorted((k, len(v)) for k, v in files.items())}")
                self.seen[name] = self.seen.get(name, 0) + 1
            self.halt.wait(0.002)

    def stop(self) -> List[str]:
        self.halt.set()
        self.join(5)
        return self.partial


@pytest.fixture()
def hub() -> Iterator[FakeHub]:
    cdn = FakeCdn()
    fake = FakeHub(cdn, page_size=100)
    fake.add(HubRepo("acme/v1", V1, ("adapter_model.safetensors",)))
    fake.add(HubRepo("acme/v2", V2, ("adapter_model.safetensors",)))
    try:
        yield fake
    finally:
        fake.stop()
        cdn.stop()


def _write(path: Path, adapters: Any) -> None:
    doc = (
        {"adapters": [{"name": n, "source": s} for n, s in adapters.items()]}
        if isinstance(adapters, dict)
        else adapters
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    os.replace(tmp, path)


def _start(tmp_path: Path, hub: FakeHub, engine: FakeEngine) -> PatioProcess:
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "PATIO_ADAPTER_DIR": str(tmp_path / "adapters"),
        "HF_ENDPOINT": hub.url,
        "DOWNLOADER_MAX_RETRIES": "2",
        "DOWNLOADER_BACKOFF_BASE": "0.05",
    }
    args = ["--adapters-file", str(tmp_path / "adapters.json"), "--resolver-dir", str(tmp_path / "resolver")]
    args += ["--adapters-file-interval", "0.02", "--adapter-apply-backoff", "0.05", "--lora-reconcile-interval", "0"]
    return PatioProcess(args, env=env)


def _desired(patio: PatioProcess) -> Dict[str, Any]:
    return http_json("GET", patio.url + "/v1/lora_adapters")[1]["desired"]


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}")


def _state(patio: PatioProcess, name: str) -> Dict[str, Any]:
    return {a["name"]: a for a in _desired(patio)["adapters"]}.get(name, {})


def _files(directory: Path) -> Dict[str, bytes]:
    """An adapter directory as vLLM reads it (Patio's .patio/ bookkeeping aside)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def world(tmp_path: Path, hub: FakeHub) -> Iterator[Dict[str, Any]]:
    resolver, outside = tmp_path / "resolver", tmp_path / "outside"
    resolver.mkdir()
    outside.mkdir()
    (outside / "precious").mkdir()
    (outside / "precious" / "adapter_config.json").write_bytes(b"the operator's own")
    (outside / "old-download").mkdir()  # named like a staged download no longer wanted
    (outside / "old-download" / "weights").write_bytes(b"keep me")
    watcher = ResolverWatcher(resolver)
    watcher.start()
    engine = FakeEngine("vllm")
    w = {"tmp": tmp_path, "hub": hub, "resolver": resolver, "outside": outside, "engine": engine}
    w["outside_before"] = _tree(outside)
    try:
        yield w
    finally:
        engine.stop()
        partial = watcher.stop()
        assert partial == [], f"vLLM could have loaded a partial adapter: {partial[:5]}"
        assert _tree(outside) == w["outside_before"], "something outside the resolver dir changed"


NAMES = [("traversal", "../escape"), ("nul", "a\u0000b"), ("slash", "a/b"), ("hidden", ".patio-staging"), ("dot", ".")]


@pytest.mark.parametrize("name", [n for _i, n in NAMES], ids=[i for i, _n in NAMES])
def test_hostile_names_are_refused_and_create_nothing(world: Dict[str, Any], name: str) -> None:
    _write(world["tmp"] / "adapters.json", {name: "hf://acme/v1", "ok": "hf://acme/v1"})
    patio = _start(world["tmp"], world["hub"], world["engine"])
    try:
        desired = _wait(lambda: (lambda d: d if d["state"] == "invalid" else None)(_desired(patio)), what="invalid")
        assert "must match" in desired["error"]
        time.sleep(0.3)
        assert sorted(os.listdir(world["resolver"])) in ([], [".patio-staging"], [".patio-staging", ".patio-trash"])
        assert not (world["tmp"] / "escape").exists()
        probes_honest(patio)
    finally:
        patio.kill()


@pytest.mark.parametrize("planted", [".patio-staging", ".patio-trash", "a"], ids=["staging", "trash", "adapter_name"])
def test_a_planted_symlink_is_never_written_or_deleted_through(world: Dict[str, Any], planted: str) -> None:
    link = world["resolver"] / planted
    if planted != ".patio-trash":
        # Staging: tidy() at start once deleted the unwanted "old-download" it found there.
        os.symlink(world["outside"] if planted == ".patio-staging" else world["outside"] / "precious", link)
    _write(world["tmp"] / "adapters.json", {"a": "hf://acme/v1", "b": "hf://acme/v1"})
    patio = _start(world["tmp"], world["hub"], world["engine"])
    try:
        if planted == ".patio-trash":
            # Both fill; then the trash is replaced by a link, and a's new source would send the
            # old copy there (a rename into the link, then a delete of what it points to).
            _wait(lambda: _state(patio, "a").get("state") == "ok" and _state(patio, "b").get("state") == "ok")
            trash = world["resolver"] / ".patio-trash"
            if trash.exists():
                os.rmdir(trash)
            os.symlink(world["outside"], trash)
            _write(world["tmp"] / "adapters.json", {"a": "hf://acme/v2", "b": "hf://acme/v1"})
        a = _wait(lambda: (lambda s: s if s.get("state") == "failed" else None)(_state(patio, "a")), what="a failed")
        assert "symlink" in a["last_error"] or "not made by Patio" in a["last_error"], a
        if planted == "a":
            assert _wait(lambda: _state(patio, "b").get("state") == "ok")  # the others are not held up
            assert (world["resolver"] / "b" / "adapter_config.json").read_bytes() == V1["adapter_config.json"]
        if planted == ".patio-trash":
            assert (world["resolver"] / "a" / "adapter_config.json").read_bytes() == V1["adapter_config.json"]
        assert link.is_symlink()
        probes_honest(patio)
    finally:
        patio.kill()


def test_one_name_flipped_between_sources_during_slow_fills(world: Dict[str, Any]) -> None:
    world["hub"].cdn.delay = 0.02  # 64 KiB per 20 ms: each fill takes a few hundred ms
    path = world["tmp"] / "adapters.json"
    _write(path, {"a": "hf://acme/v1"})
    patio = _start(world["tmp"], world["hub"], world["engine"])
    try:
        with Vitals(patio.proc.pid) as vitals:
            for flip in range(40):
                _write(path, {"a": "hf://acme/v2" if flip % 2 else "hf://acme/v1"})
                time.sleep(0.12)
            _write(path, {"a": "hf://acme/v2"})
            world["hub"].cdn.delay = 0.0
            _wait(lambda: (world["resolver"] / "a").is_dir() and _files(world["resolver"] / "a") == V2, 60)
            _wait(lambda: _state(patio, "a").get("state") == "ok", what="a ok")
        assert vitals.peak_threads - vitals.start_threads <= 8, vitals.summary()
        staged = world["resolver"] / ".patio-staging"
        _wait(lambda: [p.name for p in staged.iterdir()] == ["a.lock"], what="staging empty once converged")
        probes_honest(patio)
    finally:
        patio.kill()


def test_two_patios_sharing_the_directory_fill_one_name(world: Dict[str, Any]) -> None:
    """Replicas on one shared volume: both fill the same name while its source flips, and both
    end on the final source with vLLM never seeing a mixed copy.  (Before the per-name lock this
    passed too once the watcher read exactly; the lock keeps the two from writing one staging
    directory at once by construction, which no timing here reliably shows.)"""
    world["hub"].cdn.delay = 0.01
    path = world["tmp"] / "adapters.json"
    _write(path, {"a": "hf://acme/v1"})
    second = world["tmp"] / "second"
    second.mkdir()
    os.symlink(path, second / "adapters.json")
    os.symlink(world["resolver"], second / "resolver")
    patios = [_start(world["tmp"], world["hub"], world["engine"]), _start(second, world["hub"], world["engine"])]
    try:
        for flip in range(20):
            _write(path, {"a": "hf://acme/v2" if flip % 2 else "hf://acme/v1"})
            time.sleep(0.15)
        _write(path, {"a": "hf://acme/v2"})
        world["hub"].cdn.delay = 0.0
        for patio in patios:
            _wait(
                lambda p=patio: _state(p, "a").get("state") == "ok" and _state(p, "a").get("source") == "hf://acme/v2"
            )
        assert _files(world["resolver"] / "a") == V2
        for patio in patios:
            probes_honest(patio)
    finally:
        for patio in patios:
            patio.kill()


def test_a_fill_killed_with_sigkill_never_shows_and_resumes(world: Dict[str, Any]) -> None:
    world["hub"].cdn.delay = 0.05
    _write(world["tmp"] / "adapters.json", {"a": "hf://acme/v1"})
    patio = _start(world["tmp"], world["hub"], world["engine"])
    staged = world["resolver"] / ".patio-staging" / "a"
    try:
        _wait(lambda: staged.is_dir() and any(p.suffix == ".part" for p in staged.iterdir()), what="a partial fill")
        patio.proc.send_signal(signal.SIGKILL)
        patio.proc.wait(10)
    finally:
        patio.kill()
    assert not (world["resolver"] / "a").exists(), "the partial copy must stay out of vLLM's sight"
    world["hub"].cdn.delay = 0.0
    again = _start(world["tmp"], world["hub"], world["engine"])
    try:
        _wait(lambda: _state(again, "a").get("state") == "ok", what="a ok after the restart")
        assert _files(world["resolver"] / "a") == V1
        probes_honest(again)
    finally:
        again.kill()
