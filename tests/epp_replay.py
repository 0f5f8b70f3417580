"""The llm-d endpoint picker's metric extraction, replayed in Python statement by statement.

Read from ``llm-d/llm-d-router`` at ebab687927f5331c1b39defcb579a07951bce56c:

- ``pkg/epp/framework/plugins/datalayer/source/metrics/datasource.go``: ``parseMetrics`` is
  ``expfmt.NewTextParser(model.LegacyValidation).TextToMetricFamilies`` (``text_families``);
- ``pkg/epp/framework/plugins/datalayer/extractor/metrics/spec.go``: ``parseStringToSpec``
  and its three regexps, ``Spec.getLatestMetric`` (newest *timestamp*, first on a tie),
  ``labelsMatch``, ``extractValue`` (gauge or counter value, else 0);
- ``loraspec.go``: ``LoRASpec.getLatestMetric`` (greatest *value*, first on a tie, None
  when the family is missing or nothing matches);
- ``extractor.go``: ``Extract`` (clone the endpoint's metrics, overwrite only what was read,
  ``UpdateTime`` only when something was), ``populateLoRAMetrics``, ``populateCacheInfoMetrics``,
  ``addAdapters`` (split on commas, trim, drop empties);
- ``factories.go``: the built-in engine configs and how user configs are added to them;
  ``mapping_registry.go``: fallback to the default engine.

Go's ``int(float64)`` truncates toward zero; for NaN, ±Inf or out-of-range values amd64's
CVTTSD2SI gives the "integer indefinite" value -2**63, which is what a pod would report.
"""

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

GO_INT_INDEFINITE = -(2**63)

# --- expfmt: the text parser, for the valid text Patio writes -------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? ([^ ]+)(?: (-?[0-9]+))?$')
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = re.compile(r"\\(.)")


@dataclass
class Metric:
    labels: List[Tuple[str, str]]
    value: float
    kind: str  # the family's type: gauge, counter, untyped, histogram, summary
    timestamp_ms: Optional[int] = None


@dataclass
class MetricFamily:
    name: str
    kind: str = "untyped"
    metrics: List[Metric] = field(default_factory=list)


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def _parse_float(text: str) -> float:
    # Go's strconv.ParseFloat as expfmt calls it: "+Inf", "-Inf", "NaN" and decimal forms.
    return float(text)


def text_families(text: str) -> Dict[str, MetricFamily]:
    """``TextToMetricFamilies`` for the families a router reads (gauges, counters, untyped).

    Samples of histograms and summaries are attached to their family by suffix, as expfmt does,
    so a histogram never shadows a gauge of its base name."""
    families: Dict[str, MetricFamily] = {}
    types: Dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"second TYPE line for {name} (expfmt rejects the whole scrape)"
            types[name] = kind
            families.setdefault(name, MetricFamily(name)).kind = kind
            continue
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"expfmt would reject the whole scrape at: {line!r}"
        name, label_text, value_text, ts_text = match.groups()
        family_name = name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
                family_name = base
        family = families.setdefault(family_name, MetricFamily(family_name, types.get(family_name, "untyped")))
        labels = [(k, _unescape(v)) for k, v in _PAIR.findall(label_text or "")]
        names = [k for k, _ in labels]
        assert len(names) == len(set(names)), f"duplicate label name in {line!r}"
        if family.kind in ("histogram", "summary"):
            continue  # not read by the extractor
        family.metrics.append(Metric(labels, _parse_float(value_text), family.kind, int(ts_text) if ts_text else None))
    return families


# --- spec.go ---------------------------------------------------------------------------------
_METRIC_SPEC = re.compile(r"^\s*(\S+?)\s*(?:\{([^}]*)\})?\s*$", re.ASCII)
_LABEL_PAIR = re.compile(r'^\s*(\S+?)\s*=\s*"([^"]*)"\s*$', re.ASCII)
_ADD_QUOTES = re.compile(r'(\w+)\s*=\s*([^",}\s]+)', re.ASCII)
_LEGACY_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Spec:
    name: str
    labels: Tuple[Tuple[str, str], ...] = ()


def parse_spec(text: str) -> Optional[Spec]:
    """``parseStringToSpec``: "" is the nil Spec (the field is disabled); a bad spec raises."""
    if text == "":
        return None
    quoted = _ADD_QUOTES.sub(r'\1="\2"', text)
    match = _METRIC_SPEC.match(quoted)
    if match is None or not _LEGACY_METRIC.match(match.group(1)):
        raise ValueError(f"not a valid metric specification: {text!r}")
    labels: Dict[str, str] = {}
    block = (match.group(2) or "").strip()
    if block:
        for pair in block.split(","):
            found = _LABEL_PAIR.match(pair)
            if found is None or not _LEGACY_LABEL.match(found.group(1)):
                raise ValueError(f"invalid label pair {pair!r} in specification: {text!r}")
            labels[found.group(1)] = found.group(2)
    return Spec(match.group(1), tuple(labels.items()))


def labels_match(spec: Spec, labels: List[Tuple[str, str]]) -> bool:
    for name, value in spec.labels:
        found = False
        for label_name, label_value in labels:
            if label_name == name:
                found = label_value == value
                break
        if not found:
            return False
    return True


def extract_value(metric: Optional[Metric]) -> float:
    if metric is None:
        return 0.0
    if metric.kind in ("gauge", "counter"):
        return metric.value
    return 0.0  # untyped, histogram, summary: GetGauge() and GetCounter() are nil


def latest_metric(spec: Spec, families: Mapping[str, MetricFamily]) -> Metric:
    """``Spec.getLatestMetric``; raises LookupError as Go returns its error."""
    family = families.get(spec.name)
    if family is None:
        raise LookupError(f"metric family {spec.name!r} not found")
    if not family.metrics:
        raise LookupError(f"no metrics found for {spec.name!r}")
    latest, recent = None, -1
    for metric in family.metrics:
        if labels_match(spec, metric.labels):
            ts = metric.timestamp_ms or 0
            if ts > recent:
                recent, latest = ts, metric
    if latest is None:
        raise LookupError(f"no matching metric found for {spec.name!r} with labels {spec.labels}")
    return latest


def latest_lora_metric(spec: Spec, families: Mapping[str, MetricFamily]) -> Optional[Metric]:
    """``LoRASpec.getLatestMetric``: the greatest value (NaN never compares greater)."""
    family = families.get(spec.name)
    if family is None or not family.metrics:
        return None
    latest, recent = None, -1.0
    for metric in family.metrics:
        if labels_match(spec, metric.labels):
            value = extract_value(metric)
            if value > recent:
                recent, latest = value, metric
    return latest


def go_int(value: float) -> int:
    if not math.isfinite(value) or not -(2**63) <= value < 2**63:
        return GO_INT_INDEFINITE
    return int(value)  # truncation toward zero


def atoi(text: str) -> int:
    """``strconv.Atoi``: an optional sign and decimal digits, nothing else."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
    return int(text)


# --- the endpoint's metrics and the extractor ------------------------------------------------
@dataclass
class EndpointMetrics:
    waiting_queue_size: int = 0
    running_requests_size: int = 0
    kv_cache_usage_percent: float = 0.0
    active_models: Dict[str, int] = field(default_factory=dict)
    waiting_models: Dict[str, int] = field(default_factory=dict)
    max_active_models: int = 0
    cache_block_size: int = 0
    cache_num_blocks: int = 0
    update_time: int = 0  # the poll that last refreshed it (time.Now() in Go)


@dataclass(frozen=True)
class Mapping_:
    queue: Optional[Spec]
    running: Optional[Spec]
    kv: Optional[Spec]
    lora: Optional[Spec]
    cache_info: Optional[Spec]
    block_size_label: str = ""
    num_blocks_label: str = ""
    cache_block_size: Optional[Spec] = None
    cache_num_blocks: Optional[Spec] = None


def add_adapters(into: Dict[str, int], csv: str) -> None:
    for name in csv.split(","):
        trimmed = name.strip()
        if trimmed:
            into[trimmed] = 0


def populate_lora(clone: EndpointMetrics, metric: Metric, errs: List[str]) -> None:
    clone.active_models, clone.waiting_models = {}, {}
    for name, value in metric.labels:
        if name == "running_lora_adapters":
            add_adapters(clone.active_models, value)
        elif name == "waiting_lora_adapters":
            add_adapters(clone.waiting_models, value)
        elif name == "max_lora" and value != "":
            try:
                clone.max_active_models = atoi(value)
            except ValueError as exc:
                errs.append(str(exc))


def populate_cache_info(
    clone: EndpointMetrics, metric: Metric, block_label: str, blocks_label: str, errs: List[str]
) -> None:
    clone.cache_block_size = 0
    for name, value in metric.labels:
        if name in (block_label, blocks_label) and value != "":
            try:
                number = atoi(value)
            except ValueError as exc:
                errs.append(str(exc))
                continue
            if name == block_label:
                clone.cache_block_size = number
            else:
                clone.cache_num_blocks = number


class Extractor:
    """``Extractor.Extract`` for one endpoint, polled again and again (its metrics persist)."""

    def __init__(self, mapping: Mapping_) -> None:
        self.mapping = mapping
        self.metrics = EndpointMetrics()
        self.polls = 0
        self.errors: List[str] = []

    def poll(self, text: str) -> EndpointMetrics:
        self.polls += 1
        families = text_families(text)
        mapping, errs = self.mapping, []
        clone = copy.deepcopy(self.metrics)
        updated = False
        for spec, attr, convert in (
            (mapping.queue, "waiting_queue_size", go_int),
            (mapping.running, "running_requests_size", go_int),
            (mapping.kv, "kv_cache_usage_percent", float),
        ):
            if spec is None:
                continue
            try:
                metric = latest_metric(spec, families)
            except LookupError as exc:
                errs.append(str(exc))
                continue
            setattr(clone, attr, convert(extract_value(metric)))
            updated = True
        if mapping.lora is not None:
            lora = latest_lora_metric(mapping.lora, families)
            if lora is not None:
                populate_lora(clone, lora, errs)
                updated = True
        if mapping.cache_info is not None:
            try:
                info = latest_metric(mapping.cache_info, families)
            except LookupError as exc:
                errs.append(str(exc))
            else:
                populate_cache_info(
                    clone,
                    info,
                    mapping.block_size_label or "block_size",
                    mapping.num_blocks_label or "num_gpu_blocks",
                    errs,
                )
                updated = True
        for spec, attr in (
            (mapping.cache_block_size, "cache_block_size"),
            (mapping.cache_num_blocks, "cache_num_blocks"),
        ):
            if spec is None:
                continue
            try:
                metric = latest_metric(spec, families)
            except LookupError as exc:
                errs.append(str(exc))
                continue
            setattr(clone, attr, go_int(extract_value(metric)))
            updated = True
        if updated:
            clone.update_time = self.polls
            self.metrics = clone
        self.errors = errs
        return self.metrics


# --- factories.go ------------------------------------------------------------------------------
DEFAULT_ENGINE_CONFIGS: List[Dict[str, Any]] = [
    {
        "name": "vllm",
        "queuedRequestsSpec": "vllm:num_requests_waiting",
        "runningRequestsSpec": "vllm:num_requests_running",
        "kvUsageSpec": "vllm:kv_cache_usage_perc",
        "loraSpec": "vllm:lora_requests_info",
        "cacheInfoSpec": "vllm:cache_config_info",
    },
    {
        "name": "sglang",
        "queuedRequestsSpec": "sglang:num_queue_reqs",
        "runningRequestsSpec": "sglang:num_running_reqs",
        "kvUsageSpec": "sglang:token_usage",
        "loraSpec": "",
        "cacheInfoSpec": "sglang:cache_config_info",
        "cacheBlockSizeLabelName": "page_size",
        "cacheNumBlocksLabelName": "num_pages",
    },
    {
        "name": "trtllm-serve",
        "queuedRequestsSpec": "trtllm_num_requests_waiting",
        "runningRequestsSpec": "trtllm_num_requests_running",
        "kvUsageSpec": "trtllm_kv_cache_utilization",
        "cacheBlockSizeSpec": "trtllm_kv_cache_tokens_per_block",
        "cacheNumBlocksSpec": "trtllm_kv_cache_max_blocks",
    },
    {
        "name": "triton-tensorrt-llm",
        "queuedRequestsSpec": "nv_trt_llm_request_metrics{request_type=waiting}",
        "runningRequestsSpec": "nv_trt_llm_request_metrics{request_type=scheduled}",
        "kvUsageSpec": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
        "cacheBlockSizeSpec": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}",
        "cacheNumBlocksSpec": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}",
    },
    {
        "name": "triton",
        "queuedRequestsSpec": "nv_inference_pending_request_count",
        "runningRequestsSpec": "nv_inference_exec_count",
    },
]
# The keys ``engineConfigParams`` decodes (json tags); any other key is ignored by encoding/json.
ENGINE_CONFIG_KEYS = frozenset(
    (
        "name",
        "queuedRequestsSpec",
        "runningRequestsSpec",
        "kvUsageSpec",
        "loraSpec",
        "cacheInfoSpec",
        "cacheBlockSizeLabelName",
        "cacheNumBlocksLabelName",
        "cacheBlockSizeSpec",
        "cacheNumBlocksSpec",
        "customMetrics",
    )
)


def mapping_of(config: Mapping[str, Any]) -> Mapping_:
    return Mapping_(
        queue=parse_spec(config.get("queuedRequestsSpec", "")),
        running=parse_spec(config.get("runningRequestsSpec", "")),
        kv=parse_spec(config.get("kvUsageSpec", "")),
        lora=parse_spec(config.get("loraSpec", "")),
        cache_info=parse_spec(config.get("cacheInfoSpec", "")),
        block_size_label=config.get("cacheBlockSizeLabelName", ""),
        num_blocks_label=config.get("cacheNumBlocksLabelName", ""),
        cache_block_size=parse_spec(config.get("cacheBlockSizeSpec", "")),
        cache_num_blocks=parse_spec(config.get("cacheNumBlocksSpec", "")),
    )


def registry(parameters: Optional[Mapping[str, Any]] = None) -> Dict[str, Mapping_]:
    """``newCoreMetricsExtractorPlugin``: user configs, then the built-ins not redefined, then "default"."""
    params = dict(parameters or {})
    configs = list(params.get("engineConfigs") or [])
    defined = {c["name"] for c in configs}
    configs += [c for c in DEFAULT_ENGINE_CONFIGS if c["name"] not in defined]
    default_engine = params.get("defaultEngine") or "vllm"
    out: Dict[str, Mapping_] = {}
    for config in configs:
        name = config.get("name", "")
        if not name or name == "default":
            raise ValueError(f"engine config name {name!r} is empty or reserved")
        if name in out:
            raise ValueError(f"mapping for engine type {name!r} already exists")
        out[name] = mapping_of(config)
    if default_engine not in out:
        raise ValueError(f"defaultEngine {default_engine!r} not found in engineConfigs")
    out["default"] = out[default_engine]
    return out


def engine_type(pod_labels: Mapping[str, str], label_key: str = "llm-d.ai/engine-type") -> str:
    """``getEngineTypeFromEndpoint``, then ``MappingRegistry.Get``'s fallback key."""
    value = pod_labels.get(label_key) or pod_labels.get("inference.networking.k8s.io/engine-type")
    return value or "default"
