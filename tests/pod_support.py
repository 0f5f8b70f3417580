"""A pod, as far as a sidecar can tell: a network of its own, containers run from a manifest in the
image's root filesystem (deploy/rootfs/run.sh), volumes shared between them.

- The network: a network namespace with only loopback, as a pod's containers share one.  The
  manifests' fixed ports (8000, 8080, 8900, 9091) never meet another test on this machine, and
  nothing leaves the namespace.  Test-side servers (the fake engine, a fake Hub) and the test's
  HTTP calls run in threads that entered it (``Pod.inside``; setns(2) is per thread).
- A container: its ``command``/``args`` over the image's ENTRYPOINT/CMD (Kubernetes' rules),
  ``$(VAR)`` expanded, ``env`` with the downward API filled in as the kubelet would, each
  ``emptyDir`` mount a host directory bound into every container that mounts it, and
  ``readOnlyRootFilesystem`` deciding whether the root is read-only.  Anything else in a
  container spec that the harness cannot honour fails the test, never silently ignored.

Needs root (network and mount namespaces), as the test command runs in CI.
"""

import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar

from support import ROOT, build_pyz

T = TypeVar("T")
RUN_SH = ROOT / "deploy" / "rootfs" / "run.sh"
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
_COUNTER = itertools.count()

# What the kubelet puts in the downward API fields these manifests read.
POD_NAME = "pod-0"
NAMESPACE = "default"
FIELDS = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE, "status.podIP": "127.0.0.1"}
# Container-spec keys the harness honours or that do not change what runs in the container.
KNOWN_KEYS = frozenset(
    "name image imagePullPolicy command args env envFrom ports volumeMounts resources securityContext "
    "livenessProbe readinessProbe startupProbe".split()
)


def image_command() -> List[List[str]]:
    """The Dockerfile's ENTRYPOINT and CMD."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    final = text[text.rindex("\nFROM ") :]
    entry = re.search(r"^ENTRYPOINT (\[.*\])\s*$", final, re.M)
    cmd = re.search(r"^CMD (\[.*\])\s*$", final, re.M)
    assert entry and cmd, final
    return [json.loads(entry.group(1)), json.loads(cmd.group(1))]


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def expand(value: str, env: Dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (an unknown variable stays as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


class Pod:
    def __init__(self, volumes: Optional[List[str]] = None) -> None:
        if os.geteuid() != 0:
            raise AssertionError("a pod needs root (network and mount namespaces); CI runs as root")
        self.name = f"patio-pod-{os.getpid()}-{next(_COUNTER)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self._fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        self._pool = ThreadPoolExecutor(1, initializer=_setns, initargs=(self._fd,))
        self.dir = Path(tempfile.mkdtemp(prefix="patio-pod-"))
        self.volumes: Dict[str, Path] = {}
        for volume in volumes or []:
            path = self.dir / "volumes" / volume
            path.mkdir(parents=True)
            path.chmod(0o777)  # an emptyDir, as the kubelet makes it
            self.volumes[volume] = path
        self.procs: List[subprocess.Popen] = []

    def inside(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a thread of this pod's network (threads it starts stay there)."""
        return self._pool.submit(func, *args).result()

    def container(
        self,
        spec: Dict[str, Any],
        volume_names: Dict[str, str],
        read_only_default: bool = False,
        extra_env: Optional[Dict[str, str]] = None,
        log: Any = None,
    ) -> subprocess.Popen:
        """Start ``spec`` (a manifest's container) with run.sh in this pod's network.

        ``volume_names`` maps the manifest's volume names to this pod's emptyDir volumes;
        ``extra_env`` is the cluster's side of the environment the manifest does not write
        (a stand-in for huggingface.co, named so in each test).
        """
        unknown = set(spec) - KNOWN_KEYS
        assert not unknown, f"the harness does not honour {sorted(unknown)} of {spec['name']}"
        assert not spec.get("envFrom"), "envFrom needs the referenced objects: not in these manifests"
        env: Dict[str, str] = {}
        for item in spec.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
                continue
            ref = item["valueFrom"]
            if "fieldRef" in ref:
                env[item["name"]] = FIELDS[ref["fieldRef"]["fieldPath"]]
                continue
            key_ref = ref.get("secretKeyRef") or ref.get("configMapKeyRef") or {}
            assert key_ref.get("optional"), f"{item['name']}: a required reference this pod does not have"
        env.update(extra_env or {})
        entrypoint, cmd = image_command()
        command = spec.get("command")
        argv = [*(command or entrypoint), *(spec.get("args") or ([] if command else cmd))]
        argv = [expand(a, env) for a in argv]
        security = spec.get("securityContext") or {}
        assert security.get("runAsUser", 65532) == 65532, "run.sh runs as the image's USER, 65532"
        run = ["ip", "netns", "exec", self.name, "bash", str(RUN_SH)]
        for name, value in env.items():
            run += ["-e", f"{name}={value}"]
        for mount in spec.get("volumeMounts", []):
            run += ["-v", f"{mount['mountPath']}={self.volumes[volume_names[mount['name']]]}"]
        if not security.get("readOnlyRootFilesystem", read_only_default):
            run.append("--writable-root")
        # A session of its own: close() kills run.sh with unshare and the container's PID 1 (whose
        # death ends the PID namespace), not only the ``ip netns exec`` wrapper.
        proc = subprocess.Popen(
            [*run, str(rootfs_dir()), str(build_pyz()), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a container a failed test left running
            except ProcessLookupError:
                pass  # it ended, and so did its group
            proc.wait(10)
        self._pool.shutdown(wait=True)
        os.close(self._fd)
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


_ROOTFS: Dict[str, Path] = {}
_ROOTFS_LOCK = threading.Lock()


def rootfs_dir() -> Path:
    """The assembled root (deploy/rootfs/assemble.sh, cached), once per test session."""
    with _ROOTFS_LOCK:
        if "root" not in _ROOTFS:
            done = subprocess.run(
                ["bash", str(ROOT / "deploy" / "rootfs" / "assemble.sh")],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert done.returncode == 0, f"assemble.sh failed:\n{done.stderr}"
            _ROOTFS["root"] = Path(done.stdout.strip().splitlines()[-1])
        return _ROOTFS["root"]
