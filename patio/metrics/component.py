"""The unified-metrics component: engine scrape + rename + Patio's own, as ``/metrics``.

The core component's ``/metrics`` route calls ``exposition`` (``build_app`` wires it).
"""

import asyncio
import logging
from typing import Dict, Optional, Sequence, Tuple

from patio.component import AppContext, Component
from patio.http.types import Request
from patio.metrics.assemble import assemble
from patio.metrics.memory import RELEASE_AFTER_BYTES, RELEASE_DELAY_SECONDS, release_free_memory
from patio.metrics.model import Family
from patio.metrics.rules import RuleSet
from patio.metrics.scrape import REASONS, EngineScraper, ScrapeOutcome
from patio.metrics.settings import MetricsSettings

log = logging.getLogger("patio.metrics")


class EngineMetrics(Component):
    name = "metrics"

    def __init__(self, context: AppContext, settings: MetricsSettings) -> None:
        self.context = context
        self.settings = settings
        # One rule set per engine, compiled on first use: the engine is known once it answers
        # (patio.engines.detect); until then the start profile's default.
        self._rules: Dict[str, RuleSet] = {}
        self.scraper = EngineScraper(context, settings, finish=self._finish)
        registry = context.registry
        self._up = registry.gauge("patio_engine_up", "1 if the last scrape of the engine's metrics succeeded.")
        self._errors = registry.counter(
            "patio_engine_scrape_errors_total", "Failed scrapes of the engine's metrics, by reason.", ("reason",)
        )
        for reason in REASONS:
            self._errors.inc(reason, amount=0.0)
        self._duration = registry.gauge(
            "patio_engine_scrape_duration_seconds", "Duration of the last scrape of the engine's metrics."
        )
        self._dropped = registry.counter(
            "patio_engine_metrics_dropped_lines_total", "Engine metric lines dropped because they could not be parsed."
        )
        self._conflicts = registry.counter(
            "patio_engine_metrics_type_conflicts_total",
            "Duplicate or conflicting TYPE lines from the engine (first wins).",
        )
        self._duplicates = registry.counter(
            "patio_engine_metrics_duplicate_series_total", "Repeated engine series dropped (first sample wins)."
        )
        self._utf8_names = registry.counter(
            "patio_engine_metrics_utf8_names_dropped_total",
            "Engine samples left out of /metrics: a quoted UTF-8 metric or label name has no text 0.0.4 form.",
        )
        self._release: "Optional[asyncio.Future[bool]]" = None
        self._clashes = registry.counter(
            "patio_metrics_family_clashes_total", "Engine families dropped because Patio's own family has that name."
        )

    @property
    def rules(self) -> RuleSet:
        engine = self.context.engine.name
        rules = self._rules.get(engine)
        if rules is None:
            rules = self._rules[engine] = RuleSet.for_scheme(self.settings.scheme, engine)
        return rules

    def _account(self, outcome: ScrapeOutcome) -> None:
        self._up.set(1.0 if outcome.up else 0.0)
        self._duration.set(outcome.duration)
        if outcome.error_reason is not None:
            self._errors.inc(outcome.error_reason)
            log.warning("engine metrics scrape failed (%s): %s", outcome.error_reason, outcome.error_message)
            return
        if outcome.dropped:
            self._dropped.inc(amount=float(len(outcome.dropped)))
            first = outcome.dropped[0]
            log.warning(
                "dropped %d unparseable engine metric line(s); first at line %d (%s): %s",
                len(outcome.dropped),
                first.line_number,
                first.reason,
                first.excerpt,
            )
        if outcome.type_conflicts:
            self._conflicts.inc(amount=float(outcome.type_conflicts))
        if outcome.duplicate_series:
            self._duplicates.inc(amount=float(outcome.duplicate_series))

    async def _finish(self, outcome: ScrapeOutcome) -> None:
        """After each fetch, on the event loop: account it, snapshot Patio's own families (so they
        show this scrape's outcome), then render the engine's share in a worker thread."""
        self._account(outcome)
        own = self.context.registry.collect()
        outcome.own = own
        if outcome.families:
            await self.context.run_blocking(self._prerender, outcome, own)
            if outcome.payload_bytes >= RELEASE_AFTER_BYTES:
                # Most answers sharing this render are written within a second; then it is freed.
                asyncio.get_running_loop().call_later(RELEASE_DELAY_SECONDS, self._release_later)
            if outcome.clashes:
                self._clashes.inc(amount=float(outcome.clashes))
            if outcome.assembly_duplicates:
                self._duplicates.inc(amount=float(outcome.assembly_duplicates))
            if outcome.utf8_names:
                self._utf8_names.inc(amount=float(outcome.utf8_names))
                log.warning(
                    "left %d engine sample(s) with quoted UTF-8 names out of /metrics (text 0.0.4 cannot carry them)",
                    outcome.utf8_names,
                )

    def _prerender(self, outcome: ScrapeOutcome, own: Sequence[Family]) -> None:
        """The engine's share of /metrics, rendered once per fetch in a worker thread.

        ``own`` is the snapshot of Patio's own families taken on the event loop: they reserve
        their names and series here (they win a clash) and are not read from this thread.  The
        parsed families are dropped once rendered: only bytes stay between scrapes (kept, they
        left 904 MB resident after a 27 MB payload).
        """
        result = assemble(own, outcome.families, self.rules, self.settings.mode, render_own=False)
        outcome.families = []
        outcome.rendered = result.chunks
        outcome.clashes, outcome.assembly_duplicates = result.clashes, result.duplicate_series
        outcome.utf8_names = result.utf8_names
        if outcome.payload_bytes >= RELEASE_AFTER_BYTES:
            release_free_memory()

    def _release_later(self) -> None:
        """On the loop, after a large scrape's answers had time to be written (their render is
        freed then, nothing else holds it): trim again in a worker thread."""
        self._release = asyncio.ensure_future(self.context.run_blocking(release_free_memory))

    async def exposition(self, request: Request) -> Tuple[Sequence[Family], Tuple[bytes, ...]]:
        """Patio's own families (collected once for this scrape, on the event loop) and the
        engine's share of ``/metrics`` (one object shared by concurrent scrapes; do not modify)."""
        outcome, fresh = await self.scraper.scrape()
        own = outcome.own if fresh else None
        outcome.own = None
        if own is None:
            own = self.context.registry.collect()
        return own, outcome.rendered
