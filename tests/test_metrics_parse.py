"""Parser and writer tables: accepted shapes, dropped lines, family assignment, round trip."""

import math

import pytest

from patio.metrics.grammar import LineError, parse_sample_line, parse_value
from patio.metrics.model import Family, Sample
from patio.metrics.parse import parse
from patio.metrics.write import format_value, render

NAN = float("nan")

SAMPLE_LINES = [
    ("plain", "a 1", ("a", (), 1.0, None)),
    ("labels", 'a{b="c",d="e"} 2', ("a", (("b", "c"), ("d", "e")), 2.0, None)),
    ("empty_braces", "a{} 3", ("a", (), 3.0, None)),
    ("trailing_comma", 'a{b="c",} 4', ("a", (("b", "c"),), 4.0, None)),
    ("lone_comma", "a{,} 4", ("a", (), 4.0, None)),
    ("spaces_everywhere", 'a \t{ b = "c" , } \t5', ("a", (("b", "c"),), 5.0, None)),
    ("no_space_before_value", 'a{b="c"}6', ("a", (("b", "c"),), 6.0, None)),
    ("colon_name", "vllm:x_total 7", ("vllm:x_total", (), 7.0, None)),
    ("escapes", r'a{b="q\"x\\y\nz"} 1', ("a", (("b", 'q"x\\y\nz'),), 1.0, None)),
    ("unknown_escape_kept", r'a{b="x\ty"} 1', ("a", (("b", "x\\ty"),), 1.0, None)),
    ("brace_in_value", 'a{b="}{"} 1', ("a", (("b", "}{"),), 1.0, None)),
    ("timestamp", "a 1 1700000000000", ("a", (), 1.0, 1700000000000)),
    ("negative_timestamp", "a 1 -2", ("a", (), 1.0, -2)),
    ("exponent", "a 1.5e+06", ("a", (), 1.5e6, None)),
    ("float_noise", "a 0.0016200000000000001", ("a", (), 0.0016200000000000001, None)),
    ("plus_inf", "a +Inf", ("a", (), math.inf, None)),
    ("minus_inf", "a -Inf", ("a", (), -math.inf, None)),
    ("quoted_name", '{"my.metric",a="b"} 1', ("my.metric", (("a", "b"),), 1.0, None)),
    ("quoted_label_name", 'a{"la.bel"="v"} 1', ("a", (("la.bel", "v"),), 1.0, None)),
    ("tab_separated", "a\t1\t5", ("a", (), 1.0, 5)),
]


@pytest.mark.parametrize("line,expected", [c[1:] for c in SAMPLE_LINES], ids=[c[0] for c in SAMPLE_LINES])
def test_sample_lines(line, expected):
    assert tuple(parse_sample_line(line)) == expected


BAD_LINES = [
    ("no_value", 'a{b="c"}', "invalid value"),
    ("double_comma", 'a{b="c",,d="e"} 1', "malformed label"),
    ("leading_comma", 'a{,b="c"} 1', "malformed label"),
    ("unquoted_value", "a{b=c} 1", "malformed label"),
    ("single_quotes", "a{b='c'} 1", "malformed label"),
    ("duplicate_label", 'a{b="1",b="2"} 1', "duplicate label"),
    ("reserved_name_label", 'a{__name__="x"} 1', "reserved"),
    ("digit_name", "1a 1", "not a sample"),
    ("hex_value", "a 0x1A", "invalid value"),
    ("underscore_value", "a 1_000", "invalid value"),
    ("comma_value", "a 1,5", "invalid value"),
    ("overflow", "a 1e400", "out of range"),
    ("signed_nan", "a +NaN", "invalid value"),
    ("float_timestamp", "a 1 1.5", "invalid timestamp"),
    ("junk_after_timestamp", "a 1 2 x", "not a sample"),
    ("missing_label_separator", 'a{b="c" d="e"} 1', "malformed label"),
    ("empty_quoted_braces", "{} 1", "no metric name"),
]


@pytest.mark.parametrize("line,reason", [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES])
def test_bad_sample_lines(line, reason):
    with pytest.raises(LineError, match=reason):
        parse_sample_line(line)


@pytest.mark.parametrize(
    "token,value",
    [
        ("1", 1.0),
        ("-0", -0.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("+1", 1.0),
        ("1E3", 1000.0),
        ("nan", NAN),
        ("Inf", math.inf),
        ("-Infinity", -math.inf),
        ("1e-400", 0.0),
    ],
    ids=[
        "int",
        "neg_zero",
        "lead_dot",
        "trail_dot",
        "plus",
        "upper_e",
        "nan_lower",
        "inf",
        "neg_infinity",
        "underflow",
    ],
)
def test_values(token, value):
    parsed = parse_value(token)
    assert (math.isnan(parsed) and math.isnan(value)) or parsed == value


def test_bad_line_is_dropped_and_rest_survives():
    text = "# TYPE g gauge\ng 1\ng{a=b} 2\nh 3\n\xff\n"
    result = parse(text)
    names = {(s.name, s.value) for f in result.families for s in f.samples}
    assert names == {("g", 1.0), ("h", 3.0)}
    assert [d.line_number for d in result.dropped] == [3, 5]
    assert "g{a=b} 2" in result.dropped[0].excerpt


def test_crlf_line_endings():
    result = parse("# HELP g help\r\n# TYPE g gauge\r\ng 1\r\n")
    assert result.dropped == []
    assert result.families == [Family("g", "gauge", "help", [Sample("g", (), 1.0)])]


def test_type_any_order_and_help_escapes():
    result = parse("# HELP g line\\none \\\\ x\n# TYPE g GAUGE\ng 1\n")
    family = result.families[0]
    assert (family.type, family.help) == ("gauge", "line\none \\ x")


def test_histogram_suffixes_and_total_named_histogram():
    text = (
        "# TYPE vllm:iteration_tokens_total histogram\n"
        'vllm:iteration_tokens_total_bucket{le="1.0"} 1\n'
        'vllm:iteration_tokens_total_bucket{le="+Inf"} 2\n'
        "vllm:iteration_tokens_total_sum 3\n"
        "vllm:iteration_tokens_total_count 2\n"
        "vllm:iteration_tokens_total_created 1.7e9\n"
    )
    result = parse(text)
    assert len(result.families) == 1
    assert [s.name for s in result.families[0].samples] == [
        "vllm:iteration_tokens_total_bucket",
        "vllm:iteration_tokens_total_bucket",
        "vllm:iteration_tokens_total_sum",
        "vllm:iteration_tokens_total_count",
        "vllm:iteration_tokens_total_created",
    ]


def test_counter_declared_by_base_name_owns_total_and_created():
    result = parse("# TYPE c counter\nc_total 1\nc_created 2\n")
    assert [(f.name, [s.name for s in f.samples]) for f in result.families] == [("c", ["c_total", "c_created"])]


def test_interleaved_family_is_merged():
    result = parse('a 1\nb 1\na{x="y"} 2\n')
    assert [(f.name, len(f.samples)) for f in result.families] == [("a", 2), ("b", 1)]


@pytest.mark.parametrize(
    "text,conflicts",
    [
        ("# TYPE g gauge\n# TYPE g counter\ng 1\n", 1),
        ("# TYPE g gauge\n# TYPE g gauge\ng 1\n", 1),
        ("g 1\n# TYPE g counter\n", 1),
    ],
    ids=["conflicting", "duplicate", "after_samples"],
)
def test_type_conflicts_first_wins(text, conflicts):
    result = parse(text)
    assert result.type_conflicts == conflicts
    assert result.families[0].type in ("gauge", "untyped")


def test_duplicate_series_first_wins():
    result = parse('g{a="1",b="2"} 1\ng{b="2",a="1"} 2\n')
    assert result.duplicate_series == 1
    assert [s.value for s in result.families[0].samples] == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        '# TYPE h histogram\nh_bucket{le="abc"} 1\n',
        "# TYPE h histogram\nh_bucket 1\n",
        '# TYPE s summary\ns{quantile="p50"} 1\n',
    ],
    ids=["le_not_a_number", "bucket_without_le", "quantile_not_a_number"],
)
def test_invalid_histogram_and_summary_labels_are_dropped(text):
    result = parse(text)
    assert len(result.dropped) == 1
    assert all(not f.samples for f in result.families)


@pytest.mark.parametrize(
    "value,text",
    [
        (1.0, "1"),
        (0.0, "0"),
        (-1.0, "-1"),
        (NAN, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (1e6, "1000000"),
        (0.0016200000000000001, "0.0016200000000000001"),
        (1.7953422136585202e09, "1795342213.6585202"),
    ],
    ids=["one", "zero", "minus_one", "nan", "inf", "minus_inf", "million", "noise", "timestamp_like"],
)
def test_format_value(value, text):
    assert format_value(value) == text
    assert (math.isnan(value) and text == "NaN") or float(text.replace("Inf", "inf")) == value


def test_writer_escapes_and_quotes():
    family = Family("my.metric", "gauge", 'say "hi"\\ \n', [Sample("my.metric", (("a", 'x"\\\n'), ("b.c", "d")), 1.0)])
    assert render([family]) == (
        '# HELP "my.metric" say "hi"\\\\ \\n\n# TYPE "my.metric" gauge\n{"my.metric",a="x\\"\\\\\\n","b.c"="d"} 1\n'
    )


def test_writer_drops_negative_timestamps_only():
    text = render([Family("g", "gauge", None, [Sample("g", (), 1.0, 5), Sample("g", (("a", "b"),), 2.0, -5)])])
    assert text == '# TYPE g gauge\ng 1 5\ng{a="b"} 2\n'


@pytest.mark.parametrize("fixture", ["vllm-0.33-single.txt", "vllm-0.33-multiproc.txt", "sglang-0.5.23.txt"])
@pytest.mark.parametrize("feed", ["whole", "crlf", "line_by_line"])
def test_round_trip_identity(fixture, feed):
    from support import shared_path

    original = shared_path("fixtures", "metrics", fixture).read_text(encoding="utf-8")
    if feed == "crlf":
        families = parse(original.replace("\n", "\r\n")).families
    elif feed == "line_by_line":
        # Each line alone (after its family's metadata) must parse to the same samples.
        families = [s for line in original.splitlines() for s in parse(line + "\n").families]
    else:
        families = parse(original).families
    expected = _samples(parse(original).families)
    assert _samples(families) == expected
    again = parse(render(parse(original).families))
    assert again.dropped == []
    assert _samples(again.families) == expected
    assert len(expected) == sum(1 for line in original.splitlines() if line and not line.startswith("#"))


def _samples(families):
    return sorted((s.name, s.labels, repr(s.value)) for f in families for s in f.samples)


@pytest.mark.parametrize("fixture", ["vllm-0.33-single.txt", "vllm-0.33-multiproc.txt", "sglang-0.5.23.txt"])
def test_canonical_fast_path_agrees_with_general_path(fixture):
    from support import shared_path

    from patio.metrics.grammar import _general_sample

    lines = [
        line
        for line in shared_path("fixtures", "metrics", fixture).read_text().splitlines()
        if line and not line.startswith("#")
    ]
    fast = 0
    for line in lines:
        quick, slow = parse_sample_line(line), _general_sample(line)
        fast += quick.text is not None
        assert tuple(quick) == tuple(slow) or math.isnan(quick.value)
        assert (quick.label_key, quick.le, quick.bad_bound) == (slow.label_key, slow.le, slow.bad_bound)
    assert fast == len(lines)  # engines write canonical lines: all take the fast path


def test_line_cache_gives_same_result_and_remembers_refusals():
    from patio.metrics.parse import LineCache

    cache = LineCache(entries=4)
    text = 'a{x="1"} 1\nbad{ 2\nb 3\n'
    first, second = parse(text, cache), parse(text, cache)
    assert first.families == second.families == parse(text).families
    assert [d.line_number for d in second.dropped] == [2]
    parse("".join(f"m{i} 1\n" for i in range(10)), cache)
    assert len(cache.lines) <= 4
