"""The scrape plan against the full path: byte for byte, whatever the next payload is.

Each check makes a plan from one payload (the full path) and hands the plan the next payload:
matched (the plan's template filled in) or not (parsed in full, the next plan made), the engine's
share and every count must be exactly what the full path alone makes of that payload
(``parse`` + ``assemble``, no plan, no offsets).  Over the three engine fixtures, the hostile
payloads of ``test_metrics_scrape``, both conformance corpora and randomized mutations of each
(values, added and removed series, reordered families, new TYPE lines, invalid lines,
timestamps, repeats), in every scheme and mode, for both engines, with Patio's own families
clashing by name and by series.  A table of named cases states which payloads must be matched.
"""

import json
import random
import re
from typing import List, Optional, Sequence, Tuple

import pytest
from support import shared_path
from test_metrics_scrape import _garbage_payload, promtool_rc

from patio.metrics import plan as plan_module
from patio.metrics.assemble import assemble
from patio.metrics.model import Family, Sample
from patio.metrics.parse import decode_payload, parse
from patio.metrics.pipeline import PLAN_BACKOFF_MAX, EngineText, Share
from patio.metrics.registry import Registry
from patio.metrics.rules import RuleSet

SCHEMES = ("patio", "aibrix", "kthena")
MODES = ("standard", "both", "raw")
FIXTURES = {
    "vllm-0.33-multiproc.txt": "vllm",
    "vllm-0.33-single.txt": "vllm",
    "sglang-0.5.23.txt": "sglang",
}


def _fixture(name: str) -> bytes:
    return shared_path("fixtures", "metrics", name).read_bytes()


def _conformance() -> List[Tuple[str, bytes]]:
    out = []
    for corpus in ("client_python_classic.json", "go_expfmt_valid.json"):
        cases = json.loads(shared_path("conformance", corpus).read_text(encoding="utf-8"))["cases"]
        out += [(f"{corpus}:{n}", case["input"].encode("utf-8")) for n, case in enumerate(cases)]
    return out


def full_path(data: bytes, own: Sequence[Family], rules: RuleSet, mode: str) -> Tuple[bytes, tuple]:
    """The engine's share and the counts as the full path alone makes them."""
    parsed = parse(decode_payload(data), None, verbatim=True)
    result = assemble(own, parsed.families, rules, mode, render_own=False)
    counts = (parsed.dropped, parsed.type_conflicts, parsed.duplicate_series, result[1:])
    return result.data, counts


def through_plan(engine_text: EngineText, data: bytes, own: Sequence[Family]) -> Tuple[bytes, tuple, bool]:
    """The engine's share as the scrape path makes it (a plan when one fits), and whether it matched."""
    reading = engine_text.read(data)
    share: Optional[Share] = engine_text.reuse(reading, own)
    matched = share is not None
    if share is None:
        share = engine_text.assemble(reading, own)
    parsed = reading.parsed
    counts = (parsed.dropped, parsed.type_conflicts, parsed.duplicate_series, tuple(share[1:]))
    return b"".join(share.chunks), counts, matched


def check_sequence(
    payloads: Sequence[bytes], rules: RuleSet, mode: str, owns: Sequence[Sequence[Family]], label: str
) -> int:
    """Each payload through one EngineText, in order (with Patio's own families ``owns[n % len(owns)]``),
    against the full path; returns how many were matched."""
    engine_text = EngineText(rules, mode)
    matched = 0
    for number, data in enumerate(payloads):
        own = owns[number % len(owns)]
        expected, expected_counts = full_path(data, own, rules, mode)
        got, counts, hit = through_plan(engine_text, data, own)
        assert got == expected, f"{label}: payload {number} ({'matched' if hit else 'full'}) differs"
        assert counts == expected_counts, f"{label}: payload {number} counts differ"
        matched += hit
    return matched


# --- mutations -------------------------------------------------------------------------------

VALUES = ["0", "1", "0.0", "12.5", "-3", "1e-05", "1.7534622e+09", "+1", ".5", "5.", "1E3", "NaN", "+Inf", "-Inf"]
ODD_VALUES = ["Inf", "inf", "nan", "+NaN", "1e400", "9" * 400, "1e-300", "0x1F", "1_000", "1e", ".", "-", "1.2.3"]
JUNK = ["g{a=b} 1", "x 0x1F", "{} 1", "# TYPE z bogus", "1bad 2", 'q{a="1",a="2"} 3', "v 1 2 3", "}{", "\\"]


def _lines(data: bytes) -> List[str]:
    return data.decode("utf-8", "surrogateescape").split("\n")


def _join(lines: List[str]) -> bytes:
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def _is_sample(line: str) -> bool:
    return bool(line) and line[0] not in "# \t"


def _new_values(rng: random.Random, data: bytes, odd: float = 0.0) -> bytes:
    """Every sample line's last token replaced: a canonical value, or (with chance ``odd``) an odd one."""
    out = []
    for line in _lines(data):
        if _is_sample(line) and " " in line:
            head = line.rsplit(" ", 1)[0]
            value = rng.choice(ODD_VALUES) if rng.random() < odd else rng.choice(VALUES)
            line = f"{head} {value}"
        out.append(line)
    return _join(out)


def _families(lines: List[str]) -> List[List[str]]:
    """Lines grouped into blocks, each starting at a HELP/TYPE run."""
    blocks: List[List[str]] = [[]]
    for line in lines:
        if line.startswith("# HELP") and blocks[-1] and not blocks[-1][-1].startswith("#"):
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def _mutate(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    samples = [i for i, line in enumerate(lines) if _is_sample(line)]
    kind = rng.choice(("add", "remove", "reorder", "type", "junk", "timestamp", "repeat", "relabel", "values"))
    if kind == "values" or not samples:
        return _new_values(rng, data, odd=0.2)
    i = rng.choice(samples)
    if kind == "add":
        line = lines[i]
        line = line.replace("{", f'{{added="{rng.randrange(9)}",', 1) if "{" in line else line.replace(" ", "_new ", 1)
        lines.insert(i + 1, line)
    elif kind == "remove":
        del lines[i]
    elif kind == "reorder":
        blocks = _families(lines)
        rng.shuffle(blocks)
        lines = [line for block in blocks for line in block]
    elif kind == "type":
        name = re.split(r"[{ ]", lines[i], maxsplit=1)[0]
        base = name.rsplit("_", 1)[0] if rng.random() < 0.5 else name
        lines.insert(rng.randrange(len(lines)), f"# TYPE {base} {rng.choice(('counter', 'gauge', 'histogram'))}")
    elif kind == "junk":
        lines.insert(rng.randrange(len(lines)), rng.choice(JUNK))
    elif kind == "timestamp":
        lines[i] = f"{lines[i]} {rng.choice(('1700000000000', '-5', '1.5', '17'))}"
    elif kind == "repeat":
        lines.insert(i + 1, lines[i].rsplit(" ", 1)[0] + " 42")
    elif kind == "relabel":
        lines[i] = lines[i].replace('="', '="x', 1) if '="' in lines[i] else lines[i]
    return _join(lines)


def _own_clashing(data: bytes) -> List[Family]:
    """Patio's own families named like two of the engine's, each holding one of its series."""
    families = parse(decode_payload(data)).families
    return [Family(f.name, f.type, "own", [s for s in f.samples if not isinstance(s, str)][:1]) for f in families[:2]]


def _own_registry() -> List[Family]:
    registry = Registry()
    registry.counter("patio_http_requests_total", "r", ("method", "route", "code")).inc("GET", "/metrics", "200")
    registry.histogram("patio_http_request_duration_seconds", "d", ("route",)).observe(0.01, "/metrics")
    registry.gauge("process_open_fds", "fds").set(7)  # vllm-single exports process_* too
    return registry.collect()


# --- the differential runs -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_fixture_mutations_through_the_plan_are_the_full_path_byte_for_byte(fixture, scheme, mode):
    base = _fixture(fixture)
    rules = RuleSet.for_scheme(scheme, FIXTURES[fixture])
    rng = random.Random(f"{fixture}{scheme}{mode}")
    owns = ([], _own_registry(), _own_clashing(base))
    # New values at each scrape (the common case): all matched after the first, own families or not.
    values = [base] + [_new_values(rng, base) for _ in range(4)]
    assert check_sequence(values, rules, mode, owns[:1], f"{fixture} values") == 4
    assert check_sequence(values, rules, mode, owns[2:], f"{fixture} values, clashing own") == 4
    # Patio's own families change from one scrape to the next.
    check_sequence(values, rules, mode, owns, f"{fixture} values, changing own")
    for round_number in range(4):
        mutated = _mutate(rng, base)
        own = rng.choice(owns)
        check_sequence([base, mutated, _new_values(rng, mutated)], rules, mode, [own], f"{fixture} {round_number}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", ("vllm", "sglang"))
def test_hostile_and_conformance_payloads_through_the_plan_are_the_full_path(engine, mode):
    payloads = [(f"garbage-{seed}", _garbage_payload(seed).encode("utf-8", "surrogateescape")) for seed in range(4)]
    payloads += _conformance()
    rng = random.Random(f"{engine}{mode}")
    for scheme in SCHEMES:
        rules = RuleSet.for_scheme(scheme, engine)
        for name, data in payloads:
            owns = ([], _own_clashing(data))
            sequence = [data, _new_values(rng, data), _new_values(rng, data, odd=0.3), _mutate(rng, data)]
            check_sequence(sequence, rules, mode, owns if rng.random() < 0.5 else owns[:1], f"{scheme} {name}")


@pytest.mark.parametrize("mode", MODES)
def test_shares_made_from_a_plan_pass_promtool(mode):
    rng = random.Random(mode)
    for fixture, engine in FIXTURES.items():
        base = _fixture(fixture)
        engine_text = EngineText(RuleSet.for_scheme("patio", engine), mode)
        through_plan(engine_text, base, [])
        share, _, matched = through_plan(engine_text, _new_values(rng, base), [])
        assert matched
        result = promtool_rc(share.decode("utf-8"))
        assert result.returncode in (0, 3) and "parsing error" not in result.stderr, result.stderr[-2000:]


# --- what is matched, what is not ------------------------------------------------------------

BASE = (
    "# HELP vllm:num_requests_running Running.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n'
    "# TYPE vllm:prompt_tokens counter\n"
    'vllm:prompt_tokens_total{engine="0"} 812.0\n'
    "# HELP other A number ends this help 12\n"
    "# TYPE other gauge\n"
    "other 3\n"
    "stamped 1 1700000000000\n"
    "twice 1\n"
    "twice 2\n"
)

CASES = [
    ("same payload", BASE, True),
    ("new values", BASE.replace("1.0\n", "7.25\n").replace("812.0", "813.0").replace("other 3", "other NaN"), True),
    ("a value longer than before", BASE.replace("812.0", "81299999.5"), True),
    ("an exponent and infinities", BASE.replace("1.0\n", "1.5e+09\n").replace("other 3", "other -Inf"), True),
    ("a value the parser re-renders (Inf)", BASE.replace("other 3", "other Inf"), False),
    ("a value that overflows", BASE.replace("812.0", "1e400"), False),
    ("a value with a digit group", BASE.replace("812.0", "8_12"), False),
    ("a timestamp that moved", BASE.replace("1700000000000", "1700000000001"), False),
    ("the number ending a HELP text", BASE.replace("help 12", "help 13"), False),
    ("the second of a repeated series", BASE.replace("twice 2", "twice 3"), False),
    ("a new label value", BASE.replace('model_name="m"', 'model_name="n"'), False),
    ("a new series", BASE + 'vllm:num_requests_running{engine="1",model_name="m"} 2\n', False),
    ("a series gone", BASE.replace("other 3\n", ""), False),
    ("a new TYPE line", BASE.replace("twice 1\n", "# TYPE twice counter\ntwice 1\n"), False),
    ("a junk line", BASE + "g{a=b} 1\n", False),
    ("CRLF", BASE.replace("\n", "\r\n"), False),
    ("no final newline", BASE[:-1], False),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("after,matched", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_which_payloads_the_plan_matches(after, matched, mode):
    rules = RuleSet.for_scheme("patio", "vllm")
    engine_text = EngineText(rules, mode)
    through_plan(engine_text, BASE.encode(), [])
    assert engine_text.plan is not None
    got, counts, hit = through_plan(engine_text, after.encode(), [])
    assert hit is matched
    assert (got, counts) == full_path(after.encode(), [], rules, mode)


def test_a_changed_own_family_takes_the_full_path_and_the_share_follows():
    """Patio's own families win a clash: when they reserve something new, the plan is not used."""
    data = _fixture("vllm-0.33-single.txt")
    rules = RuleSet.for_scheme("patio", "vllm")
    engine_text = EngineText(rules, "both")
    through_plan(engine_text, data, [])
    clashing = [Family("process_open_fds", "gauge", "own", [Sample("process_open_fds", (), 3.0)])]
    got, counts, hit = through_plan(engine_text, data, clashing)
    assert not hit and (got, counts) == full_path(data, clashing, rules, "both")
    assert b"process_open_fds " not in got  # the engine's family lost the clash
    # The same own families again: the new plan fits them.
    assert through_plan(engine_text, data, clashing)[2]
    # Own families that reserve nothing of the engine's never stop the plan.
    own = [Family("patio_x", "gauge", "own", [Sample("patio_x", (), float(n))]) for n in range(3)]
    assert through_plan(engine_text, data, own)[2] is False  # (reservation changed from `clashing`)
    assert through_plan(engine_text, data, own[:1])[2] is True


def test_plans_that_never_match_back_off_and_return():
    """An engine whose series change at every scrape: plans are made less and less often (making
    one costs about a third of a full pass), and again as soon as the series settle."""
    rules = RuleSet.for_scheme("patio", "vllm")
    engine_text = EngineText(rules, "standard")
    base = _fixture("vllm-0.33-multiproc.txt")
    made = []
    for number in range(200):
        churned = base.replace(b'model_name="', b'model_name="%d' % number, 1)
        through_plan(engine_text, churned, [])
        if engine_text.plan is not None:
            made.append(number)
    gaps = [later - earlier for earlier, later in zip(made, made[1:])]
    assert gaps == [2, 3, 5, 9, 17, 33, PLAN_BACKOFF_MAX + 1, PLAN_BACKOFF_MAX + 1], made
    # The series settle: within one backoff a plan is made again, and it is used.
    hits = [through_plan(engine_text, base, [])[2] for _ in range(PLAN_BACKOFF_MAX + 2)]
    assert hits[-1] and sum(hits) >= 1


@pytest.mark.parametrize(
    "limit,payload",
    [
        ("PLAN_LINES", "".join(f'g{{i="{i}"}} 1\n' for i in range(plan_module.PLAN_LINES + 1))),
        ("PLAN_PAYLOAD_BYTES", 'g{pad="' + "x" * plan_module.PLAN_PAYLOAD_BYTES + '"} 1\n'),
    ],
    ids=["too_many_lines", "too_many_bytes"],
)
def test_no_plan_past_its_bounds(limit, payload):
    """A plan holds the payload twice plus ~90 bytes a line: large payloads keep the full path's
    memory bounds (lines as offsets, nothing kept between scrapes)."""
    engine_text = EngineText(RuleSet.for_scheme("patio", "vllm"), "raw")
    reading = engine_text.read(payload.encode())
    engine_text.assemble(reading, [])
    assert not reading.planned and engine_text.plan is None, limit
