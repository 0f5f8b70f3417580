"""Adapter residency metrics for routers: which adapters this pod holds, in what state.

vLLM's ``vllm:lora_requests_info`` only lists adapters with requests in flight;
routers (llm-d, the inference gateway) want what is resident.  Computed at
scrape time from the LoRA manager's records plus the adapters the file names
that have no record (pending, or failed before the engine saw them), so the
series vanish with the adapter: cardinality is bounded by ``--max-adapters``.
Label values come from closed sets (state, scheme, origin) or from adapter
names, which match ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``.
"""

from typing import TYPE_CHECKING, Dict, Iterable, List, NamedTuple, Optional, Protocol

from patio.artifacts.uri import scheme_label
from patio.metrics.model import Family, Sample
from patio.metrics.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from patio.lora.manager import LoraManager

# States always exported by patio_lora_adapters, so a dashboard sees zeros, not gaps.
STATES = ("pending", "loading", "loaded", "available", "unloading", "failed")


class Resident(NamedTuple):
    """One adapter as the metrics show it."""

    name: str
    state: str
    source: str
    pinned: bool
    origin: str
    load_seconds: Optional[float]


class FileAdapters(Protocol):
    """What the metrics read of the adapters file (``lora.desired_sync.DesiredSync``)."""

    def unrecorded(self) -> List[Resident]: ...

    def failures(self) -> Dict[str, float]: ...


def families(residents: Iterable[Resident], failures: Dict[str, float]) -> List[Family]:
    rows = sorted(residents, key=lambda r: r.name)
    info = Family(
        "patio_lora_adapter_info",
        "gauge",
        "1 for each adapter Patio knows, with its state, source scheme, pinning and origin (api, file, resolver).",
    )
    counts = {state: 0 for state in STATES}
    durations = Family(
        "patio_lora_adapter_last_load_duration_seconds",
        "gauge",
        "How long the adapter's last load took (download included; resolver mode: download and install).",
    )
    for row in rows:
        labels = (
            ("adapter", row.name),
            ("state", row.state),
            ("source_scheme", scheme_label(row.source)),  # the one scheme table (artifacts.uri)
            ("pinned", "true" if row.pinned else "false"),
            ("origin", row.origin),
        )
        info.samples.append(Sample(info.name, labels, 1.0))
        counts[row.state] = counts.get(row.state, 0) + 1
        if row.load_seconds is not None:
            durations.samples.append(Sample(durations.name, (("adapter", row.name),), float(row.load_seconds)))
    by_state = Family("patio_lora_adapters", "gauge", "Adapters Patio knows, by state.")
    for state in sorted(counts):
        by_state.samples.append(Sample(by_state.name, (("state", state),), float(counts[state])))
    failed = Family(
        "patio_lora_reconcile_failures_total",
        "counter",
        "Failed attempts to bring an adapter to its desired state: adapters-file loads and unloads, and "
        "reconcile reloads of an adapter the engine lost.",
    )
    for name in sorted(failures):
        failed.samples.append(Sample(failed.name, (("adapter", name),), float(failures[name])))
    return [info, by_state, durations, failed]


class ResidencyMetrics:
    """The collector: the manager's records, plus the file's adapters that have none."""

    def __init__(self, manager: "LoraManager", registry: Registry, desired: Optional[FileAdapters] = None) -> None:
        self.manager = manager
        self.desired = desired
        registry.add_collector(self.collect)

    def residents(self) -> List[Resident]:
        rows = [
            Resident(a.name, a.state, a.source, bool(a.extra.get("pinned")), a.origin, a.load_seconds)
            for a in list(self.manager.adapters.values())
        ]
        if self.desired is not None:
            known = set(r.name for r in rows)
            rows.extend(r for r in self.desired.unrecorded() if r.name not in known)
        return rows

    def collect(self) -> List[Family]:
        failures = self.desired.failures() if self.desired is not None else {}
        for name, count in self.manager.adapters.reload_failures().items():
            failures[name] = failures.get(name, 0.0) + count
        return families(self.residents(), failures)
