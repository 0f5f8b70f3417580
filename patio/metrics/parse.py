"""Prometheus text format 0.0.4 parser, sans-IO: text in, families out (the family builder).

Strict per line, never fatal for the payload: a line that cannot be parsed
(or that would make Patio's output invalid for promtool or a Prometheus scrape)
is dropped and reported in ``ParseResult.dropped`` with its line number, the
reason and a quoted excerpt; the rest survives.  One line's grammar is
``patio.metrics.grammar``; this module decides what the lines mean together:
HELP/TYPE in any order, CRLF, blank lines and foreign comments.

Sample names are assigned to families as expfmt does: exact name first, then
the suffixes a declared type owns (``_bucket``/``_sum``/``_count`` for
histograms, ``_sum``/``_count`` for summaries, ``_total`` for counters, and
``_created`` for all three), else a new untyped family.  Duplicate or
conflicting ``# TYPE`` lines: the first declaration wins (counted).  Repeated
series (same name and label set): the first sample wins (counted), as in a
Prometheus scrape.
"""

import re
from array import array
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple, Union

from patio.metrics.grammar import LineError, parse_meta_name, parse_sample_line, unescape_help
from patio.metrics.model import FAMILY_TYPES, Family, Item, Lines, Sample

# Longest excerpt of a dropped line kept for the log.
EXCERPT_CHARS = 80

# Lines remembered across scrapes (most lines repeat unchanged): at most this many estimated bytes
# (a 1 MB engine payload of ~6,000 lines costs about 5 MB) and this many lines.
LINE_CACHE_BYTES = 16 * 1024 * 1024
LINE_CACHE_ENTRIES = 65536
# Per cached line, besides its characters: the key and Sample objects and the dict slot.
LINE_COST_OVERHEAD = 400

# A verbatim parse of a payload at least this long (characters) keeps its lines as offsets
# (``model.Lines``) and its series in an open-addressing table of ``array('q')``: no object per
# line or series outlives the parse (issue 13, row 10).  Smaller payloads keep one ``str`` per line.
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
    def __init__(self, text: Optional[str] = None, table: bool = True) -> None:
        # With ``text`` (a verbatim parse that keeps offsets): samples go into ``model.Lines``, and
        # with ``table`` (a large payload) series into a table of arrays, not the dicts below.
        self.text = text
        self.overflow: List[Sample] = []
        self.table = _SeriesTable(text, self.overflow) if text is not None and table else None
        self.families: Dict[str, Family] = {}
        self.declared: Dict[str, str] = {}  # name -> type from a TYPE line
        self.sampled: Set[str] = set()  # families that already have samples
        # Series seen, per sample name: the hash of the series key -> the first item with it.  A
        # hash and a slot cost far less than the key's text (issue 13, row 10: the key sets were
        # the largest part of a scrape); a hash seen before is checked exactly against that item,
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
            family.help = unescape_help(text)

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
        samples = family.samples
        if isinstance(samples, Lines):  # offsets kept, series remembered here
            if isinstance(item, str):
                samples.add_line(start, start + len(item))
            else:
                samples.append(item)
        else:
            samples.append(item)
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
    cost stays under ``max_bytes``.  Issue 13, row 9: the old cap counted entries, and 32,768
    lines of 10 KB each grew the process by hundreds of MB.
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
        from a partial cache and would keep up to ``max_bytes`` alive after it (issue 13, row 10)."""
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
    text: str,
    cache: Optional[LineCache] = None,
    verbatim: bool = False,
    spans_from: int = SPAN_PAYLOAD_CHARS,
    offsets: bool = False,
) -> ParseResult:
    """Parse a whole exposition.  Never raises for bad content.

    With ``verbatim`` a canonical sample is kept as its line (a ``str`` item, see ``model.Item``),
    not as a ``Sample``: what the scrape path does, to hold a large payload in little memory; a
    text of ``spans_from`` characters or more is held as ``model.Lines`` (offsets, no object per
    line).  With ``offsets`` (and ``verbatim``) the lines are held as ``model.Lines`` whatever the
    size, what a scrape plan is made from (``plan.build``).
    """
    spans = verbatim and len(text) >= spans_from
    builder = _Builder(text if spans or (verbatim and offsets) else None, table=spans)
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
        name, rest = parse_meta_name(body[5:])
        if _has_surrogate(name) or _has_surrogate(rest):
            raise LineError("invalid UTF-8")
        # The text starts after the blanks that follow the name; trailing blanks are part of it.
        builder.on_help(name, rest.lstrip(" \t"))
    elif body.startswith("TYPE") and body[4:5] in (" ", "\t"):
        name, rest = parse_meta_name(body[5:])
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
