"""ModelScope Hub (``ms://org/name[@rev][/sub/dir]``): the legacy file API the ``modelscope`` client uses.

The request sequence of ``modelscope.snapshot_download`` (modelscope 1.40 delegates to
``modelscope_hub``: ``compat/snapshot_download.py`` -> ``_download.py`` ``download_repo`` ->
``_legacy_api.py``), with ``LEGACY_API_PREFIX = /api/v1``:

- no revision call: the revision is the one asked for, else ``master``;
- ``GET {endpoint}/api/v1/models/{org}/{name}/repo/files?Revision={rev}&Recursive=True``: JSON
  ``{"Code", "Data": {"Files": [{"Path", "Type": "blob"|"tree", "Size", "Sha256", ...}]}, ...}``
  (``Data`` may also be the list itself); ``tree`` entries are directories.  The hub truncates
  this listing at 3000 entries (``REPO_FILES_TRUNCATION_LIMIT``); Patio refuses such a listing
  rather than download part of a repository;
- ``GET {endpoint}/api/v1/models/{org}/{name}/repo?Revision={rev}&FilePath={path}`` (both
  ``quote_plus``-encoded) per file, with ``Range`` for parts and resume; it may redirect to
  object storage.
- Auth: ``Authorization: Bearer TOKEN`` plus the cookie ``m_session_id=TOKEN`` (the client sends
  both).  Errors are 4xx/5xx with ``{"Code", "Message"}``.

Like the HF store, every file is verified (its ``Sha256``), and the token goes only to the
configured endpoint's origin, never across a redirect to another one.
"""

import json
import threading
import urllib.parse
from typing import Any, List, Optional, Tuple

from patio.artifacts.errors import ArtifactError, ArtifactNotFound, Transient
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
)
from patio.artifacts.fetch.retry import DownloadRetry, call_with_retries

MS_ENDPOINT = "https://www.modelscope.cn"
# The hub answers at most this many entries to one recursive listing (modelscope_hub constants.py).
TRUNCATION_LIMIT = 3000
# Redirects followed for one download (the hub sends one, to object storage).
MAX_REDIRECTS = 10
# Largest listing answer read (3000 entries of a few hundred bytes each).
MAX_LISTING_BYTES = 16 * 1024 * 1024


class ModelScopeSource:
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
        shown = repo_id + (f"@{revision}" if revision != "master" else "") + (f"/{self.subpath}" if subpath else "")
        self.display = f"ms://{shown}"

    def _auth(self, url: str) -> List[Tuple[str, str]]:
        if self._token and origin(url) == self._token_origin:
            return [("Authorization", f"Bearer {self._token}"), ("Cookie", f"m_session_id={self._token}")]
        return []

    def _base(self) -> str:
        return f"{self.endpoint}/api/v1/models/{self.repo_id}"

    def _fail(self, response: Response, what: str) -> Exception:
        message = ""
        try:
            body = json.loads(response.read_all(MAX_ERROR_BODY))
            if isinstance(body, dict):
                message = str(body.get("Message") or body.get("message") or "")
        except Exception:
            message = ""
        if response.status == 404:
            return ArtifactNotFound(f"{what} not found (HTTP 404){': ' + message if message else ''}")
        return error_for_status(response, what, message)

    def list_files(self) -> List[RemoteFile]:
        query = urllib.parse.urlencode({"Revision": self.revision, "Recursive": "True"})
        url = f"{self._base()}/repo/files?{query}"
        what = f"{self.display} file list"

        def call() -> Any:
            response = self.http.request("GET", url, [*self._auth(url), ("Accept", "application/json")])
            if response.status != 200:
                raise self._fail(response, what)
            try:
                return json.loads(response.read_all(MAX_LISTING_BYTES))
            except ValueError:
                raise ArtifactError(f"{what}: answer is not JSON") from None

        body = call_with_retries(call, what, self.retry, self.cancel)
        if isinstance(body, dict) and body.get("Success") is False:
            raise ArtifactError(f"{what}: the hub said {str(body.get('Message'))[:300]!r}")
        data = body.get("Data", body) if isinstance(body, dict) else body
        entries = data if isinstance(data, list) else (data.get("Files") if isinstance(data, dict) else None)
        if not isinstance(entries, list):
            raise ArtifactError(f"{what}: no Files list in the answer")
        if len(entries) >= TRUNCATION_LIMIT:
            raise ArtifactError(
                f"{what}: the hub cut the listing at {TRUNCATION_LIMIT} entries; refusing to download part of it"
            )
        folder = self.subpath + "/" if self.subpath else ""
        files = []
        for entry in entries:
            if not isinstance(entry, dict) or (entry.get("Type") or "blob") == "tree":
                continue
            path, size, sha256 = entry.get("Path") or entry.get("Name"), entry.get("Size"), entry.get("Sha256")
            if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool):
                raise ArtifactError(f"{what}: entry without Path/Size: {str(entry)[:200]}")
            if folder and not path.startswith(folder):
                continue
            digest = sha256.lower() if isinstance(sha256, str) and len(sha256) == 64 else None
            files.append(
                RemoteFile(
                    path=path[len(folder) :],
                    size=size,
                    etag=digest or str(entry.get("Revision") or entry.get("Id") or ""),
                    sha256=digest,
                    ranged=True,
                    ref=path,
                )
            )
        return files

    def file_url(self, repo_path: str) -> str:
        query = f"Revision={urllib.parse.quote_plus(self.revision)}&FilePath={urllib.parse.quote_plus(repo_path)}"
        return f"{self._base()}/repo?{query}"

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
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status not in (200, 206):
                raise self._fail(response, what)
            return BodyStream(response, range_start(response, file.size, what))
        raise Transient(f"{what}: more than {MAX_REDIRECTS} redirects (last {redact(url)})")

    def close(self) -> None:
        self.http.close()
