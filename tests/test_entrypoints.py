"""Every entry point, run as a real process (issue 26): each one serves or downloads, and none
exits 0 without having said what it did.

The incumbents' documented commands:
- RoleBasedGroup: ``python -m patio.app --host 127.0.0.1 --port 9091`` and ``--port 8080
  --log-level DEBUG`` (rolebasedgroup/inference-engine-runtime README "Running Locally", its
  Dockerfile ``ENTRYPOINT ["python3", "-m", "patio.app"]``); before, it exited 0 at once;
- AIBrix: ``aibrix_runtime --port 8080`` (samples/adapter/base.yaml) and
  ``python -m aibrix.downloader --model-uri ... --local-dir ...`` (docs/source/features/runtime.rst),
  ``aibrix_download`` (its console script, python/aibrix/pyproject.toml);
- Kthena: its runtime flags given to the image's entrypoint, and its downloader's
  ``--source ... --output-dir ...`` (init containers, python/kthena/downloader/app.py).
The image puts the pyz on PYTHONPATH and links ``aibrix_runtime``/``aibrix_download`` to it on
PATH (Dockerfile); these runs do the same in a temporary directory.
"""

import os
import signal
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, List

import pytest
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from compat_fakes import tree
from fakes.engine import FakeEngine
from support import PEERS_ALLOWED, ROOT, build_pyz, free_port, http_json, wait_http_ok

ADAPTER = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": os.urandom(50_000)}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Dict[str, str]:
    """A PATH directory with the image's links, and the image's PYTHONPATH."""
    pyz = build_pyz()
    bin_dir = tmp_path_factory.mktemp("image-bin")
    for name in ("aibrix_runtime", "aibrix_download"):
        (bin_dir / name).symlink_to(pyz)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": str(pyz), "PYZ": str(pyz)}


@pytest.fixture()
def engine() -> Iterator[FakeEngine]:
    with FakeEngine("vllm") as fake:
        fake.version = "0.11.0"
        yield fake


PY = sys.executable
LOCAL = ["--host", "127.0.0.1", "--port", "{port}"]
KTHENA = ["--port", "{port}", "--engine", "vllm", "--engine-base-url", "{engine}", "--engine-metrics-path", "/metrics"]
KTHENA += ["--pod", "p.ns", "--model", "test-model"]
SERVERS = [
    # (id, argv ({port}, {pyz}, {engine} filled in), cwd: "root" or "elsewhere", env from the image?, profile)
    ("patio_py", [PY, str(ROOT / "patio.py"), "--host", "127.0.0.1", "--port", "{port}"], "elsewhere", False, "patio"),
    ("pyz", [PY, "{pyz}", "--host", "127.0.0.1", "--port", "{port}"], "elsewhere", False, "patio"),
    ("python_m_patio", [PY, "-m", "patio", "--host", "127.0.0.1", "--port", "{port}"], "root", False, "patio"),
    ("python_m_patio_cli", [PY, "-m", "patio.cli", "--host", "127.0.0.1", "--port", "{port}"], "root", False, "patio"),
    (
        "rbg_python_m_patio_app",
        [PY, "-m", "patio.app", "--host", "127.0.0.1", "--port", "{port}"],
        "root",
        False,
        "patio",
    ),
    (
        "rbg_python_m_patio_app_in_the_image",
        ["python3", "-m", "patio.app", "--port", "{port}", "--log-level", "DEBUG"],
        "elsewhere",
        True,
        "patio",
    ),
    ("aibrix_runtime_on_path", ["aibrix_runtime", "--port", "{port}"], "elsewhere", True, "aibrix"),
    (
        "kthena_flags_to_the_entrypoint",
        [PY, "{pyz}", *KTHENA],
        "elsewhere",
        False,
        "kthena",
    ),
]


def _fill(argv: List[str], **values: str) -> List[str]:
    return [a.format(**values) for a in argv]


@pytest.mark.parametrize("argv,cwd,in_image,profile", [s[1:] for s in SERVERS], ids=[s[0] for s in SERVERS])
def test_server_entry_points_serve_and_stop(image, engine, argv, cwd, in_image, profile):
    port = free_port()
    env = {"PATH": image["PATH"] if in_image else os.environ.get("PATH", ""), "LANG": "C.UTF-8"}
    env.update({"INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": tempfile.mkdtemp()})
    if in_image:
        env["PYTHONPATH"] = image["PYTHONPATH"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        _fill(argv, port=str(port), pyz=image["PYZ"], engine=engine.url),
        cwd=str(ROOT) if cwd == "root" else tempfile.gettempdir(),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=20)
        status, banner = http_json("GET", f"http://127.0.0.1:{port}/")
        assert status == 200 and banner["message"] == "Patio Server is running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        output = log.read().decode("utf-8", "replace")
        log.close()
    assert f"start profile {profile} (" in output, output
    assert "shutdown complete" in output, output


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    cdn = FakeCdn()
    fake = FakeHub(cdn, page_size=100)
    fake.add(HubRepo("acme/adapter", ADAPTER, ("adapter_model.safetensors",)))
    try:
        yield fake
    finally:
        fake.stop()
        cdn.stop()


DOWNLOADS = [
    # (id, argv ({out}, {pyz}), where the files land under {out}, what stdout is)
    (
        "aibrix_python_m_downloader",
        ["python3", "-m", "aibrix.downloader", "--model-uri", "acme/adapter", "--local-dir", "{out}/"],
        "acme/adapter",
        "path",
    ),
    (
        "aibrix_download_on_path",
        ["aibrix_download", "--model-uri", "acme/adapter", "--local-dir", "{out}"],
        "acme/adapter",
        "path",
    ),
    (
        "aibrix_model_name",
        ["aibrix_download", "--model-uri", "acme/adapter", "--local-dir", "{out}", "--model-name", "mine"],
        "mine",
        "path",
    ),
    (
        "kthena_downloader_flags_to_the_entrypoint",
        [PY, "{pyz}", "--source", "acme/adapter", "--output-dir", "{out}"],
        "",
        "",
    ),
    ("patio_download", [PY, "{pyz}", "download", "--model-uri", "hf://acme/adapter", "--local-dir", "{out}"], "", ""),
]


@pytest.mark.parametrize("argv,where,stdout", [d[1:] for d in DOWNLOADS], ids=[d[0] for d in DOWNLOADS])
def test_download_entry_points(image, hub, tmp_path, argv, where, stdout):
    out = tmp_path / "models"
    env = {"PATH": image["PATH"], "PYTHONPATH": image["PYTHONPATH"], "HF_ENDPOINT": hub.url, "LANG": "C.UTF-8"}
    env.update(PEERS_ALLOWED)  # the fake hub is on loopback, refused by the egress policy by default
    done = subprocess.run(
        _fill(argv, out=str(out), pyz=image["PYZ"]), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    target = out / where if where else out
    assert tree(target) == ADAPTER
    assert "complete:" in done.stderr  # never silent
    assert done.stdout.strip() == (str(target) if stdout == "path" else "")


@pytest.mark.parametrize(
    "argv,in_image",
    [
        ([PY, "-m", "patio.app", "--frobnicate"], False),
        (["aibrix_runtime", "--frobnicate"], True),
        (["python3", "-m", "aibrix.downloader", "--local-dir", "/tmp/x"], True),
        ([PY, "{pyz}", "--engine", "vllm"], False),
    ],
    ids=["rbg_unknown_flag", "aibrix_unknown_flag", "aibrix_downloader_without_uri", "kthena_without_pod_and_model"],
)
def test_bad_usage_exits_2_and_says_why(image, argv, in_image):
    env = {"PATH": image["PATH"], "LANG": "C.UTF-8"}
    if in_image:
        env["PYTHONPATH"] = image["PYTHONPATH"]
    done = subprocess.run(
        _fill(argv, pyz=image["PYZ"]), cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.strip(), "exited without a word"


def test_every_entry_point_of_the_image_is_tested():
    """The Dockerfile's links and the pyz's entry packages are exactly the ones above."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for name in ("aibrix_runtime", "aibrix_download"):
        assert f"/usr/local/bin/{name}" in dockerfile, name
    assert "PYTHONPATH=/app/patio.pyz" in dockerfile
    packages = sorted(p.name for p in (ROOT / "deploy" / "entrypoints").iterdir() if p.is_dir())
    assert packages == ["aibrix"]
    ids = {s[0] for s in SERVERS} | {d[0] for d in DOWNLOADS}
    assert {"rbg_python_m_patio_app", "aibrix_runtime_on_path", "aibrix_python_m_downloader"} <= ids
