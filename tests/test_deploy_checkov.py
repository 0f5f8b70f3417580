"""Least privilege in deploy/ (issue 24): checkov, an independent scanner, over every Patio container.

Each Patio container of every manifest (Patio's own, deploy/kubernetes/*.yaml, and the incumbents'
as they publish them, deploy/kubernetes/incumbents/*.yaml; after RBG's profile merge, init
containers included) becomes a Pod of its own with its pod's settings, and checkov 3.3.30 (its
own virtualenv, built by tests/run.sh under ~/.cache/patio-checkov) scans them in one run,
offline (``--skip-download``).  The failed checks of each container must be exactly the skips
listed below with their reasons: a new failure fails the test, and so does a skip that no longer
applies.  Patio's own manifests fail nothing but ``SKIPPED``.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, FrozenSet, List, Tuple

import pytest
import yaml
from manifests_support import INCUMBENT, OWN, Doc, patio_containers

CHECKOV_VERSION = "3.3.30"
CHECKOV = Path(
    os.environ.get(
        "PATIO_CHECKOV",
        Path.home() / ".cache" / "patio-checkov" / f"checkov-{CHECKOV_VERSION}" / "bin" / "checkov",
    )
)

# Checks that cannot pass for any manifest we ship, and why a platform engineer skips them too.
SKIPPED: Dict[str, str] = {
    "CKV_K8S_43": "image by digest: the manifests name the image the user builds (docker build -t patio .); "
    "its digest exists only once pushed, so pin it then (kustomize images: digest)",
    "CKV_K8S_21": "default namespace: the manifests carry no namespace on purpose, they are applied into the "
    "namespace the user picks (kubectl apply -n)",
    "CKV2_K8S_6": "NetworkPolicy: which namespaces may reach the pod (the controller's, Prometheus') is the "
    "cluster's policy, not the sidecar's; Patio's own part is the API key its management routes require",
}

# The incumbents' manifests run as published, only the image changed (issue 26): their security
# settings are theirs.  What checkov reports on them, each with why it stays: Patio's image itself
# runs as UID 65532, non-root, with no shell (CKV_K8S_23/40/20 describe the manifest, not the image),
# and deploy/kubernetes/{aibrix,kthena,rbg-profile}.yaml are the hardened equivalents a platform
# engineer deploys instead, where every one of these passes.
AS_PUBLISHED = "the incumbent's own manifest, run unchanged but for the image (issue 26)"
INCUMBENT_FAILURES: Dict[str, FrozenSet[str]] = {
    # No resources, probes on the container only where the incumbent wrote them, no security context.
    "aibrix-base.yaml:qwen-coder-1-5b-instruct:aibrix-runtime": frozenset(
        "CKV_K8S_10 CKV_K8S_11 CKV_K8S_12 CKV_K8S_13 CKV_K8S_15 CKV_K8S_20 CKV_K8S_22 CKV_K8S_23 CKV_K8S_28 "
        "CKV_K8S_29 CKV_K8S_30 CKV_K8S_31 CKV_K8S_37 CKV_K8S_38 CKV_K8S_40".split()
    ),
    # The init container: no probes (an init container has none), no resources, no security context.
    "kthena-gpu-kvcache-aware.yaml:vllm-qwen-06b-server:downloader": frozenset(
        "CKV_K8S_10 CKV_K8S_11 CKV_K8S_12 CKV_K8S_13 CKV_K8S_15 CKV_K8S_20 CKV_K8S_22 CKV_K8S_28 "
        "CKV_K8S_29 CKV_K8S_30 CKV_K8S_31 CKV_K8S_37 CKV_K8S_38 CKV_K8S_40".split()
    ),
    "kthena-gpu-kvcache-aware.yaml:vllm-qwen-06b-server:runtime": frozenset(
        "CKV_K8S_8 CKV_K8S_10 CKV_K8S_11 CKV_K8S_12 CKV_K8S_13 CKV_K8S_20 CKV_K8S_22 CKV_K8S_23 CKV_K8S_28 "
        "CKV_K8S_29 CKV_K8S_30 CKV_K8S_31 CKV_K8S_37 CKV_K8S_38 CKV_K8S_40".split()
    ),
    # The profile's container as RBG injects it: no probes, CPU and memory requests only.
    "rbg-patio-runtime.yaml:my-inference-inference:patio": frozenset(
        "CKV_K8S_8 CKV_K8S_9 CKV_K8S_11 CKV_K8S_13 CKV_K8S_15 CKV_K8S_20 CKV_K8S_22 CKV_K8S_23 CKV_K8S_28 "
        "CKV_K8S_29 CKV_K8S_30 CKV_K8S_31 CKV_K8S_37 CKV_K8S_38 CKV_K8S_40".split()
    ),
}


def _checkov() -> str:
    if not CHECKOV.exists():
        pytest.fail(
            f"checkov {CHECKOV_VERSION} is not installed at {CHECKOV}: run bash tests/run.sh (it builds the venv), "
            f"or python3 -m venv {CHECKOV.parent.parent} && {CHECKOV.parent}/pip install checkov=={CHECKOV_VERSION}"
        )
    return str(CHECKOV)


def _pod(name: str, container: Doc, spec: Doc) -> Doc:
    """The container alone in a Pod with its pod's settings (checkov reads Pods; CRDs hide theirs)."""
    pod = {k: v for k, v in spec.items() if k not in ("containers", "initContainers")}
    pod["initContainers" if container in spec.get("initContainers", []) else "containers"] = [container]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod}


def scan(pods: Dict[str, Doc], directory: Path) -> Dict[str, FrozenSet[str]]:
    """One checkov run over ``pods``; the failed check ids per pod name."""
    manifests, home = directory / "pods", directory / "home"
    manifests.mkdir()
    home.mkdir()
    for index, pod in enumerate(pod for _, pod in sorted(pods.items())):
        (manifests / f"pod-{index}.yaml").write_text(yaml.safe_dump(pod), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "BC_SKIP_MAPPING": "TRUE", "LANG": "C.UTF-8"}
    argv = [_checkov(), "-d", str(manifests), "--framework", "kubernetes", "--quiet", "--compact"]
    done = subprocess.run(
        [*argv, "--skip-download", "-o", "json"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: some check failed
    report = json.loads(done.stdout)
    failed: Dict[str, set] = {name: set() for name in pods}
    for section in report if isinstance(report, list) else [report]:
        for check in section["results"]["failed_checks"]:
            failed[check["resource"].split(".", 2)[2]].add(check["check_id"])
    return {name: frozenset(ids) for name, ids in failed.items()}


def _all_pods() -> Tuple[Dict[str, Doc], Dict[str, str]]:
    pods: Dict[str, Doc] = {}
    keys: Dict[str, str] = {}  # pod name -> "file:pod:container"
    for paths in (OWN, INCUMBENT):
        for index, (file, pod, container, spec) in enumerate(patio_containers(paths)):
            name = f"{'own' if paths is OWN else 'incumbent'}-{index}-{container['name']}"
            pods[name] = _pod(name, container, spec)
            keys[name] = f"{file}:{pod}:{container['name']}"
    return pods, keys


def test_every_patio_container_passes_but_the_listed_skips(tmp_path):
    pods, keys = _all_pods()
    assert set(keys.values()) >= set(INCUMBENT_FAILURES), "a listed incumbent container is gone"
    found = scan(pods, tmp_path)
    problems: List[str] = []
    for name, failed in sorted(found.items()):
        key = keys[name]
        expected = set(SKIPPED) | set(INCUMBENT_FAILURES.get(key, frozenset()))
        for check in sorted(failed - expected):
            problems.append(f"{key}: {check} fails")
        for check in sorted(expected - failed):
            problems.append(f"{key}: {check} is listed as failing but passes: remove it from the list")
    assert not problems, "\n".join(problems)
    own = [n for n in found if n.startswith("own-")]
    assert len(own) == 4 and all(found[n] == frozenset(SKIPPED) for n in own)


@pytest.mark.parametrize(
    "change,check",
    [
        (lambda pod: pod["spec"].pop("automountServiceAccountToken"), "CKV_K8S_38"),
        (lambda pod: pod["spec"].pop("securityContext"), "CKV_K8S_29"),
        (lambda pod: pod["spec"]["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"), "CKV_K8S_22"),
    ],
    ids=["token_mounted", "no_pod_security_context", "writable_root"],
)
def test_the_scan_sees_a_regression(tmp_path, change, check):
    """Each hardening the manifests carry is one checkov would miss: undo it and the check fails."""
    pods, keys = _all_pods()
    name = next(n for n, k in keys.items() if k.startswith("vllm-patio.yaml:"))
    pod = json.loads(json.dumps(pods[name]))
    change(pod)
    assert check in scan({name: pod}, tmp_path)[name]
