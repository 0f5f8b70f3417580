"""Settings of the unified-metrics section (flags + environment, validated once)."""

import argparse
from dataclasses import dataclass
from typing import Mapping, Optional

from patio.core_settings import CoreSettings
from patio.metrics.seams import MODES, SCHEMES
from patio.options import Section, Setting, choice, fields_of, integer, parse_bool, positive_seconds, seconds

SETTINGS = Section(
    "metrics",
    "Metrics",
    (
        Setting(
            "scheme",
            "--metrics-scheme",
            "METRICS_SCHEME",
            "patio",
            choice(*SCHEMES),
            "the names /metrics serves: " + ", ".join(SCHEMES) + " (AIBrix's and Kthena's start profiles: theirs)",
        ),
        # AIBrix's switches (aibrix/envs.py: _is_true(os.getenv("METRICS_ENABLE_TRANSFORMATION", "1")),
        # so set but empty is false): either one serves the engine's families unrenamed (raw).
        Setting(
            "aibrix_transformation",
            "",
            "METRICS_ENABLE_TRANSFORMATION",
            True,
            parse_bool,
            "AIBrix's switch: false (or set but empty) serves the engine's families unrenamed (mode raw)",
            keep_empty=True,
        ),
        Setting(
            "aibrix_passthrough",
            "",
            "METRICS_RAW_PASSTHROUGH_MODE",
            False,
            parse_bool,
            "AIBrix's switch: true serves the engine's families unrenamed (mode raw)",
            keep_empty=True,
        ),
        Setting(
            "mode",
            "--metrics-mode",
            "METRICS_MODE",
            None,
            choice(*MODES),
            "standard (renamed families only), both, or raw (the engine's as they are)",
            shown="both (raw by AIBrix's switches)",
        ),
        Setting(
            "scrape_timeout",
            "--metrics-scrape-timeout",
            "METRICS_SCRAPE_TIMEOUT",
            2.0,
            positive_seconds,
            "seconds for one engine scrape",
        ),
        Setting(
            "cache_ttl",
            "--metrics-cache-ttl",
            "METRICS_CACHE_TTL",
            0.0,
            seconds,
            "seconds an engine scrape is reused (0: never)",
        ),
        # Largest engine /metrics body Patio reads (after decompression); larger -> engine_up 0.
        Setting(
            "max_payload_bytes",
            "--metrics-max-bytes",
            "METRICS_MAX_BYTES",
            32 * 1024 * 1024,
            integer(1024),
            "largest engine payload read, in bytes (after decompression); larger: engine_up 0",
        ),
        Setting(
            "engine_port",
            "--metrics-engine-port",
            "METRICS_ENGINE_PORT",
            None,
            integer(1, 65535),
            "port of the engine's /metrics when not its API's",
            shown="Triton's 8002, else the API port",
        ),
    ),
)


@dataclass(frozen=True)
class MetricsSettings:
    scheme: str = SETTINGS.default("scheme")
    mode: str = "both"
    scrape_timeout: float = SETTINGS.default("scrape_timeout")
    cache_ttl: float = SETTINGS.default("cache_ttl")
    max_payload_bytes: int = SETTINGS.default("max_payload_bytes")
    # The port of the engine's /metrics when not its API's; None: the engine's own default
    # (Triton: 8002, its --metrics-port; the others: the API port).
    engine_port: Optional[int] = SETTINGS.default("engine_port")


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> MetricsSettings:
    values = SETTINGS.read(args, env)
    raw = values["aibrix_passthrough"] or not values["aibrix_transformation"]
    return MetricsSettings(**fields_of(MetricsSettings, values, mode=values["mode"] or ("raw" if raw else "both")))
