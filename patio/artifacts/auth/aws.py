"""Where S3-style credentials come from, first found wins:

1. the request's ``credentials`` (access key id + secret, optional session token);
2. the environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
   Kthena's ``ACCESS_KEY``/``SECRET_KEY``, and ``TOS_ACCESS_KEY``/``TOS_SECRET_KEY`` for tos://;
3. web identity (EKS IRSA): ``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN`` exchanged at
   STS AssumeRoleWithWebIdentity (unsigned POST; the token file is re-read on every refresh
   because kubelet rotates it);
4. none: anonymous requests (public buckets).
"""

import datetime
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Callable, Optional, Protocol, Tuple

from patio.artifacts.auth.credentials import RequestCredentials, SourceEnv
from patio.artifacts.auth.sigv4 import Credentials
from patio.artifacts.errors import ArtifactAccessDenied, ArtifactError
from patio.artifacts.fetch.net import HttpClient, error_for_status
from patio.artifacts.fetch.retry import DownloadRetry, call_with_retries

# Refresh temporary credentials this long before they expire (STS tokens last >= 15 min).
REFRESH_MARGIN = 300.0
# Longest web identity token read from disk (a projected service-account JWT is ~1 KB).
MAX_TOKEN_FILE = 64 * 1024
STS_VERSION = "2011-06-15"
_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"

# Per store: environment (access key, secret, session token) triples, in order.
ENV_KEYS = {
    "s3": (
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
        ("ACCESS_KEY", "SECRET_KEY", None),
    ),
    "tos": (
        ("TOS_ACCESS_KEY", "TOS_SECRET_KEY", "TOS_SECURITY_TOKEN"),
        ("ACCESS_KEY", "SECRET_KEY", None),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    ),
    "obs": (
        ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN"),
        ("ACCESS_KEY", "SECRET_KEY", None),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    ),
    "gs": (),
}


class CredentialsProvider(Protocol):
    description: str

    def get(self) -> Optional[Credentials]:
        """Credentials to sign with, or None for anonymous requests."""
        ...


class StaticProvider:
    def __init__(self, credentials: Optional[Credentials], description: str) -> None:
        self._credentials = credentials
        self.description = description

    def get(self) -> Optional[Credentials]:
        return self._credentials


class WebIdentityProvider:
    """STS AssumeRoleWithWebIdentity, cached until shortly before ``Expiration``."""

    def __init__(
        self,
        client: HttpClient,
        endpoint: str,
        role_arn: str,
        token_file: str,
        session_name: str,
        retry: DownloadRetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.endpoint = endpoint.rstrip("/") + "/"
        self.role_arn = role_arn
        self.token_file = token_file
        self.session_name = session_name
        self.retry = retry
        self.clock = clock
        self.description = f"web identity ({role_arn})"
        self._lock = threading.Lock()
        self._credentials: Optional[Credentials] = None
        self._expires = 0.0

    def get(self) -> Optional[Credentials]:
        with self._lock:
            if self._credentials is None or self.clock() >= self._expires - REFRESH_MARGIN:
                self._credentials, self._expires = self._assume()
            return self._credentials

    def _read_token(self) -> str:
        try:
            with open(self.token_file, encoding="utf-8") as handle:
                token = handle.read(MAX_TOKEN_FILE).strip()
        except OSError as exc:
            raise ArtifactAccessDenied(
                f"cannot read AWS_WEB_IDENTITY_TOKEN_FILE {self.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ArtifactAccessDenied(f"AWS_WEB_IDENTITY_TOKEN_FILE {self.token_file} is empty")
        return token

    def _assume(self) -> Tuple[Credentials, float]:
        form = urllib.parse.urlencode(
            {
                "Action": "AssumeRoleWithWebIdentity",
                "Version": STS_VERSION,
                "RoleArn": self.role_arn,
                "RoleSessionName": self.session_name,
                "WebIdentityToken": self._read_token(),
            }
        ).encode("ascii")
        what = f"STS AssumeRoleWithWebIdentity for {self.role_arn}"

        def call() -> bytes:
            response = self.client.request(
                "POST",
                self.endpoint,
                [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
                body=form,
            )
            if response.status != 200:
                detail = _sts_error(response.read_all(64 * 1024))
                raise error_for_status(response, what, detail)
            return response.read_all(1024 * 1024)

        body = call_with_retries(call, what, self.retry)
        return parse_assume_role_response(body, what)


def parse_assume_role_response(body: bytes, what: str) -> Tuple[Credentials, float]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ArtifactError(f"{what}: unreadable answer ({exc})") from None
    creds = root.find(f".//{_STS_NS}Credentials")
    if creds is None:
        creds = root.find(".//Credentials")
    if creds is None:
        raise ArtifactError(f"{what}: answer has no Credentials")

    def text(tag: str) -> str:
        node = creds.find(_STS_NS + tag)
        if node is None:
            node = creds.find(tag)
        return (node.text or "").strip() if node is not None else ""

    key, secret, token, expiration = (text(t) for t in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"))
    if not key or not secret:
        raise ArtifactError(f"{what}: answer lacks AccessKeyId/SecretAccessKey")
    try:
        expires = datetime.datetime.strptime(expiration[:19], "%Y-%m-%dT%H:%M:%S")
        expires_at = expires.replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        expires_at = time.time() + 900.0  # the shortest STS session
    return Credentials(key, secret, token or None), expires_at


def _sts_error(body: bytes) -> str:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    code = root.find(".//{*}Code")
    message = root.find(".//{*}Message")
    parts = [n.text.strip() for n in (code, message) if n is not None and n.text]
    return ": ".join(parts)


def resolve_provider(
    kind: str,
    request: RequestCredentials,
    env: SourceEnv,
    client: HttpClient,
    region: str,
    retry: DownloadRetry,
) -> CredentialsProvider:
    if request.has_keys:
        assert request.access_key_id is not None and request.secret_access_key is not None
        creds = Credentials(request.access_key_id, request.secret_access_key, request.session_token)
        return StaticProvider(creds, "request credentials")
    for key_name, secret_name, token_name in ENV_KEYS.get(kind, ()):
        key, secret = env.first(key_name), env.first(secret_name)
        if key and secret:
            token = env.first(token_name) if token_name else None
            return StaticProvider(Credentials(key, secret, token), f"environment {key_name}")
    if kind == "s3":
        token_file, role_arn = env.first("AWS_WEB_IDENTITY_TOKEN_FILE"), env.first("AWS_ROLE_ARN")
        if token_file and role_arn:
            endpoint = env.first("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL") or f"https://sts.{region}.amazonaws.com"
            session = env.first("AWS_ROLE_SESSION_NAME") or f"patio-{int(time.time())}"
            return WebIdentityProvider(client, endpoint, role_arn, token_file, session, retry)
    return StaticProvider(None, "anonymous")
