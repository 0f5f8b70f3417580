"""The Kubernetes manifests under deploy/kubernetes: each object validates with kubernetes-validate
(strict: unknown fields are errors) against the newest Kubernetes it knows; custom resources
(RoleBasedGroup, ClusterEngineRuntimeProfile, Kthena's ModelServing, the Prometheus Operator's
PodMonitor) validate against their controllers' own CRD schemas (tests/deploy_crd_schemas.json,
strict), and the pod specs inside them as core/v1 Pods; every Patio container is one Patio
itself accepts (its args and env go through Patio's own settings loader) with probes, resources,
a locked-down security context and writable volumes exactly where Patio writes; the PodMonitor
selects the pods it must scrape."""

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from manifests_support import OWN, PATIO_IMAGE, Doc, documents, patio_containers, pod_specs

from patio.config import load_settings

MANIFESTS = OWN
K8S_VERSION = latest_version()

# The container names each controller expects for its sidecar.
SIDECAR_NAMES = {"vllm-patio.yaml": "patio", "aibrix.yaml": "aibrix-runtime", "kthena.yaml": "runtime"}

SECRET_STAND_IN = Path(tempfile.mkdtemp(prefix="patio-manifest-")) / "secret"
SECRET_STAND_IN.write_text("stand-in\n", encoding="utf-8")


def _id(item: Tuple[str, Doc]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


def test_profile_overrides_are_what_rbg_allows():
    """rbgs api/workloads/v1alpha1 EngineRuntime: "only support command,args overridden"."""
    for _, doc in documents():
        for role in doc["spec"]["roles"] if doc["kind"] == "RoleBasedGroup" else []:
            for runtime in role.get("engineRuntimes", []):
                for container in runtime.get("containers", []):
                    assert set(container) <= {"name", "command", "args"}, container


def test_there_are_manifests_for_each_shape():
    assert {p.name for p in MANIFESTS} == {"vllm-patio.yaml", "aibrix.yaml", "kthena.yaml", "rbg-profile.yaml"}


CRD_SCHEMAS = json.loads((Path(__file__).parent / "deploy_crd_schemas.json").read_text(encoding="utf-8"))["schemas"]


def _strict(schema: Any) -> Any:
    """A CRD schema as `kubectl apply --validate=strict` reads it: unknown fields are errors
    (unless the schema preserves them); core/v1 subtrees are checked separately as Pods."""
    if not isinstance(schema, dict):
        return schema
    if "x-patio-core-type" in schema:
        return {"type": "object"}
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    return out


def validate_custom(doc: Doc) -> None:
    group, version = doc["apiVersion"].split("/")
    schema = CRD_SCHEMAS[f"{group}/{version}/{doc['kind']}"]
    jsonschema.validate(doc, _strict(schema))


@pytest.mark.parametrize("item", documents(), ids=_id)
def test_object_validates(item):
    _, doc = item
    kind = doc["kind"]
    if kind in ("ClusterEngineRuntimeProfile", "RoleBasedGroup", "ModelServing", "PodMonitor"):
        # kubernetes-validate knows only Kubernetes' own kinds.
        with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        validate_custom(doc)  # the controller's own CRD schema; pod specs are checked below as Pods
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ModelServing", ("spec", "template", "roles", 0, "workerReplica"), 0),
        ("RoleBasedGroup", ("spec", "roles", 1, "engineRuntimes", 0, "profile"), "x"),
        ("ClusterEngineRuntimeProfile", ("spec", "updateStrategy"), "Sometimes"),
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "scrapeInterval"), "15s"),
    ],
    ids=["misspelt-field", "unknown-field", "bad-enum", "podmonitor-unknown-field"],
)
def test_custom_resource_schemas_catch_mistakes(kind, path, value):
    doc = copy.deepcopy(next(d for _, d in documents() if d["kind"] == kind))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(doc)


@pytest.mark.parametrize(("file", "name", "pod"), pod_specs(), ids=[f"{f}:{n}" for f, n, _ in pod_specs()])
def test_pod_spec_validates_as_a_core_pod(file, name, pod):
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field():
    _, _, pod = pod_specs()[0]
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_manifest_has_a_patio_container():
    files = {file for file, _, _, _ in patio_containers()}
    assert files == {p.name for p in MANIFESTS}
    for file, _, container, _ in patio_containers():
        if file in SIDECAR_NAMES:
            assert container["name"] == SIDECAR_NAMES[file]


def _environment(container: Doc) -> Dict[str, str]:
    """Literal env values; downward-API values get a stand-in, as the kubelet would fill them;
    a ``*_FILE`` setting names a mounted secret, here a file holding a stand-in."""
    env = {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", _downward_stand_in(item))
        if item["name"].endswith("_FILE"):
            assert any(env[item["name"]].startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
            env[item["name"]] = str(SECRET_STAND_IN)
    return env


# What the kubelet fills in for a downward-API field: a value of the field's own form (Patio
# validates a pod IP at start, so a stand-in must be an address).
_FIELD_STAND_INS = {"status.podIP": "10.244.1.7", "status.hostIP": "10.0.0.4"}


def _downward_stand_in(item: Doc) -> str:
    field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
    return _FIELD_STAND_INS.get(field, f"<{item['name']}>")


def _expand(arg: str, env: Dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


CONTAINERS = patio_containers()
IDS = [f"{f}:{n}" for f, n, _, _ in CONTAINERS]


@pytest.mark.parametrize(("file", "pod", "container", "spec"), CONTAINERS, ids=IDS)
def test_patio_accepts_its_args_and_env(file, pod, container, spec):
    env = _environment(container)
    settings = load_settings([_expand(a, env) for a in container.get("args", [])], env)
    ports = {p["containerPort"] for p in container["ports"]}
    assert settings.core.port in ports
    if file == "aibrix.yaml":
        assert settings.core.port == 8080  # where AIBrix's controller calls the sidecar
    if file == "kthena.yaml":
        assert settings.core.port == int(env["RUNTIME_PORT"])
        assert settings.core.pod == "<POD_NAME>.<NAMESPACE>"
        assert settings.kvevents.enabled, "Kthena's runtime bridges KV events to Redis: so does the drop-in"


@pytest.mark.parametrize(("file", "pod", "container", "spec"), CONTAINERS, ids=IDS)
def test_patio_probes_resources_and_security(file, pod, container, spec):
    env = _environment(container)
    settings = load_settings([_expand(a, env) for a in container.get("args", [])], env)
    named = {p.get("name"): p["containerPort"] for p in container["ports"]}
    for probe, paths in (("livenessProbe", ("/health", "/healthz", "/livez")), ("readinessProbe", ("/ready",))):
        get = container[probe]["httpGet"]
        assert get["path"] in paths, f"{probe} must ask Patio's {paths}"
        assert named.get(get["port"], get["port"]) == settings.core.port
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["requests"]["cpu"] and resources["limits"]["memory"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@pytest.mark.parametrize(("file", "pod", "container", "spec"), CONTAINERS, ids=IDS)
def test_patio_can_write_where_it_writes(file, pod, container, spec):
    """With a read-only root, the state and adapter directories must be writable volumes."""
    env = _environment(container)
    settings = load_settings([_expand(a, env) for a in container.get("args", [])], env)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for directory in (settings.lora.state_dir, settings.artifacts.adapter_dir):
        covering = [p for p in mounts if directory == p or directory.startswith(p.rstrip("/") + "/")]
        assert covering, f"{directory} is on the read-only root"
        mount = mounts[max(covering, key=len)]
        assert not mount.get("readOnly"), f"{directory} is mounted read-only"
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume, f"{directory}: {volume}"
    assert spec.get("securityContext", {}).get("fsGroup") == 65532 or file == "rbg-profile.yaml"


def test_engine_sees_downloaded_adapters_at_the_same_path():
    """Patio hands the engine the local path it downloaded to: both must mount it there."""
    for file, name, pod in pod_specs():
        containers = pod["spec"]["containers"]
        patio = [c for c in containers if PATIO_IMAGE.match(c.get("image", ""))]
        engines = [c for c in containers if not PATIO_IMAGE.match(c.get("image", "")) and "router" not in c["name"]]
        if not patio or not engines:
            continue
        env = _environment(patio[0])
        adapter_dir = load_settings([_expand(a, env) for a in patio[0].get("args", [])], env).artifacts.adapter_dir
        for engine in engines:
            paths = {m["mountPath"] for m in engine.get("volumeMounts", [])}
            assert any(adapter_dir == p or adapter_dir.startswith(p.rstrip("/") + "/") for p in paths), (
                f"{file}:{name}: engine {engine['name']} cannot read {adapter_dir}"
            )


def test_podmonitor_scrapes_patio():
    docs = dict((d["kind"], d) for f, d in documents() if f == "vllm-patio.yaml")
    monitor, deployment = docs["PodMonitor"], docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p.get("name") for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
