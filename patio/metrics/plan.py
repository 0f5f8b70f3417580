"""The scrape plan: what the full path decided for each line, replayed on the next payload.

Between two scrapes an engine's series set almost never changes: only the values do.  A plan is
made from one full pass (parse, rename, assemble) over a payload and holds

- the payload's *skeleton*: its bytes cut at every ``" <value>\\n"`` that ends a line (one
  ``re.split``), so the pieces between the cuts are everything but the values;
- which of those values are *free*: the value of a canonical line without a timestamp that the
  parser kept, whose line means the same whatever that value (same family, same series, same
  fate in the assembly); every other cut value (a timestamp, a number ending a comment, a line
  that was dropped or re-rendered) is *pinned* to what it was;
- the engine's share of ``/metrics`` as a template: constant bytes between the free values'
  slots (HELP/TYPE lines, renamed series, re-rendered lines, in the order the writer wrote them);
- what the pass counted (dropped lines, type conflicts, repeats, clashes) and what Patio's own
  families reserved (``own_reservation``), the only way they change the engine's share.

A new payload is *matched* when its pieces are the plan's, its pinned values are unchanged and
every free value is a finite number in the canonical syntax (so the full parser would have kept
its line verbatim).  Then the engine's share is the template filled with the new values: whole-
bytes operations (``re.split``, list slices, ``b"".join``), no Python object built per line by
Python code.  Anything else takes the full path, which makes the next plan: a line the plan cannot
prove unchanged can change what other lines mean (a TYPE line reassigns samples, a repeated series
changes which one is first, the first source family present decides a rename), so the whole
payload goes through the parser again.

The output is byte for byte what the full path writes (``tests/test_metrics_plan.py`` runs both).
Sans-IO; no state beyond the plan's own (the scrape keeps the current one).
"""

import math
import operator
import re
from array import array
from itertools import accumulate, compress, repeat
from operator import add, ge, or_, sub
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Set, Tuple

from patio.metrics.assemble import Selection
from patio.metrics.grammar import parse_sample_line
from patio.metrics.model import Family, Lines
from patio.metrics.parse import ParseResult
from patio.metrics.protocol_input import ViewPlan
from patio.metrics.write import header_lines, item_line

if TYPE_CHECKING:  # pragma: no cover
    from patio.metrics.protocol import ProtocolView

# Payloads larger than this, or of more lines, get no plan.  A plan holds 2x (standard mode) to
# 4x (both) the payload between scrapes, and the pass that makes one peaks at 8x to 12x (against
# the full path's 4x, ``tests/test_hardening_metrics.py``): worth it for what engines send (50-100
# KB of 500-1,000 lines; 1.3 MB of 8,500 lines with 16 data-parallel ranks), not for a payload
# that is large because of its label churn, which the full path holds as offsets instead.
PLAN_PAYLOAD_BYTES = 2 * 1024 * 1024
PLAN_LINES = 20_000

# A cut: a blank, a token of the characters a value can have, the end of the line.  Wider than a
# value (``1e``, ``NaNa``) on purpose: the cut only finds where values may be; what is free is
# decided from the full parse, and a free value is checked against ``_FREE_VALUES``.
_CUT_TEXT = re.compile(r" ([-+.0-9eEINafn]+)\n")
_CUT_DATA = re.compile(rb" ([-+.0-9eEINafn]+)\n")

# A value the full parser keeps verbatim on a canonical line: the canonical syntax
# (``grammar._CANONICAL``), narrowed so that it cannot overflow to infinity (at most 200 integer
# digits, an exponent of at most two digits).  Wider forms (``1e-300``) are rare: full path.
_FREE_VALUE = rb"(?:[+-]?(?:[0-9]{1,200}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?|NaN|\+Inf|-Inf)"
_FREE_VALUES = re.compile(_FREE_VALUE + rb"(?:\n" + _FREE_VALUE + rb")*")

_NOT_FINITE = frozenset((b"NaN", b"+Inf", b"-Inf"))


def _free_values(values: Sequence[bytes]) -> bool:
    """Whether every value is one the full parser keeps verbatim (``_FREE_VALUES``).

    Quick form, in C: the cut allows only the characters of a value, and of such a token ``float``
    accepts exactly the canonical decimal syntax (plus ``inf``/``nan`` words, which are not
    finite); so the distinct values but ``NaN``/``+Inf``/``-Inf`` are all canonical and finite
    when their sum is finite.  A sum that is not (an overflow, a huge but finite value) is
    settled by the regular expression."""
    distinct = set(values)
    distinct -= _NOT_FINITE
    try:
        if math.isfinite(sum(map(float, distinct))):
            return True
    except ValueError:
        return False
    return _FREE_VALUES.fullmatch(b"\n".join(values)) is not None


# Patio's own families as they bear on the engine's share: their names that are also engine family
# names, and their series whose sample names the engine's families also hold.
OwnReservation = Tuple[FrozenSet[str], FrozenSet[Tuple[str, str, Optional[int]]]]


def own_reservation(own: Sequence[Family], names: FrozenSet[str], sample_names: FrozenSet[str]) -> OwnReservation:
    """What of ``own`` the assembly looks at, given the engine's family and sample names."""
    clashing = frozenset(family.name for family in own if family.name in names)
    series: Set[Tuple[str, str, Optional[int]]] = set()
    for family in own:
        for item in family.samples:  # once per own sample and scrape: no call unless the name is shared
            name = item if isinstance(item, str) else item.name
            if name in sample_names or isinstance(item, str):
                if isinstance(item, str):  # a canonical line (rare among Patio's own): read it
                    item = parse_sample_line(item)
                    if item.name not in sample_names:
                        continue
                series.add((item.name, item.label_key, item.timestamp))
    return clashing, frozenset(series)


class Counts(NamedTuple):
    """What one full pass counted; a matched payload counts exactly the same."""

    parsed: ParseResult  # with no families: only what was dropped and counted
    clashes: int
    duplicate_series: int
    utf8_names: int


def _picker(indices: Sequence[int]) -> Callable[[Sequence[bytes]], Tuple[bytes, ...]]:
    """``lambda values: tuple(values[i] for i in indices)``, at C speed."""
    if not indices:
        return lambda values: ()
    if len(indices) == 1:
        index = indices[0]
        return lambda values: (values[index],)
    return operator.itemgetter(*indices)


class Plan:
    """One payload's skeleton and the template of the engine's share (see the module docstring)."""

    __slots__ = (
        "_free",
        "_free_indices",
        "_pinned",
        "_slots",
        "counts",
        "engine_names",
        "engine_sample_names",
        "pieces",
        "pinned_values",
        "reservation",
        "template",
        "view",
    )

    def __init__(
        self,
        pieces: List[bytes],
        free: Sequence[int],
        pinned: Sequence[int],
        pinned_values: Tuple[bytes, ...],
        template: List[Optional[bytes]],
        slots: Sequence[int],
        counts: Counts,
        selection: Selection,
        reservation: OwnReservation,
        view: Optional[ViewPlan] = None,
    ) -> None:
        self.pieces = pieces
        self._free_indices = tuple(free)
        self._free = _picker(free)
        self._pinned = _picker(pinned)
        self.pinned_values = pinned_values
        self.template = template  # constants at even positions, ``None`` where a value goes
        self._slots = _picker(slots)
        self.counts = counts
        self.engine_names = selection.engine_names
        self.engine_sample_names = selection.engine_sample_names
        self.reservation = reservation
        self.view = view  # what the protocol view reads, its values to be filled from a match

    def match(self, data: bytes) -> Optional[List[bytes]]:
        """The payload's values when it has this plan's skeleton (see the module docstring), else None."""
        parts = _CUT_DATA.split(data)
        if parts[0::2] != self.pieces:
            return None
        values = parts[1::2]
        if self._pinned(values) != self.pinned_values:
            return None
        if self._free_indices and not _free_values(self._free(values)):
            return None
        return values

    def render(self, values: Sequence[bytes]) -> bytes:
        """The engine's share of ``/metrics`` with these values (from ``match``)."""
        out = self.template[:]
        out[1::2] = self._slots(values)
        return b"".join(out)  # type: ignore[arg-type]

    def reserves(self, own: Sequence[Family]) -> bool:
        """Whether Patio's own families ``own`` bear on the engine's share as they did for this plan."""
        return own_reservation(own, self.engine_names, self.engine_sample_names) == self.reservation


def build(
    text: str,
    data: bytes,
    parsed: ParseResult,
    selection: Selection,
    own: Sequence[Family],
    view: "Optional[ProtocolView]" = None,
) -> Optional[Tuple[Plan, bytes]]:
    """The plan of a full pass, and the engine's share it writes (what ``write.render_chunks`` of
    ``selection.families`` writes, joined): the payload ``data``, decoded as ``text``, parsed into
    ``parsed`` with its lines kept as offsets (``parse(..., offsets=True)``), its engine families
    chosen into ``selection`` against Patio's own families ``own``.  None when the parse kept no
    offsets to map the share back to.  With the engine's protocol ``view``, the plan also records
    which free values the view reads (``Plan.view``); None when one is not what it reads.

    Made once per change of the payload's series set: per family, not per line, where it can
    (``map`` over the offsets; one loop per line only for a family with a line that is not free).
    """
    parts = _CUT_DATA.split(data)
    pieces, values = parts[0::2], parts[1::2]
    count = len(values)
    # The parse's offsets count characters: the same as bytes unless the payload has UTF-8.
    lengths = map(len, parts if len(text) == len(data) else _CUT_TEXT.split(text))
    del parts
    # parts[k] ends where parts[k + 1] starts, the blank before a value or the newline after it
    # between them: value i spans [bounds[2i], bounds[2i + 1] - 1).
    bounds = array("q", accumulate(map(add, lengths, repeat(1))))
    value_start = bounds[0 : 2 * count : 2]
    by_end = dict(zip(map(sub, bounds[1 : 2 * count : 2], repeat(1)), range(count)))
    del bounds
    # A cut value is the line's value (not a timestamp) when what the line holds before it ends with
    # the label set or holds no blank: ``name{...} 1``, ``name 1`` (not ``name 1 1700000000``).
    before = pieces[:count]  # what precedes each value, its line's series last
    closed = map(bytes.endswith, before, repeat(b"}"))
    bare = map(ge, map(bytes.rfind, before, repeat(b"\n")), map(bytes.rfind, before, repeat(b" ")))
    valued = set(compress(range(count), map(or_, closed, bare)))
    del before
    kept: Set[Optional[int]] = set()
    for family in parsed.families:
        if not isinstance(family.samples, Lines):
            return None
        kept.update(map(by_end.get, family.samples.ends))  # an offset line ends where its value does
    free = valued.intersection(kept)
    view_plan = _view_plan(view, parsed, by_end, free, values) if view is not None else None
    if view is not None and view_plan is None:
        return None
    # The share as the writer writes it (a family's header lines, then each item's line, each line
    # followed by a newline), cut before each free value: constants[k] comes before slot k.
    constants: List[str] = []
    slots: List[int] = []
    pending: List[str] = []
    for family in selection.families:
        pending.extend(line + "\n" for line in header_lines(family))
        samples = family.samples
        if not isinstance(samples, Lines):
            return None
        if not samples.refs:
            continue
        skip, target = len(samples.source), samples.target
        indices = list(map(by_end.get, samples.ends))
        if free.issuperset(indices):  # every line free (and none parsed: their ends are 0)
            starts = map(add, samples.refs, repeat(skip)) if target else samples.refs
            heads = list(map(text.__getitem__, map(slice, starts, map(value_start.__getitem__, indices))))  # type: ignore[arg-type]
            if target:
                heads = list(map(add, repeat(target), heads))
            constants.append("".join(pending) + heads[0])
            constants.extend(map(add, repeat("\n"), heads[1:]))
            slots.extend(indices)  # type: ignore[arg-type]
            pending = ["\n"]
            continue
        for ref, end, index in zip(samples.refs, samples.ends, indices):
            if index in free:
                assert index is not None
                head = target + text[ref + skip : value_start[index]] if target else text[ref : value_start[index]]
                constants.append("".join(pending) + head)
                slots.append(index)
                pending = ["\n"]
            elif ref >= 0:
                pending.append((target + text[ref + skip : end] if target else text[ref:end]) + "\n")
            else:  # a line the parser had to read (not canonical): rendered, as ``Lines`` yields it
                sample = samples.overflow[-1 - ref]
                pending.append(item_line(sample.renamed(target + sample.name[skip:]) if target else sample) + "\n")
    constants.append("".join(pending))
    template: List[Optional[bytes]] = [None] * (2 * len(slots) + 1)
    template[0::2] = map(str.encode, constants)
    del constants
    pinned = sorted(set(range(count)) - free)
    counts = Counts(
        ParseResult([], parsed.dropped, parsed.type_conflicts, parsed.duplicate_series),
        selection.clashes,
        selection.duplicate_series,
        selection.utf8_names,
    )
    plan = Plan(
        pieces,
        sorted(free),
        pinned,
        tuple(map(values.__getitem__, pinned)),
        template,
        slots,
        counts,
        selection,
        own_reservation(own, selection.engine_names, selection.engine_sample_names),
        view_plan,
    )
    return plan, plan.render(values)


def _view_plan(
    view: "ProtocolView", parsed: ParseResult, by_end: Dict[int, int], free: Set[int], values: List[bytes]
) -> Optional[ViewPlan]:
    """What the protocol view reads of the payload, each value tied to its slot when free."""
    slots: Dict[str, List[int]] = {}
    families: Dict[str, Family] = {}
    for family in parsed.families:
        if family.name in view.reads and family.name not in families:
            families[family.name] = family
            assert isinstance(family.samples, Lines)  # build() returned before otherwise
            slots[family.name] = [-1 if i is None or i not in free else i for i in map(by_end.get, family.samples.ends)]
    return view.plan(families, slots, values)
