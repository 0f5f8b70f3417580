"""Compose ``/metrics``: Patio's own families, renamed engine families, raw ones.

Modes: ``standard`` = own + renamed; ``both`` = own + renamed + raw engine
families (AIBrix/Kthena behaviour, the default); ``raw`` = own + engine families
unrenamed.  Whatever the input, the output stays valid: one family per name
(Patio's own win a clash, then renamed, then raw; the loser is counted), and
no series twice.  No I/O; CPU-bound, so callers run it in a worker thread.
"""

import re
from typing import Any, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Set, Tuple

from patio.metrics.grammar import parse_sample_line
from patio.metrics.model import Family, Item, Lines, item_name
from patio.metrics.rules import RuleSet
from patio.metrics.write import render_chunks

# Names text 0.0.4 can write bare.  The parser accepts text 1.0.0's quoted UTF-8 names, but
# promtool 2.42 and Prometheus 2.x reject them in a 0.0.4 answer, and one bad line fails the
# whole scrape: such engine samples are left out of /metrics and counted.
_LEGACY_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Assembled(NamedTuple):
    chunks: Tuple[bytes, ...]  # the composed exposition, UTF-8, in pieces (see write.render_chunks)
    clashes: int  # engine families dropped because a family of that name was already written
    duplicate_series: int  # samples dropped because the same series was already written
    utf8_names: int = 0  # engine samples dropped because a metric or label name is not legacy-valid

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def _legacy(sample: Item) -> bool:
    if isinstance(sample, str):  # a canonical line: legacy names by construction
        return True
    if not _LEGACY_METRIC_NAME.fullmatch(sample.name):
        return False
    if sample.text is not None:  # a canonical line: its label names are legacy by construction
        return True
    return all(_LEGACY_LABEL_NAME.fullmatch(key) for key, _ in sample.labels)


def _sample_names(family: Family) -> Set[str]:
    names: Set[str] = set()
    last = "\n"  # no line starts with it
    for sample in family.samples:
        # A family's lines come grouped by name (buckets, then _sum, _count): most lines repeat
        # the previous name, checked without a search.
        if isinstance(sample, str) and sample.startswith(last) and sample[len(last) : len(last) + 1] in ("{", " "):
            continue
        last = item_name(sample)
        names.add(last)
    return names


class Selection(NamedTuple):
    """The families ``/metrics`` writes, in order, and what was left out on the way."""

    families: List[Family]
    clashes: int
    duplicate_series: int
    utf8_names: int
    # Every family name and sample name the engine's side brought (written or not), when asked:
    # Patio's own families change the engine's share only through these (``plan.own_reservation``).
    engine_names: FrozenSet[str]
    engine_sample_names: FrozenSet[str]


def assemble(
    own: Iterable[Family], engine: List[Family], rules: RuleSet, mode: str, render_own: bool = True
) -> Assembled:
    """The composed text; with ``render_own=False`` only the engine's share (Patio's own
    families still reserve their names and series)."""
    chosen = select(own, engine, rules, mode, render_own)
    return Assembled(tuple(render_chunks(chosen.families)), chosen.clashes, chosen.duplicate_series, chosen.utf8_names)


def select(
    own: Iterable[Family],
    engine: List[Family],
    rules: RuleSet,
    mode: str,
    render_own: bool = True,
    engine_names: bool = False,
) -> Selection:
    """The families to write (see ``assemble``), not yet rendered; with ``engine_names`` the
    selection also names every engine family and sample name it looked at (what a plan needs)."""
    by_name = {family.name: family for family in engine}
    groups: List[List[Family]] = [list(own)]
    if mode in ("standard", "both"):
        groups.append(rules.apply(by_name))
    if mode in ("both", "raw"):
        groups.append(engine)
    # Only sample names held by more than one family can repeat a series (the parser already
    # dropped the engine's own repeats): only their series are remembered, so a payload of a
    # million series does not build a second million-entry set here.
    holders: Dict[str, int] = {}
    engine_sample_names: Set[str] = set()
    for group_index, group in enumerate(groups):
        for family in group:
            for sample_name in _sample_names(family):
                holders[sample_name] = holders.get(sample_name, 0) + 1
                if group_index > 0 and engine_names:
                    engine_sample_names.add(sample_name)
    shared = {name for name, count in holders.items() if count > 1}
    names: Set[str] = set()
    series: Set[Tuple[str, Any, Optional[int]]] = set()
    out: List[Family] = []
    clashes = duplicates = utf8_names = 0
    for group_index, group in enumerate(groups):
        for family in group:
            if group_index > 0 and not _LEGACY_METRIC_NAME.fullmatch(family.name):
                utf8_names += len(family.samples)
                continue
            if family.name in names:
                clashes += 1
                continue
            names.add(family.name)
            kept: List[Item] = []
            skipped: Set[int] = set()  # positions left out of a ``Lines`` family (it is not copied)
            lines = isinstance(family.samples, Lines)
            # Kept lines are legacy by construction: a ``Lines`` family with no parsed sample and
            # no shared name has nothing to check (its 1.5 M lines are not read twice).
            checked = not (
                isinstance(family.samples, Lines) and not shared and min(family.samples.refs, default=0) >= 0
            )
            for position, sample in enumerate(family.samples if checked else ()):
                if group_index > 0 and not _legacy(sample):
                    utf8_names += 1
                    skipped.add(position)
                    continue
                name = item_name(sample) if shared else ""
                if name in shared:
                    # Rare (a name that more than one family holds): a line is parsed again here.
                    full = parse_sample_line(sample) if isinstance(sample, str) else sample
                    key = (name, full.label_key, full.timestamp)
                    if key in series:
                        duplicates += 1
                        skipped.add(position)
                        continue
                    series.add(key)
                if not lines:
                    kept.append(sample)
            if group_index == 0 and not render_own:
                continue
            if skipped and isinstance(family.samples, Lines):
                family = Family(family.name, family.type, family.help, family.samples.without(skipped))
            elif group_index > 0 and not lines and len(kept) != len(family.samples):
                family = Family(family.name, family.type, family.help, kept)
            out.append(family)
    looked_at = frozenset(family.name for group in groups[1:] for family in group) if engine_names else frozenset()
    return Selection(out, clashes, duplicates, utf8_names, looked_at, frozenset(engine_sample_names))
