"""The unified-metrics component: engine scrape + rename + Patio's own, as ``/metrics``.

The core component's ``/metrics`` route calls ``exposition`` (``build_app`` wires it).
"""

import logging

from patio.app import AppContext, Component
from patio.http.types import Request
from patio.metrics.assemble import assemble
from patio.metrics.rules import RuleSet
from patio.metrics.scrape import REASONS, EngineScraper, ScrapeOutcome
from patio.metrics.settings import MetricsSettings
from patio.metrics.write import render

log = logging.getLogger("patio.metrics")


class EngineMetrics(Component):
    name = "metrics"

    def __init__(self, context: AppContext, settings: MetricsSettings) -> None:
        self.context = context
        self.settings = settings
        self.rules = RuleSet.for_scheme(settings.scheme, context.settings.core.engine)
        self.scraper = EngineScraper(context, settings, finish=self._prerender)
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
        self._clashes = registry.counter(
            "patio_metrics_family_clashes_total", "Engine families dropped because Patio's own family has that name."
        )

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

    def _prerender(self, outcome: ScrapeOutcome) -> None:
        """The engine's share of /metrics, rendered once per scrape in the fetch's worker thread.

        Patio's own families reserve their names and series (they win a clash); their
        values are rendered fresh for every request.
        """
        if not outcome.families:
            return
        own = self.context.registry.collect()
        result = assemble(own, outcome.families, self.rules, self.settings.mode, render_own=False)
        outcome.rendered = result.text.encode("utf-8")
        outcome.clashes, outcome.assembly_duplicates = result.clashes, result.duplicate_series

    async def exposition(self, request: Request) -> bytes:
        outcome, fresh = await self.scraper.scrape()
        if fresh:
            self._account(outcome)
            if outcome.clashes:
                self._clashes.inc(amount=float(outcome.clashes))
            if outcome.assembly_duplicates:
                self._duplicates.inc(amount=float(outcome.assembly_duplicates))
        return render(self.context.registry.collect()).encode("utf-8") + outcome.rendered
