"""Writes patio-dashboard.json, the Grafana dashboard over Patio's ``patio:`` and ``patio_`` families.

The panels are a table (title, what the panel answers, queries, unit) so a reviewer reads
the dashboard here, and tests/test_deploy_dashboard.py checks that the committed JSON is
exactly what this script writes, that every query is valid PromQL (promtool) and that
every metric it names exists in a real scrape of Patio.

    python3 deploy/grafana/generate.py        # rewrite deploy/grafana/patio-dashboard.json
"""

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

OUT = Path(__file__).resolve().parent / "patio-dashboard.json"

# Every query is scoped to the selected pods; the datasource is chosen at import time.
SEL = 'namespace=~"$namespace",pod=~"$pod"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

Query = Tuple[str, str]  # (PromQL, legend)


def quantile(q: float, family: str) -> Query:
    expr = f"histogram_quantile({q}, sum by (le, pod) (rate({family}_bucket{{{SEL}}}[$__rate_interval])))"
    return expr, f"p{int(q * 100)} {{{{pod}}}}"


# (row title, [(panel title, description, [queries], unit, kind)])
ROWS: Sequence[Tuple[str, Sequence[Tuple[str, str, Sequence[Query], str, str]]]] = (
    (
        "Engine: throughput, latency, queue, KV cache",
        (
            (
                "Token throughput",
                "Prompt and generated tokens per second, per pod: is the engine doing work, and how much?",
                (
                    (f"sum by (pod) (rate(patio:input_tokens_total{{{SEL}}}[$__rate_interval]))", "prompt {{pod}}"),
                    (f"sum by (pod) (rate(patio:output_tokens_total{{{SEL}}}[$__rate_interval]))", "generated {{pod}}"),
                ),
                "short",
                "timeseries",
            ),
            (
                "Requests running and waiting",
                "Requests in the engine's batch and in its queue: a growing queue means the pod is saturated.",
                (
                    (f"sum by (pod) (patio:num_requests_running{{{SEL}}})", "running {{pod}}"),
                    (f"sum by (pod) (patio:num_requests_waiting{{{SEL}}})", "waiting {{pod}}"),
                ),
                "short",
                "timeseries",
            ),
            (
                "KV cache usage",
                "Fraction of the KV cache in use (vLLM kv_cache_usage_perc, SGLang token_usage): "
                "near 1 means preemptions and queueing.",
                ((f"max by (pod) (patio:gpu_cache_usage_perc{{{SEL}}})", "{{pod}}"),),
                "percentunit",
                "timeseries",
            ),
            (
                "Time to first token",
                "How long users wait for the first token (p50 and p95).",
                (
                    quantile(0.5, "patio:time_to_first_token_seconds"),
                    quantile(0.95, "patio:time_to_first_token_seconds"),
                ),
                "s",
                "timeseries",
            ),
            (
                "Time per output token",
                "Decode speed as users feel it (p50 and p95).",
                (
                    quantile(0.5, "patio:time_per_output_token_seconds"),
                    quantile(0.95, "patio:time_per_output_token_seconds"),
                ),
                "s",
                "timeseries",
            ),
            (
                "End-to-end request latency and queue time",
                "Whole-request latency (p95) and the part spent queued (p95): "
                "queue time close to latency means the pod needs more capacity.",
                (
                    quantile(0.95, "patio:e2e_request_latency_seconds"),
                    (
                        "histogram_quantile(0.95, sum by (le, pod) "
                        f"(rate(patio:request_queue_time_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                        "queue p95 {{pod}}",
                    ),
                ),
                "s",
                "timeseries",
            ),
        ),
    ),
    (
        "Engine health as Patio sees it",
        (
            (
                "Engine healthy",
                "1 when the engine's /health answers 200 (what readiness and the PatioEngineDown alert use).",
                ((f"min by (pod) (patio_engine_healthy{{{SEL}}})", "{{pod}}"),),
                "bool_yes_no",
                "stat",
            ),
            (
                "Engine metrics scraped",
                "1 when Patio's last scrape of the engine's /metrics succeeded.",
                ((f"min by (pod) (patio_engine_up{{{SEL}}})", "{{pod}}"),),
                "bool_yes_no",
                "stat",
            ),
            (
                "Engine scrape errors by reason",
                "Failed engine scrapes per second: unreachable, timeout, http_status, oversize, bad_encoding.",
                (
                    (
                        f"sum by (pod, reason) (rate(patio_engine_scrape_errors_total{{{SEL}}}[$__rate_interval]))",
                        "{{pod}} {{reason}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Engine scrape duration",
                "How long the last engine scrape took (Patio answers /metrics within --metrics-scrape-timeout).",
                ((f"max by (pod) (patio_engine_scrape_duration_seconds{{{SEL}}})", "{{pod}}"),),
                "s",
                "timeseries",
            ),
            (
                "Dropped and repaired engine lines",
                "Engine lines Patio could not parse (dropped), duplicate series and conflicting TYPE lines "
                "it repaired: non-zero means the engine emits invalid Prometheus text.",
                (
                    (
                        f"sum by (pod) (increase(patio_engine_metrics_dropped_lines_total{{{SEL}}}[$__rate_interval]))",
                        "dropped {{pod}}",
                    ),
                    (
                        "sum by (pod) "
                        f"(increase(patio_engine_metrics_duplicate_series_total{{{SEL}}}[$__rate_interval]))",
                        "duplicates {{pod}}",
                    ),
                    (
                        "sum by (pod) "
                        f"(increase(patio_engine_metrics_type_conflicts_total{{{SEL}}}[$__rate_interval]))",
                        "type conflicts {{pod}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
        ),
    ),
    (
        "LoRA adapters",
        (
            (
                "Adapters by state",
                "Adapters Patio knows by state (pending, loading, loaded, available, unloading, failed): "
                "what routers can send to this pod.",
                ((f"sum by (state) (patio_lora_adapters{{{SEL}}})", "{{state}}"),),
                "short",
                "timeseries",
            ),
            (
                "Resident adapters",
                "Each adapter per pod with its state, source scheme, pinning and origin (api, file, resolver).",
                (
                    (
                        "max by (pod, adapter, state, source_scheme, pinned, origin) "
                        f"(patio_lora_adapter_info{{{SEL}}})",
                        "{{pod}} {{adapter}} {{state}}",
                    ),
                ),
                "short",
                "table",
            ),
            (
                "Last load duration by adapter",
                "How long each adapter's last load took, download included: slow sources show here.",
                ((f"max by (adapter) (patio_lora_adapter_last_load_duration_seconds{{{SEL}}})", "{{adapter}}"),),
                "s",
                "timeseries",
            ),
            (
                "LoRA operations",
                "Load, unload and reload calls per second by result (success, noop, conflict, failed).",
                (
                    (
                        f"sum by (op, result) (rate(patio_lora_operations_total{{{SEL}}}[$__rate_interval]))",
                        "{{op}} {{result}}",
                    ),
                ),
                "ops",
                "timeseries",
            ),
            (
                "LoRA operation duration (p95)",
                "How long a load or unload takes end to end (download included for remote sources).",
                (
                    (
                        "histogram_quantile(0.95, sum by (le, op) "
                        f"(rate(patio_lora_operation_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                        "{{op}}",
                    ),
                ),
                "s",
                "timeseries",
            ),
            (
                "Reloads after the engine lost adapters",
                "Adapters Patio loaded again because the engine had dropped them (engine restarts).",
                (
                    (
                        f"sum by (pod) (increase(patio_lora_reconcile_reloads_total{{{SEL}}}[$__rate_interval]))",
                        "{{pod}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Adapters: failed attempts to reach the desired state",
                "Failed attempts to bring an adapter to its desired state "
                "(adapters file, or a reload after the engine lost it), by adapter.",
                (
                    (
                        f"sum by (adapter) (increase(patio_lora_reconcile_failures_total{{{SEL}}}[$__rate_interval]))",
                        "{{adapter}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
        ),
    ),
    (
        "Router registration (SGLang router)",
        (
            (
                "Registered with the router",
                "1 while the worker is registered (pods with TOPO_TYPE=SGLang only).",
                ((f"min by (pod) (patio_topology_registered{{{SEL}}})", "{{pod}}"),),
                "bool_yes_no",
                "stat",
            ),
            (
                "Heartbeats by result",
                "Registrations and heartbeats sent to the router per second: success, error, engine_unhealthy.",
                (
                    (
                        f"sum by (pod, result) (rate(patio_topology_heartbeats_total{{{SEL}}}[$__rate_interval]))",
                        "{{pod}} {{result}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Router generation",
                "The router generation Patio detected from its answers (sglang-router, smg, vllm-router), per pod.",
                ((f"max by (pod, generation) (patio_topology_router_info{{{SEL}}})", "{{pod}} {{generation}}"),),
                "short",
                "table",
            ),
            (
                "Router auth failures",
                "Router calls refused with 401/403: SGL_ROUTER_API_KEY missing or wrong.",
                (
                    (
                        "sum by (pod) "
                        f"(increase(patio_topology_router_auth_failures_total{{{SEL}}}[$__rate_interval]))",
                        "{{pod}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Router restarts seen",
                "Router restarts Patio noticed (the worker id changed) and recovered from.",
                (
                    (
                        f"sum by (pod) (increase(patio_topology_router_restarts_total{{{SEL}}}[$__rate_interval]))",
                        "{{pod}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
        ),
    ),
    (
        "KV events (KV-aware routing through Redis)",
        (
            (
                "Connected",
                "1 while both the engine's KV-event publisher and Redis are connected (pods with REDIS_HOST only).",
                ((f"min by (pod) (patio_kv_events_connected{{{SEL}}})", "{{pod}}"),),
                "bool_yes_no",
                "stat",
            ),
            (
                "Events received and applied",
                "KV-cache events per second from the engine and written to Redis, by type.",
                (
                    (
                        f"sum by (type) (rate(patio_kv_events_received_total{{{SEL}}}[$__rate_interval]))",
                        "received {{type}}",
                    ),
                    (
                        f"sum by (type) (rate(patio_kv_events_applied_total{{{SEL}}}[$__rate_interval]))",
                        "applied {{type}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Skipped and malformed",
                "Events skipped by type and messages that could not be decoded, by reason.",
                (
                    (
                        f"sum by (type) (rate(patio_kv_events_skipped_total{{{SEL}}}[$__rate_interval]))",
                        "skipped {{type}}",
                    ),
                    (
                        f"sum by (reason) (rate(patio_kv_events_malformed_total{{{SEL}}}[$__rate_interval]))",
                        "malformed {{reason}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Sequence gaps and replays",
                "Lost engine messages (gaps) and the replays Patio asked for, by result: "
                "a gap without a complete replay means the router's view was resynced.",
                (
                    (
                        f"sum by (pod) (increase(patio_kv_events_sequence_gaps_total{{{SEL}}}[$__rate_interval]))",
                        "gaps {{pod}}",
                    ),
                    (
                        f"sum by (result) (increase(patio_kv_events_replays_total{{{SEL}}}[$__rate_interval]))",
                        "replays {{result}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Event lag (p95)",
                "Time from the engine's step to the Redis write: how fresh the router's view of this pod's cache is.",
                (quantile(0.95, "patio_kv_events_lag_seconds"),),
                "s",
                "timeseries",
            ),
            (
                "Backlog",
                "Event batches received and not yet written to Redis "
                "(bounded: past it they are dropped and the pod resynced).",
                ((f"max by (pod) (patio_kv_events_backlog{{{SEL}}})", "{{pod}}"),),
                "short",
                "timeseries",
            ),
            (
                "Redis errors and pod clears",
                "Redis failures, and the times Patio cleared this pod's blocks from Redis, by reason.",
                (
                    (
                        f"sum by (pod) (increase(patio_kv_events_redis_errors_total{{{SEL}}}[$__rate_interval]))",
                        "redis errors {{pod}}",
                    ),
                    (
                        f"sum by (reason) (increase(patio_kv_events_pod_clears_total{{{SEL}}}[$__rate_interval]))",
                        "clears {{reason}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
        ),
    ),
    (
        "Downloads (models and adapters)",
        (
            (
                "Downloads finished",
                "Finished downloads by store and outcome (completed, failed, cancelled).",
                (
                    (
                        f"sum by (kind, outcome) (increase(patio_downloads_total{{{SEL}}}[$__rate_interval]))",
                        "{{kind}} {{outcome}}",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Download throughput",
                "Bytes written per second by store.",
                (
                    (
                        f"sum by (kind) (rate(patio_download_bytes_total{{{SEL}}}[$__rate_interval]))",
                        "{{kind}}",
                    ),
                ),
                "Bps",
                "timeseries",
            ),
            (
                "Downloads in progress",
                "Download jobs running now.",
                ((f"sum by (pod) (patio_downloads_in_progress{{{SEL}}})", "{{pod}}"),),
                "short",
                "timeseries",
            ),
        ),
    ),
    (
        "Patio itself",
        (
            (
                "Resident memory",
                "Patio's RSS (20-25 MB when serving); a steady climb is a leak.",
                ((f"max by (pod) (process_resident_memory_bytes{{{SEL}}})", "{{pod}}"),),
                "bytes",
                "timeseries",
            ),
            (
                "CPU",
                "CPU seconds per second used by Patio.",
                ((f"sum by (pod) (rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval]))", "{{pod}}"),),
                "percentunit",
                "timeseries",
            ),
            (
                "HTTP requests by route and code",
                "Who is calling Patio and what they get (probes, /metrics, LoRA, downloads).",
                (
                    (
                        f"sum by (route, code) (rate(patio_http_requests_total{{{SEL}}}[$__rate_interval]))",
                        "{{route}} {{code}}",
                    ),
                ),
                "reqps",
                "timeseries",
            ),
            (
                "HTTP latency (p99) by route",
                "Probe and /metrics latency: probes must stay fast whatever else Patio does.",
                (
                    (
                        "histogram_quantile(0.99, sum by (le, route) "
                        f"(rate(patio_http_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                        "{{route}}",
                    ),
                ),
                "s",
                "timeseries",
            ),
            (
                "Open connections and file descriptors",
                "Client connections Patio holds open, and its open file descriptors against the limit.",
                (
                    (f"sum by (pod) (patio_http_connections{{{SEL}}})", "connections {{pod}}"),
                    (f"max by (pod) (process_open_fds{{{SEL}}})", "fds {{pod}}"),
                    (f"max by (pod) (process_max_fds{{{SEL}}})", "fd limit {{pod}}"),
                ),
                "short",
                "timeseries",
            ),
            (
                "Connections refused, evicted, cut",
                "Clients refused (at --max-connections, while shutting down, or silent past the first-byte "
                "deadline), idle connections evicted at the limit, answers cut after --write-timeout.",
                (
                    (
                        f"sum by (reason) (rate(patio_http_connections_refused_total{{{SEL}}}[$__rate_interval]))",
                        "refused {{reason}}",
                    ),
                    (
                        f"sum(rate(patio_http_connections_evicted_total{{{SEL}}}[$__rate_interval]))",
                        "evicted",
                    ),
                    (
                        f"sum(rate(patio_http_write_timeouts_total{{{SEL}}}[$__rate_interval]))",
                        "write timeouts",
                    ),
                ),
                "short",
                "timeseries",
            ),
            (
                "Versions",
                "Patio version, engine and model per pod (patio_build_info).",
                (
                    (
                        f"max by (pod, version, engine, engine_version, model) (patio_build_info{{{SEL}}})",
                        "{{pod}} {{version}} {{engine}} {{model}}",
                    ),
                ),
                "short",
                "table",
            ),
        ),
    ),
    (
        "Routing signals: what an endpoint picker weighs",
        (
            (
                "Queue trend",
                "How fast each pod's engine queue grows as the endpoint picker reads it (Patio's router "
                "view, requests per second over 10 minutes): a pod that keeps growing takes more than it "
                "serves; routers score it down, but the pool may be short of capacity (alert "
                "PatioEngineQueueGrowing).",
                ((f"sum by (pod) (deriv(patio:router_num_requests_waiting{{{SEL}}}[10m]))", "{{pod}}"),),
                "short",
                "timeseries",
            ),
            (
                "Time with the KV cache pinned",
                "Share of the last hour each pod's KV cache read above 95% to the endpoint picker (Patio's "
                "router view, which reads 1 while the engine is down or its metrics fail): a pinned cache "
                "preempts and queues, and routers see the pod as full (alert PatioKVCachePinned).",
                (
                    (
                        "avg_over_time((max by (pod) "
                        f"(patio:router_kv_cache_utilization{{{SEL}}}) > bool 0.95)[1h:1m])",
                        "{{pod}}",
                    ),
                ),
                "percentunit",
                "timeseries",
            ),
            (
                "Adapters resident per pod",
                "LoRA adapters each pod serves now: what LoRA-affinity routing can send it without a load.",
                ((f'count by (pod) (patio_lora_adapter_info{{{SEL},state="loaded"}})', "{{pod}}"),),
                "short",
                "timeseries",
            ),
        ),
    ),
)

WIDTH = 8  # three panels per row on Grafana's 24-column grid
HEIGHT = 8


def _panel(panel_id: int, x: int, y: int, title: str, description: str, queries: Sequence[Query], unit: str, kind: str):
    targets = [
        {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(queries)
    ]
    panel: Dict[str, Any] = {
        "id": panel_id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": HEIGHT, "w": WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
    }
    if kind == "table":
        for target in targets:
            target.update({"format": "table", "instant": True})
    return panel


def _variable(name: str, label: str, query: str) -> Dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "sort": 1,
    }


def dashboard() -> Dict[str, Any]:
    panels: List[Dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        for index, spec in enumerate(row_panels):
            x = (index % 3) * WIDTH
            if index and index % 3 == 0:
                y += HEIGHT
            panels.append(_panel(next_id, x, y, *spec))
            next_id += 1
        y += HEIGHT
    return {
        "uid": "patio-sidecar",
        "title": "Patio sidecar",
        "description": "Engine throughput, latency, queue and KV cache through Patio's patio: names; "
        "LoRA adapters, router registration, downloads and Patio's own health.",
        "tags": ["patio", "llm", "vllm", "sglang"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                _variable("namespace", "Namespace", "label_values(patio_build_info, namespace)"),
                _variable("pod", "Pod", 'label_values(patio_build_info{namespace=~"$namespace"}, pod)'),
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUT}\n")
