"""Where each engine says queued, running, KV utilization, cache geometry and LoRA state.

Data only, read by ``patio.metrics.protocol``.  The names are the engines' own, as the
Gateway API Inference Extension's model-server protocol table and the llm-d endpoint
picker's built-in engine configs name them (``gateway-api-inference-extension``
``docs/proposals/003-model-server-protocol/README.md``; ``llm-d/llm-d-router``
``pkg/epp/framework/plugins/datalayer/extractor/metrics/factories.go`` at ebab687), and
for the engines those tables lack, as their source writes them:

- llama.cpp ``tools/server``: ``llamacpp:requests_deferred`` (waiting for a slot),
  ``llamacpp:requests_processing``; current builds export no KV gauge
  (``llamacpp:kv_cache_usage_ratio`` only in older ones).
- TGI ``backends/v3/src/{queue,backend,lib}.rs`` (db931fc): ``tgi_queue_size``,
  ``tgi_batch_current_size``, and the batch's token reservation
  ``tgi_batch_current_max_tokens`` against its budget ``tgi_batch_max_total_tokens``.
- Triton with TensorRT-LLM (``NVIDIA/TensorRT-LLM``
  ``triton_backend/inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc``,
  89fd9b7): ``nv_trt_llm_request_metrics{request_type}``,
  ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type}``; any Triton:
  ``nv_inference_pending_request_count``.
"""

from dataclasses import dataclass, field
from typing import FrozenSet, Mapping, Optional, Tuple, Union

from patio.metrics.model import Labels

QUEUED, RUNNING, KV, CACHE = "queued", "running", "kv", "cache"


@dataclass(frozen=True)
class Gauge:
    """The series of one engine family (samples named as the family), or only those carrying ``where``."""

    family: str
    where: Labels = ()


@dataclass(frozen=True)
class Ratio:
    """A utilization the engine does not state but gives the parts of: ``used / capacity``."""

    used: Gauge
    capacity: Gauge


@dataclass(frozen=True)
class InfoLabels:
    """Cache geometry as labels of an info gauge (vLLM; SGLang before 0.5.11)."""

    family: str
    block_size: str
    num_blocks: str


@dataclass(frozen=True)
class GaugePair:
    """Cache geometry as two gauges (SGLang from 0.5.11, Triton TensorRT-LLM)."""

    block_size: Gauge
    num_blocks: Gauge


Source = Union[Gauge, Ratio]
CacheSource = Union[InfoLabels, GaugePair]
# Layer-one names for engines the rename tables (``patio.metrics.rules``) do not know:
# scheme -> ((target family, source), ...).
Renames = Mapping[str, Tuple[Tuple[str, Source], ...]]


@dataclass(frozen=True)
class EngineProtocol:
    """One engine's sources; in each tuple the first source present in a scrape wins."""

    engine: str
    queued: Tuple[Source, ...]
    running: Tuple[Source, ...]
    kv: Tuple[Source, ...]
    cache: Tuple[CacheSource, ...] = ()
    # A family already in the EPP's LoRA format (``max_lora``, ``running_lora_adapters``,
    # ``waiting_lora_adapters``; value: the update's Unix time).
    lora_info: Optional[str] = None
    # A gauge whose value is how many adapters one batch can use (SGLang's max_loras_per_batch).
    max_lora: Tuple[Gauge, ...] = ()
    # Every adapter the engine holds is applied at once (no per-batch slots): max_lora is their number.
    all_adapters_active: bool = False
    # Fields some builds of the engine do not export at all: absent then, not failed closed.
    optional: FrozenSet[str] = frozenset()
    renames: Renames = field(default_factory=dict)


def _g(family: str, **where: str) -> Gauge:
    return Gauge(family, tuple(sorted(where.items())))


VLLM = EngineProtocol(
    "vllm",
    queued=(_g("vllm:num_requests_waiting"),),
    running=(_g("vllm:num_requests_running"),),
    # vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc; transitional releases export both.
    kv=(_g("vllm:kv_cache_usage_perc"), _g("vllm:gpu_cache_usage_perc")),
    cache=(InfoLabels("vllm:cache_config_info", "block_size", "num_gpu_blocks"),),
    lora_info="vllm:lora_requests_info",
)

SGLANG = EngineProtocol(
    "sglang",
    queued=(_g("sglang:num_queue_reqs"),),
    running=(_g("sglang:num_running_reqs"),),
    kv=(_g("sglang:token_usage"),),
    # 0.5.11 split cache_config_info{page_size,num_pages} into two gauges; the picker's built-in
    # SGLang entry still reads the info family, which 0.5.23 no longer writes.
    cache=(
        GaugePair(_g("sglang:page_size"), _g("sglang:num_pages")),
        InfoLabels("sglang:cache_config_info", "page_size", "num_pages"),
    ),
    max_lora=(_g("sglang:lora_pool_slots_total"),),
)

LLAMACPP = EngineProtocol(
    "llamacpp",
    queued=(_g("llamacpp:requests_deferred"),),
    running=(_g("llamacpp:requests_processing"),),
    kv=(_g("llamacpp:kv_cache_usage_ratio"),),
    # llama.cpp applies every adapter loaded at start (scaled per request or globally).
    all_adapters_active=True,
    optional=frozenset({KV}),
    renames={
        "patio": (
            ("patio:num_requests_running", _g("llamacpp:requests_processing")),
            ("patio:num_requests_waiting", _g("llamacpp:requests_deferred")),
            ("patio:gpu_cache_usage_perc", _g("llamacpp:kv_cache_usage_ratio")),
            ("patio:input_tokens_total", _g("llamacpp:prompt_tokens_total")),
            ("patio:output_tokens_total", _g("llamacpp:tokens_predicted_total")),
        ),
        "aibrix": (
            ("aibrix:queue_size", _g("llamacpp:requests_deferred")),
            ("aibrix:kv_cache_usage_perc", _g("llamacpp:kv_cache_usage_ratio")),
            ("aibrix:prompt_tokens_total", _g("llamacpp:prompt_tokens_total")),
            ("aibrix:generation_tokens_total", _g("llamacpp:tokens_predicted_total")),
        ),
        "kthena": (
            ("kthena:num_requests_waiting", _g("llamacpp:requests_deferred")),
            ("kthena:generation_tokens_total", _g("llamacpp:tokens_predicted_total")),
        ),
    },
)

_TGI_KV = Ratio(_g("tgi_batch_current_max_tokens"), _g("tgi_batch_max_total_tokens"))
TGI = EngineProtocol(
    "tgi",
    queued=(_g("tgi_queue_size"),),
    running=(_g("tgi_batch_current_size"),),
    kv=(_TGI_KV,),
    # TGI's adapters are fixed at launch (LORA_ADAPTERS) and listed nowhere: no LoRA state to say.
    renames={
        "patio": (
            ("patio:num_requests_running", _g("tgi_batch_current_size")),
            ("patio:num_requests_waiting", _g("tgi_queue_size")),
            ("patio:gpu_cache_usage_perc", _TGI_KV),
        ),
        "aibrix": (
            ("aibrix:queue_size", _g("tgi_queue_size")),
            ("aibrix:kv_cache_usage_perc", _TGI_KV),
        ),
        "kthena": (("kthena:num_requests_waiting", _g("tgi_queue_size")),),
    },
)

_TRT_WAITING = _g("nv_trt_llm_request_metrics", request_type="waiting")
_TRT_SCHEDULED = _g("nv_trt_llm_request_metrics", request_type="scheduled")
_TRT_FRACTION = _g("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction")
TRITON = EngineProtocol(
    "triton",
    # TensorRT-LLM's batch manager first; any Triton model's pending count otherwise.
    queued=(_TRT_WAITING, _g("nv_inference_pending_request_count")),
    # Not GIE's non-LLM "triton" entry (nv_inference_exec_count): that is a counter of executions.
    running=(_TRT_SCHEDULED,),
    kv=(_TRT_FRACTION,),
    cache=(
        GaugePair(
            _g("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per"),
            _g("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max"),
        ),
    ),
    # A Triton without the TensorRT-LLM backend has no batch or KV cache to report.
    optional=frozenset({RUNNING, KV}),
    renames={
        "patio": (
            ("patio:num_requests_running", _TRT_SCHEDULED),
            ("patio:num_requests_waiting", _TRT_WAITING),
            ("patio:gpu_cache_usage_perc", _TRT_FRACTION),
        ),
        "aibrix": (
            ("aibrix:queue_size", _TRT_WAITING),
            ("aibrix:kv_cache_usage_perc", _TRT_FRACTION),
        ),
        "kthena": (("kthena:num_requests_waiting", _TRT_WAITING),),
    },
)

PROTOCOLS: Mapping[str, EngineProtocol] = {p.engine: p for p in (VLLM, SGLANG, LLAMACPP, TGI, TRITON)}
