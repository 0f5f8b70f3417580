"""AWS Signature Version 4, S3 flavour.  Sans-IO: request parts in, headers out.

S3 rules differ from generic SigV4 (botocore/auth.py ``S3SigV4Auth._normalize_url_path``): the path is
percent-encoded exactly once and never normalised (``.``, ``..`` and ``//`` are
part of an object key), so the six path-normalising cases of the AWS test
suite are expected to differ, and everything else must match byte for byte.
"""

import datetime
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# botocore never signs these: proxies and tracers rewrite them in flight.
UNSIGNED_HEADERS = frozenset(
    (
        "user-agent",
        "x-amzn-trace-id",
        "expect",
        "connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "traceparent",
        "tracestate",
        "baggage",
        "authorization",
    )
)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: Optional[str] = None

    def __repr__(self) -> str:  # never print the secret or the token
        return f"Credentials(access_key={self.access_key[:4]}…, session_token={'set' if self.session_token else None})"


@dataclass(frozen=True)
class Signed:
    """What to put on the wire, plus the intermediate strings (for tests and debugging)."""

    target: str  # encoded path + '?' + canonical query
    headers: List[Tuple[str, str]]  # everything to send, Authorization included
    canonical_request: str
    string_to_sign: str
    signature: str


def uri_encode(value: str, *, keep_slash: bool) -> str:
    """RFC 3986 unreserved characters stay; every other UTF-8 byte becomes %XX (uppercase)."""
    return urllib.parse.quote(value, safe="/~" if keep_slash else "~")


def canonical_query(params: Iterable[Tuple[str, str]]) -> str:
    pairs = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _normalise_value(value: str) -> str:
    # Trim and collapse runs of whitespace; obs-folded continuation lines join with one space.
    return " ".join(value.split())


def canonical_headers(headers: Iterable[Tuple[str, str]]) -> Tuple[str, str]:
    """(canonical header block, signed header list) for the headers to sign."""
    merged: dict = {}
    for name, value in headers:
        key = name.strip().lower()
        if key in UNSIGNED_HEADERS:
            continue
        merged.setdefault(key, []).append(_normalise_value(value))
    names = sorted(merged)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


def amz_date(now: datetime.datetime) -> str:
    return now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def sign(
    method: str,
    host: str,
    path: str,
    query: Sequence[Tuple[str, str]],
    headers: Sequence[Tuple[str, str]],
    credentials: Credentials,
    region: str,
    *,
    service: str = "s3",
    when: str,
    payload_hash: str = EMPTY_SHA256,
    content_sha256_header: bool = True,
) -> Signed:
    """Sign one request.

    ``path`` is the decoded path (``/bucket/dir/a b.bin``), encoded here once.
    ``host`` is what the Host header will say (``name:port`` for a non-default port).
    ``when`` is the ``x-amz-date`` value (``amz_date(now)``).
    ``content_sha256_header`` adds ``x-amz-content-sha256`` (S3 requires it; generic SigV4 does not).
    """
    present = {name.lower() for name, _ in headers}
    to_send: List[Tuple[str, str]] = list(headers)
    if "host" not in present:
        to_send.append(("host", host))
    if "x-amz-date" not in present:
        to_send.append(("x-amz-date", when))
    if content_sha256_header and "x-amz-content-sha256" not in present:
        to_send.append(("x-amz-content-sha256", payload_hash))
    if credentials.session_token and "x-amz-security-token" not in present:
        to_send.append(("x-amz-security-token", credentials.session_token))
    block, signed_names = canonical_headers(to_send)
    encoded_path = uri_encode(path or "/", keep_slash=True)
    query_string = canonical_query(query)
    canonical_request = "\n".join((method.upper(), encoded_path, query_string, block, signed_names, payload_hash))
    date = when[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join((ALGORITHM, when, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()))
    key = signing_key(credentials.secret_key, date, region, service)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    authorization = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={signed_names}, Signature={signature}"
    )
    to_send.append(("Authorization", authorization))
    target = encoded_path + ("?" + query_string if query_string else "")
    return Signed(
        target=target,
        headers=to_send,
        canonical_request=canonical_request,
        string_to_sign=string_to_sign,
        signature=signature,
    )


def unsigned_target(path: str, query: Sequence[Tuple[str, str]]) -> str:
    """The request target for an anonymous request, encoded exactly as a signed one would be."""
    query_string = canonical_query(query)
    return uri_encode(path or "/", keep_slash=True) + ("?" + query_string if query_string else "")
