"""The Grafana dashboard under deploy/grafana: the committed JSON is what generate.py writes,
every query is PromQL that Prometheus accepts (promtool), the layout is sound, and it covers
what operators need to see (issue 16)."""

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest
import yaml
from deploy_support import DASHBOARD, DEPLOY, dashboard, dashboard_panels, grouping_labels, queries, selectors

# Area -> a family that must be on the dashboard for it.
COVERAGE = [
    ("engine throughput", "patio:output_tokens_total"),
    ("engine latency", "patio:time_to_first_token_seconds_bucket"),
    ("engine queue", "patio:num_requests_waiting"),
    ("KV cache use", "patio:gpu_cache_usage_perc"),
    ("LoRA adapters", "patio_lora_adapters"),
    ("LoRA residency", "patio_lora_adapter_info"),
    ("adapters file", "patio_lora_reconcile_failures_total"),
    ("LoRA operations", "patio_lora_operations_total"),
    ("router registration", "patio_topology_registered"),
    ("downloads", "patio_downloads_total"),
    ("engine health", "patio_engine_healthy"),
    ("Patio memory", "process_resident_memory_bytes"),
    ("Patio HTTP", "patio_http_requests_total"),
    ("refused connections", "patio_http_connections_refused_total"),
    ("KV-event gaps", "patio_kv_events_sequence_gaps_total"),
    ("KV-event lag", "patio_kv_events_lag_seconds_bucket"),
    ("router generation", "patio_topology_router_info"),
]


def _generator():
    spec = importlib.util.spec_from_file_location("patio_dashboard_generate", DEPLOY / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool_check(exprs: List[Tuple[str, str]], tmp_path: Path) -> subprocess.CompletedProcess:
    """Checks PromQL with promtool by wrapping each expression in a recording rule."""
    rules = [{"record": f"dashboard:check_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    return subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_committed_json_is_what_the_generator_writes():
    assert DASHBOARD.read_text(encoding="utf-8") == _generator().render(), (
        "deploy/grafana/patio-dashboard.json is stale: run python3 deploy/grafana/generate.py"
    )


def test_every_query_is_valid_promql(tmp_path):
    exprs = queries()
    result = promtool_check(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


@pytest.mark.parametrize(
    "expr",
    ['sum by (pod) (rate(patio_http_requests_total{pod=~".*"}[5m])', "histogram_quantile(0.9, )"],
    ids=["unbalanced", "missing-argument"],
)
def test_the_promql_check_rejects_broken_queries(tmp_path, expr):
    assert promtool_check([("broken", expr)], tmp_path).returncode != 0


def test_layout_ids_grid_and_datasource():
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for dx in range(pos["w"]):
            for dy in range(pos["h"]):
                cell = (pos["x"] + dx, pos["y"] + dy)
                assert cell not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add(cell)
        if panel["type"] == "row":
            continue
        assert panel["description"].strip(), f"panel {panel['title']!r} says what it answers"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))


def test_template_variables_are_defined():
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert names == {"datasource", "namespace", "pod"}
    text = DASHBOARD.read_text(encoding="utf-8")
    for name in names:
        assert f"${name}" in text or f"${{{name}}}" in text


@pytest.mark.parametrize(("area", "family"), COVERAGE, ids=[a for a, _ in COVERAGE])
def test_dashboard_covers(area, family):
    used = {s.name for _, expr in queries() for s in selectors(expr)}
    assert family in used, f"no panel shows {area} ({family})"


TARGETS = [(panel["title"], target) for panel in dashboard_panels() for target in panel.get("targets", [])]


@pytest.mark.parametrize(("title", "target"), TARGETS, ids=[f"{t}:{x['refId']}" for t, x in TARGETS])
def test_legend_names_only_labels_the_query_keeps(title, target):
    """A legend {{label}} the aggregation dropped renders empty."""
    kept = set(grouping_labels(target["expr"]))
    for label in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target["legendFormat"]):
        assert label in kept, f"{title}: legend uses {label!r}, the query keeps {sorted(kept)}"
