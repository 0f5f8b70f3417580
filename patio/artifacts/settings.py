"""Settings of the artifacts (downloads) section: flags + environment, validated once.

Store credentials and endpoints stay environment-only (like the incumbents and
the AWS/GCS/HF clients); they are captured here into ``SourceEnv`` so nothing
reads ``os.environ`` later.  ``repr`` never shows a secret.
"""

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from patio.artifacts.auth.credentials import SourceEnv
from patio.artifacts.fetch.egress import DEFAULT_POLICY, PRIVATE_MODES, EgressPolicy, parse_allow
from patio.artifacts.fetch.options import DEFAULT_PART_SIZE, DEFAULT_THREADS, MIN_PART_SIZE, FetchOptions
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig
from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import (
    Section,
    Setting,
    absolute_path,
    as_str,
    fields_of,
    http_url,
    integer,
    parse_bool,
    positive_seconds,
    seconds,
    stripped,
)

# Environment variables the sources read (credentials, endpoints, regions).  Nothing else is kept.
SOURCE_ENV_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_STS",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "PATIO_S3_ADDRESSING_STYLE",
    "ACCESS_KEY",
    "SECRET_KEY",
    "ENDPOINT",
    "TOS_ACCESS_KEY",
    "TOS_SECRET_KEY",
    "TOS_SECURITY_TOKEN",
    "TOS_ENDPOINT",
    "TOS_S3_ENDPOINT",
    "TOS_REGION",
    "OBS_ACCESS_KEY_ID",
    "OBS_SECRET_ACCESS_KEY",
    "OBS_SECURITY_TOKEN",
    "OBS_ENDPOINT",
    "OBS_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "API_ENDPOINT_OVERRIDE",
    "GCE_METADATA_HOST",
    "GCE_METADATA_ROOT",
    "NO_GCE_CHECK",
)
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Largest part accepted: one part is one HTTP request, retried whole after a failure.
MAX_PART_SIZE = 1024**3
MAX_THREADS = 256
# Kthena's default max_workers, for its request shapes when they leave it out (the downloader's
# and the runtime's, python/kthena/downloader/app.py and runtime/app.py).
KTHENA_MAX_WORKERS = 8
# ModelScope's public hub (modelscope's client, without MODELSCOPE_ENDPOINT or MODELSCOPE_DOMAIN).
MODELSCOPE_HUB = "https://www.modelscope.cn"


def parse_size(setting: str, raw: str) -> int:
    """Bytes, with an optional K/M/G/T suffix (binary: 16M = 16 MiB)."""
    match = _SIZE.match(raw)
    if match is None:
        raise ConfigError(setting, f"expected a size such as 16777216 or 16MiB, got {raw!r}")
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < MIN_PART_SIZE or value > MAX_PART_SIZE:
        raise ConfigError(setting, f"must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes, got {value}")
    return value


def parse_suffixes(setting: str, raw: str) -> Tuple[str, ...]:
    items = tuple(s.strip().lstrip(".") for s in raw.replace(" ", ",").split(",") if s.strip().lstrip("."))
    if any("/" in s for s in items):
        raise ConfigError(setting, f"suffixes must not contain '/', got {raw!r}")
    return items


def _allow_list(setting: str, raw: str) -> Tuple[Any, Any]:
    try:
        return parse_allow(raw.replace(" ", ",").split(","))
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None


def _private_mode(setting: str, raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in PRIVATE_MODES:
        raise ConfigError(setting, f"must be allow or refuse, got {raw!r}")
    return mode


def _addressing_style(setting: str, raw: str) -> str:
    style = raw.strip().lower()
    if style and style not in ("auto", "path", "virtual"):
        raise ConfigError(setting, f"must be auto, path or virtual, got {style!r}")
    return style


def _ms_domain(setting: str, raw: str) -> str:
    """ModelScope's client: ``MODELSCOPE_DOMAIN`` is a host, https:// unless it says otherwise."""
    domain = raw.strip().rstrip("/")
    if not domain or domain.startswith(("http://", "https://")):
        return domain
    return "https://" + domain


# Store credentials and endpoints are read by the stores from ``SourceEnv`` (SOURCE_ENV_NAMES);
# these are the downloads' own settings.
SETTINGS = Section(
    "artifacts",
    "Downloads: models and LoRA adapters",
    (
        Setting(
            "adapter_dir",
            "--adapter-dir",
            "PATIO_ADAPTER_DIR",
            "/tmp/patio/adapters",
            absolute_path,
            "where remote LoRA adapters are downloaded (a volume shared with the engine)",
        ),
        Setting(
            "models_root",
            "--models-root",
            "PATIO_MODELS_ROOT DOWNLOADER_LOCAL_DIR",
            "/tmp/patio/models",
            absolute_path,
            "downloads via POST /v1/model/download stay below this; the CLI's default directory",
        ),
        Setting(
            "pvc_root",
            "--pvc-root",
            "PATIO_PVC_ROOT",
            "/mnt",
            absolute_path,
            "where pvc:// paths resolve (they cannot escape it)",
        ),
        Setting(
            "num_threads",
            "--download-threads",
            "DOWNLOADER_NUM_THREADS",
            DEFAULT_THREADS,
            integer(1, MAX_THREADS),
            "parallel transfers",
        ),
        Setting(
            "part_size",
            "--download-part-size",
            "DOWNLOADER_PART_SIZE",
            DEFAULT_PART_SIZE,
            parse_size,
            "ranged part size, e.g. 16MiB (1 MiB to 1 GiB)",
            shown=f"{DEFAULT_PART_SIZE // 1024**2}MiB",
        ),
        Setting(
            "allow_suffixes",
            "--download-allow-file-suffix",
            "DOWNLOADER_ALLOW_FILE_SUFFIX",
            (),
            parse_suffixes,
            "only files with these suffixes, e.g. json,safetensors",
            shown="all files",
        ),
        Setting(
            "force_download",
            "--download-force",
            "DOWNLOADER_FORCE_DOWNLOAD",
            False,
            parse_bool,
            "download again files that are complete",
            switch=True,
        ),
        Setting(
            "max_attempts",
            "--download-retries",
            "DOWNLOADER_MAX_RETRIES",
            5,
            integer(1, 20),
            "attempts per request before giving up",
        ),
        Setting(
            "backoff_base",
            "",
            "DOWNLOADER_BACKOFF_BASE",
            0.5,
            seconds,
            "seconds before the first retry; doubles per attempt (at most 20 s, jittered)",
        ),
        Setting(
            "timeout",
            "--download-timeout",
            "DOWNLOADER_TIMEOUT",
            60.0,
            positive_seconds,
            "seconds a network read may stall before it counts as failed",
        ),
        Setting(
            "progress_interval",
            "",
            "DOWNLOADER_PROGRESS_INTERVAL",
            10.0,
            positive_seconds,
            "seconds between progress log lines",
        ),
        Setting(
            "egress_allow",
            "--egress-allow",
            "PATIO_EGRESS_ALLOW",
            None,
            _allow_list,
            "destinations downloads may reach although the egress policy refuses their class: networks, "
            "addresses, host names or .suffixes, comma-separated",
        ),
        Setting(
            "egress_private",
            "--egress-private",
            "PATIO_EGRESS_PRIVATE",
            "allow",
            _private_mode,
            "allow or refuse downloads from private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)",
        ),
        Setting(
            "hf_endpoint", "--hf-endpoint", "HF_ENDPOINT", "https://huggingface.co", http_url, "the HuggingFace Hub"
        ),
        Setting(
            "hf_revision",
            "",
            "HF_REVISION",
            "main",
            stripped,
            "the Hub revision when a URI names none",
            blank_unset=True,
        ),
        Setting(
            "hf_token",
            "",
            "HF_TOKEN HF_AUTH_TOKEN HUGGING_FACE_HUB_TOKEN",
            None,
            stripped,
            "the Hub token, sent only to HF_ENDPOINT",
            shown="the file HF_TOKEN_PATH, else $HF_HOME/token",
            blank_unset=True,
        ),
        Setting(
            "hf_no_implicit_token",
            "",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN",
            False,
            parse_bool,
            "true: no Hub token from the environment or the token file",
        ),
        Setting(
            "ms_endpoint",
            "",
            "MODELSCOPE_ENDPOINT",
            None,
            http_url,
            "the ModelScope hub",
            shown=f"https://MODELSCOPE_DOMAIN, else {MODELSCOPE_HUB}",
            blank_unset=True,
        ),
        Setting(
            "ms_domain",
            "",
            "MODELSCOPE_DOMAIN",
            None,
            _ms_domain,
            "the ModelScope hub's host, when MODELSCOPE_ENDPOINT is unset",
            blank_unset=True,
        ),
        Setting(
            "ms_revision",
            "",
            "MS_REVISION",
            "master",
            stripped,
            "the ModelScope revision when a URI names none",
            blank_unset=True,
        ),
        Setting(
            "ms_token",
            "",
            "MS_TOKEN MODELSCOPE_API_TOKEN",
            None,
            stripped,
            "the ModelScope token, sent only to the ModelScope endpoint",
            blank_unset=True,
        ),
        Setting(
            "credentials_dir",
            "--credentials-dir",
            "PATIO_CREDENTIALS_DIR",
            "/var/run/secrets/aibrix",
            absolute_path,
            "where credentials_secret names are mounted (AIBrix's mount)",
        ),
        Setting(
            "s3_addressing_style",
            "",
            "PATIO_S3_ADDRESSING_STYLE",
            "",
            _addressing_style,
            "auto, path or virtual-hosted S3 requests",
            shown="auto",
        ),
        Setting("http_proxy", "", "http_proxy HTTP_PROXY", None, as_str, "the proxy for http:// downloads"),
        Setting("https_proxy", "", "https_proxy HTTPS_PROXY", None, as_str, "the proxy for https:// downloads"),
        Setting("no_proxy", "", "no_proxy NO_PROXY", "", as_str, "hosts reached without the proxy"),
        Setting(
            "ca_file",
            "",
            "REQUESTS_CA_BUNDLE AWS_CA_BUNDLE",
            None,
            as_str,
            "CA bundle for https downloads",
            shown="the system's",
        ),
    ),
)


@dataclass(frozen=True)
class ArtifactSettings:
    adapter_dir: str = SETTINGS.default("adapter_dir")
    models_root: str = SETTINGS.default("models_root")
    pvc_root: str = SETTINGS.default("pvc_root")
    num_threads: int = SETTINGS.default("num_threads")
    part_size: int = SETTINGS.default("part_size")
    allow_suffixes: Tuple[str, ...] = SETTINGS.default("allow_suffixes")
    force_download: bool = SETTINGS.default("force_download")
    max_attempts: int = SETTINGS.default("max_attempts")
    backoff_base: float = SETTINGS.default("backoff_base")  # first retry delay; doubles per attempt
    timeout: float = SETTINGS.default("timeout")
    progress_interval: float = SETTINGS.default("progress_interval")
    hf_endpoint: str = SETTINGS.default("hf_endpoint")
    hf_revision: str = SETTINGS.default("hf_revision")
    hf_token: Optional[str] = field(default=None, repr=False)
    ms_endpoint: str = MODELSCOPE_HUB
    ms_revision: str = SETTINGS.default("ms_revision")
    ms_token: Optional[str] = field(default=None, repr=False)
    credentials_dir: str = SETTINGS.default("credentials_dir")
    proxies: Mapping[str, str] = field(default_factory=dict, repr=False)
    no_proxy: str = SETTINGS.default("no_proxy")
    ca_file: Optional[str] = SETTINGS.default("ca_file")
    env: SourceEnv = field(default_factory=SourceEnv)
    egress: EgressPolicy = DEFAULT_POLICY  # where downloads may connect (fetch/egress.py)

    def net_config(self) -> NetConfig:
        return NetConfig(
            timeout=self.timeout,
            proxies=self.proxies,
            no_proxy=self.no_proxy,
            ca_file=self.ca_file,
            egress=self.egress,
        )

    def retry_policy(self) -> DownloadRetry:
        return DownloadRetry(attempts=self.max_attempts, base_delay=self.backoff_base)

    def fetch_options(
        self,
        *,
        num_threads: Optional[int] = None,
        allow_suffixes: Optional[Tuple[str, ...]] = None,
        force: Optional[bool] = None,
    ) -> FetchOptions:
        return FetchOptions(
            num_threads=num_threads or self.num_threads,
            part_size=self.part_size,
            allow_suffixes=self.allow_suffixes if allow_suffixes is None else allow_suffixes,
            force=self.force_download if force is None else force,
            retry=self.retry_policy(),
            progress_interval=self.progress_interval,
        )


def _hf_token_file(env: Mapping[str, str]) -> Optional[str]:
    """huggingface_hub's token file: ``HF_TOKEN_PATH``, else ``$HF_HOME/token``."""
    path = env.get("HF_TOKEN_PATH") or os.path.join(
        env.get("HF_HOME") or os.path.join(env.get("HOME", "/root"), ".cache", "huggingface"), "token"
    )
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(4096).strip() or None
    except OSError:
        return None


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: Optional[CoreSettings]) -> ArtifactSettings:
    values = SETTINGS.read(args, env)
    networks, hosts = values["egress_allow"] or ((), ())
    hf_token = None if values["hf_no_implicit_token"] else values["hf_token"] or _hf_token_file(env)
    return ArtifactSettings(
        **fields_of(
            ArtifactSettings,
            values,
            hf_token=hf_token,
            ms_endpoint=values["ms_endpoint"] or values["ms_domain"] or MODELSCOPE_HUB,
            proxies={scheme: values[scheme + "_proxy"] for scheme in ("http", "https") if values[scheme + "_proxy"]},
            env=SourceEnv({name: env[name] for name in SOURCE_ENV_NAMES if env.get(name)}),
            egress=EgressPolicy(networks, hosts, refuse_private=values["egress_private"] == "refuse"),
        )
    )
