"""The in-memory shape of Prometheus metrics, shared by the parser, the rename
rules, Patio's own registry and the writer.  Plain values, no I/O.

A ``Sample`` parsed from a canonical engine line keeps that line's text after
the name (``text``): it is already in the writer's safe subset, so it is passed
through verbatim and a rename only swaps the name.  Its labels are decoded only
if someone asks for them.
"""

import re
from array import array
from typing import Any, Container, Iterator, List, Optional, Tuple, Union

Labels = Tuple[Tuple[str, str], ...]

# The family types of text format 0.0.4, as written in `# TYPE` (lower case).
FAMILY_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\.")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def decode_label_text(label_text: str) -> Labels:
    """``a="b",c="d\\n"`` (canonical: legacy names, only \\\\ \\" \\n escapes) -> labels."""
    pairs = _PAIR.findall(label_text)
    if "\\" not in label_text:
        return tuple(pairs)
    return tuple((k, _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(0), m.group(0)), v)) for k, v in pairs)


class Sample:
    """One sample.  Equality and iteration behave like the tuple (name, labels, value, timestamp)."""

    __slots__ = ("_key", "_labels", "bad_bound", "label_text", "le", "name", "text", "timestamp", "value")

    def __init__(
        self,
        name: str,
        labels: Optional[Labels] = (),
        value: float = 0.0,
        timestamp: Optional[int] = None,
        text: Optional[str] = None,
        label_text: Optional[str] = None,
        label_key: Optional[str] = None,
    ) -> None:
        self.name = name
        self._labels = labels
        self.value = value
        self.timestamp = timestamp
        # Verbatim suffix after the name (`{...} value [ts]`), when the source line was canonical.
        self.text = text
        self.label_text = label_text  # the canonical `a="b",...` inside the braces, if known
        # Parser annotations: the `le` label, and which of le/quantile is not a number (if any).
        self.le: Optional[str] = None
        self.bad_bound: Optional[str] = None
        self._key = label_key if label_key is not None else label_text

    @property
    def label_key(self) -> str:
        """What makes two samples of one name the same series: the label pairs, sorted, as text."""
        if self._key is None:
            self._key = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(self.labels))
        return self._key

    @property
    def labels(self) -> Labels:
        if self._labels is None:
            self._labels = decode_label_text(self.label_text or "")
        return self._labels

    def renamed(self, name: str) -> "Sample":
        clone = Sample.__new__(Sample)
        clone.name = name
        clone._labels = self._labels
        clone.value = self.value
        clone.timestamp = self.timestamp
        clone.text = self.text
        clone.label_text = self.label_text
        clone._key = self._key
        clone.le = self.le
        clone.bad_bound = self.bad_bound
        return clone

    def __iter__(self) -> Iterator[Any]:
        return iter((self.name, self.labels, self.value, self.timestamp))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sample):
            return tuple(self) == tuple(other)
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.name, self.label_key, self.timestamp))

    def __repr__(self) -> str:
        return f"Sample({self.name!r}, {self.labels!r}, {self.value!r}, {self.timestamp!r})"


# A family's sample: a ``Sample``, or (engine families parsed with ``verbatim=True``) a whole
# canonical line kept as its text.  A line costs its characters alone, where a ``Sample`` with its
# copies costs about four times more: a 27 MB payload of 1.5 M series is held as lines.
Item = Union[Sample, str]

_NAME_END = re.compile(r"[{ ]")


def item_name(item: Item) -> str:
    """The sample name of an item (a canonical line's name ends at its first ``{`` or blank)."""
    if isinstance(item, str):
        match = _NAME_END.search(item)
        return item[: match.start()] if match is not None else item
    return item.name


def renamed_item(item: Item, source: str, target: str) -> Item:
    """The item with its name's ``source`` prefix replaced by ``target``."""
    if isinstance(item, str):
        return target + item[len(source) :]
    return item.renamed(target + item.name[len(source) :])


# A ``Lines`` ref at or above this is the start of a line in the payload text; below, it names an
# item of the overflow list (``-1 - ref``).
_OVERFLOW = -1


class Lines:
    """A large payload's samples for one family, held without one object per line.

    Each kept canonical line is two offsets into the payload text (``refs`` start, ``ends`` end, in
    ``array('q')``); a line that had to be parsed (not canonical) is an item of the shared
    ``overflow`` list, named by a negative ref.  Lines are materialised as ``str`` only while
    iterated (one render piece at a time): a scrape of 1.5 M series leaves no small objects behind
    that other requests' objects could pin in CPython's arenas (RSS stayed at 200 MB after one).
    ``source``/``target``: a prefix rename applied as lines are read.
    """

    __slots__ = ("ends", "overflow", "refs", "source", "target", "text")

    def __init__(
        self,
        text: str,
        overflow: List["Sample"],
        refs: "Optional[array[int]]" = None,
        ends: "Optional[array[int]]" = None,
        source: str = "",
        target: str = "",
    ) -> None:
        self.text = text
        self.overflow = overflow
        self.refs = refs if refs is not None else array("q")
        self.ends = ends if ends is not None else array("q")
        self.source = source
        self.target = target

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[Item]:
        text, overflow, skip, target = self.text, self.overflow, len(self.source), self.target
        for ref, end in zip(self.refs, self.ends):
            if ref >= 0:
                yield target + text[ref + skip : end] if target else text[ref:end]
            else:
                sample = overflow[_OVERFLOW - ref]
                yield sample.renamed(target + sample.name[skip:]) if target else sample

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Lines, list)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Lines({len(self)} lines)"

    def add_line(self, start: int, end: int) -> None:
        self.refs.append(start)
        self.ends.append(end)

    def append(self, sample: "Sample") -> None:
        """Add a parsed sample (held in the overflow list)."""
        self.refs.append(_OVERFLOW - len(self.overflow))
        self.ends.append(0)
        self.overflow.append(sample)

    def renamed(self, source: str, target: str) -> "Lines":
        """The items whose name starts with ``source``, renamed to start with ``target`` (read lazily)."""
        if self.source or self.target:
            raise ValueError("a renamed Lines is not renamed again")
        text, overflow = self.text, self.overflow
        refs, ends = array("q"), array("q")
        for ref, end in zip(self.refs, self.ends):
            if text.startswith(source, ref, end) if ref >= 0 else overflow[_OVERFLOW - ref].name.startswith(source):
                refs.append(ref)
                ends.append(end)
        return Lines(text, overflow, refs, ends, source, target)

    def without(self, positions: Container[int]) -> "Lines":
        """A copy without the items at ``positions``."""
        refs, ends = array("q"), array("q")
        for position, (ref, end) in enumerate(zip(self.refs, self.ends)):
            if position not in positions:
                refs.append(ref)
                ends.append(end)
        return Lines(self.text, self.overflow, refs, ends, self.source, self.target)


Samples = Union[List[Item], Lines]


class Family:
    """One metric family: the name as written in `# TYPE` and its samples, in order."""

    __slots__ = ("header", "help", "name", "samples", "type")

    def __init__(
        self,
        name: str,
        type: str = "untyped",
        help: Optional[str] = None,
        samples: Optional[Samples] = None,
        header: Optional[List[str]] = None,
    ) -> None:
        self.name = name
        self.type = type
        self.help = help
        self.samples: Samples = samples if samples is not None else []
        # Its HELP and TYPE lines as ``write.header_lines`` writes them, when the maker of a family
        # that is made again and again (Patio's own, at every scrape) wrote them once already.
        self.header = header

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.type!r}, {len(self.samples)} samples)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Family):
            return NotImplemented
        return (self.name, self.type, self.help, self.samples) == (other.name, other.type, other.help, other.samples)
