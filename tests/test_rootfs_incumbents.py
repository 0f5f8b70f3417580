"""Each incumbent's own manifest, only the image changed, run in the image's root (issue 26).

deploy/kubernetes/incumbents/ holds AIBrix's, Kthena's and RoleBasedGroup Patio's manifests as
they publish them (each header names the file and commit; ``test_manifest_is_the_incumbents``
proves nothing but the image changed).  Each test runs the Patio containers of one file the way
the kubelet would (tests/pod_support.py: a pod network of its own, the container's command,
args, env and volumes over the image's entrypoint, in deploy/rootfs as UID 65532) beside a fake
engine on the pod's localhost:8000, then checks what that incumbent's users rely on:

- probes: the paths and ports the manifest's probes name (or the incumbent's documented ones);
- a LoRA load the incumbent's way (AIBrix's controller, Kthena's documented curl, RBG's README);
- its metric names in ``/metrics`` (``aibrix:``, ``kthena:``, ``patio:``);
- SIGTERM to the container exits 0 after a graceful shutdown.

What the manifests leave to the cluster is played by stand-ins, named where they are used:
huggingface.co (a fake Hub in the pod's network, ``HF_ENDPOINT``), and an unreachable Redis.
"""

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import yaml
from artifacts_fakes import FakeCdn, FakeHub, HubRepo
from compat_fakes import go_request, httpx_request, replay, tree
from fakes.engine import FakeEngine
from pod_support import Pod
from support import PEERS_ALLOWED, ROOT, http_call, shared_path

from patio.metrics.protocol import ROUTER_FAMILIES

INCUMBENTS = ROOT / "deploy" / "kubernetes" / "incumbents"
ADAPTER = {"adapter_config.json": b'{"r": 8, "lora_alpha": 16}', "adapter_model.safetensors": b"\x00" * 40_000}
MODEL = {"config.json": b'{"model_type": "qwen3"}', "model.safetensors": b"\x01" * 60_000}
VLLM_METRICS = (ROOT / "tests" / "fakes" / "vllm-0.33-single.txt").read_bytes()
SGLANG_METRICS = shared_path("fixtures", "metrics", "sglang-0.5.23.txt").read_bytes()

# (file, the images the incumbent's file names where Patio's now stands, in order of appearance)
ORIGINAL_IMAGES = {
    "aibrix-base.yaml": ["aibrix/runtime:v0.7.0"],
    "kthena-gpu-kvcache-aware.yaml": ["ghcr.io/volcano-sh/downloader:latest", "ghcr.io/volcano-sh/runtime:latest"],
    "rbg-patio-runtime.yaml": ["rolebasedgroup/rbgs-patio-runtime:latest"],
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_IMAGES))
def test_manifest_is_the_incumbents(name):
    """The file less its header comment, with the incumbent's images put back, is byte for byte the
    incumbent's (its sha256 is in the header, taken from the source at the commit named there)."""
    text = (INCUMBENTS / name).read_text(encoding="utf-8")
    lines = text.split("\n")
    header = []
    while lines and lines[0].startswith("#"):
        header.append(lines.pop(0))
    digest = next(line.rsplit(" ", 1)[1] for line in header if "sha256 of the source" in line)
    body = "\n".join(lines)
    for image in ORIGINAL_IMAGES[name]:
        assert "image: patio:0.1.0" in body
        body = body.replace("image: patio:0.1.0", f"image: {image}", 1)
    assert "patio:0.1.0" not in body
    assert hashlib.sha256(body.encode("utf-8")).hexdigest() == digest
    assert sorted(p.name for p in INCUMBENTS.glob("*.yaml")) == sorted(ORIGINAL_IMAGES)


def documents(name: str) -> List[Dict[str, Any]]:
    return [d for d in yaml.safe_load_all((INCUMBENTS / name).read_text(encoding="utf-8")) if d]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout}s (last: {last!r})")


class Running:
    """One pod: engine and hub stand-ins inside its network, Patio containers started by the test."""

    def __init__(self, volumes: List[str], kind: str, metrics: bytes) -> None:
        self.pod = Pod(volumes)
        self.engine = self.pod.inside(self._engine, kind, metrics)
        self.cdn = self.pod.inside(FakeCdn)
        self.hub = self.pod.inside(FakeHub, self.cdn, 100)
        self.hub.add(HubRepo("acme/adapter", ADAPTER, ("adapter_model.safetensors",)))
        self.hub.add(HubRepo("myorg/my-lora-repo", ADAPTER, ("adapter_model.safetensors",)))
        self.hub.add(HubRepo("Qwen/Qwen3-0.6B", MODEL, ("model.safetensors",)))
        self.logs: List[Any] = []

    @staticmethod
    def _engine(kind: str, metrics: bytes) -> FakeEngine:
        engine = FakeEngine(kind, port=8000)  # the manifests' INFERENCE_ENGINE_ENDPOINT / --engine-base-url
        engine.version = "0.11.0" if kind == "vllm" else "0.5.3"
        engine.metrics_body = metrics
        return engine

    def start(self, spec: Dict[str, Any], volumes: Dict[str, str], **kw: Any) -> subprocess.Popen:
        log = tempfile.TemporaryFile()
        self.logs.append(log)
        return self.pod.container(spec, volumes, log=log, **kw)

    def output(self) -> str:
        texts = []
        for log in self.logs:
            log.seek(0)
            texts.append(log.read().decode("utf-8", "replace"))
        return "\n".join(texts)

    def get(self, port: int, path: str) -> Tuple[int, bytes]:
        status, _, body = self.pod.inside(http_call, "GET", f"http://127.0.0.1:{port}{path}")
        return status, body

    def close(self) -> None:
        for closer in (self.engine.stop, self.hub.stop, self.cdn.stop, self.pod.close):
            try:
                closer()
            except Exception:
                pass
        for log in self.logs:
            log.close()


def probe(run: Running, spec: Dict[str, Any]) -> None:
    """The container's own liveness and readiness probes answer 200 (httpGet on the manifest's port)."""
    probes = [spec[key]["httpGet"] for key in ("livenessProbe", "readinessProbe") if key in spec]
    assert probes, spec["name"]
    for get in probes:
        wait_for(lambda g=get: run.get(int(g["port"]), g["path"])[0] == 200, what=f"{get['path']} 200")


def sigterm(run: Running, proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # to run.sh, which forwards it to the container's PID 1
    assert proc.wait(30) == 0, run.output()
    assert "shutdown complete" in run.output()


def metric_names(text: str) -> set:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.fixture()
def aibrix() -> Iterator[Running]:
    run = Running(["adapter-storage"], "vllm", VLLM_METRICS)
    try:
        yield run
    finally:
        run.close()


def test_aibrix_manifest(aibrix):
    """vllm-project/aibrix samples/adapter/base.yaml: ``command: [aibrix_runtime, --port, "8080"]``
    with INFERENCE_ENGINE and INFERENCE_ENGINE_ENDPOINT, adapter-storage at /tmp/aibrix/adapters."""
    deployment = next(d for d in documents("aibrix-base.yaml") if d["kind"] == "Deployment")
    spec = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "aibrix-runtime")
    hub = {"HF_ENDPOINT": aibrix.hub.url, **PEERS_ALLOWED}
    proc = aibrix.start(spec, {"adapter-storage": "adapter-storage"}, extra_env=hub)
    probe(aibrix, spec)
    assert "start profile aibrix (started as aibrix_runtime)" in aibrix.output()
    # AIBrix's controller, runtime-sidecar mode (pkg/controller/modeladapter/lora_client.go):
    # Go's json.Marshal of {"artifact_url","lora_name"} to the container named aibrix-runtime on 8080.
    raw = go_request(
        8080, "POST", "/v1/lora_adapter/load", {"artifact_url": "huggingface://acme/adapter", "lora_name": "sql"}, None
    )
    status, _, body = aibrix.pod.inside(replay, 8080, raw)
    assert status in (200, 201), body
    answer = json.loads(body)
    # AIBrix's own adapter directory: the manifest shares adapter-storage with vLLM there.
    assert answer["local_path"] == "/tmp/aibrix/adapters/sql"
    assert [c.json()["lora_path"] for c in aibrix.engine.calls_to("/v1/load_lora_adapter")] == [
        "/tmp/aibrix/adapters/sql"
    ]
    assert tree(aibrix.pod.volumes["adapter-storage"] / "sql") == ADAPTER  # what the engine container sees
    status, _, models = aibrix.pod.inside(replay, 8080, go_request(8080, "GET", "/v1/models", None, None))
    assert status == 200 and "sql" in [m["id"] for m in json.loads(models)["data"]]
    status, text = aibrix.get(8080, "/metrics")  # the Service's prometheus.io/port: "8080"
    names = metric_names(text.decode())
    assert status == 200 and {"aibrix:queue_size", "aibrix:kv_cache_usage_perc", "aibrix:prompt_tokens_total"} <= names
    # The engine's families are renamed only into AIBrix's names; the one patio: set is the router
    # view, written under the same names in every scheme so one endpoint-picker config reads a
    # mixed pool (docs/model-server-protocol.md).
    assert {n for n in names if n.startswith("patio:")} <= set(ROUTER_FAMILIES)
    assert set(ROUTER_FAMILIES) <= names
    sigterm(aibrix, proc)


@pytest.fixture()
def kthena() -> Iterator[Running]:
    run = Running(["models", "shared-mem"], "vllm", VLLM_METRICS)
    try:
        yield run
    finally:
        run.close()


def test_kthena_manifest(kthena):
    """volcano-sh/kthena examples/model-serving/gpu-kvcache-aware.yaml: the downloader init
    container's ``--source Qwen/Qwen3-0.6B --output-dir /models/Qwen3-0.6B/``, then the runtime's
    ``--port 8900 --engine vllm ... --pod $(POD_NAME).$(NAMESPACE) --model Qwen/Qwen3-0.6B`` with
    REDIS_HOST set (Redis is not reachable here: the bridge waits, the runtime serves)."""
    serving = documents("kthena-gpu-kvcache-aware.yaml")[0]
    pod_spec = serving["spec"]["template"]["roles"][0]["entryTemplate"]["spec"]
    volumes = {"models": "models", "shared-mem": "shared-mem"}
    # The test's hub listens on the pod's loopback, which the egress policy refuses by default:
    # the harness adds the allow-list a deployment with an in-pod mirror would set.
    hub = {"HF_ENDPOINT": kthena.hub.url, **PEERS_ALLOWED}
    downloader = pod_spec["initContainers"][0]
    init = kthena.start(downloader, volumes, extra_env=hub)
    assert init.wait(120) == 0, kthena.output()
    assert tree(kthena.pod.volumes["models"] / "Qwen3-0.6B") == MODEL  # what the engine serves from

    runtime = next(c for c in pod_spec["containers"] if c["name"] == "runtime")
    proc = kthena.start(runtime, volumes, extra_env=hub)
    probe(kthena, runtime)  # readinessProbe: GET /health on 8900
    assert "start profile kthena (Kthena's runtime flag --engine given)" in kthena.output()
    # Kthena's runtime README, "LoRA: Download + Load", the synchronous example, through httpx.
    payload = {
        "lora_name": "my-lora",
        "source": "hf://myorg/my-lora-repo",
        "output_dir": "/models/my-lora",
        "config": {"hf_token": "<token>"},
        "max_workers": 8,
        "async_download": False,
    }
    status, _, body = kthena.pod.inside(replay, 8900, httpx_request(8900, "/v1/load_lora_adapter", payload))
    assert status == 200, body
    assert [c.json()["lora_path"] for c in kthena.engine.calls_to("/v1/load_lora_adapter")] == ["/models/my-lora"]
    status, text = kthena.get(8900, "/metrics")
    names = metric_names(text.decode())
    assert status == 200 and {"kthena:num_requests_waiting", "kthena:generation_tokens_total"} <= names
    assert "vllm:num_requests_waiting" in names  # Kthena keeps the raw families too
    sigterm(kthena, proc)


@pytest.fixture()
def rbg() -> Iterator[Running]:
    run = Running([], "sglang", SGLANG_METRICS)
    try:
        yield run
    finally:
        run.close()


def test_rbg_manifest(rbg):
    """rolebasedgroup/inference-engine-runtime README: the ClusterEngineRuntimeProfile's container
    (no command: the image's entrypoint) with INFERENCE_ENGINE sglang and TOPO_TYPE SGLang, as RBG's
    injector adds it to the role's pod (RBG_* names).  Before, TOPO_TYPE without a router made
    Patio exit 2; RBG's runtime registers only with --instance-info."""
    profile = next(d for d in documents("rbg-patio-runtime.yaml") if d["kind"] == "ClusterEngineRuntimeProfile")
    spec = json.loads(json.dumps(profile["spec"]["containers"][0]))
    injected = [{"name": "RBG_GROUP_NAME", "value": "my-inference"}, {"name": "RBG_ROLE_NAME", "value": "inference"}]
    spec["env"] = spec["env"] + injected + [{"name": "RBG_ROLE_INDEX", "value": "0"}]
    proc = rbg.start(spec, {})
    wait_for(lambda: rbg.get(9091, "/health")[0] == 200, what="/health")  # the profile has no probes: RBG's /health
    wait_for(lambda: rbg.get(9091, "/ready")[0] == 200, what="/ready")
    assert "start profile patio (Patio's own command)" in rbg.output()
    # The README's curl, "LoRA Adapter Management".
    body = '{"lora_name": "my-adapter", "lora_path": "/models/my-adapter"}'
    raw = (
        "POST /load_lora_adapter HTTP/1.1\r\nHost: localhost:9091\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    status, _, answer = rbg.pod.inside(replay, 9091, raw)
    assert status == 200, answer
    assert [c.json()["lora_path"] for c in rbg.engine.calls_to("/load_lora_adapter")] == ["/models/my-adapter"]
    status, text = rbg.get(9091, "/metrics")
    names = metric_names(text.decode())
    assert status == 200 and {"patio:num_requests_running", "patio:num_requests_waiting"} <= names
    banner = json.loads(rbg.get(9091, "/")[1])
    assert (banner["engine"], banner["engine_version"]) == ("sglang", "0.5.3")  # read from the engine
    sigterm(rbg, proc)


def test_rbg_module_command_in_the_image(rbg):
    """RBG's own image runs ``python3 -m patio.app``; in Patio's image the same command is Patio."""
    spec = {"name": "patio", "command": ["python3", "-m", "patio.app"], "args": ["--port", "9091"]}
    spec["env"] = [{"name": "INFERENCE_ENGINE_ENDPOINT", "value": "http://localhost:8000"}]
    proc = rbg.start(spec, {})
    wait_for(lambda: rbg.get(9091, "/health")[0] == 200, what="/health")
    # INFERENCE_ENGINE unset: the engine said it is SGLang (GET /server_info).
    wait_for(lambda: json.loads(rbg.get(9091, "/")[1])["engine"] == "sglang", what="engine identified")
    sigterm(rbg, proc)


def test_localhost_resolves_in_the_root(rbg):
    """An /etc/hosts as the kubelet writes it: before, `localhost` did not resolve and /ready was 503."""
    spec = {"name": "probe", "command": ["python3", "-c", "import socket; print(socket.gethostbyname('localhost'))"]}
    proc = rbg.start(spec, {})
    assert proc.wait(30) == 0, rbg.output()
    assert "127.0.0.1" in rbg.output()
    hosts = {"name": "hosts", "command": ["python3", "-c", "print(open('/etc/hosts').read())"]}
    proc = rbg.start(hosts, {})
    assert proc.wait(30) == 0 and "# Kubernetes-managed hosts file." in rbg.output()


def test_aibrix_downloader_command_in_the_image():
    """AIBrix's docs command in the image: ``python -m aibrix.downloader --model-uri
    deepseek-ai/... --local-dir /tmp/aibrix/models_hf/`` -> local_dir/<repo id> (AIBrix's layout)."""
    run = Running(["aibrix"], "vllm", VLLM_METRICS)
    try:
        run.hub.add(HubRepo("deepseek-ai/deepseek-coder-6.7b-instruct", MODEL, ("model.safetensors",)))
        argv = ["--model-uri", "deepseek-ai/deepseek-coder-6.7b-instruct", "--local-dir", "/tmp/aibrix/models_hf/"]
        spec = {"name": "download", "command": ["python", "-m", "aibrix.downloader", *argv]}
        spec["volumeMounts"] = [{"name": "aibrix", "mountPath": "/tmp/aibrix"}]
        # AIBrix's docs' environment for HuggingFace (HF_ENDPOINT: the stand-in for the Hub).
        spec["env"] = [{"name": "DOWNLOADER_ALLOW_FILE_SUFFIX", "value": "json, safetensors"}]
        proc = run.start(spec, {"aibrix": "aibrix"}, extra_env={"HF_ENDPOINT": run.hub.url, **PEERS_ALLOWED})
        assert proc.wait(120) == 0, run.output()
        model = run.pod.volumes["aibrix"] / "models_hf" / "deepseek-ai" / "deepseek-coder-6.7b-instruct"
        assert tree(model) == MODEL
        assert "/tmp/aibrix/models_hf/deepseek-ai/deepseek-coder-6.7b-instruct" in run.output()
    finally:
        run.close()


def test_a_container_a_failed_test_leaves_running_is_stopped_with_its_pod():
    """A test that fails before its SIGTERM leaves the container serving; closing the pod must
    stop it, with the runner and PID namespace around it (once, a failed AIBrix test left its
    ``aibrix_runtime`` running on port 8080 for the rest of the suite)."""
    run = Running([], "sglang", SGLANG_METRICS)
    try:
        spec = {"name": "patio", "command": ["python3", "-m", "patio.app"], "args": ["--port", "9091"]}
        spec["env"] = [{"name": "INFERENCE_ENGINE_ENDPOINT", "value": "http://localhost:8000"}]
        proc = run.start(spec, {})
        wait_for(lambda: run.get(9091, "/health")[0] == 200, what="/health")
        marker = str(run.pod.dir)
    finally:
        run.close()
    assert proc.poll() is not None
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline or ("patio.app --port 9091" in cmdline and "patio-rootfs" in cmdline):
            left.append(f"{pid}: {cmdline[:120]}")
    assert not left, left
