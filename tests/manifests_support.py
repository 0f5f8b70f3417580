"""Reading the Kubernetes manifests under deploy/kubernetes: every pod they describe (built-in
workloads, and the pods inside custom resources: Kthena's ModelServing, RoleBasedGroup roles with
a ClusterEngineRuntimeProfile merged in as RBG's injector does) and every Patio container in them.

Patio's own manifests are deploy/kubernetes/*.yaml; the incumbents' as they publish them are
deploy/kubernetes/incumbents/*.yaml (test_rootfs_incumbents.py runs those).
"""

import copy
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OWN = sorted(KUBERNETES.glob("*.yaml"))
INCUMBENT = sorted((KUBERNETES / "incumbents").glob("*.yaml"))
PATIO_IMAGE = re.compile(r"^patio(:|@)")

Doc = Dict[str, Any]


def documents(paths: List[Path] = OWN) -> List[Tuple[str, Doc]]:
    out = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((path.name, doc))
    return out


def as_pod(name: str, spec: Doc) -> Doc:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _role_template(role: Doc) -> Doc:
    """A role's pod template: v1alpha1 ``template``, v1alpha2 ``standalonePattern.template``."""
    if "template" in role:
        return role["template"]
    return role["standalonePattern"]["template"]


def merged_profile_pods(paths: List[Path] = OWN) -> Iterator[Tuple[str, str, Doc]]:
    """RBG roles with engineRuntimes: the role's pod plus the profile's containers and volumes,
    with the role's per-container overrides applied (what RBG's injector produces)."""
    docs = documents(paths)
    profiles = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ClusterEngineRuntimeProfile"}
    for file, doc in docs:
        if doc["kind"] != "RoleBasedGroup":
            continue
        for role in doc["spec"]["roles"]:
            spec = copy.deepcopy(_role_template(role)["spec"])
            for runtime in role.get("engineRuntimes", []):
                profile = profiles[runtime["profileName"]]["spec"]
                overrides = {c["name"]: c for c in runtime.get("containers", [])}
                for container in copy.deepcopy(profile["containers"]):
                    container.update({k: v for k, v in overrides.get(container["name"], {}).items() if k != "name"})
                    spec["containers"].append(container)
                spec.setdefault("volumes", []).extend(copy.deepcopy(profile.get("volumes", [])))
            for container in spec["containers"]:
                # What RBG's injector adds to every container (shared/reference/incumbents.md).
                container.setdefault("env", []).extend(
                    {"name": key, "value": value}
                    for key, value in (
                        ("RBG_GROUP_NAME", doc["metadata"]["name"]),
                        ("RBG_ROLE_NAME", role["name"]),
                        ("RBG_ROLE_INDEX", "0"),
                    )
                )
            name = f"{doc['metadata']['name']}-{role['name']}"
            yield file, name, as_pod(name, spec)


def pod_specs(runnable: bool = False, paths: List[Path] = OWN) -> List[Tuple[str, str, Doc]]:
    """(file, name, Pod) for every pod the manifests describe, built-in or inside a custom resource.
    ``runnable``: only pods that run as such (a profile alone is merged into an RBG role first)."""
    out: List[Tuple[str, str, Doc]] = []
    for file, doc in documents(paths):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            out.append((file, name, as_pod(name, doc["spec"]["template"]["spec"])))
        elif kind == "ModelServing":
            for role in doc["spec"]["template"]["roles"]:
                out.append((file, f"{name}-{role['name']}", as_pod(name, role["entryTemplate"]["spec"])))
        elif kind == "ClusterEngineRuntimeProfile" and not runnable:
            spec = {"containers": doc["spec"]["containers"], "volumes": doc["spec"].get("volumes", [])}
            out.append((file, name, as_pod(name, spec)))
    out.extend(merged_profile_pods(paths))
    return out


def patio_containers(paths: List[Path] = OWN) -> List[Tuple[str, str, Doc, Doc]]:
    """(file, pod, container, pod spec) for every Patio container, after RBG's merge."""
    found = []
    for file, name, pod in pod_specs(runnable=True, paths=paths):
        for key in ("initContainers", "containers"):
            for container in pod["spec"].get(key, []):
                if PATIO_IMAGE.match(container.get("image", "")):
                    found.append((file, name, container, pod["spec"]))
    return found
