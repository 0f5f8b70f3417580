"""The shared conformance corpora as test tables."""

import json
import math

import pytest
from support import shared_path

from patio.metrics.parse import parse
from patio.metrics.write import render

CLIENT_PYTHON = json.loads(shared_path("conformance", "client_python_classic.json").read_text(encoding="utf-8"))[
    "cases"
]
GO_VALID = json.loads(shared_path("conformance", "go_expfmt_valid.json").read_text(encoding="utf-8"))["cases"]


def _value(v):
    if isinstance(v, str):
        return {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}[v]
    return float(v)


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def _ids(cases):
    seen = {}
    out = []
    for case in cases:
        n = seen[case["id"]] = seen.get(case["id"], 0) + 1
        out.append(case["id"] if n == 1 else f"{case['id']}-{n}")
    return out


def _found(families):
    return [(s.name, dict(s.labels), s.value, f.type, f.name) for f in families for s in f.samples]


@pytest.mark.parametrize("case", CLIENT_PYTHON, ids=_ids(CLIENT_PYTHON))
def test_client_python_corpus(case):
    result = parse(case["input"])
    found = _found(result.families)
    if case["expect"] == "reject":
        assert result.dropped, "an invalid line must be dropped and reported"
        assert found == []
        return
    assert result.dropped == []
    assert len(found) == len(case["samples"])
    for (name, labels, value, ftype, fname), want in zip(found, case["samples"]):
        # client_python munges a counter's bare samples to `<name>_total`; the corpus kept that
        # for the one quoted-name counter case.  Literal name otherwise.
        expected_name = want["name"]
        if ftype == "counter" and expected_name == fname + "_total" and name == fname:
            expected_name = name
        assert (name, labels) == (expected_name, want["labels"])
        assert _same(value, _value(want["value"]))
    # What we write parses back to the same samples.
    again = parse(render(result.families))
    assert again.dropped == []
    assert [(n, lab, repr(v)) for n, lab, v, _, _ in _found(again.families)] == [
        (n, lab, repr(v)) for n, lab, v, _, _ in found
    ]


@pytest.mark.parametrize("case", GO_VALID, ids=_ids(GO_VALID))
def test_go_expfmt_valid_inputs_accepted_without_loss(case):
    text = case["input"]
    result = parse(text)
    assert result.dropped == []
    sample_lines = [line for line in text.split("\n") if line.strip(" \t") and not line.strip(" \t").startswith("#")]
    found = _found(result.families)
    assert len(found) + result.duplicate_series == len(sample_lines)
    again = parse(render(result.families))
    assert again.dropped == []
    assert len(_found(again.families)) == len(found)
