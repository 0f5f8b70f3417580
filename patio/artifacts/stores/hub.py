"""What the model hubs (HuggingFace, ModelScope) share: one repository at one revision, a token
that goes only to the configured endpoint's origin, and ranged file downloads whose redirects
are followed by hand.

The hub-specific parts stay in ``hf.py`` and ``modelscope.py``: the API paths, the listing's
JSON shape, the auth headers the hub's own client sends and how its error answers read.
This module must not know any hub's URLs.
"""

import threading
from typing import Any, List, Optional, Tuple

from patio import jsontext
from patio.artifacts.errors import ArtifactError, Transient
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.net import (
    MAX_ERROR_BODY,
    MAX_METADATA_BODY,
    BodyStream,
    HttpClient,
    Response,
    origin,
    range_start,
    redact,
    redirect_target,
)
from patio.artifacts.fetch.retry import DownloadRetry, call_with_retries

# Redirects followed for one download (the hubs send one or two: resolve -> CDN / object storage).
MAX_REDIRECTS = 10


class HubSource:
    """A hub repository as a ``Source``; subclasses supply ``_scheme``, ``file_url``, ``list_files``, ``_fail``."""

    # The revision a URI without ``@rev`` means; left out of ``display``.
    default_revision = ""

    def __init__(
        self,
        http: HttpClient,
        endpoint: str,
        repo_id: str,
        revision: str,
        subpath: str,
        token: Optional[str],
        retry: DownloadRetry,
        cancel: Optional[threading.Event] = None,
    ) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.repo_id = repo_id
        self.revision = revision
        self.subpath = subpath.strip("/")
        self._token = token
        self._token_origin = origin(self.endpoint)
        self.retry = retry
        self.cancel = cancel
        shown = repo_id + (f"@{revision}" if revision != self.default_revision else "")
        self.display = self._scheme() + shown + (f"/{self.subpath}" if subpath else "")

    def _scheme(self) -> str:
        """The URI prefix ``display`` starts with, e.g. ``hf://datasets/``."""
        raise NotImplementedError

    def _token_headers(self, token: str) -> List[Tuple[str, str]]:
        return [("Authorization", f"Bearer {token}")]

    def _auth(self, url: str) -> List[Tuple[str, str]]:
        # The token only ever goes to the origin it was configured for.
        if self._token and origin(url) == self._token_origin:
            return self._token_headers(self._token)
        return []

    def _fail(self, response: Response, what: str) -> Exception:
        raise NotImplementedError

    def file_url(self, repo_path: str) -> str:
        raise NotImplementedError

    def _get_json(self, url: str, what: str, limit: int = MAX_METADATA_BODY) -> Tuple[Any, Optional[str]]:
        """GET a JSON answer (with retries): the parsed body and the answer's ``Link`` header."""

        def call() -> Tuple[Any, Optional[str]]:
            response = self.http.request("GET", url, [*self._auth(url), ("Accept", "application/json")])
            if response.status != 200:
                raise self._fail(response, what)
            link = response.header("link")
            try:
                return jsontext.loads(response.read_all(limit)), link
            except ValueError:
                raise ArtifactError(f"{what}: answer is not JSON") from None

        return call_with_retries(call, what, self.retry, self.cancel)

    def _in_subpath(self, path: str) -> Optional[str]:
        """``path`` relative to the requested sub-directory, or None when it lies outside it."""
        folder = self.subpath + "/" if self.subpath else ""
        if folder and not path.startswith(folder):
            return None
        return path[len(folder) :]

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> BodyStream:
        url = self.file_url(file.ref)
        what = f"{self.display} {file.ref}"
        range_header: List[Tuple[str, str]] = []
        if start or end is not None:
            range_header = [("Range", f"bytes={start}-" + ("" if end is None else str(end)))]
        for _hop in range(MAX_REDIRECTS + 1):
            response = self.http.request("GET", url, self._auth(url) + range_header)
            if response.status in (301, 302, 303, 307, 308):
                location = response.header("location")
                response.read_all(MAX_ERROR_BODY)
                if not location:
                    raise ArtifactError(f"{what}: redirect without Location")
                url = redirect_target(url, location, what)  # the server's word: http(s) only
                continue
            if response.status not in (200, 206):
                raise self._fail(response, what)
            return BodyStream(response, range_start(response, file.size, what))
        raise Transient(f"{what}: more than {MAX_REDIRECTS} redirects (last {redact(url)})")

    def close(self) -> None:
        self.http.close()
