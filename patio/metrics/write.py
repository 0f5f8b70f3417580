"""Render metric families as Prometheus text format 0.0.4.

Writes only what both Go parsers (expfmt/text_parse.go, model/textparse/promparse.go) and
promtool accept: LF line
endings and a final LF, one HELP and TYPE per family before its samples,
HELP escaping only ``\\`` and ``\n``, label values escaping ``\\`` ``\"`` ``\n``,
Go float syntax (``NaN``, ``+Inf``, ``-Inf``).  Names that are not legacy-valid
are written in the quoted UTF-8 form of text 1.0.0.  No I/O.
"""

import math
import re
from typing import Iterable, Iterator, List, Optional

from patio.metrics.model import FAMILY_TYPES, Family, Item, Labels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LEGACY_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """Go-compatible float text: shortest round-tripping form, ``NaN``/``+Inf``/``-Inf``."""
    if value != value:
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _quoted(name: str) -> str:
    return '"' + escape_label_value(name) + '"'


def metric_name_text(name: str) -> str:
    """The name as it may stand in HELP/TYPE lines: bare if legacy-valid, else quoted."""
    return name if _LEGACY_METRIC_NAME.match(name) else _quoted(name)


def _label_text(labels: Labels) -> List[str]:
    return [
        (key if _LEGACY_LABEL_NAME.match(key) else _quoted(key)) + '="' + escape_label_value(value) + '"'
        for key, value in labels
    ]


def label_set_text(labels: Labels) -> str:
    """``{a="b",...}`` as a sample line with a legacy metric name writes it (empty without labels)."""
    return "{" + ",".join(_label_text(labels)) + "}" if labels else ""


def is_legacy_name(name: str) -> bool:
    """Whether a metric name is written bare (else quoted, inside the braces)."""
    return _LEGACY_METRIC_NAME.match(name) is not None


def sample_line(name: str, labels: Labels, value: float, timestamp: Optional[int] = None) -> str:
    parts = _label_text(labels)
    if _LEGACY_METRIC_NAME.match(name):
        head = name + ("{" + ",".join(parts) + "}" if parts else "")
    else:
        head = "{" + ",".join([_quoted(name), *parts]) + "}"
    line = head + " " + format_value(value)
    # The scrape parser accepts only unsigned timestamps; a negative one (valid for
    # expfmt) would fail the whole scrape, so it is left out.
    if timestamp is not None and timestamp >= 0:
        line += " " + str(timestamp)
    return line


# Characters joined and encoded at a time by ``render_chunks``: a large exposition never exists as
# one list of a million line strings plus their joined copy, and each piece is large enough for
# glibc to map it on its own (see ``memory.prefer_mmap``), so it goes back to the OS when the last
# answer holding it is written.
RENDER_CHUNK_CHARS = 256 * 1024


def header_lines(family: Family) -> List[str]:
    """A family's HELP (when it has one) and TYPE lines, as written before its samples."""
    if family.header is not None:
        return family.header
    name = metric_name_text(family.name)
    lines = []
    if family.help is not None:
        lines.append(f"# HELP {name} {escape_help(family.help)}" if family.help else f"# HELP {name}")
    # Types beyond text 0.0.4 (gauge histograms) are written as untyped: the 2.x scrape parser knows no others.
    lines.append(f"# TYPE {name} {family.type if family.type in FAMILY_TYPES else 'untyped'}")
    return lines


def item_line(item: Item) -> str:
    """One sample's line: a canonical line (or a sample that kept its canonical text) verbatim."""
    if isinstance(item, str):
        return item
    if item.text is not None:
        return item.name + item.text
    return sample_line(item.name, item.labels, item.value, item.timestamp)


def _lines(families: Iterable[Family]) -> Iterator[str]:
    for family in families:
        yield from header_lines(family)
        yield from map(item_line, family.samples)


def render(families: Iterable[Family]) -> str:
    """Families -> text.  Each family is written once, HELP and TYPE first.  (What ``_lines``
    yields, built in one list: Patio's own families are written at every scrape.)"""
    out: List[str] = []
    for family in families:
        out.extend(header_lines(family))
        out.extend(map(item_line, family.samples))
    return "\n".join(out) + "\n" if out else ""


def render_chunks(families: Iterable[Family]) -> List[bytes]:
    """``render(families)`` as UTF-8 pieces of about ``RENDER_CHUNK_CHARS`` (written as they are, never joined)."""
    chunks: List[bytes] = []
    batch: List[str] = []
    size = 0
    for line in _lines(families):
        batch.append(line)
        size += len(line) + 1
        if size >= RENDER_CHUNK_CHARS:
            batch.append("")
            chunks.append("\n".join(batch).encode("utf-8"))
            batch, size = [], 0
    if batch:
        batch.append("")
        chunks.append("\n".join(batch).encode("utf-8"))
    return chunks
