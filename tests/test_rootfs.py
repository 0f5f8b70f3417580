"""The image's root filesystem, run: the distroless python3-debian12 root assembled from Debian 12
packages (deploy/rootfs/assemble.sh, cached), Patio's pyz at /app/patio.pyz, run with
deploy/rootfs/run.sh as UID 65532 with the root read-only and only /tmp/patio writable, PID 1
in its own PID namespace, the Dockerfile's ENTRYPOINT.  Probes, LoRA loads (a local path and a
remote adapter downloaded into the writable directory) against a fake vLLM, /metrics, and
SIGTERM exiting 0.

Needs root (mount and PID namespaces, chroot), as the test command runs in CI.
"""

import functools
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from fakes.engine import FakeEngine
from support import PEERS_ALLOWED, ROOT, build_pyz, free_port, http_call, http_json, wait_http_ok

ROOTFS_DIR = ROOT / "deploy" / "rootfs"
DOCKERFILE = ROOT / "Dockerfile"
NONROOT = 65532


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the distroless-equivalent run needs root (mount/PID namespaces, chroot); CI runs as root")


@pytest.fixture(scope="module")
def rootfs() -> Path:
    _require_root()
    done = subprocess.run(
        ["bash", str(ROOTFS_DIR / "assemble.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"assemble.sh failed:\n{done.stderr}"
    return Path(done.stdout.strip().splitlines()[-1])


def dockerfile_entrypoint() -> List[str]:
    """The final stage's ENTRYPOINT, and a check that the stage is what run.sh reproduces."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^FROM gcr\.io/distroless/python3-debian12:nonroot\s*$", final, re.M), final
    # The build stage lays out /out: the pyz at /app/patio.pyz and the links assemble.sh makes too.
    assert re.search(r"^COPY --from=build /out/ /\s*$", final, re.M), final
    assert "install -m 0755 dist/patio.pyz /out/app/patio.pyz" in text
    for name in ("aibrix_runtime", "aibrix_download"):
        assert f"ln -s /app/patio.pyz /out/usr/local/bin/{name}" in text
    assert re.search(rf"^USER {NONROOT}:{NONROOT}\s*$", final, re.M), final
    match = re.search(r"^ENTRYPOINT (\[.*\])\s*$", final, re.M)
    assert match, final
    return json.loads(match.group(1))


def run_in_rootfs(rootfs: Path, command: List[str], env: Optional[List[str]] = None, **kwargs) -> subprocess.Popen:
    argv = ["bash", str(ROOTFS_DIR / "run.sh")]
    for item in env or []:
        argv += ["-e", item]
    return subprocess.Popen([*argv, str(rootfs), str(build_pyz()), *command], **kwargs)


def _children(pid: int) -> List[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def child_pid(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """The command's host PID: the only child of run.sh's unshare (PID 1 of its namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children(proc.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "unshare":
                    children = _children(pid)
                    if children:
                        return children[0]
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError("run.sh started no command")


def test_rootfs_is_the_image_packages_and_files(rootfs):
    wanted = {
        line.split("#")[0].strip()
        for line in (ROOTFS_DIR / "packages.txt").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    }
    versions = dict(line.split(" ", 1) for line in (rootfs.parent / "root.versions").read_text().splitlines())
    assert set(versions) == wanted
    assert versions["python3.11-minimal"].startswith("3.11.")
    assert os.readlink(rootfs / "usr/bin/python3") == "python3.11"
    assert 'VERSION_ID="12"' in (rootfs / "etc/os-release").read_text()
    assert "nonroot:x:65532:65532:" in (rootfs / "etc/passwd").read_text()
    assert (rootfs / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 100_000
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    for shell in ("bin/sh", "bin/bash", "usr/bin/sh", "usr/bin/bash", "bin/dash", "usr/bin/dash"):
        assert not os.path.lexists(rootfs / shell), f"distroless has no shell, the rootfs has {shell}"


# What a process in the sandbox may write (checked from inside, with errno names).
WRITE_PROBE = """
import errno, json, os
result = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "env": sorted(os.environ)}
app = os.stat("/app/patio.pyz")
result["app"] = [app.st_uid, app.st_gid, oct(app.st_mode & 0o7777), app.st_size]
for path in ("/etc/patio-probe", "/app/patio-probe", "/app/patio.pyz", "/tmp/patio-probe", "/usr/patio-probe",
             "/tmp/patio/probe"):
    try:
        open(path, "w").close()
        result[path] = "written"
    except OSError as exc:
        result[path] = errno.errorcode[exc.errno]
print(json.dumps(result))
"""


def test_sandbox_runs_as_nonroot_with_a_read_only_root(rootfs):
    proc = run_in_rootfs(rootfs, ["python3", "-I", "-c", WRITE_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert (result["uid"], result["gid"], result["pid"]) == (NONROOT, NONROOT, 1)
    # distroless' environment plus the Dockerfile's ENV lines.
    assert result["env"] == ["HOME", "LANG", "PATH", "PATIO_STATE_DIR", "PYTHONPATH", "SSL_CERT_FILE"]
    for path in ("/etc/patio-probe", "/app/patio-probe", "/tmp/patio-probe", "/usr/patio-probe"):
        assert result[path] == "EROFS", (path, result[path])
    assert result["/app/patio.pyz"] in ("EROFS", "EACCES"), result["/app/patio.pyz"]
    assert result["/tmp/patio/probe"] == "written"
    # Installed as the Dockerfile does: root's, 0755 (the incumbents' commands exec it), the pyz itself.
    assert result["app"] == [0, 0, "0o755", build_pyz().stat().st_size]


class AdapterServer:
    """A plain HTTP server holding one LoRA adapter's files (a remote lora_path)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="patio-adapter-src-")
        Path(self.dir, "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}', encoding="utf-8")
        handler = functools.partial(_QuietHandler, directory=self.dir)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def served(rootfs) -> Iterator[dict]:
    engine = FakeEngine("vllm")
    adapters = AdapterServer()
    port = free_port()
    log = tempfile.TemporaryFile()
    command = [*dockerfile_entrypoint(), "--host", "127.0.0.1", "--port", str(port)]
    env = ["INFERENCE_ENGINE=vllm", f"INFERENCE_ENGINE_ENDPOINT={engine.url}"]
    env += [f"{name}={value}" for name, value in PEERS_ALLOWED.items()]
    proc = run_in_rootfs(rootfs, command, env, stdout=log, stderr=subprocess.STDOUT)
    state = {"proc": proc, "engine": engine, "adapters": adapters, "url": f"http://127.0.0.1:{port}", "log": log}
    try:
        state["pid"] = child_pid(proc)
        wait_http_ok(state["url"] + "/health", timeout=20)
        yield state
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        engine.stop()
        adapters.stop()
        log.close()


def _output(state: dict) -> str:
    state["log"].seek(0)
    return state["log"].read().decode("utf-8", "replace")


def test_patio_serves_from_the_image_root(served):
    url, pid, engine = served["url"], served["pid"], served["engine"]
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{NONROOT}\s+{NONROOT}\s+{NONROOT}\s+{NONROOT}$", status, re.M)
    assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), "Patio is PID 1 of its namespace"
    root_mount = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    assert any(fields[4] == "/" and "ro" in fields[5].split(",") for fields in root_mount), "root is read-only"

    for path in ("/health", "/healthz", "/ready"):
        assert http_call("GET", url + path)[0] == 200, (path, _output(served))

    load = url + "/load_lora_adapter"
    status_code, answer = http_json("POST", load, {"lora_name": "sql", "lora_path": "/models/sql-lora"})
    assert status_code == 200
    assert {k: answer[k] for k in ("status", "message", "lora_name", "lora_path")} == {
        "status": "success",
        "message": "LoRA adapter 'sql' loaded",
        "lora_name": "sql",
        "lora_path": "/models/sql-lora",
    }
    remote = served["adapters"].url + "/adapter_config.json"
    status_code, answer = http_json("POST", load, {"lora_name": "remote", "lora_path": remote}, timeout=30)
    assert status_code == 200, (answer, _output(served))
    assert answer["lora_path"] == "/tmp/patio/adapters/remote"
    assert [c.json()["lora_path"] for c in engine.calls_to(engine.load_path())] == [
        "/models/sql-lora",
        "/tmp/patio/adapters/remote",
    ]
    # Written inside the sandbox, in the only writable directory (seen through /proc/PID/root).
    sandbox = Path(f"/proc/{pid}/root/tmp/patio")
    assert (sandbox / "adapters" / "remote" / "adapter_config.json").read_text() == '{"r": 8, "lora_alpha": 16}'
    saved = (sandbox / "lora-adapters.json").read_text()  # the set reloaded after an engine restart
    assert '"sql"' in saved and '"remote"' in saved, saved

    code, _, body = http_call("GET", url + "/metrics")
    assert code == 200
    text = body.decode("utf-8")
    assert 'patio_lora_operations_total{op="load",result="success"} 2' in text
    assert "patio_engine_healthy 1" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: lint advice only

    os.kill(pid, signal.SIGTERM)
    assert served["proc"].wait(20) == 0, _output(served)
    assert "shutdown complete" in _output(served)


def test_sigterm_to_the_runner_reaches_patio(rootfs):
    """run.sh forwards SIGTERM to the container's PID 1, as the kubelet signals it (before, the
    runner exec'd unshare, which died of the signal and left Patio running)."""
    engine = FakeEngine("vllm")
    port = free_port()
    log = tempfile.TemporaryFile()
    command = [*dockerfile_entrypoint(), "--host", "127.0.0.1", "--port", str(port)]
    proc = run_in_rootfs(
        rootfs, command, [f"INFERENCE_ENGINE_ENDPOINT={engine.url}"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        pid = child_pid(proc)
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=20)
        proc.send_signal(signal.SIGTERM)  # the runner, not Patio
        assert proc.wait(20) == 0
        assert not Path(f"/proc/{pid}").exists()
        log.seek(0)
        output = log.read().decode("utf-8", "replace")
        assert "received SIGTERM" in output and "shutdown complete" in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        engine.stop()
        log.close()


def test_localhost_resolves(rootfs):
    """The root has an /etc/hosts as a container runtime writes it: before, `localhost` did not
    resolve and a Patio started with the default INFERENCE_ENGINE_ENDPOINT answered /ready 503."""
    code = "import socket; print(socket.gethostbyname('localhost'), open('/etc/hosts').readline().strip())"
    proc = run_in_rootfs(rootfs, ["python3", "-I", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split(" ", 1) == ["127.0.0.1", "# Kubernetes-managed hosts file.\n"]


@pytest.mark.parametrize(
    "command",
    [
        ["aibrix_runtime", "--version"],
        ["python3", "-m", "patio.app", "--version"],
        ["python", "-m", "patio", "--version"],
    ],
    ids=["aibrix_runtime_on_path", "rbg_python_m_patio_app", "python_m_patio"],
)
def test_incumbents_commands_are_patio_in_the_root(rootfs, command):
    proc = run_in_rootfs(rootfs, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("patio "), out
