"""A parsed URI + settings + request credentials -> the ``Source`` that lists and reads it.

Dispatch is a table by kind.  One rule for every store: credentials from the
environment (or the configured HF token) go only to the configured endpoint.
A request that names its own endpoint gets anonymous access there unless it
also brings its own credentials.

Each builder imports its store when a URI of that scheme first arrives: a pod that
only ever reads ``hf://`` never loads the SigV4 signer, the GCS RS256 signer or
ModelScope's client (nor the TLS client, for a ``pvc://`` copy).
"""

import re
import threading
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

from patio.artifacts.auth.credentials import RequestCredentials
from patio.artifacts.fetch.listing import Source
from patio.artifacts.settings import ArtifactSettings
from patio.artifacts.uri import SourceSpec
from patio.errors import BadRequest

if TYPE_CHECKING:  # pragma: no cover
    from patio.artifacts.auth.aws import CredentialsProvider

_TOS_NATIVE = re.compile(r"^(https?://)?tos-(?!s3-)([a-z0-9-]+)\.(i?volces\.com|i?bytepluses\.com)(.*)$")
_OBS_REGION = re.compile(r"obs\.([a-z0-9-]+)\.myhuaweicloud\.com")

Builder = Callable[[SourceSpec, ArtifactSettings, RequestCredentials, Optional[threading.Event]], Source]


def tos_s3_endpoint(endpoint: str) -> str:
    """TOS publishes a native and an S3 endpoint per region; only ``tos-s3-*`` speaks S3."""
    match = _TOS_NATIVE.match(endpoint.strip())
    if match is None:
        return endpoint
    return f"{match.group(1) or 'https://'}tos-s3-{match.group(2)}.{match.group(3)}{match.group(4)}"


def _s3_like(
    spec: SourceSpec, settings: ArtifactSettings, creds: RequestCredentials, cancel: Optional[threading.Event]
) -> Source:
    env = settings.env
    kind = spec.kind
    style_env = env.first("PATIO_S3_ADDRESSING_STYLE")
    aws = False
    if kind == "s3":
        region = creds.region or env.first("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1"
        configured = env.first("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "ENDPOINT")
        aws = not (creds.endpoint or configured)
        endpoint = creds.endpoint or configured or f"https://s3.{region}.amazonaws.com"
        style = creds.addressing_style or style_env or "auto"
    elif kind == "tos":
        region = creds.region or env.first("TOS_REGION") or "cn-beijing"
        configured = env.first("TOS_S3_ENDPOINT", "TOS_ENDPOINT")
        endpoint = tos_s3_endpoint(creds.endpoint or configured or f"https://tos-s3-{region}.volces.com")
        style = creds.addressing_style or "virtual"  # TOS's S3 endpoint has no path-style
    elif kind == "obs":
        configured = env.first("OBS_ENDPOINT", "ENDPOINT")
        named = creds.endpoint or configured or ""
        found = _OBS_REGION.search(named)
        region = creds.region or env.first("OBS_REGION") or (found.group(1) if found else "cn-north-4")
        endpoint = named or f"https://obs.{region}.myhuaweicloud.com"
        style = creds.addressing_style or style_env or "virtual"
    else:  # gs:// with HMAC keys: the XML API speaks SigV4 with region "auto"
        configured = None
        region = creds.region or "auto"
        endpoint = creds.endpoint or "https://storage.googleapis.com"
        style = creds.addressing_style or "path"
    from patio.artifacts.auth.aws import StaticProvider, resolve_provider
    from patio.artifacts.fetch.net import HttpClient
    from patio.artifacts.stores.s3 import S3Client, S3Endpoint, S3Source

    http = HttpClient(settings.net_config())
    retry = settings.retry_policy()
    provider: "CredentialsProvider"
    if creds.endpoint and not creds.has_keys and creds.endpoint != configured:
        provider = StaticProvider(None, "anonymous (endpoint named by the request)")
    else:
        provider = resolve_provider(kind, creds, env, http, region, retry)
    client = S3Client(http, S3Endpoint.parse(endpoint, style, aws=aws), region, provider, retry, label=kind)
    return S3Source(client, spec.bucket, spec.prefix, cancel)


def _gs(
    spec: SourceSpec, settings: ArtifactSettings, creds: RequestCredentials, cancel: Optional[threading.Event]
) -> Source:
    if creds.has_keys:
        return _s3_like(spec, settings, creds, cancel)
    from patio.artifacts.fetch.net import HttpClient
    from patio.artifacts.stores.gcs import GcsSource, gcs_endpoint, resolve_token

    http = HttpClient(settings.net_config())
    retry = settings.retry_policy()
    tokens = resolve_token(creds, settings.env, http, settings.net_config(), retry)
    return GcsSource(http, gcs_endpoint(settings.env), spec.bucket, spec.prefix, tokens, retry, cancel)


def _hub_endpoint(
    creds: RequestCredentials, configured: str, configured_token: Optional[str]
) -> Tuple[str, Optional[str]]:
    """The hub endpoint a request uses and the token it may send there.

    The configured token goes only to the configured endpoint: a request that names
    another one gets anonymous access there unless it brings its own token.
    """
    endpoint = (creds.endpoint or configured).rstrip("/")
    if not (endpoint.startswith("http://") or endpoint.startswith("https://")):
        raise BadRequest("credentials.endpoint must be an http:// or https:// URL", param="credentials")
    if creds.token:
        return endpoint, creds.token
    if endpoint == configured.rstrip("/"):
        return endpoint, configured_token
    return endpoint, None  # never hand the configured token to an endpoint a request chose


def _hf(
    spec: SourceSpec, settings: ArtifactSettings, creds: RequestCredentials, cancel: Optional[threading.Event]
) -> Source:
    endpoint, token = _hub_endpoint(creds, settings.hf_endpoint, settings.hf_token)
    revision = spec.revision or creds.revision or settings.hf_revision
    from patio.artifacts.fetch.net import HttpClient
    from patio.artifacts.stores.hf import HfSource

    http = HttpClient(settings.net_config())
    return HfSource(
        http, endpoint, spec.repo_id, spec.repo_type, revision, spec.subpath, token, settings.retry_policy(), cancel
    )


def _ms(
    spec: SourceSpec, settings: ArtifactSettings, creds: RequestCredentials, cancel: Optional[threading.Event]
) -> Source:
    endpoint, token = _hub_endpoint(creds, settings.ms_endpoint, settings.ms_token)
    revision = spec.revision or creds.revision or settings.ms_revision
    from patio.artifacts.fetch.net import HttpClient
    from patio.artifacts.stores.modelscope import ModelScopeSource

    http = HttpClient(settings.net_config())
    return ModelScopeSource(
        http, endpoint, spec.repo_id, revision, spec.subpath, token, settings.retry_policy(), cancel
    )


def _http(
    spec: SourceSpec, settings: ArtifactSettings, creds: RequestCredentials, cancel: Optional[threading.Event]
) -> Source:
    from patio.artifacts.fetch.net import HttpClient
    from patio.artifacts.stores.http import HttpSource

    return HttpSource(HttpClient(settings.net_config()), spec.url, creds.headers, settings.retry_policy(), cancel)


def _local(
    spec: SourceSpec, settings: ArtifactSettings, creds: RequestCredentials, cancel: Optional[threading.Event]
) -> Source:
    from patio.artifacts.stores.local import LocalSource, resolve_local

    return LocalSource(resolve_local(spec, settings.pvc_root), spec.display)


BUILDERS: Dict[str, Builder] = {
    "s3": _s3_like,
    "tos": _s3_like,
    "obs": _s3_like,
    "gs": _gs,
    "hf": _hf,
    "ms": _ms,
    "http": _http,
    "local": _local,
}


def open_source(
    spec: SourceSpec,
    settings: ArtifactSettings,
    creds: Optional[RequestCredentials] = None,
    cancel: Optional[threading.Event] = None,
) -> Source:
    return BUILDERS[spec.kind](spec, settings, creds or RequestCredentials(), cancel)
