"""The download API over real sockets, and the LoRA delegation seam (``adapter_artifacts``)
inside a running Patio: containment, single-flight, cleanup, pvc:// in place."""

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from support import RunningPatio, http_call, http_json, make_settings

from patio.artifacts.component import ArtifactsComponent
from patio.artifacts.errors import DownloadCancelled
from patio.errors import BadRequest, Conflict

pytestmark = pytest.mark.slow

FILES: Dict[str, bytes] = {
    "adapter_config.json": b'{"r": 8}',
    "adapter_model.safetensors": os.urandom(200_000),
}
OTHER: Dict[str, bytes] = {"adapter_config.json": b'{"r": 16}', "other.bin": b"o" * 100}


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    cdn = FakeCdn()
    hub = FakeHub(cdn, page_size=100)
    hub.add(HubRepo("acme/adapter", FILES, ("adapter_model.safetensors",)))
    hub.add(HubRepo("acme/other", OTHER))
    dirs = {name: tmp_path / name for name in ("adapters", "models", "pvc", "outside")}
    for path in dirs.values():
        path.mkdir()
    settings = make_settings(
        [],
        {
            "PATIO_ADAPTER_DIR": str(dirs["adapters"]),
            "PATIO_MODELS_ROOT": str(dirs["models"]),
            "PATIO_PVC_ROOT": str(dirs["pvc"]),
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": "tok",
            "DOWNLOADER_MAX_RETRIES": "2",
            "DOWNLOADER_BACKOFF_BASE": "0.01",
        },
    )
    try:
        with RunningPatio(settings) as patio:
            yield {"patio": patio, "hub": hub, "cdn": cdn, **dirs}
    finally:
        hub.stop()
        cdn.stop()


def _wait_job(url: str, job_id: str, timeout: float = 20.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = http_json("GET", f"{url}/v1/model/download/{job_id}")
        assert status == 200
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _files(root: Path) -> Dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".patio" not in p.parts
    }


def test_download_job_lifecycle(env: Dict[str, Any]) -> None:
    url = env["patio"].url
    status, headers, body = http_call("POST", url + "/v1/model/download", {"model_uri": "hf://acme/adapter"})
    assert status == 202, body
    job = __import__("json").loads(body)
    assert headers["location"] == f"/v1/model/download/{job['id']}"
    done = _wait_job(url, job["id"])
    assert done["status"] == "completed" and done["files"] == 2 and done["error"] is None
    assert done["local_dir"] == str(env["models"].resolve() / "adapter")
    assert done["threads"] == env["patio"].settings.artifacts.num_threads  # --download-threads
    assert _files(env["models"] / "adapter") == FILES
    status, listing = http_json("GET", url + "/v1/model/list")
    assert status == 200
    assert [(m["name"], m["status"], m["files"]) for m in listing["data"]] == [("adapter", "completed", 2)]
    _status, _h, metrics = http_call("GET", url + "/metrics")
    assert b'patio_downloads_total{kind="hf",outcome="completed"} 1' in metrics


def test_failed_job_reports_the_cause(env: Dict[str, Any]) -> None:
    url = env["patio"].url
    status, job = http_json("POST", url + "/v1/model/download", {"model_uri": "hf://acme/missing", "local_dir": "m"})
    assert status == 202
    done = _wait_job(url, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "artifact_not_found" and "acme/missing" in done["error"]["message"]
    _status, listing = http_json("GET", url + "/v1/model/list")
    assert [(m["name"], m["status"]) for m in listing["data"]] == [("m", "failed")]


def test_same_target_joins_or_conflicts(env: Dict[str, Any]) -> None:
    url = env["patio"].url
    env["cdn"].delay = 0.05
    first = http_json("POST", url + "/v1/model/download", {"model_uri": "hf://acme/adapter", "local_dir": "x"})[1]
    status, joined = http_json("POST", url + "/v1/model/download", {"model_uri": "hf://acme/adapter", "local_dir": "x"})
    assert status == 202 and joined["id"] == first["id"] and joined["joined"] is True
    status, error = http_json("POST", url + "/v1/model/download", {"model_uri": "hf://acme/other", "local_dir": "x"})
    assert status == 409 and first["id"] in error["message"]
    env["cdn"].delay = 0.0
    assert _wait_job(url, first["id"])["status"] == "completed"


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"model_uri": "hf://acme/adapter", "local_dir": "../escape"}, 400, "'..'"),
        ({"model_uri": "hf://acme/adapter", "local_dir": "/etc/patio"}, 400, "inside the models root"),
        ({"model_uri": "hf://acme/adapter", "local_dir": "link/x"}, 400, "outside the models root"),
        ({"model_uri": "hf://acme/adapter", "local_dir": "."}, 400, "not the root itself"),
        ({"model_uri": "hf://acme/adapter", "model_name": "a/b"}, 400, "single directory name"),
        ({"model_uri": "/etc"}, 400, "pvc://"),
        ({"model_uri": "ftp://x/y"}, 400, "not supported"),
        ({"local_dir": "x"}, 400, "model_uri"),
        ({"model_uri": "hf://acme/adapter", "colour": "red"}, 400, "unknown field"),
        ({"model_uri": "hf://acme/adapter", "num_threads": 0}, 400, "num_threads"),
        ({"model_uri": "hf://acme/adapter", "credentials": {"password": "x"}}, 400, "unknown key"),
    ],
    ids=[
        "dotdot",
        "absolute-outside",
        "symlink-out",
        "root-itself",
        "nested-model-name",
        "local-path",
        "scheme",
        "no-uri",
        "unknown-field",
        "threads",
        "credentials-key",
    ],
)
def test_request_validation(env: Dict[str, Any], body: Dict[str, Any], status: int, fragment: str) -> None:
    os.symlink(str(env["outside"]), str(env["models"] / "link"))
    got, error = http_json("POST", env["patio"].url + "/v1/model/download", body)
    assert got == status and error["object"] == "error" and fragment in error["message"], error
    assert not any(env["outside"].iterdir())


def test_other_errors(env: Dict[str, Any]) -> None:
    url = env["patio"].url
    status, _h, _b = http_call("POST", url + "/v1/model/download", b"{}", {"Content-Type": "text/plain"})
    assert status == 415
    status, error = http_json("GET", url + "/v1/model/download/dl-nope")
    assert status == 404 and error["type"] == "not_found"


def test_shutdown_cancels_running_downloads(tmp_path: Path) -> None:
    cdn = FakeCdn()
    hub = FakeHub(cdn)
    hub.add(HubRepo("acme/adapter", FILES, ("adapter_model.safetensors",)))
    cdn.delay = 0.2  # ~320 KB/s: the download is still running when Patio stops
    settings = make_settings([], {"PATIO_MODELS_ROOT": str(tmp_path), "HF_ENDPOINT": hub.url})
    try:
        patio = RunningPatio(settings).__enter__()
        _status, job = http_json("POST", patio.url + "/v1/model/download", {"model_uri": "hf://acme/adapter"})
        downloads = patio.app.find(ArtifactsComponent).downloads
        while downloads.get(job["id"]).progress.bytes_done == 0:
            time.sleep(0.01)
        started = time.monotonic()
        patio.stop()
        assert time.monotonic() - started < 5
        stopped = downloads.get(job["id"])
        assert stopped.status == "cancelled" and stopped.error["type"] == "download_cancelled"
        assert not (tmp_path / "adapter/.patio/manifest.json").exists()
    finally:
        hub.stop()
        cdn.stop()


def test_management_key_is_required(tmp_path: Path) -> None:
    settings = make_settings(["--api-key", "k"], {"PATIO_MODELS_ROOT": str(tmp_path)})
    with RunningPatio(settings) as patio:
        for method, path in (
            ("POST", "/v1/model/download"),
            ("GET", "/v1/model/list"),
            ("GET", "/v1/model/download/x"),
        ):
            status, _h, _b = http_call(
                method, patio.url + path, {"model_uri": "hf://a/b"} if method == "POST" else None
            )
            assert status == 401, path
        status, _h, _b = http_call("GET", patio.url + "/v1/model/list", headers={"Authorization": "Bearer k"})
        assert status == 200


# --- the LoRA delegation seam -----------------------------------------------------------


def _seam(env: Dict[str, Any]) -> Any:
    return env["patio"].app.find(ArtifactsComponent).adapters


def _call(env: Dict[str, Any], factory: Any) -> Any:
    return env["patio"].call(factory)


def test_materialize_status_reuse_and_cleanup(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    assert seam.status("a1") is None
    path = _call(env, lambda: seam.materialize("a1", "hf://acme/adapter", None))
    assert path == str(env["adapters"].resolve() / "a1")
    assert _files(Path(path)) == FILES
    state = seam.status("a1")
    assert state["state"] == "ready" and state["source"] == "hf://acme/adapter" and state["local_path"] == path
    before = len(env["hub"].seen)
    assert _call(env, lambda: seam.materialize("a1", "hf://acme/adapter", None)) == path
    assert len(env["hub"].seen) == before  # a complete copy of the same URI is reused as is
    _call(env, lambda: seam.cleanup("a1"))
    assert not Path(path).exists() and seam.status("a1") is None
    _call(env, lambda: seam.cleanup("never-loaded"))  # a no-op


def test_concurrent_materialize_shares_one_download(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    env["cdn"].delay = 0.01

    async def both() -> Tuple[str, str]:
        first = seam.materialize("shared", "hf://acme/adapter", None)
        second = seam.materialize("shared", "hf://acme/adapter", None)
        results = await asyncio.gather(first, second)
        return results[0], results[1]

    one, two = _call(env, both)
    assert one == two and _files(Path(one)) == FILES
    resolves = [s for s in env["hub"].seen if "/resolve/" in s.path and "adapter_model" in s.path]
    assert len(resolves) == 1


def test_a_second_source_for_a_busy_name_conflicts(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    env["cdn"].delay = 0.05

    async def race() -> Any:
        first = asyncio.ensure_future(seam.materialize("busy", "hf://acme/adapter", None))
        await asyncio.sleep(0.2)
        try:
            await seam.materialize("busy", "hf://acme/other", None)
        except Conflict as exc:
            return exc, await first
        raise AssertionError("no conflict")

    error, path = _call(env, race)
    assert "hf://acme/adapter" in error.message and _files(Path(path)) == FILES


def test_a_new_source_replaces_the_old_files(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    _call(env, lambda: seam.materialize("swap", "hf://acme/adapter", None))
    path = _call(env, lambda: seam.materialize("swap", "hf://acme/other", None))
    assert _files(Path(path)) == OTHER  # nothing of the first adapter is left to mix in


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/abs", "", ".hidden", "x" * 200, "a\x00b"])
def test_names_are_contained(env: Dict[str, Any], name: str) -> None:
    seam = _seam(env)
    with pytest.raises(BadRequest):
        _call(env, lambda: seam.materialize(name, "hf://acme/adapter", None))
    with pytest.raises(BadRequest):
        _call(env, lambda: seam.cleanup(name))
    assert not any(env["outside"].iterdir())


def test_symlinks_are_never_followed(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    (env["outside"] / "precious.txt").write_text("keep")
    os.symlink(str(env["outside"]), str(env["adapters"] / "evil"))
    with pytest.raises(Conflict, match="symlink"):
        _call(env, lambda: seam.materialize("evil", "hf://acme/adapter", None))
    assert [p.name for p in env["outside"].iterdir()] == ["precious.txt"]
    _call(env, lambda: seam.cleanup("evil"))  # removes the link, not what it points to
    assert not os.path.lexists(env["adapters"] / "evil")
    assert (env["outside"] / "precious.txt").read_text() == "keep"


def test_pvc_is_resolved_in_place_and_contained(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    (env["pvc"] / "loras/a").mkdir(parents=True)
    (env["pvc"] / "loras/a/adapter_config.json").write_text("{}")
    os.symlink(str(env["outside"]), str(env["pvc"] / "out"))
    assert seam.is_remote("pvc://loras/a")
    path = _call(env, lambda: seam.materialize("p", "pvc://loras/a", None))
    assert path == str((env["pvc"] / "loras/a").resolve())
    for bad in ("pvc://out", "pvc://loras/../../outside"):
        with pytest.raises(BadRequest):
            _call(env, lambda bad=bad: seam.materialize("p", bad, None))
    _call(env, lambda: seam.cleanup("p"))
    assert (env["pvc"] / "loras/a/adapter_config.json").exists()  # never deleted


@pytest.mark.parametrize(
    "source,remote",
    [
        ("s3://b/p", True),
        ("tos://b/p", True),
        ("obs://b/p", True),
        ("gs://b/p", True),
        ("hf://org/name", True),
        ("hf://org/name@main", True),
        ("org/name", False),  # not a Hub id in LoRA sources (a relative path): the LoRA API refuses it
        ("https://host/x.safetensors", True),
        ("pvc://loras/a", True),
        ("/data/loras/a", False),
        ("file:///data/a", False),
        ("relative/path/x", False),
        ("", False),
    ],
)
def test_is_remote(env: Dict[str, Any], source: str, remote: bool) -> None:
    assert _seam(env).is_remote(source) is remote


def test_cleanup_cancels_a_running_download(env: Dict[str, Any]) -> None:
    seam = _seam(env)
    env["cdn"].delay = 0.2

    async def scenario() -> Any:
        task = asyncio.ensure_future(seam.materialize("slow", "hf://acme/adapter", None))
        while (seam.status("slow") or {}).get("state") != "downloading":
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await seam.cleanup("slow")
        try:
            await task
        except DownloadCancelled as exc:
            return exc
        return None

    error = _call(env, scenario)
    assert isinstance(error, DownloadCancelled)
    assert not (env["adapters"] / "slow").exists()
