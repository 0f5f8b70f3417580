"""What the operations kit under deploy/ queries: every PromQL expression of the alert rules
and the Grafana dashboard, and the metric selectors inside them.

A small PromQL tokenizer, enough for the expressions we ship (selectors, functions,
aggregations with by/without, binary operators, ranges): it finds each metric name and
its label matchers so the tests can check them against a real scrape.  An expression it
cannot read is an error, never silently skipped.
"""

import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Tuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "patio-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "patio-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "patio-dashboard.json"

# Grafana's built-in and our template variables, replaced by values Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$pod": ".*"}

AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio".split()
)
GROUPING = frozenset("by without on ignoring group_left group_right".split())
KEYWORDS = frozenset("bool and or unless offset atan2".split())

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
      | (?P<range>\[[^\]]*\])
      | (?P<duration>(?:[0-9]+(?:ms|s|m|h|d|w|y))+)(?![A-Za-z0-9_:])
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<number>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)
      | (?P<op>==|!=|=~|!~|>=|<=|[{}(),=<>+\-*/^%@])
    """,
    re.VERBOSE,
)


class Matcher(NamedTuple):
    label: str
    op: str
    value: str


class Selector(NamedTuple):
    name: str
    matchers: Tuple[Matcher, ...]


def _tokens(expr: str) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize PromQL at {pos}: {expr[pos : pos + 30]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _unquote(token: str) -> str:
    return token[1:-1].encode("utf-8").decode("unicode_escape")


def selectors(expr: str) -> List[Selector]:
    """Every metric selector in ``expr`` with its label matchers."""
    tokens = _tokens(expr)
    found: List[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in GROUPING:
            i += 1
            if nxt == "(":  # a label list: skip it whole
                while tokens[i][1] != ")":
                    i += 1
                i += 1
            continue
        if kind == "ident" and (text in AGGREGATIONS or text in KEYWORDS or nxt == "("):
            i += 1
            continue
        if kind == "op" and text == "{":
            raise ValueError(f"selector without a metric name in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        matchers: List[Matcher] = []
        i += 1
        if i < len(tokens) and tokens[i][1] == "{":
            i += 1
            while tokens[i][1] != "}":
                label, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
                if label[0] != "ident" or op[0] != "op" or value[0] != "string":
                    raise ValueError(f"cannot read label matcher {label[1]}{op[1]}{value[1]} in {expr!r}")
                matchers.append(Matcher(label[1], op[1], _unquote(value[1])))
                i += 3
                if tokens[i][1] == ",":
                    i += 1
            i += 1
        found.append(Selector(text, tuple(matchers)))
    return found


def grouping_labels(expr: str) -> List[str]:
    """The label names of every by/without/on/ignoring/group_left/group_right clause in ``expr``."""
    tokens = _tokens(expr)
    labels: List[str] = []
    for i, (kind, text) in enumerate(tokens):
        if kind == "ident" and text in GROUPING and i + 1 < len(tokens) and tokens[i + 1][1] == "(":
            j = i + 2
            while tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    labels.append(tokens[j][1])
                j += 1
    return labels


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr


def alert_rules() -> List[Dict[str, object]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> Dict[str, object]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels() -> Iterator[Dict[str, object]]:
    for panel in dashboard()["panels"]:  # type: ignore[union-attr]
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)$")


def queries() -> List[Tuple[str, str]]:
    """(where, PromQL) for every alert rule, dashboard target and template variable."""
    out: List[Tuple[str, str]] = [(f"alert {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]
    for panel in dashboard_panels():
        for target in panel.get("targets", []):  # type: ignore[union-attr]
            out.append((f"panel {panel['title']!r} {target['refId']}", grafana_to_promql(target["expr"])))
    for variable in dashboard()["templating"]["list"]:  # type: ignore[index]
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        if match is None:
            raise ValueError(f"variable {variable['name']}: cannot read {variable['definition']!r}")
        out.append((f"variable {variable['name']}", grafana_to_promql(match.group("selector"))))
    return out
