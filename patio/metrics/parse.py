"""Prometheus text format 0.0.4 parser, sans-IO: text in, families out.

Strict per line, never fatal for the payload: a line that cannot be parsed
(or that would make Patio's output invalid for promtool or a Prometheus scrape)
is dropped and reported in ``ParseResult.dropped`` with its line number, the
reason and a quoted excerpt; the rest survives.  Accepts what engines emit and
what the reference parsers accept (``prometheus/common`` expfmt/text_parse.go, the Prometheus
server's model/textparse/promparse.go):
HELP/TYPE in any order, CRLF, blank lines and foreign comments, label-value
escapes, trailing commas, ``{}``, colons in names, quoted UTF-8 names,
``NaN``/``±Inf``/exponents, optional integer timestamps.

Sample names are assigned to families as expfmt does: exact name first, then
the suffixes a declared type owns (``_bucket``/``_sum``/``_count`` for
histograms, ``_sum``/``_count`` for summaries, ``_total`` for counters, and
``_created`` for all three), else a new untyped family.  Duplicate or
conflicting ``# TYPE`` lines: the first declaration wins (counted).  Repeated
series (same name and label set): the first sample wins (counted), as in a
Prometheus scrape.
"""

import math
import re
from array import array
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple, Union

from patio.metrics.model import FAMILY_TYPES, Family, Item, Labels, Lines, Sample, decode_label_text

# Longest excerpt of a dropped line kept for the log.
EXCERPT_CHARS = 80

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

# Lines remembered across scrapes (most lines repeat unchanged): at most this many estimated bytes
# (a 1 MB engine payload of ~6,000 lines costs about 5 MB) and this many lines.
LINE_CACHE_BYTES = 16 * 1024 * 1024
LINE_CACHE_ENTRIES = 65536
# Per cached line, besides its characters: the key and Sample objects and the dict slot.
LINE_COST_OVERHEAD = 400

# A verbatim parse of a payload at least this long (characters) keeps its lines as offsets
# (``model.Lines``) and its series in an open-addressing table of ``array('q')``: no object per
# line or series outlives the parse.  Smaller payloads keep one ``str`` per line.
SPAN_PAYLOAD_CHARS = 4 * 1024 * 1024

# Suffixes each declared type owns, for assigning sample names to families.
_OWNED_SUFFIXES: Dict[str, Tuple[str, ...]] = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount", "_sum", "_count"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
}


# Types newer parsers know beyond text 0.0.4 (expfmt >= v0.67); written out as `untyped`.
_EXTRA_TYPES = ("gaugehistogram",)
_TYPE_ALIASES = {"gauge_histogram": "gaugehistogram"}


class DroppedLine(NamedTuple):
    line_number: int
    reason: str
    excerpt: str


class ParseResult(NamedTuple):
    families: List[Family]
    dropped: List[DroppedLine]
    type_conflicts: int
    duplicate_series: int


class LineError(Exception):
    """One line could not be parsed; carries the reason (internal to this module)."""


def _unescape(text: str) -> str:
    # Only \\ \" \n are escapes; any other backslash pair is kept as written
    # (what the scrape parser and client_python do).
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: {"\\": "\\", '"': '"', "n": "\n"}.get(m.group(1), m.group(0)), text)


def _unescape_help(text: str) -> str:
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


def _parse_meta_name(rest: str) -> Tuple[str, str]:
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


_EMPTY = -(2**63)  # a free slot of ``_SeriesTable``


class _SeriesTable:
    """The series of a large payload, by hash, in two ``array('q')`` (open addressing, linear
    probing): the hash of (name, key), and the item's ref (a line's start in the text, or a
    negative overflow index as in ``model.Lines``).  Equal hashes are checked exactly."""

    def __init__(self, text: str, overflow: List[Sample]) -> None:
        self.text = text
        self.overflow = overflow
        self.used = 0
        self.hashes = array("q", bytes(8 * 1024))
        self.refs = array("q", [_EMPTY]) * 1024

    def _key_of(self, ref: int) -> Tuple[str, Any]:
        if ref >= 0:
            end = self.text.find("\n", ref)
            if end < 0:
                end = len(self.text)
            if self.text[end - 1 : end] == "\r":
                end -= 1
            sample = parse_sample_line(self.text[ref:end].rstrip(" \t"))
        else:
            sample = self.overflow[-1 - ref]
        return sample.name, sample.label_key if sample.timestamp is None else (sample.label_key, sample.timestamp)

    def add(self, name: str, key: Any, ref: int) -> bool:
        """Remember a series; False if it was already there."""
        digest = hash((name, key))
        hashes, refs = self.hashes, self.refs
        mask = len(refs) - 1
        slot = digest & mask
        while refs[slot] != _EMPTY:
            if hashes[slot] == digest and self._key_of(refs[slot]) == (name, key):
                return False
            slot = (slot + 1) & mask
        hashes[slot], refs[slot] = digest, ref
        self.used += 1
        if self.used * 4 > len(refs) * 3:
            self._grow()
        return True

    def _grow(self) -> None:
        old_hashes, old_refs = self.hashes, self.refs
        size = 2 * len(old_refs)
        self.hashes = hashes = array("q", bytes(8 * size))
        self.refs = refs = array("q", [_EMPTY]) * size
        mask = len(refs) - 1
        for digest, ref in zip(old_hashes, old_refs):
            if ref != _EMPTY:
                slot = digest & mask
                while refs[slot] != _EMPTY:
                    slot = (slot + 1) & mask
                hashes[slot], refs[slot] = digest, ref


class _Builder:
    def __init__(self, text: Optional[str] = None) -> None:
        # With ``text`` (a large verbatim parse): samples go into ``model.Lines``, series into a table.
        self.text = text
        self.overflow: List[Sample] = []
        self.table = _SeriesTable(text, self.overflow) if text is not None else None
        self.families: Dict[str, Family] = {}
        self.declared: Dict[str, str] = {}  # name -> type from a TYPE line
        self.sampled: Set[str] = set()  # families that already have samples
        # Series seen, per sample name: the hash of the series key -> the first item with it.  A
        # hash and a slot cost far less than the key's text (the key sets were the largest part
        # of a scrape's memory); a hash seen before is checked exactly against that item,
        # and the rare true collision is settled in ``collided`` by the full key.
        self.series: Dict[str, Dict[int, Item]] = {}
        self.collided: Set[Tuple[str, Any]] = set()
        self.names: Dict[str, str] = {}
        self.dropped: List[DroppedLine] = []
        self.type_conflicts = 0
        self.duplicates = 0

    def family(self, name: str) -> Family:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = Family(name)
            if self.text is not None:
                family.samples = Lines(self.text, self.overflow)
        return family

    def owner(self, sample_name: str) -> Family:
        family = self.families.get(sample_name)
        if family is not None:
            return family
        for base_type, suffixes in _OWNED_SUFFIXES.items():
            for suffix in suffixes:
                if sample_name.endswith(suffix):
                    base = sample_name[: -len(suffix)]
                    if self.declared.get(base) == base_type:
                        return self.families[base]
        return self.family(sample_name)

    def on_type(self, name: str, type_word: str) -> None:
        kind = type_word.lower()
        kind = _TYPE_ALIASES.get(kind, kind)
        if kind not in FAMILY_TYPES and kind not in _EXTRA_TYPES:
            raise LineError(f"unknown metric type {type_word!r}")
        if name in self.declared or name in self.sampled:
            # First declaration wins: a second TYPE, or a TYPE after the family's samples.
            self.type_conflicts += 1
            return
        self.declared[name] = kind
        self.family(name).type = kind

    def on_help(self, name: str, text: str) -> None:
        family = self.family(name)
        if family.help is None:
            family.help = _unescape_help(text)

    def on_sample(self, sample: Sample, line: Optional[str] = None, start: int = -1) -> None:
        """Add a sample; with ``line`` (a verbatim parse of a canonical line) the line is kept instead
        (with a ``text`` builder: as ``start``, its offset in the text)."""
        family = self.owner(sample.name)
        kind = family.type
        if kind in ("histogram", "gaugehistogram") and (sample.name.endswith("_bucket") or sample.name == family.name):
            if sample.le is None and sample.name.endswith("_bucket"):
                raise LineError("histogram bucket without an le label")
            if sample.bad_bound == "le":
                raise LineError("le label is not a number")
        elif kind == "summary" and sample.name == family.name and sample.bad_bound == "quantile":
            raise LineError("quantile label is not a number")
        # Same series with different explicit timestamps are distinct samples (Prometheus appends both).
        key = sample.label_key if sample.timestamp is None else (sample.label_key, sample.timestamp)
        if self.table is not None:
            samples = family.samples
            assert isinstance(samples, Lines)
            kept_line = line is not None and sample.text is not None
            ref = start if kept_line else -1 - len(self.overflow)
            if not self.table.add(sample.name, key, ref):
                self.duplicates += 1
                return
            if line is not None and kept_line:
                samples.add_line(start, start + len(line))
            else:
                samples.append(sample)
            self.sampled.add(family.name)
            return
        item: Item = line if line is not None and sample.text is not None else sample
        digest: Optional[int] = hash(key)
        seen = self.series.get(sample.name)
        if seen is None:
            seen = self.series[sample.name] = {}
            self.names[sample.name] = sample.name
        elif digest in seen:
            if key == _series_key(seen[digest]) or (sample.name, key) in self.collided:
                self.duplicates += 1
                return
            self.collided.add((sample.name, key))  # a true collision: the first keeps the slot
            digest = None
        elif item is sample:
            sample.name = self.names[sample.name]  # one string per name, not one per sample
        if digest is not None:
            seen[digest] = item
        assert isinstance(family.samples, list)
        family.samples.append(item)
        self.sampled.add(family.name)


def _series_key(item: Item) -> Any:
    """What ``_Builder.on_sample`` keys a series by (a kept line is parsed again: only on a hash hit)."""
    sample = parse_sample_line(item) if isinstance(item, str) else item
    return sample.label_key if sample.timestamp is None else (sample.label_key, sample.timestamp)


def _excerpt(line: str) -> str:
    return repr(line[:EXCERPT_CHARS] + ("..." if len(line) > EXCERPT_CHARS else ""))


class LineCache:
    """Sample lines already parsed (or refused), reused by the next scrape.  Bounded by bytes.

    Generational: a scrape's hits and new lines go into a fresh generation that replaces the
    old one when the scrape ends, so lines the engine stopped sending (label values that change
    every scrape) leave with it; within a scrape, new lines are cached only while the estimated
    cost stays under ``max_bytes``.  A cap that counts entries is no bound: 32,768 lines of
    10 KB each grew the process by hundreds of MB.
    """

    def __init__(self, max_bytes: int = LINE_CACHE_BYTES, entries: int = LINE_CACHE_ENTRIES) -> None:
        self.max_bytes = max_bytes
        self.entries = entries
        self.lines: Dict[str, Union[Sample, str]] = {}  # the generation being read
        self.bytes = 0  # estimated cost of ``lines``
        self._fresh: Dict[str, Union[Sample, str]] = {}
        self._fresh_bytes = 0

    @staticmethod
    def cost(line: str) -> int:
        """Estimated bytes one cached line holds: the key, the sample's text copies, the objects."""
        return LINE_COST_OVERHEAD + 3 * len(line)

    def parse(self, line: str) -> Sample:
        hit = self._fresh.get(line)
        if hit is None:
            hit = self.lines.get(line)
            if hit is None:
                try:
                    hit = parse_sample_line(line)
                except LineError as exc:
                    hit = str(exc)
            cost = self.cost(line)
            if self._fresh_bytes + cost <= self.max_bytes and len(self._fresh) < self.entries:
                self._fresh[line] = hit
                self._fresh_bytes += cost
        if isinstance(hit, str):
            raise LineError(hit)
        return hit

    def holds(self, text: str) -> bool:
        """Whether every line of ``text`` would fit.  A payload far past the budget gains little
        from a partial cache and would keep up to ``max_bytes`` alive after it."""
        return self.cost_of(text) <= self.max_bytes

    def cost_of(self, text: str) -> int:
        return 3 * len(text) + text.count("\n") * LINE_COST_OVERHEAD

    def clear(self) -> None:
        self.lines, self.bytes = {}, 0
        self._fresh, self._fresh_bytes = {}, 0

    def end_scrape(self) -> None:
        """The lines of the scrape that just ended become the cache; older ones are let go."""
        self.lines, self.bytes = self._fresh, self._fresh_bytes
        self._fresh, self._fresh_bytes = {}, 0


def parse(
    text: str, cache: Optional[LineCache] = None, verbatim: bool = False, spans_from: int = SPAN_PAYLOAD_CHARS
) -> ParseResult:
    """Parse a whole exposition.  Never raises for bad content.

    With ``verbatim`` a canonical sample is kept as its line (a ``str`` item, see ``model.Item``),
    not as a ``Sample``: what the scrape path does, to hold a large payload in little memory; a
    text of ``spans_from`` characters or more is held as ``model.Lines`` (offsets, no object per line).
    """
    spans = verbatim and len(text) >= spans_from
    builder = _Builder(text if spans else None)
    if cache is not None and not cache.holds(text):
        cache.clear()
        cache = None
    check_utf8 = _SURROGATE.search(text) is not None
    parse_line = cache.parse if cache is not None else parse_sample_line
    start = 0
    for number, line in enumerate(_iter_lines(text), 1):
        line_start, start = start, start + len(line) + 1
        if line.endswith("\r"):
            line = line[:-1]
        try:
            first = line[:1]
            if first and first not in "# \t":
                if check_utf8 and _has_surrogate(line):
                    raise LineError("invalid UTF-8")
                builder.on_sample(parse_line(line), line if verbatim else None, line_start)
                continue
            stripped = line.strip(" \t")
            if not stripped:
                continue
            if stripped[0] == "#":
                _on_comment(builder, stripped)
            else:
                if check_utf8 and _has_surrogate(stripped):
                    raise LineError("invalid UTF-8")
                offset = line_start + len(line) - len(line.lstrip(" \t"))
                builder.on_sample(parse_line(stripped), stripped if verbatim else None, offset)
        except LineError as exc:
            builder.dropped.append(DroppedLine(number, str(exc), _excerpt(line)))
    if cache is not None:
        cache.end_scrape()
    return ParseResult(list(builder.families.values()), builder.dropped, builder.type_conflicts, builder.duplicates)


_SURROGATE = re.compile("[\udc80-\udcff]")


def _iter_lines(text: str) -> Iterator[str]:
    """``text.split("\\n")`` one line at a time: a large payload is never a list of a million lines."""
    start, end = 0, len(text)
    while start <= end:
        stop = text.find("\n", start)
        if stop == -1:
            yield text[start:]
            return
        yield text[start:stop]
        start = stop + 1


def _has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _on_comment(builder: _Builder, line: str) -> None:
    body = line[1:].lstrip(" \t")
    if body.startswith("HELP") and body[4:5] in (" ", "\t"):
        name, rest = _parse_meta_name(body[5:])
        if _has_surrogate(name) or _has_surrogate(rest):
            raise LineError("invalid UTF-8")
        # The text starts after the blanks that follow the name; trailing blanks are part of it.
        builder.on_help(name, rest.lstrip(" \t"))
    elif body.startswith("TYPE") and body[4:5] in (" ", "\t"):
        name, rest = _parse_meta_name(body[5:])
        words = rest.split()
        if len(words) != 1:
            raise LineError("TYPE line without exactly one type")
        builder.on_type(name, words[0])
    # Any other comment (including OpenMetrics '# EOF'/'# UNIT') is ignored.


def decode_payload(data: bytes) -> str:
    """Bytes -> text; invalid UTF-8 survives as surrogates so only the affected lines are dropped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape")
