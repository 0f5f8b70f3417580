"""Settings of the artifacts (downloads) section: flags + environment, validated once.

Store credentials and endpoints stay environment-only (like the incumbents and
the AWS/GCS/HF clients); they are captured here into ``SourceEnv`` so nothing
reads ``os.environ`` later.  ``repr`` never shows a secret.
"""

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from patio.artifacts.auth.credentials import SourceEnv
from patio.artifacts.fetch.egress import DEFAULT_POLICY, PRIVATE_MODES, EgressPolicy, parse_allow
from patio.artifacts.fetch.options import DEFAULT_PART_SIZE, DEFAULT_THREADS, MIN_PART_SIZE, FetchOptions
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig
from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import parse_bool, parse_int, pick, positive_seconds, seconds

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
HF_TOKEN_ENV = ("HF_TOKEN", "HF_AUTH_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Largest part accepted: one part is one HTTP request, retried whole after a failure.
MAX_PART_SIZE = 1024**3
MAX_THREADS = 256
# Kthena's default max_workers, for its request shapes when they leave it out (the downloader's
# and the runtime's, python/kthena/downloader/app.py and runtime/app.py; incumbents.md).
KTHENA_MAX_WORKERS = 8


@dataclass(frozen=True)
class ArtifactSettings:
    adapter_dir: str = "/tmp/patio/adapters"
    models_root: str = "/tmp/patio/models"
    pvc_root: str = "/mnt"
    num_threads: int = DEFAULT_THREADS
    part_size: int = DEFAULT_PART_SIZE
    allow_suffixes: Tuple[str, ...] = ()
    force_download: bool = False
    max_attempts: int = 5
    backoff_base: float = 0.5  # first retry delay in seconds; doubles per attempt (capped, jittered)
    timeout: float = 60.0
    progress_interval: float = 10.0
    hf_endpoint: str = "https://huggingface.co"
    hf_revision: str = "main"
    hf_token: Optional[str] = field(default=None, repr=False)
    ms_endpoint: str = "https://www.modelscope.cn"
    ms_revision: str = "master"
    ms_token: Optional[str] = field(default=None, repr=False)
    credentials_dir: str = "/var/run/secrets/aibrix"  # AIBrix's credentials_secret mount
    proxies: Mapping[str, str] = field(default_factory=dict, repr=False)
    no_proxy: str = ""
    ca_file: Optional[str] = None
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


def _directory(setting: str, raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/"):
        raise ConfigError(setting, f"must be an absolute path, got {raw!r}")
    return os.path.normpath(value)


def _url(setting: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not (value.startswith("http://") or value.startswith("https://")):
        raise ConfigError(setting, f"must be an http:// or https:// URL, got {raw!r}")
    return value


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


def _egress(args: argparse.Namespace, env: Mapping[str, str]) -> EgressPolicy:
    networks, hosts = pick(args, env, "egress_allow", ("PATIO_EGRESS_ALLOW",), ((), ()), _allow_list)
    mode = pick(args, env, "egress_private", ("PATIO_EGRESS_PRIVATE",), "allow", _private_mode)
    return EgressPolicy(networks, hosts, refuse_private=mode == "refuse")


def add_flags(parser: Any) -> None:
    add = parser.add_argument
    add("--adapter-dir", help="where remote LoRA adapters are downloaded (env PATIO_ADAPTER_DIR; /tmp/patio/adapters)")
    add("--models-root", help="downloads via POST /v1/model/download stay below this (env PATIO_MODELS_ROOT)")
    add("--pvc-root", help="where pvc:// paths resolve (env PATIO_PVC_ROOT; default /mnt)")
    add("--download-threads", help="parallel downloads (env DOWNLOADER_NUM_THREADS; default 16)")
    add("--download-part-size", help="ranged part size, e.g. 16MiB (env DOWNLOADER_PART_SIZE)")
    add("--download-allow-file-suffix", help="only files with these suffixes, e.g. json,safetensors")
    add("--download-force", nargs="?", const="true", metavar="true|false", help="re-download complete files")
    add("--download-retries", help="attempts per request before giving up (env DOWNLOADER_MAX_RETRIES; default 5)")
    add("--download-timeout", help="seconds per network read before it counts as stalled (default 60)")
    add("--hf-endpoint", help="HuggingFace endpoint (env HF_ENDPOINT; default https://huggingface.co)")
    add(
        "--egress-allow",
        help="destinations downloads may reach although the egress policy refuses their class: "
        "networks, addresses, host names or .suffixes, comma-separated (env PATIO_EGRESS_ALLOW)",
    )
    add(
        "--egress-private",
        help="allow or refuse downloads from private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) "
        "(env PATIO_EGRESS_PRIVATE; default allow)",
    )
    add(
        "--credentials-dir",
        help="where credentials_secret names are mounted (env PATIO_CREDENTIALS_DIR; default /var/run/secrets/aibrix)",
    )


def _hf_token(env: Mapping[str, str]) -> Optional[str]:
    if parse_bool("HF_HUB_DISABLE_IMPLICIT_TOKEN", env.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "") or "false"):
        return None
    for name in HF_TOKEN_ENV:
        value = (env.get(name) or "").strip()
        if value:
            return value
    path = env.get("HF_TOKEN_PATH") or os.path.join(
        env.get("HF_HOME") or os.path.join(env.get("HOME", "/root"), ".cache", "huggingface"), "token"
    )
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(4096).strip() or None
    except OSError:
        return None


def _ms_endpoint(env: Mapping[str, str]) -> str:
    """ModelScope's client: ``MODELSCOPE_ENDPOINT``, else https:// + ``MODELSCOPE_DOMAIN``, else the public hub."""
    endpoint = (env.get("MODELSCOPE_ENDPOINT") or "").strip()
    if endpoint:
        return _url("MODELSCOPE_ENDPOINT", endpoint)
    domain = (env.get("MODELSCOPE_DOMAIN") or "").strip().rstrip("/")
    if domain:
        return domain if domain.startswith(("http://", "https://")) else "https://" + domain
    return "https://www.modelscope.cn"


def _proxies(env: Mapping[str, str]) -> Dict[str, str]:
    proxies = {}
    for scheme in ("http", "https"):
        value = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
        if value:
            proxies[scheme] = value
    return proxies


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: Optional[CoreSettings]) -> ArtifactSettings:
    def threads(setting: str, raw: str) -> int:
        return parse_int(setting, raw, minimum=1, maximum=MAX_THREADS)

    def attempts(setting: str, raw: str) -> int:
        return parse_int(setting, raw, minimum=1, maximum=20)

    style = (env.get("PATIO_S3_ADDRESSING_STYLE") or "").strip().lower()
    if style and style not in ("auto", "path", "virtual"):
        raise ConfigError("PATIO_S3_ADDRESSING_STYLE", f"must be auto, path or virtual, got {style!r}")
    return ArtifactSettings(
        adapter_dir=pick(args, env, "adapter_dir", ("PATIO_ADAPTER_DIR",), "/tmp/patio/adapters", _directory),
        models_root=pick(
            args, env, "models_root", ("PATIO_MODELS_ROOT", "DOWNLOADER_LOCAL_DIR"), "/tmp/patio/models", _directory
        ),
        pvc_root=pick(args, env, "pvc_root", ("PATIO_PVC_ROOT",), "/mnt", _directory),
        num_threads=pick(args, env, "download_threads", ("DOWNLOADER_NUM_THREADS",), DEFAULT_THREADS, threads),
        part_size=pick(args, env, "download_part_size", ("DOWNLOADER_PART_SIZE",), DEFAULT_PART_SIZE, parse_size),
        allow_suffixes=pick(
            args, env, "download_allow_file_suffix", ("DOWNLOADER_ALLOW_FILE_SUFFIX",), (), parse_suffixes
        ),
        force_download=pick(args, env, "download_force", ("DOWNLOADER_FORCE_DOWNLOAD",), False, parse_bool),
        max_attempts=pick(args, env, "download_retries", ("DOWNLOADER_MAX_RETRIES",), 5, attempts),
        backoff_base=pick(
            args,
            env,
            "download_backoff",
            ("DOWNLOADER_BACKOFF_BASE",),
            0.5,
            seconds,
        ),
        timeout=pick(args, env, "download_timeout", ("DOWNLOADER_TIMEOUT",), 60.0, positive_seconds),
        progress_interval=pick(
            args, env, "download_progress_interval", ("DOWNLOADER_PROGRESS_INTERVAL",), 10.0, positive_seconds
        ),
        hf_endpoint=pick(args, env, "hf_endpoint", ("HF_ENDPOINT",), "https://huggingface.co", _url),
        hf_revision=(env.get("HF_REVISION") or "main").strip() or "main",
        hf_token=_hf_token(env),
        ms_endpoint=_ms_endpoint(env),
        ms_revision=(env.get("MS_REVISION") or "master").strip() or "master",
        ms_token=(env.get("MS_TOKEN") or env.get("MODELSCOPE_API_TOKEN") or "").strip() or None,
        credentials_dir=pick(
            args, env, "credentials_dir", ("PATIO_CREDENTIALS_DIR",), "/var/run/secrets/aibrix", _directory
        ),
        proxies=_proxies(env),
        no_proxy=env.get("no_proxy") or env.get("NO_PROXY") or "",
        ca_file=env.get("REQUESTS_CA_BUNDLE") or env.get("AWS_CA_BUNDLE") or None,
        env=SourceEnv({name: env[name] for name in SOURCE_ENV_NAMES if env.get(name)}),
        egress=_egress(args, env),
    )
