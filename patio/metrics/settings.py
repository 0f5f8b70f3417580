"""Settings of the unified-metrics section (flags + environment, validated once)."""

import argparse
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from patio.core_settings import CoreSettings
from patio.metrics.assemble import MODES
from patio.metrics.rules import SCHEMES
from patio.options import parse_bool, parse_choice, parse_int, pick, positive_seconds, seconds

# Largest engine /metrics body Patio reads (after decompression); larger -> engine_up 0.
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024


@dataclass(frozen=True)
class MetricsSettings:
    scheme: str = "patio"
    mode: str = "both"
    scrape_timeout: float = 2.0
    cache_ttl: float = 0.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    # The port of the engine's /metrics when not its API's; None: the engine's own default
    # (Triton: 8002, its --metrics-port; the others: the API port).
    engine_port: Optional[int] = None


def add_flags(parser: Any) -> None:
    parser.add_argument(
        "--metrics-scheme",
        help="patio, aibrix or kthena (env METRICS_SCHEME; default patio, or the start profile's: aibrix, kthena)",
    )
    parser.add_argument("--metrics-mode", help="standard, both or raw (env METRICS_MODE; default both)")
    parser.add_argument("--metrics-scrape-timeout", help="seconds for one engine scrape (default 2)")
    parser.add_argument("--metrics-cache-ttl", help="seconds an engine scrape is reused (default 0: never)")
    parser.add_argument("--metrics-max-bytes", help="largest engine payload read, bytes (default 33554432)")
    parser.add_argument(
        "--metrics-engine-port",
        help="port of the engine's /metrics (env METRICS_ENGINE_PORT; default: Triton 8002, else the API port)",
    )


def _mode_from_aibrix(env: Mapping[str, str]) -> str:
    # AIBrix's switches (aibrix/envs.py): METRICS_ENABLE_TRANSFORMATION=0 or
    # METRICS_RAW_PASSTHROUGH_MODE=1 serve the engine's families unrenamed (raw).
    transform = parse_bool("METRICS_ENABLE_TRANSFORMATION", env.get("METRICS_ENABLE_TRANSFORMATION", "1"))
    passthrough = parse_bool("METRICS_RAW_PASSTHROUGH_MODE", env.get("METRICS_RAW_PASSTHROUGH_MODE", "0"))
    return "raw" if passthrough or not transform else "both"


def _metrics_port(setting: str, raw: str) -> int:
    return parse_int(setting, raw, minimum=1, maximum=65535)


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> MetricsSettings:
    return MetricsSettings(
        scheme=pick(
            args, env, "metrics_scheme", ("METRICS_SCHEME",), "patio", lambda s, r: parse_choice(s, r, SCHEMES)
        ),
        mode=pick(
            args, env, "metrics_mode", ("METRICS_MODE",), _mode_from_aibrix(env), lambda s, r: parse_choice(s, r, MODES)
        ),
        scrape_timeout=pick(args, env, "metrics_scrape_timeout", ("METRICS_SCRAPE_TIMEOUT",), 2.0, positive_seconds),
        cache_ttl=pick(args, env, "metrics_cache_ttl", ("METRICS_CACHE_TTL",), 0.0, seconds),
        max_payload_bytes=pick(
            args,
            env,
            "metrics_max_bytes",
            ("METRICS_MAX_BYTES",),
            DEFAULT_MAX_PAYLOAD,
            lambda s, r: parse_int(s, r, minimum=1024),
        ),
        engine_port=pick(args, env, "metrics_engine_port", ("METRICS_ENGINE_PORT",), None, _metrics_port),
    )
