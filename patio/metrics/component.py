"""``GET /metrics``: Patio's own families, then the engine's, renamed by the configured scheme.

One scrape of the engine is one *cycle*, a straight pipe run by this component in order:

1. scrape (worker thread): fetch the engine's payload and read it (``scrape.EngineScrape``,
   immutable: a failure reason, or the payload matched against the last plan or parsed in full);
2. account (event loop): ``patio_engine_up``, errors, dropped lines, type conflicts, repeats;
3. collect Patio's own families (event loop: gauge callbacks read the components' state on the
   thread that changes it), so they show this scrape's accounting;
4. assemble the engine's share against them (``pipeline.EngineText``: on the loop when the last
   plan still fits, which costs no parse; else in a worker thread, which makes the next plan),
   then account what the assembly left out (seen by the next scrape);

and each answer is composed (own families written, the engine's share appended unchanged) and
gzipped on request.  Concurrent ``/metrics`` requests share one cycle's engine share (single
flight), and with ``--metrics-cache-ttl`` a recent one is reused; every other answer collects
Patio's own families for itself.

The engine's protocol view (``patio.metrics.protocol``: the ``patio:router_*`` families a
router reads, and layer-one names for engines the rename tables lack) is computed at step 3,
beside Patio's own families, from what the scrape's reading holds for it (``Reading.view``: from
the parse, or from a matched payload's values) and Patio's state: whether the engine's health
answers, which adapters it confirmed serving.  A failed scrape computes it from nothing, so the
router families never go quiet.  Its families join Patio's own for that cycle: they reserve their
names against the engine's and win a clash (the plan checks what they reserve at every scrape),
and every answer showing the cycle's engine share shows them too.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from patio.component import AppContext, Component
from patio.engines.client import SPECS
from patio.http.types import Request, Response, Route
from patio.metrics.exposition import CONTENT_TYPE, GZIP_MIN_BYTES, Exposition, accepts_gzip, compose, gzip_compress
from patio.metrics.memory import RELEASE_AFTER_BYTES, RELEASE_DELAY_SECONDS, release_free_memory
from patio.metrics.model import Family
from patio.metrics.scrape import REASONS, EngineScrape, EngineScraper, metrics_endpoint
from patio.metrics.seams import LoraFacts
from patio.metrics.settings import MetricsSettings
from patio.ratelog import RateLimitedLog

if TYPE_CHECKING:  # pragma: no cover
    # The text path (parser, plan, rename tables, protocol view) loads with the first scrape
    # (``MetricsComponent.path``): a start that has not been scraped yet has not paid for it.
    from patio.metrics.pipeline import EngineText, Share
    from patio.metrics.protocol import ProtocolState

log = logging.getLogger("patio.metrics")


class EnginePath(NamedTuple):
    """What Patio keeps per engine it serves beside: where its metrics are, and their text path."""

    endpoint: str  # the base URL the scrape reads (Triton: another port than its API's)
    text: "EngineText"  # rules, protocol view, plan and line cache
    # The scrape path's values the component uses at each scrape, looked up once with the path.
    state: "Callable[..., ProtocolState]"  # the router view's state of Patio (ProtocolState)
    empty: "Share"  # the engine's share of a scrape that read nothing


def _no_health() -> Optional[bool]:
    return None


def _no_lora() -> LoraFacts:
    return LoraFacts()


class MetricsComponent(Component):
    """Serves ``/metrics``; scrapes the engine when ``--scrape-engine-metrics`` is on."""

    name = "metrics"

    def __init__(
        self,
        context: AppContext,
        settings: MetricsSettings,
        scrape_engine: bool = True,
        engine_healthy: Callable[[], Optional[bool]] = _no_health,
        lora: Callable[[], LoraFacts] = _no_lora,
    ) -> None:
        self.context = context
        self.settings = settings
        core = context.core
        # One path (endpoint, rules, protocol view, plan, line cache) per engine, made on first use:
        # the engine is known once it answers (patio.engines.detect); until then the profile's default.
        self._paths: Dict[str, EnginePath] = {}
        # For the protocol view, asked on the event loop at each scrape: the health watch's last
        # answer (None before the first), and what the LoRA side knows (set at assembly).
        self.engine_healthy = engine_healthy
        self.lora = lora
        # The view's problems (a NaN queue, adapter names the EPP would misread) repeat at every
        # scrape: logged once, then summarized per interval.
        self._problems = RateLimitedLog(log)
        self.scraper: Optional[EngineScraper] = None
        if scrape_engine:
            self.scraper = EngineScraper(core, settings)
            self._register_engine_metrics()
        self._inflight: "Optional[asyncio.Future[Exposition]]" = None
        self.last: Optional[Exposition] = None  # kept only with --metrics-cache-ttl
        self._release: "Optional[asyncio.Future[bool]]" = None

    def _register_engine_metrics(self) -> None:
        registry = self.context.registry
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
        self._clashes = registry.counter(
            "patio_metrics_family_clashes_total", "Engine families dropped because Patio's own family has that name."
        )

    def routes(self) -> Sequence[Route]:
        return [
            Route(
                "GET",
                "/metrics",
                self.serve,
                summary="Prometheus text 0.0.4: Patio's own metrics plus the engine's",
                tag="metrics",
                response_type="text/plain",
            )
        ]

    async def serve(self, request: Request) -> Response:
        own, engine = await self.exposition()
        body = compose(own)
        headers = []
        if len(body) + sum(map(len, engine)) >= GZIP_MIN_BYTES and accepts_gzip(request.header("accept-encoding")):
            body, engine = await self.context.run_blocking(gzip_compress, body, *engine), ()
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", "Accept-Encoding"))
        # The engine's share is one bytes object for every concurrent scrape: sent, never copied.
        return Response(status=200, body=body, content_type=CONTENT_TYPE, headers=headers, shared_tail=engine)

    async def exposition(self) -> Tuple[Sequence[Family], Tuple[bytes, ...]]:
        """Patio's own families for this answer and the engine's share it shows."""
        if self.scraper is None:
            return self._own(), ()
        last = self.last
        ttl = self.settings.cache_ttl
        if last is not None and ttl > 0 and time.monotonic() - last.finished_at < ttl:
            return self._own() + list(last.protocol), last.engine
        if self._inflight is not None:  # another request's cycle is running: its engine share is ours
            shared = await asyncio.shield(self._inflight)
            return self._own() + list(shared.protocol), shared.engine
        # The previous cycle is let go before the next one runs: two renders are never held at once
        # (answers still being written keep their own reference).
        self.last = None
        self._inflight = asyncio.ensure_future(self._cycle())
        try:
            exposition = await asyncio.shield(self._inflight)
        finally:
            self._inflight = None
        # With no reuse (``cache_ttl`` 0, the default) the render is not kept: it lives only as
        # long as the answers being written hold it (issue 13, row 10).
        self.last = exposition if ttl > 0 else None
        return exposition.own, exposition.engine

    def _own(self) -> List[Family]:
        """Patio's own families, collected on the event loop, once per answer."""
        return self.context.registry.collect()

    @property
    def path(self) -> EnginePath:
        """The path of the engine Patio serves beside now."""
        engine = self.context.engine.name
        path = self._paths.get(engine)
        if path is None:
            from patio.metrics.pipeline import EMPTY_SHARE, EngineText
            from patio.metrics.protocol import ProtocolState, ProtocolView
            from patio.metrics.rules import RuleSet

            settings = self.settings
            endpoint = metrics_endpoint(
                self.context.core.engine_endpoint, settings.engine_port or SPECS[engine].metrics_port
            )
            view = ProtocolView.for_engine(engine, settings.scheme)
            text = EngineText(RuleSet.for_scheme(settings.scheme, engine), settings.mode, view=view)
            # Another engine's plan and cache can never match this one's payload: drop them.
            self._paths = {engine: EnginePath(endpoint, text, ProtocolState, EMPTY_SHARE)}
            path = self._paths[engine]
        return path

    @property
    def text(self) -> "EngineText":
        """The text path of the engine Patio serves beside now."""
        return self.path.text

    def _protocol(self, path: EnginePath, scrape: EngineScrape) -> List[Family]:
        """The protocol view's families for this scrape (on the event loop: Patio's state is read
        on the thread that changes it).  An engine whose health watch has not answered yet is
        taken to be up when its metrics answered."""
        view = path.text.view
        assert view is not None
        healthy, answered = self.engine_healthy(), scrape.up
        lora = self.lora()
        state = path.state(
            engine_up=healthy if healthy is not None else answered,
            adapters=lora.adapters,
            max_lora=lora.max_lora,
            now=time.time(),
        )
        reading = scrape.reading
        seen = reading.view if reading is not None and reading.view is not None else view.nothing
        out = view.compute(seen, state)
        if out.problems and answered:  # a failed scrape is logged as such; its gaps are no news
            self._problems.log(
                "protocol-view", f"router view of {view.protocol.engine}'s metrics: {'; '.join(out.problems)}"
            )
        return out.router if self.settings.mode == "raw" else out.renamed + out.router

    async def _cycle(self) -> Exposition:
        assert self.scraper is not None
        path = self.path
        text = path.text
        scrape = await self.context.run_blocking(self.scraper.scrape, text, path.endpoint)
        self._account(scrape)
        protocol = self._protocol(path, scrape)
        own = self._own() + protocol
        reading = scrape.reading
        del scrape  # what follows holds the reading alone, and lets it go once assembled
        share = path.empty
        if reading is not None:
            reused = text.reuse(reading, own)
            share = reused if reused is not None else await self.context.run_blocking(text.assemble, reading, own)
            size, reading = reading.size, None  # the parse is let go: only the rendered bytes stay
            if size >= RELEASE_AFTER_BYTES:
                await self.context.run_blocking(release_free_memory)
                # Most answers sharing this render are written within a second; then it is freed.
                asyncio.get_running_loop().call_later(RELEASE_DELAY_SECONDS, self._release_later)
        self._account_share(share)
        return Exposition(own, share.chunks, time.monotonic(), tuple(protocol))

    def _account(self, scrape: EngineScrape) -> None:
        self._up.set(1.0 if scrape.up else 0.0)
        self._duration.set(scrape.duration)
        if scrape.error_reason is not None:
            self._errors.inc(scrape.error_reason)
            log.warning("engine metrics scrape failed (%s): %s", scrape.error_reason, scrape.error_message)
            return
        assert scrape.reading is not None
        parsed = scrape.reading.parsed
        if parsed.dropped:
            self._dropped.inc(amount=float(len(parsed.dropped)))
            first = parsed.dropped[0]
            log.warning(
                "dropped %d unparseable engine metric line(s); first at line %d (%s): %s",
                len(parsed.dropped),
                first.line_number,
                first.reason,
                first.excerpt,
            )
        if parsed.type_conflicts:
            self._conflicts.inc(amount=float(parsed.type_conflicts))
        if parsed.duplicate_series:
            self._duplicates.inc(amount=float(parsed.duplicate_series))

    def _account_share(self, share: "Share") -> None:
        if share.clashes:
            self._clashes.inc(amount=float(share.clashes))
        if share.duplicate_series:
            self._duplicates.inc(amount=float(share.duplicate_series))
        if share.utf8_names:
            self._utf8_names.inc(amount=float(share.utf8_names))
            log.warning(
                "left %d engine sample(s) with quoted UTF-8 names out of /metrics (text 0.0.4 cannot carry them)",
                share.utf8_names,
            )

    def _release_later(self) -> None:
        """On the loop, after a large scrape's answers had time to be written (their render is
        freed then, nothing else holds it): trim again in a worker thread."""
        self._release = asyncio.ensure_future(self.context.run_blocking(release_free_memory))
