"""Rename schemes: stable metric names over whichever engine runs.

The ``aibrix`` and ``kthena`` tables are the incumbents' own renames (AIBrix's
python/aibrix/aibrix/metrics/engine_rules.py, Kthena's runtime ``kthena:*`` names), so
their dashboards and autoscalers read what they did; ``patio`` is Patio's.  Each rule maps one
target family to source families in priority order; the first source present
in a scrape wins (engine releases renamed families, transitional versions
export both).  Rules are data, compiled once at start into a ``RuleSet``.

A rule matches the family as declared in ``# TYPE`` and renames every sample
name that starts with it, so counters' ``_total``, histograms'
``_bucket``/``_sum``/``_count`` and the companion ``_created`` family follow.
No I/O.
"""

from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

from patio.metrics.model import Family, Lines, renamed_item

Table = Mapping[str, Sequence[Tuple[str, Sequence[str]]]]

PATIO: Table = {
    "vllm": (
        ("patio:num_requests_running", ("vllm:num_requests_running",)),
        ("patio:num_requests_waiting", ("vllm:num_requests_waiting",)),
        ("patio:gpu_cache_usage_perc", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
        ("patio:time_to_first_token_seconds", ("vllm:time_to_first_token_seconds",)),
        (
            "patio:time_per_output_token_seconds",
            ("vllm:request_time_per_output_token_seconds", "vllm:time_per_output_token_seconds"),
        ),
        ("patio:inter_token_latency_seconds", ("vllm:inter_token_latency_seconds",)),
        ("patio:e2e_request_latency_seconds", ("vllm:e2e_request_latency_seconds",)),
        ("patio:request_queue_time_seconds", ("vllm:request_queue_time_seconds",)),
        ("patio:input_tokens_total", ("vllm:prompt_tokens_total",)),
        ("patio:output_tokens_total", ("vllm:generation_tokens_total",)),
    ),
    "sglang": (
        ("patio:num_requests_running", ("sglang:num_running_reqs",)),
        ("patio:num_requests_waiting", ("sglang:num_queue_reqs",)),
        ("patio:gpu_cache_usage_perc", ("sglang:token_usage",)),
        ("patio:time_to_first_token_seconds", ("sglang:time_to_first_token_seconds",)),
        (
            "patio:time_per_output_token_seconds",
            ("sglang:request_time_per_output_token_seconds", "sglang:time_per_output_token_seconds"),
        ),
        ("patio:inter_token_latency_seconds", ("sglang:inter_token_latency_seconds",)),
        ("patio:e2e_request_latency_seconds", ("sglang:e2e_request_latency_seconds",)),
        ("patio:request_queue_time_seconds", ("sglang:queue_time_seconds",)),
        ("patio:input_tokens_total", ("sglang:prompt_tokens_total", "sglang:num_prompt_tokens_total")),
        ("patio:output_tokens_total", ("sglang:generation_tokens_total",)),
    ),
}

AIBRIX: Table = {
    "vllm": (
        ("aibrix:queue_size", ("vllm:num_requests_waiting",)),
        ("aibrix:gpu_cache_usage_perc", ("vllm:gpu_cache_usage_perc",)),
        ("aibrix:kv_cache_usage_perc", ("vllm:kv_cache_usage_perc",)),
        ("aibrix:prompt_tokens_total", ("vllm:prompt_tokens_total",)),
        ("aibrix:generation_tokens_total", ("vllm:generation_tokens_total",)),
        ("aibrix:time_to_first_token_seconds", ("vllm:time_to_first_token_seconds",)),
        ("aibrix:time_per_output_token_seconds", ("vllm:time_per_output_token_seconds",)),
        ("aibrix:e2e_request_latency_seconds", ("vllm:e2e_request_latency_seconds",)),
        ("aibrix:request_success_total", ("vllm:request_success_total",)),
    ),
    "sglang": (
        ("aibrix:queue_size", ("sglang:num_queue_reqs",)),
        ("aibrix:generation_throughput", ("sglang:gen_throughput",)),
        ("aibrix:prompt_tokens_total", ("sglang:prompt_tokens_total",)),
        ("aibrix:generation_tokens_total", ("sglang:generation_tokens_total",)),
        ("aibrix:time_to_first_token_seconds", ("sglang:time_to_first_token_seconds",)),
        ("aibrix:time_per_output_token_seconds", ("sglang:time_per_output_token_seconds",)),
        ("aibrix:e2e_request_latency_seconds", ("sglang:e2e_request_latency_seconds",)),
        ("aibrix:cache_hit_rate", ("sglang:cache_hit_rate",)),
        ("aibrix:token_usage", ("sglang:token_usage",)),
    ),
}

KTHENA: Table = {
    "vllm": (
        ("kthena:generation_tokens_total", ("vllm:generation_tokens_total",)),
        ("kthena:num_requests_waiting", ("vllm:num_requests_waiting",)),
        ("kthena:time_to_first_token_seconds", ("vllm:time_to_first_token_seconds",)),
        (
            "kthena:time_per_output_token_seconds",
            ("vllm:time_per_output_token_seconds", "vllm:request_time_per_output_token_seconds"),
        ),
        ("kthena:e2e_request_latency_seconds", ("vllm:e2e_request_latency_seconds",)),
    ),
    "sglang": (
        ("kthena:generation_tokens_total", ("sglang:generation_tokens_total",)),
        ("kthena:num_requests_waiting", ("sglang:num_queue_reqs",)),
        ("kthena:time_to_first_token_seconds", ("sglang:time_to_first_token_seconds",)),
        ("kthena:time_per_output_token_seconds", ("sglang:inter_token_latency_seconds",)),
        ("kthena:e2e_request_latency_seconds", ("sglang:e2e_request_latency_seconds",)),
    ),
}

TABLES: Mapping[str, Table] = {"patio": PATIO, "aibrix": AIBRIX, "kthena": KTHENA}


class Rule(NamedTuple):
    target: str
    sources: Tuple[str, ...]


class RuleSet:
    """The rules of one scheme for one engine, ready to apply."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def for_scheme(cls, scheme: str, engine: str) -> "RuleSet":
        table = TABLES[scheme]
        return cls([Rule(target, tuple(sources)) for target, sources in table.get(engine, ())])

    def apply(self, families: Mapping[str, Family]) -> List[Family]:
        """The renamed families (new objects), in rule order.  Sources are left untouched."""
        out: List[Family] = []
        for rule in self.rules:
            match = _first_present(rule, families)
            if match is None:
                continue
            source_name, target_name, family = match
            out.append(_renamed(family, source_name, target_name))
            companion = _created_companion(family, source_name, target_name, families)
            if companion is not None:
                out.append(companion)
        return out


def _first_present(rule: Rule, families: Mapping[str, Family]) -> Optional[Tuple[str, str, Family]]:
    for source in rule.sources:
        family = families.get(source)
        if family is not None and family.samples:
            return source, rule.target, family
        # A counter may be declared by its base name (`# TYPE x counter`, samples `x_total`).
        if source.endswith("_total") and rule.target.endswith("_total"):
            base = families.get(source[:-6])
            if base is not None and base.type == "counter" and base.samples:
                return source[:-6], rule.target[:-6], base
    return None


def _renamed(family: Family, source: str, target: str) -> Family:
    # A canonical line starts with its name, and ``source`` is made of name characters: the line
    # starts with ``source`` exactly when its name does.
    if isinstance(family.samples, Lines):
        return Family(target, family.type, family.help, family.samples.renamed(source, target))
    samples = [
        renamed_item(s, source, target)
        for s in family.samples
        if (s if isinstance(s, str) else s.name).startswith(source)
    ]
    return Family(target, family.type, family.help, samples)


def _created_companion(family: Family, source: str, target: str, families: Mapping[str, Family]) -> Optional[Family]:
    """classic text puts ``<base>_created`` in a family of its own; it follows its counter/histogram."""
    if family.type == "counter" and source.endswith("_total") and target.endswith("_total"):
        source_base, target_base = source[:-6], target[:-6]
    elif family.type in ("histogram", "summary"):
        source_base, target_base = source, target
    else:
        return None
    created = families.get(source_base + "_created")
    if created is None or created is family or not created.samples:
        return None
    return _renamed(created, source_base + "_created", target_base + "_created")
