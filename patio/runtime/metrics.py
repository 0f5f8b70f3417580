"""The runtime's own metrics: engines by phase, sleeping engines, transitions, restarts.

Per-model series exist while the model does (``forget`` drops them at deactivation),
so their number is bounded by ``--runtime-max-models``.  Families:

    patio_engine_sleeping{model}                                 1 while asleep
    patio_engine_sleep_transitions_total{model,action,result}    sleep/wake: applied, skipped,
                                                                 busy, unsupported, failed
    patio_engine_sleep_transition_duration_seconds{action,result}
    patio_runtime_engines{phase}                                 every phase, 0 included
    patio_runtime_engine_ready{model}
    patio_runtime_engine_restarts_total{model}
    patio_runtime_restart_budget_exhausted_total{model}
    patio_runtime_kv_limit_operations_total{model,result}
    patio_runtime_adoptions_total{result}                        after Patio's own restart
    patio_runtime_activations_total{engine,result}
"""

from typing import Callable, Dict, Iterable, List, Tuple

from patio.metrics.model import Family, Sample
from patio.metrics.registry import Registry
from patio.runtime.records import PHASES, ModelRecord

TRANSITION_RESULTS = ("applied", "skipped", "busy", "unsupported", "failed")
ADOPTION_RESULTS = ("adopted", "restart_scheduled", "stopped", "orphan_stopped", "invalid")
ACTIVATION_RESULTS = ("started", "existing", "refused", "failed")
# Sleep and wake take from milliseconds (vLLM on CPU) to a minute (weights to host memory).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RuntimeMetrics:
    def __init__(self, registry: Registry, models: Callable[[], Iterable[ModelRecord]]) -> None:
        self._models = models
        self.transitions: Dict[Tuple[str, ...], float] = {}  # (model, action, result)
        self.restarts: Dict[str, float] = {}
        self.exhausted: Dict[str, float] = {}
        self.kv_operations: Dict[Tuple[str, ...], float] = {}  # (model, result)
        self.adoptions = registry.counter(
            "patio_runtime_adoptions_total", "Engines found again after Patio's own restart, by outcome.", ("result",)
        )
        for result in ADOPTION_RESULTS:
            self.adoptions.inc(result, amount=0.0)
        self.activations = registry.counter(
            "patio_runtime_activations_total", "Model activations, by engine and outcome.", ("engine", "result")
        )
        for engine in ("vllm", "sglang"):
            for result in ACTIVATION_RESULTS:
                self.activations.inc(engine, result, amount=0.0)
        self.durations = registry.histogram(
            "patio_engine_sleep_transition_duration_seconds",
            "Time sleep and wake operations took, engine calls and router changes included.",
            ("action", "result"),
            buckets=DURATION_BUCKETS,
        )
        registry.add_collector(self.collect)

    def transition(self, model: str, action: str, result: str, seconds: float = 0.0) -> None:
        key = (model, action, result)
        self.transitions[key] = self.transitions.get(key, 0.0) + 1
        if result not in ("skipped",):
            self.durations.observe(seconds, action, result)

    def restarted(self, model: str) -> None:
        self.restarts[model] = self.restarts.get(model, 0.0) + 1

    def budget_exhausted(self, model: str) -> None:
        self.exhausted[model] = self.exhausted.get(model, 0.0) + 1

    def kv_limit(self, model: str, result: str) -> None:
        self.kv_operations[(model, result)] = self.kv_operations.get((model, result), 0.0) + 1

    def forget(self, model: str) -> None:
        for table in (self.transitions, self.kv_operations):
            for key in [k for k in table if k[0] == model]:
                del table[key]
        self.restarts.pop(model, None)
        self.exhausted.pop(model, None)

    def collect(self) -> List[Family]:
        models = list(self._models())
        phases = {phase: 0.0 for phase in PHASES}
        for record in models:
            phases[record.phase] += 1
        by_name = sorted(models, key=lambda r: r.model_name)
        families = [
            _family(
                "patio_runtime_engines",
                "gauge",
                "Engines by phase (the engine beside Patio included).",
                [(("phase", p),) for p in PHASES],
                [phases[p] for p in PHASES],
            ),
            _family(
                "patio_engine_sleeping",
                "gauge",
                "1 while the model's engine sleeps.",
                [(("model", r.model_name),) for r in by_name],
                [1.0 if r.phase == "sleeping" else 0.0 for r in by_name],
            ),
            _family(
                "patio_runtime_engine_ready",
                "gauge",
                "1 while the model's engine answered /health 200 at the last probe and is awake.",
                [(("model", r.model_name),) for r in by_name],
                [1.0 if r.ready and r.phase in ("active", "booting") else 0.0 for r in by_name],
            ),
        ]
        families.append(
            _counter(
                "patio_engine_sleep_transitions_total",
                "Sleep and wake operations, by model, action and outcome.",
                ("model", "action", "result"),
                self.transitions,
            )
        )
        families.append(
            _counter(
                "patio_runtime_engine_restarts_total",
                "Engine relaunches after a crash or a start that never became ready.",
                ("model",),
                {(k,): v for k, v in self.restarts.items()},
            )
        )
        families.append(
            _counter(
                "patio_runtime_restart_budget_exhausted_total",
                "Models that became failed after their consecutive-failure budget was spent.",
                ("model",),
                {(k,): v for k, v in self.exhausted.items()},
            )
        )
        families.append(
            _counter(
                "patio_runtime_kv_limit_operations_total",
                "kvcached limit operations, by model and outcome (applied, skipped, unsupported, failed).",
                ("model", "result"),
                self.kv_operations,
            )
        )
        return families


def _family(name: str, kind: str, help: str, labels: List[Tuple[Tuple[str, str], ...]], values: List[float]) -> Family:
    return Family(name, kind, help, [Sample(name, label, value) for label, value in zip(labels, values)])


def _counter(name: str, help: str, labelnames: Tuple[str, ...], table: Dict[Tuple[str, ...], float]) -> Family:
    items = sorted(table.items())
    return Family(name, "counter", help, [Sample(name, tuple(zip(labelnames, key)), value) for key, value in items])
