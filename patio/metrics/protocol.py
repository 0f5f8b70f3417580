"""The model-server protocol a router reads, the same for every engine.

The llm-d / Gateway API Inference Extension endpoint picker (EPP) scrapes each pod for a
queue, a running count, a KV-cache utilization, the cache geometry and LoRA state, under
names that differ per engine.  This module turns one scrape of the engine's families plus
what Patio knows (is the engine up, which adapters it serves, ``max_lora``) into:

- the **router view**, one series per family, ``patio:router_*``, ``patio:cache_config_info``
  and ``patio:lora_requests_info``, which one EPP engine config reads for every engine;
- **layer-one renames** (``patio:num_requests_waiting`` ...) for engines the rename tables of
  ``patio.metrics.rules`` do not know (llama.cpp, TGI, Triton), per scheme.

The router view is built so that what the EPP computes from it is never a lie, read against
the EPP's code (``llm-d/llm-d-router`` at ebab687,
``pkg/epp/framework/plugins/datalayer/extractor/metrics/{extractor,spec,loraspec}.go``):

- it takes the *first* series of a family (all timestamps are 0), so data-parallel ranks are
  summed (queue, running) or averaged (KV) into one series here;
- ``int()`` of NaN or ±Inf is garbage in Go and a negative queue scores best: such a value is
  never written; a field that cannot be read honestly is left out and the pod's KV
  utilization reads 1, so it is not offered capacity it may not have;
- a family left out keeps its last value in the EPP, so an engine that is down does not go
  quiet: it reads 0 queued, 0 running, KV utilization 1 (no cache to give) and no LoRA
  adapter active with ``max_lora="0"``;
- adapter lists are split on commas and trimmed by the EPP: a name with a comma or edge
  blanks is left out, and a list is cut to ``MAX_ADAPTER_LIST_CHARS`` at a whole name with
  ``max_lora`` lowered so the EPP's "room for one more" test stays true.

Pure: no I/O, no clock (the caller passes ``now``), no state between calls.
"""

import math
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from patio.metrics.model import Family, Labels, Sample, decode_label_text
from patio.metrics.protocol_tables import (
    KV,
    PROTOCOLS,
    QUEUED,
    RUNNING,
    CacheSource,
    EngineProtocol,
    Gauge,
    InfoLabels,
    Ratio,
    Source,
)
from patio.metrics.rules import TABLES

ROUTER_WAITING = "patio:router_num_requests_waiting"
ROUTER_RUNNING = "patio:router_num_requests_running"
ROUTER_KV = "patio:router_kv_cache_utilization"
CACHE_INFO = "patio:cache_config_info"
LORA_INFO = "patio:lora_requests_info"
ROUTER_FAMILIES = (ROUTER_WAITING, ROUTER_RUNNING, ROUTER_KV, CACHE_INFO, LORA_INFO)

# Longest adapter list written into one label (characters, commas included).  Prometheus servers
# that set label_value_length_limit drop a whole scrape over one long label; the EPP needs the
# names only to score affinity, and a pod serving more than ~150 names has no affinity to speak of.
MAX_ADAPTER_LIST_CHARS = 4096
# Problems reported per call (each a short sentence for one log line).
MAX_PROBLEMS = 8
# A KV utilization this far above 1 is float noise, not a wrong scale.
KV_SLACK = 1e-6

_HELP = {
    ROUTER_WAITING: "Requests waiting in the engine, summed over its data-parallel ranks; 0 while the engine is down.",
    ROUTER_RUNNING: "Requests the engine is running, summed over its data-parallel ranks; 0 while the engine is down.",
    ROUTER_KV: "KV-cache utilization 0-1 (mean over ranks); 1 while the engine is down or its load is unknown.",
    CACHE_INFO: "KV-cache geometry for routers: block_size (tokens per block) and num_gpu_blocks (all ranks).",
    LORA_INFO: "LoRA state in the model-server protocol's format; the value is the update's Unix time.",
}

# A canonical line (``patio.metrics.model.Item`` as the scrape path keeps it): name, labels,
# value, optional timestamp.  Values and timestamps hold no '}' or blank, so the last '} '
# closes the labels even when a label value holds either.
_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)(?: [0-9]+)?$")

Series = List[Tuple[Labels, float]]


@dataclass(frozen=True)
class ProtocolState:
    """What Patio knows beside the scrape, snapshotted on the event loop for one scrape."""

    engine_up: bool  # the engine's health answered (the watch's last state), not just its /metrics
    adapters: Tuple[str, ...] = ()  # adapters the engine confirmed serving since it last started
    max_lora: Optional[int] = None  # configured, for engines that do not say it
    now: float = 0.0  # time.time() of the scrape: the synthesized LoRA update's time


class ProtocolOutput(NamedTuple):
    renamed: List[Family]  # layer one for engines the rename tables lack ("standard" and "both" modes)
    router: List[Family]  # the router view (every mode)
    problems: Tuple[str, ...]  # why a field was left out or saturated, for the log


class _Problems:
    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, text: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(text)


def _series(family: Family, name: str) -> Iterator[Tuple[Labels, float]]:
    """(labels, value) of the family's samples named ``name`` (a histogram's buckets are not)."""
    for item in family.samples:
        if isinstance(item, str):
            match = _LINE.match(item)
            if match is None or match.group(1) != name:
                continue
            try:
                value = float(match.group(3))
            except ValueError:
                continue
            yield decode_label_text(match.group(2) or ""), value
        elif item.name == name:
            yield item.labels, item.value


def _gauge(gauge: Gauge, families: Mapping[str, Family]) -> Optional[Series]:
    family = families.get(gauge.family)
    if family is None:
        return None
    want = gauge.where
    found = [(labels, value) for labels, value in _series(family, gauge.family) if all(p in labels for p in want)]
    return found or None


def _without(labels: Labels, keys: Iterable[str]) -> Labels:
    drop = set(keys)
    return tuple((k, v) for k, v in labels if k not in drop)


def _resolve(source: Source, families: Mapping[str, Family]) -> Optional[Series]:
    """The source's series (selector labels removed), or None when the engine does not write it."""
    if isinstance(source, Gauge):
        found = _gauge(source, families)
        if found is None:
            return None
        keys = [k for k, _ in source.where]
        return [(_without(labels, keys), value) for labels, value in found]
    used, capacity = _resolve(source.used, families), _resolve(source.capacity, families)
    if used is None or capacity is None:
        return None
    budgets = dict(capacity)
    out: Series = []
    for labels, value in used:
        budget = budgets.get(labels)
        if budget is None:
            continue
        out.append((labels, value / budget if budget > 0 else math.nan))
    return out or None


def _first(sources: Sequence[Source], families: Mapping[str, Family]) -> Tuple[Optional[Source], Optional[Series]]:
    for source in sources:
        found = _resolve(source, families)
        if found is not None:
            return source, found
    return None, None


def _name(source: Optional[Source]) -> str:
    if isinstance(source, Ratio):
        return f"{source.used.family} / {source.capacity.family}"
    return source.family if source is not None else "?"


def _count(source: Optional[Source], found: Series, problems: _Problems) -> Optional[float]:
    """Queued or running: the sum over ranks, or None when a value is not a count."""
    for _, value in found:
        if not math.isfinite(value) or value < 0:
            problems.add(f"{_name(source)} is {value!r}, not a count")
            return None
    return float(sum(value for _, value in found))


def _utilization(source: Optional[Source], found: Series, problems: _Problems) -> Optional[float]:
    """The mean over ranks, or None when a value is not a fraction."""
    for _, value in found:
        if not (math.isfinite(value) and 0 <= value <= 1 + KV_SLACK):
            problems.add(f"{_name(source)} is {value!r}, not a fraction 0-1")
            return None
    return min(1.0, sum(value for _, value in found) / len(found))


def _whole(value: float, minimum: int) -> Optional[int]:
    if not math.isfinite(value) or value < minimum or not value.is_integer():
        return None
    return int(value)


def _whole_text(text: str, minimum: int) -> Optional[int]:
    """A label's count (``"16"``, ``"16.0"``), or None when it is not one (vLLM writes ``"None"``)."""
    try:
        return _whole(float(text), minimum)
    except ValueError:
        return None


def _cache(sources: Sequence[CacheSource], families: Mapping[str, Family]) -> Optional[Tuple[int, int]]:
    """(block size, blocks): the smallest block size (vLLM's hybrid models) and all ranks' blocks."""
    for source in sources:
        pairs: List[Tuple[Optional[int], Optional[int]]] = []
        if isinstance(source, InfoLabels):
            family = families.get(source.family)
            for labels, _ in _series(family, source.family) if family is not None else ():
                by_name = dict(labels)
                pairs.append(
                    (
                        _whole_text(by_name.get(source.block_size, ""), 1),
                        _whole_text(by_name.get(source.num_blocks, ""), 1),
                    )
                )
        else:
            sizes, blocks = _resolve(source.block_size, families), _resolve(source.num_blocks, families)
            if sizes is not None and blocks is not None:
                counts = dict(blocks)  # one rank's size and count share its labels
                pairs = [(_whole(s, 1), _whole(counts.get(labels, math.nan), 1)) for labels, s in sizes]
        if pairs and all(size is not None and count is not None for size, count in pairs):
            return min(size for size, _ in pairs if size is not None), sum(n for _, n in pairs if n is not None)
    return None


def _epp_names(csv: str) -> List[str]:
    """The names the EPP reads from a label: split on commas, trimmed, empties dropped (extractor.go addAdapters)."""
    out: List[str] = []
    for part in csv.split(","):
        name = part.strip()
        if name and name not in out:
            out.append(name)
    return out


def _writable(names: Iterable[str], problems: _Problems) -> List[str]:
    """Names the EPP reads back unchanged: no comma, no blank at either end."""
    out: List[str] = []
    for name in names:
        if not name or "," in name or name != name.strip():
            problems.add(f"adapter name {name!r} left out of {LORA_INFO}: the EPP splits on commas and trims")
            continue
        if name not in out:
            out.append(name)
    return out


def _bounded(names: List[str], budget: int) -> List[str]:
    kept: List[str] = []
    used = 0
    for name in names:
        cost = len(name) + (1 if kept else 0)
        if used + cost > budget:
            break
        kept.append(name)
        used += cost
    return kept


def _lora_family(running: List[str], waiting: List[str], max_lora: int, value: float, problems: _Problems) -> Family:
    kept_running = _bounded(running, MAX_ADAPTER_LIST_CHARS)
    kept_waiting = _bounded(waiting, MAX_ADAPTER_LIST_CHARS)
    cut = len(running) - len(kept_running) + len(waiting) - len(kept_waiting)
    if cut:
        problems.add(
            f"{cut} adapter name(s) cut from {LORA_INFO} (lists are bounded to {MAX_ADAPTER_LIST_CHARS} chars)"
        )
        if len(running) + len(waiting) >= max_lora:
            # The EPP offers a pod "room for one more" when listed < max_lora: with names cut, keep it false.
            max_lora = min(max_lora, len(kept_running) + len(kept_waiting))
    labels = (
        ("max_lora", str(max_lora)),
        ("running_lora_adapters", ",".join(kept_running)),
        ("waiting_lora_adapters", ",".join(kept_waiting)),
    )
    return Family(LORA_INFO, "gauge", _HELP[LORA_INFO], [Sample(LORA_INFO, labels, value)])


def _latest(family: Family) -> Optional[Tuple[Labels, float]]:
    """The series the EPP keeps (loraspec.go: the greatest value); non-finite values are not times."""
    best: Optional[Tuple[Labels, float]] = None
    for labels, value in _series(family, family.name):
        if math.isfinite(value) and value >= 0 and (best is None or value > best[1]):
            best = (labels, value)
    return best


def _lora(
    protocol: EngineProtocol, families: Mapping[str, Family], state: ProtocolState, problems: _Problems
) -> Optional[Family]:
    declared = protocol.lora_info is not None and protocol.lora_info in families
    engine_max: Optional[int] = None
    for gauge in protocol.max_lora:
        found = _gauge(gauge, families)
        if found is not None:
            values = [_whole(value, 1) for _, value in found]
            engine_max = min(v for v in values if v is not None) if all(v is not None for v in values) else None
            break
    latest = _latest(families[protocol.lora_info]) if declared and protocol.lora_info else None
    if latest is not None:
        by_name = dict(latest[0])
        running = _writable(_epp_names(by_name.get("running_lora_adapters", "")), problems)
        waiting = _writable(_epp_names(by_name.get("waiting_lora_adapters", "")), problems)
        raw_max = by_name.get("max_lora", "")
        stated = _whole_text(raw_max, 0)
        if stated is None:
            problems.add(f"max_lora={raw_max!r} of {protocol.lora_info} is not a count")
        value = latest[1]
    else:
        if not (declared or engine_max is not None or state.max_lora is not None or state.adapters):
            return None  # no LoRA here: absent, which the EPP reads as "no LoRA" (loraspec.go)
        running, waiting, stated, value = _writable(sorted(state.adapters), problems), [], None, state.now
    if stated is None:
        stated = engine_max
    if stated is None:
        stated = state.max_lora
    if stated is None:
        # Unknown: the adapters held are known to fit, so their number is a true lower bound, and the
        # EPP then offers no room it cannot vouch for.  Engines that apply every adapter: exact.
        stated = len(running) + len(waiting)
    return _lora_family(running, waiting, stated, value, problems)


def _gauge_family(name: str, value: float) -> Family:
    return Family(name, "gauge", _HELP[name], [Sample(name, (), value)])


def _router_view(
    protocol: EngineProtocol, families: Mapping[str, Family], state: ProtocolState, problems: _Problems
) -> List[Family]:
    if not state.engine_up:
        # Down: nothing waits or runs in it, it has no cache to give and serves no adapter.  Every
        # family stays present: one left out would keep its last (maybe idle) value in the EPP.
        return [
            _gauge_family(ROUTER_WAITING, 0.0),
            _gauge_family(ROUTER_RUNNING, 0.0),
            _gauge_family(ROUTER_KV, 1.0),
            _lora_family([], [], 0, state.now, problems),
        ]
    out: List[Family] = []
    load_known = True
    for field, name, sources in (
        (QUEUED, ROUTER_WAITING, protocol.queued),
        (RUNNING, ROUTER_RUNNING, protocol.running),
    ):
        source, found = _first(sources, families)
        value = _count(source, found, problems) if found is not None else None
        if value is not None:
            out.append(_gauge_family(name, value))
        elif found is not None or field not in protocol.optional:
            if found is None:
                problems.add(f"no {field} family ({', '.join(_name(s) for s in sources)}) in the engine's metrics")
            load_known = False  # left out: the EPP keeps its last value, so the KV below says "full"
    source, found = _first(protocol.kv, families)
    kv = _utilization(source, found, problems) if found is not None else None
    if kv is None and (found is not None or KV not in protocol.optional):
        if found is None:
            problems.add(f"no KV family ({', '.join(_name(s) for s in protocol.kv)}) in the engine's metrics")
        kv = 1.0
    if not load_known:
        kv = 1.0  # its load is unknown: offer no capacity
    if kv is not None:
        out.append(_gauge_family(ROUTER_KV, kv))
    cache = _cache(protocol.cache, families)
    if cache is not None:
        labels = (("block_size", str(cache[0])), ("num_gpu_blocks", str(cache[1])))
        out.append(Family(CACHE_INFO, "gauge", _HELP[CACHE_INFO], [Sample(CACHE_INFO, labels, 1.0)]))
    lora = _lora(protocol, families, state, problems)
    if lora is not None:
        out.append(lora)
    return out


def _renamed(target: str, source: Source, families: Mapping[str, Family]) -> Optional[Family]:
    found = _resolve(source, families)
    if found is None:
        return None
    origin = families.get(source.family) if isinstance(source, Gauge) else None
    kind = origin.type if origin is not None and origin.type in ("gauge", "counter") else "gauge"
    if kind == "counter" and not target.endswith("_total"):
        kind = "gauge"
    help_text = origin.help if origin is not None and origin.help else f"{_name(source)}, under a stable name."
    return Family(target, kind, help_text, [Sample(target, labels, value) for labels, value in found])


class ProtocolView:
    """One engine's protocol, compiled once at start for the configured rename scheme."""

    def __init__(self, protocol: EngineProtocol, renames: Sequence[Tuple[str, Source]] = ()) -> None:
        self.protocol = protocol
        self.renames = tuple(renames)

    @classmethod
    def for_engine(cls, engine: str, scheme: str) -> "ProtocolView":
        protocol = PROTOCOLS[engine]
        # vLLM and SGLang are renamed by patio.metrics.rules; the other engines here.
        renames = () if engine in TABLES.get(scheme, {}) else protocol.renames.get(scheme, ())
        return cls(protocol, renames)

    def families(self, families: Mapping[str, Family], state: ProtocolState) -> ProtocolOutput:
        """The protocol families for one scrape (``families``: the engine's, by name; empty when
        the scrape failed).  Never raises for any content."""
        problems = _Problems()
        renamed: List[Family] = []
        for target, source in self.renames:
            family = _renamed(target, source, families)
            if family is not None:
                renamed.append(family)
        router = _router_view(self.protocol, families, state, problems)
        return ProtocolOutput(renamed, router, tuple(problems.items))


def by_name(families: Iterable[Family]) -> Dict[str, Family]:
    """The engine's families keyed as ``ProtocolView.families`` reads them (the first of a name wins)."""
    out: Dict[str, Family] = {}
    for family in families:
        out.setdefault(family.name, family)
    return out
