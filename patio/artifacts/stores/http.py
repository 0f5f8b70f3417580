"""One file over HTTP(S), with optional request headers (e.g. Authorization).

The headers are sent to the URL's own origin only (a redirect elsewhere drops
them) and never logged.  The size and version come from a HEAD; servers that
refuse HEAD (a presigned GET URL answers 403) are probed with ``Range: bytes=0-0``.
Ranged parts are used only when the server says ``Accept-Ranges: bytes``.
"""

import re
import threading
import urllib.parse
from typing import List, Optional, Sequence, Tuple

from patio.artifacts.errors import ArtifactError, ObjectChanged, Transient
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.net import (
    MAX_ERROR_BODY,
    BodyStream,
    HttpClient,
    Response,
    error_for_status,
    origin,
    range_start,
    redact,
    redirect_target,
)
from patio.artifacts.fetch.retry import DownloadRetry, call_with_retries

MAX_REDIRECTS = 10
_TOTAL = re.compile(r"/(\d+)\s*$")


class HttpSource:
    def __init__(
        self,
        http: HttpClient,
        url: str,
        headers: Sequence[Tuple[str, str]],
        retry: DownloadRetry,
        cancel: Optional[threading.Event] = None,
    ) -> None:
        self.http = http
        self.url = url
        self._headers = list(headers)
        self._origin = origin(url)
        self.retry = retry
        self.cancel = cancel
        self.display = redact(url)
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
        if not name or name in (".", ".."):
            raise ArtifactError(f"{self.display}: the URL names no file")
        self.name = name

    def _request(self, method: str, extra: List[Tuple[str, str]]) -> Response:
        """Follow redirects; the caller's headers go only to the original origin."""
        url = self.url
        for _hop in range(MAX_REDIRECTS + 1):
            headers = (self._headers if origin(url) == self._origin else []) + extra
            response = self.http.request(method, url, headers)
            if response.status in (301, 302, 303, 307, 308) and response.header("location"):
                location = response.header("location") or ""
                response.read_all(MAX_ERROR_BODY)
                url = redirect_target(url, location, self.display)
                continue
            return response
        raise Transient(f"{self.display}: more than {MAX_REDIRECTS} redirects")

    def _probe(self) -> RemoteFile:
        response = self._request("HEAD", [])
        response.read_all(0)
        if response.status == 200:
            length = response.header("content-length")
            size = int(length) if length and length.isdigit() else None
            ranged = (response.header("accept-ranges") or "").lower() == "bytes" and size is not None
            return self._remote(size, response, ranged)
        if response.status not in (403, 405, 501):
            raise error_for_status(response, self.display)
        # Some servers (presigned S3 GET URLs) refuse HEAD: ask for one byte instead.
        response = self._request("GET", [("Range", "bytes=0-0")])
        if response.status == 206:
            match = _TOTAL.search(response.header("content-range") or "")
            response.read_all(MAX_ERROR_BODY)
            return self._remote(int(match.group(1)) if match else None, response, match is not None)
        if response.status == 200:
            length = response.header("content-length")
            response.close()
            return self._remote(int(length) if length and length.isdigit() else None, response, False)
        raise error_for_status(response, self.display)

    def _remote(self, size: Optional[int], response: Response, ranged: bool) -> RemoteFile:
        etag = response.header("etag") or ""
        if not etag and response.header("last-modified"):
            etag = "lm:" + (response.header("last-modified") or "")
        return RemoteFile(path=self.name, size=size, etag=etag, ranged=ranged, ref=self.url)

    def list_files(self) -> List[RemoteFile]:
        return [call_with_retries(self._probe, f"HEAD {self.display}", self.retry, self.cancel)]

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> BodyStream:
        extra: List[Tuple[str, str]] = []
        if start or (end is not None and file.ranged):
            extra.append(("Range", f"bytes={start}-" + ("" if end is None else str(end))))
        response = self._request("GET", extra)
        if response.status not in (200, 206):
            raise error_for_status(response, self.display)
        etag = response.header("etag")
        if file.etag and not file.etag.startswith("lm:") and etag and etag != file.etag:
            response.close()
            raise ObjectChanged(f"{self.display}: ETag is now {etag}, was {file.etag}")
        return BodyStream(response, range_start(response, file.size, self.display))

    def close(self) -> None:
        self.http.close()
