"""HuggingFace Hub: revision -> commit sha, the tree at that commit, ``resolve`` downloads.

The request sequence follows ``huggingface_hub.snapshot_download`` (artifact-protocols.md §1):
``GET /api/{type}s/{repo}/revision/{rev}`` for the sha (skipped for a 40-hex revision),
``GET /api/{type}s/{repo}/tree/{sha}?recursive=true&expand=false`` paged by ``Link: rel="next"``,
then ``GET /{prefix}{repo}/resolve/{sha}/{path}`` with ``Range``, following redirects by hand.

Two things the official client does not do, and Patio does:
- every file is verified: LFS files by the sha256 the tree declares (a corrupted body of the
  right size is caught), regular files by their git blob sha1;
- the token leaves only towards the configured ``HF_ENDPOINT``'s origin.  A request that names
  another endpoint never gets the configured token, and no redirect carries it to another origin.
"""

import json
import re
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

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
    redirect_target,
)
from patio.artifacts.fetch.retry import DownloadRetry, call_with_retries

HF_ENDPOINT = "https://huggingface.co"
# Redirects followed for one download (the Hub uses one or two: resolve -> CDN).
MAX_REDIRECTS = 10
# Tree pages followed (1000 entries each).
MAX_TREE_PAGES = 500
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_TYPE_PATHS = {"model": "models", "dataset": "datasets", "space": "spaces"}
_RESOLVE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class HfSource:
    def __init__(
        self,
        http: HttpClient,
        endpoint: str,
        repo_id: str,
        repo_type: str,
        revision: str,
        subpath: str,
        token: Optional[str],
        retry: DownloadRetry,
        cancel: Optional[threading.Event] = None,
    ) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.revision = revision
        self.subpath = subpath.strip("/")
        self._token = token
        self._token_origin = origin(self.endpoint)
        self.retry = retry
        self.cancel = cancel
        self.commit: Optional[str] = None
        shown = self.repo_id + (f"@{revision}" if revision != "main" else "") + (f"/{self.subpath}" if subpath else "")
        self.display = f"hf://{'' if repo_type == 'model' else _TYPE_PATHS[repo_type] + '/'}{shown}"

    def _auth(self, url: str) -> List[Tuple[str, str]]:
        # The token only ever goes to the origin it was configured for.
        if self._token and origin(url) == self._token_origin:
            return [("Authorization", f"Bearer {self._token}")]
        return []

    def _fail(self, response: Response, what: str) -> Exception:
        code = response.header("x-error-code") or ""
        message = response.header("x-error-message") or ""
        if not message:
            try:
                body = json.loads(response.read_all(MAX_ERROR_BODY))
                message = str(body.get("error", "")) if isinstance(body, dict) else ""
            except Exception:
                message = ""
        else:
            response.close()
        detail = ": ".join(p for p in (code, message) if p)
        if response.status == 401 and code in ("RepoNotFound", ""):
            # The Hub answers 401 for a repo that does not exist or needs a token it did not get.
            return ArtifactNotFound(
                f"{what}: repository not found, or it needs a token (HTTP 401){': ' + detail if detail else ''}"
            )
        if response.status == 404 or code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound"):
            return ArtifactNotFound(f"{what} not found (HTTP {response.status}){': ' + detail if detail else ''}")
        return error_for_status(response, what, detail)

    def _get_json(self, url: str, what: str) -> Tuple[Any, Optional[str]]:
        def call() -> Tuple[Any, Optional[str]]:
            response = self.http.request("GET", url, [*self._auth(url), ("Accept", "application/json")])
            if response.status != 200:
                raise self._fail(response, what)
            link = response.header("link")
            try:
                data = json.loads(response.read_all())
            except ValueError:
                raise ArtifactError(f"{what}: answer is not JSON") from None
            next_url = None
            if link:
                match = _LINK_NEXT.search(link)
                if match:
                    next_url = redirect_target(url, match.group(1), what)  # the server's word: http(s) only
            return data, next_url

        return call_with_retries(call, what, self.retry, self.cancel)

    def _api(self, *parts: str) -> str:
        return f"{self.endpoint}/api/{_TYPE_PATHS[self.repo_type]}/{self.repo_id}/" + "/".join(parts)

    def resolve_commit(self) -> str:
        if _COMMIT.match(self.revision):
            return self.revision
        url = self._api("revision", urllib.parse.quote(self.revision, safe=""))
        data, _ = self._get_json(url, f"{self.display} revision {self.revision}")
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not _COMMIT.match(sha):
            raise ArtifactError(f"{self.display}: revision {self.revision} did not resolve to a commit sha")
        return sha

    def list_files(self) -> List[RemoteFile]:
        self.commit = self.resolve_commit()
        url: Optional[str] = self._api("tree", self.commit) + "?recursive=true&expand=false"
        entries: List[Dict[str, Any]] = []
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_TREE_PAGES:
                raise ArtifactError(f"{self.display}: tree has more than {MAX_TREE_PAGES} pages")
            data, url = self._get_json(url, f"{self.display} file list")
            if not isinstance(data, list):
                raise ArtifactError(f"{self.display}: file list is not a JSON array")
            entries.extend(e for e in data if isinstance(e, dict))
        folder = self.subpath + "/" if self.subpath else ""
        files = []
        for entry in entries:
            if entry.get("type") != "file":
                continue
            path, size, oid = entry.get("path"), entry.get("size"), entry.get("oid")
            if not isinstance(path, str) or not isinstance(size, int) or not isinstance(oid, str):
                raise ArtifactError(f"{self.display}: tree entry without path/size/oid: {str(entry)[:200]}")
            if folder and not path.startswith(folder):
                continue
            lfs = entry.get("lfs")
            sha256 = None
            if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
                sha256 = lfs["oid"].lower()
            files.append(
                RemoteFile(
                    path=path[len(folder) :],
                    size=size,
                    etag=sha256 or oid,
                    sha256=sha256,
                    git_sha1=None if sha256 else oid.lower(),
                    ranged=True,
                    ref=path,
                )
            )
        return files

    def resolve_url(self, repo_path: str) -> str:
        assert self.commit is not None
        quoted = urllib.parse.quote(repo_path, safe="/")
        return f"{self.endpoint}/{_RESOLVE_PREFIX[self.repo_type]}{self.repo_id}/resolve/{self.commit}/{quoted}"

    def open(self, file: RemoteFile, start: int, end: Optional[int]) -> BodyStream:
        url = self.resolve_url(file.ref)
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
                url = redirect_target(url, location, what)
                continue
            if response.status not in (200, 206):
                raise self._fail(response, what)
            return BodyStream(response, range_start(response, file.size, what))
        raise Transient(f"{what}: more than {MAX_REDIRECTS} redirects (last {redact(url)})")

    def close(self) -> None:
        self.http.close()
