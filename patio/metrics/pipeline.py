"""The engine's payload to the engine's share of ``/metrics``: read, then assemble.  Sans-IO.

``EngineText`` holds what carries over from one scrape to the next (the line cache, the current
``plan.Plan``) and runs the two steps of a scrape that are CPU work:

- ``match``/``parse`` (in the scrape's worker thread, right after the fetch): a payload with the
  current plan's skeleton is *matched* (its values read, the engine's share rendered from the
  plan at once); any other payload is parsed in full.  Either way the reading carries what the
  engine's protocol view reads of it (``Reading.view``: from the parse, or the plan's slots
  filled with the matched values), computed into families later on the event loop;
- ``assemble`` (after Patio's own families were collected for this scrape): a matched payload
  whose plan Patio's own families still fit needs nothing more (``reuse``, cheap enough for the
  event loop); anything else is renamed and assembled in full (a worker thread), which makes the
  plan the next payload is matched against.

Only one scrape runs at a time (the component's single flight): the plan is read and replaced
from one thread at a time.
"""

from typing import NamedTuple, Optional, Sequence, Tuple

from patio.metrics.assemble import select
from patio.metrics.model import Family
from patio.metrics.parse import LineCache, ParseResult, decode_payload, parse
from patio.metrics.plan import PLAN_LINES, PLAN_PAYLOAD_BYTES, Plan, build
from patio.metrics.protocol import ProtocolView, by_name
from patio.metrics.protocol_input import ViewInput
from patio.metrics.rules import RuleSet
from patio.metrics.write import render_chunks

# After a plan that no payload matched (the engine's series change at every scrape), the next
# plan waits: 1, 2, 4 ... up to this many full passes made without one.  Making a plan costs about a
# quarter of a full pass, trying one under a tenth; a plan that is used pays for itself at once.
PLAN_BACKOFF_MAX = 64


class Reading(NamedTuple):
    """One engine payload as read: matched against the current plan, or parsed in full."""

    size: int  # bytes of the payload (decompressed)
    parsed: ParseResult  # what the parser kept, dropped and counted (matched: the counts alone)
    text: str = ""  # parsed in full: the decoded payload (the parse's lines point into it) ...
    planned: bool = False  # ... and whether its lines were kept as offsets, to make a plan of
    # The payload's bytes: what a plan is made of, or (matched) parsed again should Patio's own
    # families no longer fit the plan.  Empty for a payload that gets no plan.
    data: bytes = b""
    plan: Optional[Plan] = None  # matched: the plan it matched ...
    share: bytes = b""  # ... and the plan's share of /metrics filled with its values
    # What the engine's protocol view reads of it (from the parse, or the plan's slots filled with
    # the matched values: the same either way), when the text path has a view.
    view: Optional[ViewInput] = None


class Share(NamedTuple):
    """The engine's share of ``/metrics`` (UTF-8, in pieces) and what the assembly left out."""

    chunks: Tuple[bytes, ...]
    clashes: int  # engine families dropped: a family of that name was already written
    duplicate_series: int  # engine samples dropped: the same series was already written
    utf8_names: int  # engine samples dropped: a metric or label name has no text 0.0.4 form


EMPTY_SHARE = Share((), 0, 0, 0)


class EngineText:
    """The engine payload's path through Patio for one scheme and mode (see the module docstring)."""

    def __init__(
        self,
        rules: RuleSet,
        mode: str,
        plan_payload_bytes: int = PLAN_PAYLOAD_BYTES,
        plan_lines: int = PLAN_LINES,
        view: Optional[ProtocolView] = None,
    ) -> None:
        self.rules = rules
        self.mode = mode
        self.view = view  # the engine's protocol view (patio.metrics.protocol), read at each scrape
        self.plan_payload_bytes = plan_payload_bytes
        self.plan_lines = plan_lines
        self.lines = LineCache()
        self.plan: Optional[Plan] = None
        self.matched = 0  # payloads the current plan matched
        self._backoff = 0  # full passes without a plan after the last plan that matched nothing ...
        self._wait = 0  # ... and how many of them are still to go

    def match(self, data: bytes) -> Optional[Reading]:
        """``data`` read with the current plan, when it has the plan's skeleton."""
        plan = self.plan
        if plan is None:
            return None
        values = plan.match(data)
        if values is None:
            self._retire()
            return None
        self.matched += 1
        view = plan.view.fill(values) if plan.view is not None else None
        share = plan.render(values)
        return Reading(len(data), plan.counts.parsed, planned=True, data=data, plan=plan, share=share, view=view)

    def _retire(self) -> None:
        """The current plan no longer serves.  If it never matched, the next ones wait longer."""
        self._backoff = 0 if self.matched else min(max(1, 2 * self._backoff), PLAN_BACKOFF_MAX)
        self._wait = self._backoff
        self.plan, self.matched = None, 0

    def keeps_bytes(self, size: int) -> bool:
        """Whether a payload of ``size`` bytes that did not match may get a plan: its bytes are then
        kept beside its text until assembled (a plan is made of both)."""
        return not self._wait and size <= self.plan_payload_bytes

    def parse(self, text: str, size: int, data: bytes = b"") -> Reading:
        """The payload parsed in full (``size``: its bytes).  Given its bytes ``data`` (see
        ``keeps_bytes``), a payload that may get a plan keeps its lines as offsets into ``text``."""
        planned = bool(data) and self.keeps_bytes(size) and text.count("\n") <= self.plan_lines
        parsed = parse(text, self.lines, verbatim=True, offsets=planned)
        view = self.view.read(by_name(parsed.families)) if self.view is not None else None
        return Reading(size, parsed, text, planned, data=data if planned else b"", view=view)

    def read(self, data: bytes) -> Reading:
        """``match``, else ``parse``.  (The scraper calls the two itself, to let a large payload's
        bytes go before it is parsed.)"""
        matched = self.match(data)
        if matched is not None:
            return matched
        return self.parse(decode_payload(data), len(data), data)

    @staticmethod
    def reuse(reading: Reading, own: Sequence[Family]) -> Optional[Share]:
        """A matched payload's share, when Patio's own families ``own`` bear on it as they did when
        its plan was made.  Cheap: for the event loop."""
        plan = reading.plan
        if plan is None or not plan.reserves(own):
            return None
        counts = plan.counts
        return Share((reading.share,), counts.clashes, counts.duplicate_series, counts.utf8_names)

    def assemble(self, reading: Reading, own: Sequence[Family]) -> Share:
        """The engine's share in full: renamed and assembled against Patio's own families ``own``,
        which reserve their names and series (they win a clash).  Makes the next plan."""
        text, parsed = reading.text, reading.parsed
        if reading.plan is not None:  # matched, but Patio's own families changed: read it all again
            self._retire()
            text = decode_payload(reading.data)
            parsed = parse(text, self.lines, verbatim=True, offsets=True)
        elif self._wait:
            self._wait -= 1  # a full pass made without a plan, after plans that never matched
        chosen = select(own, parsed.families, self.rules, self.mode, render_own=False, engine_names=reading.planned)
        counts = (chosen.clashes, chosen.duplicate_series, chosen.utf8_names)
        planned = build(text, reading.data, parsed, chosen, own, self.view) if reading.planned else None
        if planned is None:
            return Share(tuple(render_chunks(chosen.families)), *counts)
        self.plan, share = planned
        return Share((share,), *counts)
