"""Google Cloud Storage through the JSON API, with OAuth2 tokens minted in pure Python.

Tokens, first found wins: the request's ``access_token``; the request's service-account
JSON; ``GOOGLE_APPLICATION_CREDENTIALS`` (service account or ``gcloud`` user
credentials); the metadata server (GKE workload identity); anonymous (public buckets).
HMAC keys go through the S3-compatible XML API instead (``sources.py``).

Listing: ``GET /storage/v1/b/B/o?prefix=P`` paged by ``nextPageToken``.  Download:
``GET /download/storage/v1/b/B/o/NAME?alt=media&generation=G`` with ``Range``; the
generation pins the version, and ``md5Hash`` (when the object has one) is verified.
"""

import base64
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from patio import jsontext
from patio.artifacts.auth.credentials import RequestCredentials, SourceEnv
from patio.artifacts.auth.rs256 import InvalidKey, encode_jwt, parse_pem_private_key
from patio.artifacts.errors import (
    ArtifactAccessDenied,
    ArtifactError,
    ArtifactNotFound,
    CredentialsInvalid,
    CredentialsMisconfigured,
    ObjectChanged,
    Transient,
)
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.net import (
    MAX_ERROR_BODY,
    BodyStream,
    HttpClient,
    Response,
    error_for_status,
    range_start,
)
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig, call_with_retries

GCS_ENDPOINT = "https://storage.googleapis.com"
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# google-auth sends this audience whatever the key's token_uri says.
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
METADATA_HOST = "metadata.google.internal"
# Tokens are renewed this long before they expire (they last an hour).
REFRESH_MARGIN = 300.0
# The metadata server answers in milliseconds when present; off GCP the probe must not stall a download.
METADATA_PROBE_TIMEOUT = 2.0
LIST_PAGE_SIZE = 1000
MAX_LIST_PAGES = 200
# Largest key or credentials file read.
MAX_CREDENTIALS_FILE = 1024 * 1024
LIST_FIELDS = "items(name,size,md5Hash,generation),nextPageToken"


class TokenProvider(Protocol):
    description: str

    def token(self) -> Optional[str]:
        """A bearer token, or None for anonymous requests."""
        ...


class StaticToken:
    def __init__(self, token: Optional[str], description: str) -> None:
        self._token = token
        self.description = description

    def token(self) -> Optional[str]:
        return self._token


class _CachedToken:
    """Shared caching: ``_fetch()`` returns (token, lifetime seconds)."""

    description = "oauth2"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._expires = 0.0
        self._clock = clock

    def token(self) -> Optional[str]:
        with self._lock:
            if self._token is None or self._clock() >= self._expires - REFRESH_MARGIN:
                token, lifetime = self._fetch()
                self._token, self._expires = token, self._clock() + lifetime
            return self._token

    def _fetch(self) -> Tuple[str, float]:
        raise NotImplementedError


def _token_answer(response: Response, what: str) -> Tuple[str, float]:
    body = response.read_all(MAX_ERROR_BODY)
    if response.status != 200:
        detail = ""
        try:
            data = jsontext.loads(body)
            detail = ": ".join(str(data.get(k)) for k in ("error", "error_description") if data.get(k))
        except (ValueError, AttributeError):
            pass
        if response.status in (400, 401, 403):
            raise ArtifactAccessDenied(f"{what} refused (HTTP {response.status}){': ' + detail if detail else ''}")
        raise error_for_status(response, what, detail)
    try:
        data = jsontext.loads(body)
        token = data["access_token"]
        lifetime = float(data.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{what}: answer has no access_token") from None
    return str(token), lifetime


class ServiceAccountToken(_CachedToken):
    """JWT bearer grant (RFC 7523) signed RS256 with the service account's key."""

    def __init__(
        self, http: HttpClient, info: Mapping[str, Any], retry: DownloadRetry, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if missing:
            raise CredentialsInvalid(f"service account JSON lacks {', '.join(missing)}", param="credentials")
        try:
            self.key = parse_pem_private_key(str(info["private_key"]))
        except InvalidKey as exc:
            raise CredentialsInvalid(f"service account private_key is unusable: {exc}", param="credentials") from None
        self.http = http
        self.email = str(info["client_email"])
        self.key_id = str(info.get("private_key_id") or "")
        self.token_uri = str(info.get("token_uri") or TOKEN_AUDIENCE)
        self.retry = retry
        self.description = f"service account {self.email}"

    def assertion(self, now: Optional[int] = None) -> str:
        issued = int(self._clock()) if now is None else now
        header = {"alg": "RS256", "typ": "JWT"}
        if self.key_id:
            header["kid"] = self.key_id
        claims = {
            "iss": self.email,
            "scope": READ_ONLY_SCOPE,
            "aud": TOKEN_AUDIENCE,
            "iat": issued,
            "exp": issued + 3600,
        }
        return encode_jwt(header, claims, self.key)

    def _fetch(self) -> Tuple[str, float]:
        what = f"token request for {self.email}"

        def call() -> Tuple[str, float]:
            form = urllib.parse.urlencode(
                {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self.assertion()}
            ).encode("ascii")
            response = self.http.request(
                "POST", self.token_uri, [("Content-Type", "application/x-www-form-urlencoded")], body=form
            )
            return _token_answer(response, what)

        return call_with_retries(call, what, self.retry)


class UserToken(_CachedToken):
    """``gcloud auth application-default login`` credentials: a refresh-token grant."""

    def __init__(self, http: HttpClient, info: Mapping[str, Any], retry: DownloadRetry) -> None:
        super().__init__()
        missing = [k for k in ("client_id", "client_secret", "refresh_token") if not info.get(k)]
        if missing:
            raise CredentialsInvalid(f"authorized_user credentials lack {', '.join(missing)}", param="credentials")
        self.http = http
        self.info = dict(info)
        self.retry = retry
        self.description = "gcloud user credentials"

    def _fetch(self) -> Tuple[str, float]:
        what = "token refresh for gcloud user credentials"

        def call() -> Tuple[str, float]:
            form = urllib.parse.urlencode(
                {
                    "grant_type": "refresh_token",
                    "client_id": self.info["client_id"],
                    "client_secret": self.info["client_secret"],
                    "refresh_token": self.info["refresh_token"],
                }
            ).encode("ascii")
            uri = str(self.info.get("token_uri") or TOKEN_AUDIENCE)
            response = self.http.request(
                "POST", uri, [("Content-Type", "application/x-www-form-urlencoded")], body=form
            )
            return _token_answer(response, what)

        return call_with_retries(call, what, self.retry)


class MetadataToken(_CachedToken):
    """The GCE/GKE metadata server's token for the default service account; anonymous when absent."""

    def __init__(self, host: str, net: NetConfig, retry: DownloadRetry) -> None:
        super().__init__()
        self.base = host if "://" in host else "http://" + host
        # Its own short timeout and no proxy: the metadata server is link-local.  The egress
        # policy refuses metadata addresses to everything a request names; this client, which
        # only ever asks the configured metadata host for a token, is the one exception.
        allowed = net.egress.allowing(urllib.parse.urlsplit(self.base).hostname or host)
        self.http = HttpClient(NetConfig(timeout=min(net.timeout, METADATA_PROBE_TIMEOUT), egress=allowed))
        self.retry = retry
        self.absent = False
        self.description = "metadata server"

    def token(self) -> Optional[str]:
        if self.absent:
            return None
        return super().token()

    def _fetch(self) -> Tuple[str, float]:
        url = f"{self.base}/computeMetadata/v1/instance/service-accounts/default/token?" + urllib.parse.urlencode(
            {"scopes": READ_ONLY_SCOPE}
        )
        try:
            response = self.http.request("GET", url, [("Metadata-Flavor", "Google")])
        except Transient:
            # Not on GCP: public buckets still work without a token.
            self.absent = True
            self.description = "anonymous (no metadata server)"
            return "", 1e9
        return _token_answer(response, "metadata server token")


def _load_json(text: str, what: str) -> Dict[str, Any]:
    try:
        data = jsontext.loads(text)
    except ValueError:
        raise CredentialsInvalid(f"{what} is not valid JSON", param="credentials") from None
    if not isinstance(data, dict):
        raise CredentialsInvalid(f"{what} is not a JSON object", param="credentials")
    return data


def _provider_from_info(http: HttpClient, info: Mapping[str, Any], retry: DownloadRetry, what: str) -> TokenProvider:
    kind = info.get("type")
    if kind == "service_account":
        return ServiceAccountToken(http, info, retry)
    if kind == "authorized_user":
        return UserToken(http, info, retry)
    shown = repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "another"
    raise CredentialsInvalid(f"{what} has type {shown}; need service_account or authorized_user", param="credentials")


def resolve_token(
    request: RequestCredentials, env: SourceEnv, http: HttpClient, net: NetConfig, retry: DownloadRetry
) -> TokenProvider:
    if request.access_token:
        return StaticToken(request.access_token, "request access token")
    if request.service_account_json:
        info = _load_json(request.service_account_json, "credentials.service_account_json")
        return _provider_from_info(http, info, retry, "credentials.service_account_json")
    path = env.first("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        what = f"GOOGLE_APPLICATION_CREDENTIALS {path}"
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(MAX_CREDENTIALS_FILE)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise CredentialsMisconfigured(f"cannot read {what}: {reason}") from None
        try:
            return _provider_from_info(http, _load_json(text, what), retry, what)
        except CredentialsInvalid as exc:
            # The operator's file, not the caller's request: a configuration error, said as one.
            message = exc.message if what in exc.message else f"{what}: {exc.message}"
            raise CredentialsMisconfigured(message) from None
    if (env.first("NO_GCE_CHECK") or "").lower() in ("1", "true", "yes"):
        return StaticToken(None, "anonymous")
    return MetadataToken(env.first("GCE_METADATA_HOST", "GCE_METADATA_ROOT") or METADATA_HOST, net, retry)


def gcs_endpoint(env: SourceEnv) -> str:
    value = env.first("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE")
    if not value:
        return GCS_ENDPOINT
    return (value if "://" in value else "http://" + value).rstrip("/")


def _gcs_error(response: Response) -> str:
    try:
        data = jsontext.loads(response.read_all(MAX_ERROR_BODY))
        return str(data["error"]["message"])
    except Exception:
        return ""


class GcsSource:
    def __init__(
        self,
        http: HttpClient,
        endpoint: str,
        bucket: str,
        prefix: str,
        tokens: TokenProvider,
        retry: DownloadRetry,
        cancel: Optional[threading.Event] = None,
    ) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix
        self.tokens = tokens
        self.retry = retry
        self.cancel = cancel
        self.display = f"gs://{bucket}/{prefix}"

    def _headers(self) -> List[Tuple[str, str]]:
        token = self.tokens.token()
        return [("Authorization", f"Bearer {token}")] if token else []

    def _object_path(self, name: str) -> str:
        return f"/b/{urllib.parse.quote(self.bucket, safe='')}/o/{urllib.parse.quote(name, safe='')}"

    def _get_json(self, url: str, what: str, missing_ok: bool = False) -> Optional[Dict[str, Any]]:
        def call() -> Optional[Dict[str, Any]]:
            response = self.http.request("GET", url, self._headers())
            if response.status == 404 and missing_ok:
                response.read_all(MAX_ERROR_BODY)
                return None
            if response.status != 200:
                detail = _gcs_error(response)
                if response.status == 404:
                    raise ArtifactNotFound(f"{what} not found (HTTP 404){': ' + detail if detail else ''}")
                raise error_for_status(response, what, detail)
            try:
                data = jsontext.loads(response.read_all())
            except ValueError:
                raise ArtifactError(f"{what}: answer is not JSON") from None
            if not isinstance(data, dict):
                raise ArtifactError(f"{what}: answer is not a JSON object")
            return data

        return call_with_retries(call, what, self.retry, self.cancel)

    def _file(self, item: Mapping[str, Any], path: str) -> RemoteFile:
        md5 = None
        if item.get("md5Hash"):
            try:
                md5 = base64.b64decode(str(item["md5Hash"])).hex()
            except ValueError:
                md5 = None
        try:
            size = int(item.get("size", 0))
        except (TypeError, ValueError):
            raise ArtifactError(f"{self.display}: object {item.get('name')!r} has a bad size") from None
        generation = str(item.get("generation") or "")
        return RemoteFile(path=path, size=size, etag=generation, md5=md5, ranged=True, ref=(item["name"], generation))

    def list_files(self) -> List[RemoteFile]:
        folder = self.prefix if (not self.prefix or self.prefix.endswith("/")) else self.prefix + "/"
        base = f"{self.endpoint}/storage/v1/b/{urllib.parse.quote(self.bucket, safe='')}/o"
        files: List[RemoteFile] = []
        page_token: Optional[str] = None
        for _page in range(MAX_LIST_PAGES):
            params = {"prefix": folder, "maxResults": str(LIST_PAGE_SIZE), "fields": LIST_FIELDS}
            if page_token:
                params["pageToken"] = page_token
            data = self._get_json(base + "?" + urllib.parse.urlencode(params), f"bucket gs://{self.bucket}")
            assert data is not None
            for item in data.get("items") or []:
                name = str(item.get("name", ""))
                if not name or name.endswith("/"):
                    continue
                files.append(self._file(item, name[len(folder) :]))
            page_token = data.get("nextPageToken")
            if not page_token:
                break
        else:
            raise ArtifactError(f"list {self.display}: more than {MAX_LIST_PAGES} pages")
        if files or not self.prefix or self.prefix.endswith("/"):
            return files
        url = f"{self.endpoint}/storage/v1{self._object_path(self.prefix)}?fields=name,size,md5Hash,generation"
        item = self._get_json(url, f"gs://{self.bucket}/{self.prefix}", missing_ok=True)
        if item is None:
            return []
        return [self._file(item, self.prefix.rsplit("/", 1)[-1])]

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> BodyStream:
        name, generation = file.ref
        what = f"gs://{self.bucket}/{name}"
        query = {"alt": "media"}
        if generation:
            query["generation"] = generation
        url = f"{self.endpoint}/download/storage/v1{self._object_path(name)}?{urllib.parse.urlencode(query)}"
        headers = self._headers()
        if start or end is not None:
            headers.append(("Range", f"bytes={start}-" + ("" if end is None else str(end))))
        response = self.http.request("GET", url, headers)
        if response.status == 404 and generation:
            response.close()
            raise ObjectChanged(f"{what}: generation {generation} is gone")
        if response.status not in (200, 206):
            raise error_for_status(response, what, _gcs_error(response))
        return BodyStream(response, range_start(response, file.size, what))

    def close(self) -> None:
        self.http.close()
