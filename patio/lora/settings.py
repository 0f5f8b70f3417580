"""Settings of the LoRA section: engine calls, the held set on disk, declarative adapters."""

import argparse
from dataclasses import dataclass
from typing import Mapping, Optional

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import (
    Section,
    Setting,
    absolute_path,
    as_str,
    fields_of,
    integer,
    positive_int,
    positive_seconds,
    seconds,
)

SETTINGS = Section(
    "lora",
    "LoRA",
    (
        Setting(
            "reconcile_interval",
            "--lora-reconcile-interval",
            "PATIO_LORA_RECONCILE_INTERVAL",
            30.0,
            seconds,
            "seconds between LoRA reconciliations; 0 disables them",
        ),
        # patio.config sets PATIO_STATE_DIR to profiles.default_state_dir() when it is unset.
        Setting(
            "state_dir",
            "--state-dir",
            "PATIO_STATE_DIR",
            "/tmp/patio",
            as_str,
            "where Patio keeps the adapter set it holds",
            shown="per user, engine and port: $TMPDIR/patio-UID/HOST_PORT-LISTENPORT",
        ),
        Setting(
            "load_timeout",
            "--lora-load-timeout",
            "PATIO_LORA_LOAD_TIMEOUT",
            1800.0,
            positive_seconds,
            "seconds one engine LoRA load may take (adapters can be large)",
        ),
        Setting(
            "unload_timeout",
            "--lora-unload-timeout",
            "PATIO_LORA_UNLOAD_TIMEOUT",
            60.0,
            positive_seconds,
            "seconds one engine LoRA unload may take",
        ),
        Setting(
            "retry_attempts",
            "--lora-retry-attempts",
            "PATIO_LORA_RETRY_ATTEMPTS",
            5,
            positive_int,
            "attempts for a LoRA call the engine could not have acted on",
        ),
        Setting(
            "retry_deadline",
            "--lora-retry-deadline",
            "PATIO_LORA_RETRY_DEADLINE",
            30.0,
            seconds,
            "seconds all retries of one LoRA call may take",
        ),
        Setting(
            "adapters_file",
            "--adapters-file",
            "PATIO_ADAPTERS_FILE",
            None,
            absolute_path,
            "adapters wanted, as JSON or the LoRA syncer's YAML (docs/adapters-file.md)",
        ),
        Setting(
            "adapters_file_interval",
            "--adapters-file-interval",
            "PATIO_ADAPTERS_FILE_INTERVAL",
            5.0,
            positive_seconds,
            "seconds between looks at the adapters file",
        ),
        # VLLM_LORA_RESOLVER_CACHE_DIR too: the same value the engine container is given.
        Setting(
            "resolver_dir",
            "--resolver-dir",
            "PATIO_RESOLVER_DIR VLLM_LORA_RESOLVER_CACHE_DIR",
            None,
            absolute_path,
            "vLLM's lora_filesystem_resolver directory: remote adapters of the file are downloaded there "
            "instead of being loaded",
        ),
        Setting(
            "max_adapters",
            "--max-adapters",
            "PATIO_MAX_ADAPTERS",
            256,
            integer(1, 100000),
            "adapters Patio keeps track of; more are refused",
        ),
        Setting(
            "apply_attempts",
            "--adapter-apply-attempts",
            "PATIO_ADAPTER_APPLY_ATTEMPTS",
            5,
            integer(1, 100),
            "attempts to apply one adapter of the file before it is failed",
        ),
        Setting(
            "apply_backoff",
            "--adapter-apply-backoff",
            "PATIO_ADAPTER_APPLY_BACKOFF",
            1.0,
            seconds,
            "seconds before the first retry of one adapter; doubles per attempt, at most 60",
        ),
        # The object may be uploaded after the ConfigMap, the store may be back.
        Setting(
            "failed_retry_interval",
            "--adapter-failed-retry-interval",
            "PATIO_ADAPTER_FAILED_RETRY_INTERVAL",
            300.0,
            seconds,
            "seconds after which a failed adapter of the file is tried again; 0: only when the file changes "
            "or the engine comes back",
        ),
    ),
)


@dataclass(frozen=True)
class LoraSettings:
    reconcile_interval: float = SETTINGS.default("reconcile_interval")
    state_dir: str = SETTINGS.default("state_dir")
    load_timeout: float = SETTINGS.default("load_timeout")
    unload_timeout: float = SETTINGS.default("unload_timeout")
    retry_attempts: int = SETTINGS.default("retry_attempts")
    retry_deadline: float = SETTINGS.default("retry_deadline")
    models_timeout: float = 5.0  # GET /v1/models during reconciliation (not a setting)
    adapters_file: Optional[str] = SETTINGS.default("adapters_file")
    adapters_file_interval: float = SETTINGS.default("adapters_file_interval")
    resolver_dir: Optional[str] = SETTINGS.default("resolver_dir")
    max_adapters: int = SETTINGS.default("max_adapters")
    apply_attempts: int = SETTINGS.default("apply_attempts")
    apply_backoff: float = SETTINGS.default("apply_backoff")
    failed_retry_interval: float = SETTINGS.default("failed_retry_interval")


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> LoraSettings:
    values = SETTINGS.read(args, env)
    if values["resolver_dir"] is not None and core.engine != "vllm":
        raise ConfigError("--resolver-dir", f"is for vLLM's lora_filesystem_resolver; the engine is {core.engine}")
    return LoraSettings(**fields_of(LoraSettings, values))
