"""S3 and its dialects (TOS, OBS, GCS interoperability): ListObjectsV2 + ranged GetObject.

Path-style or virtual-hosted addressing (botocore's rules: virtual for DNS-safe
buckets on AWS, path for custom endpoints and IP literals, virtual always for
TOS), SigV4 with the empty-payload hash like botocore, ``If-Match`` on every
ranged GET so an object replaced mid-download is caught.  A wrong region is
corrected once from the ``x-amz-bucket-region`` answer header.
"""

import datetime
import ipaddress
import re
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from patio.artifacts.auth import sigv4
from patio.artifacts.auth.aws import CredentialsProvider
from patio.artifacts.errors import ArtifactError, ArtifactNotFound, ObjectChanged, Transient
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.net import (
    MAX_ERROR_BODY,
    BodyStream,
    HttpClient,
    Response,
    error_for_status,
    range_start,
)
from patio.artifacts.fetch.retry import DownloadRetry, call_with_retries

# Keys per ListObjectsV2 page: S3's own maximum.
LIST_PAGE_SIZE = 1000
# Pages followed before giving up (200 000 keys: far beyond any model).
MAX_LIST_PAGES = 200
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_REGION_HINTS = (301, 400, 403)


@dataclass(frozen=True)
class S3Endpoint:
    scheme: str
    host: str  # lower-case host name or IP, no port
    port: Optional[int]  # None: the scheme's default
    base_path: str = ""  # a reverse proxy's prefix, rarely used
    style: str = "auto"  # auto, path, virtual
    aws: bool = False  # the default AWS endpoint (auto style may pick virtual)

    @classmethod
    def parse(cls, url: str, style: str = "auto", aws: bool = False) -> "S3Endpoint":
        if "://" not in url:
            url = "https://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ArtifactError(f"invalid S3 endpoint {url!r}")
        return cls(
            scheme=parts.scheme,
            host=parts.hostname.lower(),
            port=parts.port,
            base_path=parts.path.rstrip("/"),
            style=style,
            aws=aws,
        )

    def netloc(self, host: str) -> str:
        default = 443 if self.scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        return shown if self.port in (None, default) else f"{shown}:{self.port}"

    def virtual_for(self, bucket: str) -> bool:
        if _is_ip(self.host):
            return False
        if self.style in ("path", "virtual"):
            return self.style == "virtual"
        # botocore: virtual only on AWS's own endpoint, and only for names valid as one DNS label.
        return self.aws and bool(_DNS_BUCKET.match(bucket)) and "--" not in bucket


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class S3Client:
    def __init__(
        self,
        http: HttpClient,
        endpoint: S3Endpoint,
        region: str,
        credentials: CredentialsProvider,
        retry: DownloadRetry,
        label: str = "s3",
    ) -> None:
        self.http = http
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.retry = retry
        self.label = label
        self._region_lock = threading.Lock()

    def uri(self, bucket: str, key: str = "") -> str:
        return f"{self.label}://{bucket}/{key}"

    def _address(self, bucket: str, key: Optional[str]) -> Tuple[str, str]:
        """(netloc, decoded path) for the bucket (key None) or an object."""
        if self.endpoint.virtual_for(bucket):
            host = f"{bucket}.{self.endpoint.host}"
            path = self.endpoint.base_path + "/" + (key or "")
        else:
            host = self.endpoint.host
            path = f"{self.endpoint.base_path}/{bucket}" + ("" if key is None else "/" + key)
        return self.endpoint.netloc(host), path

    def send(
        self,
        method: str,
        bucket: str,
        key: Optional[str],
        query: Sequence[Tuple[str, str]] = (),
        headers: Sequence[Tuple[str, str]] = (),
    ) -> Response:
        netloc, path = self._address(bucket, key)
        creds = self.credentials.get()
        if creds is None:
            target = sigv4.unsigned_target(path, query)
            all_headers = list(headers)
        else:
            signed = sigv4.sign(
                method, netloc, path, query, headers, creds, self.region, when=sigv4.amz_date(_utcnow())
            )
            target, all_headers = signed.target, signed.headers
        url = f"{self.endpoint.scheme}://{netloc}{target}"
        return self.http.request(method, url, all_headers)

    def _fail(self, response: Response, what: str) -> Exception:
        body = b"" if response.status in (304,) else _safe_read(response)
        code, message, region = _s3_error(body)
        hinted = response.header("x-amz-bucket-region") or region
        if response.status in _REGION_HINTS and hinted and hinted != self.region:
            with self._region_lock:
                self.region = hinted
            return Transient(f"{what}: bucket is in region {hinted}, retrying there", retry_after=0.0)
        detail = ": ".join(p for p in (code, message) if p)
        if response.status == 404 and code == "NoSuchBucket":
            return ArtifactNotFound(f"bucket of {what} does not exist (NoSuchBucket)")
        return error_for_status(response, what, detail)

    # --- operations ---

    def list_objects(self, bucket: str, prefix: str, cancel: Optional[threading.Event] = None) -> List[Dict[str, str]]:
        objects: List[Dict[str, str]] = []
        token: Optional[str] = None
        what = self.uri(bucket, prefix)
        for _page in range(MAX_LIST_PAGES):
            query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(LIST_PAGE_SIZE))]
            query.append(("encoding-type", "url"))
            if token:
                query.append(("continuation-token", token))

            def page(query: List[Tuple[str, str]] = query) -> bytes:
                response = self.send("GET", bucket, None, query)
                if response.status != 200:
                    raise self._fail(response, what)
                return response.read_all()

            body = call_with_retries(page, f"list {what}", self.retry, cancel)
            items, token = parse_list_page(body, what)
            objects.extend(items)
            if not token:
                return objects
        raise ArtifactError(f"list {what}: more than {MAX_LIST_PAGES} pages")

    def head_object(self, bucket: str, key: str, cancel: Optional[threading.Event] = None) -> Optional[Dict[str, str]]:
        """The object's size and ETag, or None when it does not exist."""
        what = self.uri(bucket, key)

        def head() -> Optional[Dict[str, str]]:
            response = self.send("HEAD", bucket, key)
            response.read_all(0)
            if response.status == 404:
                return None
            if response.status != 200:
                raise self._fail(response, what)
            return {"key": key, "size": response.header("content-length") or "0", "etag": response.header("etag") or ""}

        return call_with_retries(head, f"HEAD {what}", self.retry, cancel)

    def get_range(self, bucket: str, key: str, start: int, end: Optional[int], etag: str) -> Response:
        headers: List[Tuple[str, str]] = []
        if start or end is not None:
            headers.append(("Range", f"bytes={start}-" + ("" if end is None else str(end))))
        if etag:
            headers.append(("If-Match", etag))
        response = self.send("GET", bucket, key, (), headers)
        if response.status not in (200, 206):
            raise self._fail(response, self.uri(bucket, key))
        return response


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _safe_read(response: Response) -> bytes:
    try:
        return response.read_all(MAX_ERROR_BODY)
    except Exception:
        return b""


def _s3_error(body: bytes) -> Tuple[str, str, str]:
    if not body:
        return "", "", ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", "", ""

    def text(tag: str) -> str:
        node = root.find(f".//{{*}}{tag}") if root.tag.split("}")[-1] != tag else root
        return (node.text or "").strip() if node is not None and node.text else ""

    return text("Code"), text("Message"), text("Region")


def parse_list_page(body: bytes, what: str) -> Tuple[List[Dict[str, str]], Optional[str]]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ArtifactError(f"list {what}: unreadable answer ({exc})") from None
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"
    items = []
    for node in root.findall(f"{ns}Contents"):
        key = node.findtext(f"{ns}Key") or ""
        if encoded:
            key = urllib.parse.unquote_plus(key)
        items.append(
            {"key": key, "size": (node.findtext(f"{ns}Size") or "0").strip(), "etag": node.findtext(f"{ns}ETag") or ""}
        )
    truncated = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
    token = (root.findtext(f"{ns}NextContinuationToken") or "").strip() if truncated else ""
    if truncated and not token:
        raise ArtifactError(f"list {what}: truncated page without NextContinuationToken")
    return items, token or None


class S3Source:
    """``s3://bucket/prefix`` (or tos/obs/gs via HMAC): every object under the prefix, or one object."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, cancel: Optional[threading.Event] = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cancel = cancel
        self.display = client.uri(bucket, prefix)

    def list_files(self) -> List[RemoteFile]:
        folder = self.prefix if (not self.prefix or self.prefix.endswith("/")) else self.prefix + "/"
        objects = self.client.list_objects(self.bucket, folder, self.cancel)
        files = []
        for obj in objects:
            key = obj["key"]
            if key.endswith("/"):
                continue  # a "folder" marker object, not a file
            files.append(
                RemoteFile(path=key[len(folder) :], size=int(obj["size"]), etag=obj["etag"], ranged=True, ref=key)
            )
        if files or not self.prefix or self.prefix.endswith("/"):
            return files
        # No folder of that name: maybe the URI names one object.
        head = self.client.head_object(self.bucket, self.prefix, self.cancel)
        if head is None:
            return []
        name = self.prefix.rsplit("/", 1)[-1]
        return [RemoteFile(path=name, size=int(head["size"]), etag=head["etag"], ranged=True, ref=self.prefix)]

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> BodyStream:
        what = self.client.uri(self.bucket, file.ref)
        response = self.client.get_range(self.bucket, file.ref, start, end, file.etag)
        offset = range_start(response, file.size, what)
        etag = response.header("etag")
        if file.etag and etag and etag != file.etag:
            response.close()
            raise ObjectChanged(f"{what}: ETag is now {etag}, listed {file.etag}")
        return BodyStream(response, offset)

    def close(self) -> None:
        self.client.http.close()
