"""The line grammar of Prometheus text format 0.0.4, sans-IO: one line in, one value out.

Sample lines (``parse_sample_line``), values with Go ``strconv.ParseFloat`` semantics
(``parse_value``) and the metric name of a HELP/TYPE line (``parse_meta_name``).  A canonical
line (exactly what Patio's writer would write) takes a single regular expression and keeps its
text; anything else takes the general grammar, which accepts what the reference parsers accept
(``shared/reference/text-format.md``): blanks and tabs anywhere between tokens, label-value
escapes, trailing commas, ``{}``, colons in names, quoted UTF-8 names (text 1.0.0),
``NaN``/``±Inf``/exponents, optional integer timestamps.  Errors are ``LineError`` with the reason.

What a line means for its family (which family owns it, whether it repeats a series) is the
family builder's job (``patio.metrics.parse``), not this module's.
"""

import math
import re
from typing import Dict, List, Optional, Set, Tuple

from patio.metrics.model import Labels, Sample, decode_label_text

_LEGACY_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# name [ws] [{ labels }] [ws] value [ws timestamp] [ws]
_SAMPLE = re.compile(
    r"(" + _LEGACY_NAME + r")[ \t]*(?:\{((?:[^\"}]|" + _QUOTED + r")*)\})?[ \t]*([^ \t]+)(?:[ \t]+([^ \t]+))?[ \t]*$"
)
# A sample whose metric name is quoted inside the braces (text 1.0.0).
_QUOTED_SAMPLE = re.compile(r"\{((?:[^\"}]|" + _QUOTED + r")*)\}[ \t]*([^ \t]+)(?:[ \t]+([^ \t]+))?[ \t]*$")
_LABEL = re.compile(
    r"[ \t]*(?:([a-zA-Z_][a-zA-Z0-9_]*)|(" + _QUOTED + r"))[ \t]*=[ \t]*(" + _QUOTED + r")[ \t]*(?:,|$)"
)
_QUOTED_NAME_ITEM = re.compile(r"[ \t]*(" + _QUOTED + r")[ \t]*(?:,|$)")
_BLANK = re.compile(r"[ \t]*$")
_COMMA_ONLY = re.compile(r"[ \t]*,?[ \t]*$")
_ESCAPE = re.compile(r"\\(.)")
_TIMESTAMP = re.compile(r"[+-]?[0-9]{1,19}$")
_FLOAT_CHARS = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_INF_WORDS = frozenset(("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"))
_INT64_MAX = 2**63 - 1

# A canonical line: exactly what Patio's writer would write (and what prometheus_client and Go
# writers emit): legacy names, single spaces, only \\ \" \n escapes, a plain float, an unsigned
# timestamp.  Such a line is kept verbatim; anything else takes the general path and is re-rendered.
_CANON_VALUE = r"(?:" + r'[^"\\\n]|\\[\\"n]' + r")*"
_CANON_PAIR = r"[a-zA-Z_][a-zA-Z0-9_]*=\"" + _CANON_VALUE + r"\""
_CANONICAL = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(" + _CANON_PAIR + r"(?:," + _CANON_PAIR + r")*)\})? "
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|\+Inf|-Inf)(?: ([0-9]{1,18}))?$"
)
_PAIR_NAMES = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
_QUICK_NAMES = re.compile(r'(?:^|",)([a-zA-Z_][a-zA-Z0-9_]*)="')
_QUICK_BOUNDS = re.compile(r'(?:^|",)(le|quantile)="([^"\\]*)"')
_PAIR_TEXT = re.compile(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"')


class LineError(Exception):
    """One line could not be parsed; carries the reason."""


def _unescape(text: str) -> str:
    # Only \\ \" \n are escapes; any other backslash pair is kept as written
    # (what the scrape parser and client_python do).
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: {"\\": "\\", '"': '"', "n": "\n"}.get(m.group(1), m.group(0)), text)


def unescape_help(text: str) -> str:
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: {"\\": "\\", "n": "\n"}.get(m.group(1), m.group(0)), text)


def parse_value(token: str) -> float:
    """A sample value with Go ``strconv.ParseFloat`` semantics (as both Go parsers)."""
    if _FLOAT_CHARS.match(token):
        value = float(token)
        if math.isinf(value):
            raise LineError(f"value out of range {token!r}")
        return value
    lowered = token.lower()
    if lowered == "nan":
        return math.nan
    if lowered in _INF_WORDS:
        return -math.inf if lowered.startswith("-") else math.inf
    raise LineError(f"invalid value {token!r}")


def _parse_timestamp(token: str) -> int:
    if not _TIMESTAMP.match(token):
        raise LineError(f"invalid timestamp {token!r}")
    value = int(token)
    if abs(value) > _INT64_MAX:
        raise LineError(f"timestamp out of range {token!r}")
    return value


def _parse_labels(text: str) -> Tuple[Optional[str], Labels]:
    """``a="b",c="d"`` -> labels; one quoted item with no ``=`` is the metric name (text 1.0.0)."""
    if _COMMA_ONLY.match(text):
        return None, ()
    labels: List[Tuple[str, str]] = []
    seen: Set[str] = set()
    pos = 0
    name: Optional[str] = None
    end = len(text)
    while pos < end:
        if _BLANK.match(text, pos):
            break
        match = _LABEL.match(text, pos)
        if match is None:
            bare = _QUOTED_NAME_ITEM.match(text, pos)
            if bare is None or name is not None:
                raise LineError(f"malformed label set near {text[pos : pos + 20]!r}")
            name = _unescape(bare.group(1)[1:-1])
            pos = bare.end()
            continue
        key = match.group(1) if match.group(1) is not None else _unescape(match.group(2)[1:-1])
        if key in seen:
            raise LineError(f"duplicate label name {key!r}")
        if key == "__name__" or not key:
            raise LineError(f"reserved or empty label name {key!r}")
        seen.add(key)
        labels.append((key, _unescape(match.group(3)[1:-1])))
        pos = match.end()
    return name, tuple(labels)


def parse_sample_line(line: str) -> Sample:
    """One sample line -> ``Sample``; raises ``LineError``."""
    canonical = _CANONICAL.match(line)
    if canonical is not None:
        sample = _canonical_sample(line, canonical)
        if sample is not None:
            return sample
    return _general_sample(line)


def _canonical_sample(line: str, match: "re.Match[str]") -> Optional[Sample]:
    name, label_text, value_text, ts_text = match.groups()
    value = float(value_text)
    if value in (math.inf, -math.inf) and value_text not in ("+Inf", "-Inf"):
        raise LineError(f"value out of range {value_text!r}")
    timestamp = int(ts_text) if ts_text else None
    if not label_text:
        return Sample(name, (), value, timestamp, line[len(name) :], "")
    # Label names sit at the start or after `",`; a value can only add false positives here,
    # never hide a name, so a clean answer is exact and a suspicious one is checked precisely.
    names = _QUICK_NAMES.findall(label_text)
    if len(set(names)) != len(names) or "__name__" in names:
        names = _PAIR_NAMES.findall(label_text)
        if len(set(names)) != len(names) or "__name__" in names:
            return None  # the general path reports the exact problem
    key = label_text
    if names != sorted(names):
        key = ",".join(sorted(_PAIR_TEXT.findall(label_text)))
    sample = Sample(name, None, value, timestamp, line[len(name) :], label_text, key)
    if 'le="' in label_text or 'quantile="' in label_text:
        bounds = {k: v for k, v in _QUICK_BOUNDS.findall(label_text)}
        if len(bounds) != label_text.count('le="') + label_text.count('quantile="'):
            bounds = {k: v for k, v in decode_label_text(label_text) if k in ("le", "quantile")}
        _check_bounds(sample, bounds)
    return sample


def _check_bounds(sample: Sample, labels: Dict[str, str]) -> None:
    sample.le = labels.get("le")
    for key in ("le", "quantile"):
        if key in labels and not _float_label_ok(labels[key]):
            sample.bad_bound = key


def _general_sample(line: str) -> Sample:
    match = _SAMPLE.match(line)
    if match is not None:
        name, label_text, value_text, ts_text = match.groups()
        quoted_name, labels = _parse_labels(label_text) if label_text else (None, ())
        if quoted_name is not None:
            raise LineError("a quoted metric name after a bare one")
    else:
        quoted = _QUOTED_SAMPLE.match(line)
        if quoted is None:
            raise LineError("not a sample line")
        label_text, value_text, ts_text = quoted.groups()
        quoted_name, labels = _parse_labels(label_text)
        if not quoted_name:
            raise LineError("no metric name")
        name = quoted_name
    timestamp = _parse_timestamp(ts_text) if ts_text is not None else None
    sample = Sample(name, labels, parse_value(value_text), timestamp)
    bounds = {k: v for k, v in labels if k in ("le", "quantile")}
    if bounds:
        _check_bounds(sample, bounds)
    return sample


def parse_meta_name(rest: str) -> Tuple[str, str]:
    """``name text`` or ``"quoted name" text`` -> (name, remainder)."""
    rest = rest.lstrip(" \t")
    if rest.startswith('"'):
        match = re.match(_QUOTED, rest)
        if match is None:
            raise LineError("unterminated quoted name")
        name = _unescape(match.group(0)[1:-1])
        remainder = rest[match.end() :]
        if remainder and remainder[0] not in " \t":
            raise LineError("junk after quoted name")
        if not name:
            raise LineError("empty metric name")
        return name, remainder
    match = re.match(_LEGACY_NAME, rest)
    if match is None:
        raise LineError("invalid metric name")
    remainder = rest[match.end() :]
    if remainder and remainder[0] not in " \t":
        raise LineError("invalid metric name")
    return match.group(0), remainder


def _float_label_ok(value: str) -> bool:
    try:
        parse_value(value)
    except LineError:
        return False
    return True
