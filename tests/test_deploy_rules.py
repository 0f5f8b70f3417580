"""The Prometheus alert rules under deploy/prometheus: `promtool check rules`, `promtool test rules`
(every alert fires AND resolves from synthetic series), the alerts the operations kit
promises, and proof that the unit tests can fail (an alert that never fires breaks them)."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml
from deploy_support import ALERT_TESTS, ALERTS, alert_rules, selectors

# What each alert exists for (issue 16) and the Patio family it must read.
REQUIRED_ALERTS = [
    ("PatioEngineDown", "patio_engine_healthy"),
    ("PatioEngineMetricsScrapeFailing", "patio_engine_scrape_errors_total"),
    ("PatioEngineMetricsDroppedLines", "patio_engine_metrics_dropped_lines_total"),
    ("PatioRouterRegistrationLost", "patio_topology_registered"),
    ("PatioLoRAReconcileReloads", "patio_lora_reconcile_reloads_total"),
    ("PatioLoRAOperationsFailing", "patio_lora_operations_total"),
    ("PatioDownloadFailures", "patio_downloads_total"),
    ("PatioLoRAReconcileFailures", "patio_lora_reconcile_failures_total"),
    ("PatioConnectionsRefused", "patio_http_connections_refused_total"),
    ("PatioKVEventGaps", "patio_kv_events_sequence_gaps_total"),
    ("PatioKVEventsDisconnected", "patio_kv_events_connected"),
    ("PatioRouterAuthFailures", "patio_topology_router_auth_failures_total"),
]
SEVERITIES = ("critical", "warning", "info")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, f"unexpected duration {duration!r}"
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_promtool_check_rules():
    result = promtool("check", "rules", str(ALERTS), cwd=ALERTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("alert", "family"), REQUIRED_ALERTS, ids=[a for a, _ in REQUIRED_ALERTS])
def test_required_alert_reads_its_family(alert, family):
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert alert in rules, f"{alert} missing from {ALERTS.name}"
    assert family in {s.name for s in selectors(rules[alert]["expr"])}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_and_description(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def _evaluations() -> Dict[str, List[Tuple[float, bool]]]:
    """alertname -> [(eval time in seconds, expected firing?)] across all unit tests."""
    doc = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    found: Dict[str, List[Tuple[float, bool]]] = {}
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            found.setdefault(check["alertname"], []).append((_seconds(check["eval_time"]), bool(check["exp_alerts"])))
    return found


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_is_tested_to_fire_and_then_resolve(rule):
    checks = sorted(_evaluations().get(rule["alert"], []))
    fired = [t for t, firing in checks if firing]
    assert fired, f"no unit test makes {rule['alert']} fire"
    assert any(not firing and t > fired[0] for t, firing in checks), f"no unit test resolves {rule['alert']}"
    assert any(not firing and t < fired[0] for t, firing in checks), f"no check that {rule['alert']} is quiet first"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_unit_tests_fail_when_the_alert_never_fires(tmp_path, rule):
    """The harness can fail: with this alert's expression replaced by one that never fires,
    promtool's unit tests must report a failure."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for candidate in group["rules"]:
            if candidate["alert"] == rule["alert"]:
                candidate["expr"] = "vector(1) == 0"
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(doc), encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert rule["alert"] in result.stdout + result.stderr
