"""deploy/kubernetes/gateway/patio-epp.yaml: the InferencePool and the llm-d endpoint picker reading
Patio.  Kubernetes objects validate with kubernetes-validate (strict); the InferencePool with its CRD's
own schema (tests/deploy_gateway_schemas.json, from gateway-api-inference-extension 84436a9), strict;
the EndpointPickerConfig is decoded as the picker decodes it, strictly (llm-d-router ebab687:
pkg/epp/config/loader/configloader.go decodeRawConfig with serializer.EnableStrict, plugin parameters
through fwkplugin.StrictDecoder), against the json tags of its types; and the objects point at each
other and at the pods of ../vllm-patio.yaml (engine port for requests, Patio's port for metrics)."""

import copy
import json
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import kubernetes_validate
import pytest
import yaml
from epp_replay import ENGINE_CONFIG_KEYS, parse_spec
from kubernetes_validate.utils import latest_version

from patio.metrics.protocol import ROUTER_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "gateway" / "patio-epp.yaml"
POOL_PODS = ROOT / "deploy" / "kubernetes" / "vllm-patio.yaml"
SCHEMAS = json.loads((Path(__file__).parent / "deploy_gateway_schemas.json").read_text(encoding="utf-8"))["schemas"]
K8S_VERSION = latest_version()

Doc = Dict[str, Any]

# json tags of apix/config/v1alpha1/endpointpickerconfig_types.go (llm-d-router ebab687).
CONFIG_KEYS = {
    "apiVersion",
    "kind",
    "featureGates",
    "plugins",
    "schedulingProfiles",
    "dataLayer",
    "flowControl",
    "requestHandler",
    "saturationDetector",
    "parser",
}
PLUGIN_KEYS = {"name", "type", "parameters"}
PROFILE_KEYS, PROFILE_PLUGIN_KEYS = {"name", "plugins"}, {"pluginRef", "weight"}
DATALAYER_KEYS = {
    "injectDefaults",
    "sources",
    "discovery",
    "peerDiscovery",
    "crossReplicaSyncerPluginRef",
    "crossReplicaSyncInterval",
}
# Each plugin type used, with the json tags of its parameters (None: takes none).
PLUGIN_PARAMETERS: Dict[str, Any] = {
    # source/metrics/datasource.go metricsDatasourceParams
    "metrics-data-source": {
        "scheme",
        "path",
        "port",
        "insecureSkipVerify",
        "caCertPath",
        "clientCertPath",
        "clientKeyPath",
        "interval",
    },
    # extractor/metrics/factories.go modelServerExtractorParams
    "core-metrics-extractor": {"engineLabelKey", "defaultEngine", "engineConfigs"},
    # flowcontrol/saturationdetector/utilization/config.go apiConfig
    "utilization-detector": {"queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold", "headroom"},
    "queue-scorer": None,
    "kv-cache-utilization-scorer": None,
    "prefix-cache-scorer": None,
    "lora-affinity-scorer": None,
}


def documents() -> List[Doc]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def one(kind: str, docs: List[Doc] = []) -> Doc:  # noqa: B006 - read only
    found = [d for d in (docs or documents()) if d["kind"] == kind]
    assert len(found) == 1, (kind, found)
    return found[0]


def epp_config() -> Doc:
    return yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])


def _strict(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if isinstance(v, dict) else v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    return out


def validate_pool(doc: Doc) -> None:
    jsonschema.validate(doc, _strict(SCHEMAS["inference.networking.k8s.io/v1/InferencePool"]))
    ref = doc["spec"]["endpointPickerRef"]
    # The CRD's x-kubernetes-validations rule, which jsonschema does not run.
    assert ref.get("kind", "Service") != "Service" or "port" in ref, "port is required when kind is 'Service'"


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_object_validates(doc):
    if doc["kind"] == "InferencePool":
        with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        validate_pool(doc)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "targetPorts", 0, "number"), 0),
        (("spec", "endpointPickerRef", "failureMode"), "Sometimes"),
        (("spec", "selectr"), {}),
    ],
    ids=["port-out-of-range", "bad-enum", "misspelt-field"],
)
def test_the_pool_schema_catches_mistakes(path, value):
    doc = copy.deepcopy(one("InferencePool"))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_pool(doc)


def test_the_epp_config_decodes_strictly():
    config = epp_config()
    assert config["apiVersion"] == "llm-d.ai/v1alpha1" and config["kind"] == "EndpointPickerConfig"
    assert set(config) <= CONFIG_KEYS
    names = set()
    for plugin in config["plugins"]:
        assert set(plugin) <= PLUGIN_KEYS, plugin
        assert plugin["type"] in PLUGIN_PARAMETERS, plugin["type"]
        allowed = PLUGIN_PARAMETERS[plugin["type"]]
        assert set(plugin.get("parameters") or {}) <= (allowed or set()), plugin
        names.add(plugin.get("name") or plugin["type"])  # applyStaticDefaults: the name defaults to the type
    for profile in config["schedulingProfiles"]:
        assert set(profile) <= PROFILE_KEYS
        for ref in profile["plugins"]:
            assert set(ref) <= PROFILE_PLUGIN_KEYS and ref["pluginRef"] in names, ref
    assert set(config["dataLayer"]) <= DATALAYER_KEYS
    for source in config["dataLayer"]["sources"]:
        assert source["pluginRef"] in names
        assert all(e["pluginRef"] in names for e in source["extractors"])


def test_the_engine_config_reads_only_what_patio_writes():
    extractor = next(p for p in epp_config()["plugins"] if p["type"] == "core-metrics-extractor")
    (patio,) = extractor["parameters"]["engineConfigs"]
    assert set(patio) <= ENGINE_CONFIG_KEYS
    specs = [parse_spec(v) for k, v in patio.items() if k.endswith("Spec")]
    assert {s.name for s in specs if s is not None} == set(ROUTER_FAMILIES)
    assert extractor["parameters"]["defaultEngine"] == patio["name"]


def test_the_picker_and_the_pool_point_at_each_other_and_at_patio():
    docs = documents()
    pool, deployment, service, config_map = (
        one(k, docs) for k in ("InferencePool", "Deployment", "Service", "ConfigMap")
    )
    pods = [d for d in yaml.safe_load_all(POOL_PODS.read_text(encoding="utf-8")) if d and d["kind"] == "Deployment"]
    (model_server,) = pods
    template = model_server["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {c["name"]: {p["containerPort"] for p in c.get("ports", [])} for c in template["spec"]["containers"]}
    # Requests go to the engine's port, the picker's scrape to Patio's.
    assert {p["number"] for p in pool["spec"]["targetPorts"]} <= ports["vllm"]
    source = next(p for p in epp_config()["plugins"] if p["type"] == "metrics-data-source")
    assert source["parameters"]["port"] in ports["patio"]
    assert source["parameters"]["path"] == "/metrics"
    # The pool names the picker's Service and port; the Service reaches the picker's ext-proc port.
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    (grpc,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert grpc["targetPort"] in {p["name"] for p in container["ports"]}
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == pool["metadata"]["name"]
    config_path = args[args.index("--config-file") + 1]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path[len(mount["mountPath"]) + 1 :] in config_map["data"]
    # What the picker reads in the cluster (its Role), under the ServiceAccount it runs as.
    role = one("Role", docs)
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools")} <= granted
    assert pod["spec"]["serviceAccountName"] == one("ServiceAccount", docs)["metadata"]["name"]
