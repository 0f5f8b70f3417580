"""HuggingFace Hub: revision -> commit sha, the tree at that commit, ``resolve`` downloads.

The request sequence follows ``huggingface_hub.snapshot_download`` (huggingface_hub/_snapshot_download.py):
``GET /api/{type}s/{repo}/revision/{rev}`` for the sha (skipped for a 40-hex revision),
``GET /api/{type}s/{repo}/tree/{sha}?recursive=true&expand=false`` paged by ``Link: rel="next"``,
then ``GET /{prefix}{repo}/resolve/{sha}/{path}`` with ``Range``, following redirects by hand.

Two things the official client does not do, and Patio does:
- every file is verified: LFS files by the sha256 the tree declares (a corrupted body of the
  right size is caught), regular files by their git blob sha1;
- the token leaves only towards the configured ``HF_ENDPOINT``'s origin.  A request that names
  another endpoint never gets the configured token, and no redirect carries it to another origin.
"""

import re
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from patio import jsontext
from patio.artifacts.errors import ArtifactError, ArtifactNotFound
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.net import MAX_ERROR_BODY, HttpClient, Response, error_for_status, redirect_target
from patio.artifacts.fetch.retry import DownloadRetry
from patio.artifacts.stores.hub import HubSource

HF_ENDPOINT = "https://huggingface.co"
# Tree pages followed (1000 entries each).
MAX_TREE_PAGES = 500
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_TYPE_PATHS = {"model": "models", "dataset": "datasets", "space": "spaces"}
_RESOLVE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class HfSource(HubSource):
    default_revision = "main"

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
        self.repo_type = repo_type  # before the base builds ``display`` from ``_scheme``
        self.commit: Optional[str] = None
        super().__init__(http, endpoint, repo_id, revision, subpath, token, retry, cancel)

    def _scheme(self) -> str:
        return "hf://" + ("" if self.repo_type == "model" else _TYPE_PATHS[self.repo_type] + "/")

    def _fail(self, response: Response, what: str) -> Exception:
        code = response.header("x-error-code") or ""
        message = response.header("x-error-message") or ""
        if not message:
            try:
                body = jsontext.loads(response.read_all(MAX_ERROR_BODY))
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

    def _get_page(self, url: str, what: str) -> Tuple[Any, Optional[str]]:
        """One JSON answer and the next page's URL (``Link: rel="next"``), if any."""
        data, link = self._get_json(url, what)
        match = _LINK_NEXT.search(link) if link else None
        next_url = redirect_target(url, match.group(1), what) if match else None  # the server's word: http(s) only
        return data, next_url

    def _api(self, *parts: str) -> str:
        return f"{self.endpoint}/api/{_TYPE_PATHS[self.repo_type]}/{self.repo_id}/" + "/".join(parts)

    def resolve_commit(self) -> str:
        if _COMMIT.match(self.revision):
            return self.revision
        url = self._api("revision", urllib.parse.quote(self.revision, safe=""))
        data, _ = self._get_page(url, f"{self.display} revision {self.revision}")
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
            data, url = self._get_page(url, f"{self.display} file list")
            if not isinstance(data, list):
                raise ArtifactError(f"{self.display}: file list is not a JSON array")
            entries.extend(e for e in data if isinstance(e, dict))
        files = []
        for entry in entries:
            if entry.get("type") != "file":
                continue
            path, size, oid = entry.get("path"), entry.get("size"), entry.get("oid")
            if not isinstance(path, str) or not isinstance(size, int) or not isinstance(oid, str):
                raise ArtifactError(f"{self.display}: tree entry without path/size/oid: {str(entry)[:200]}")
            relative = self._in_subpath(path)
            if relative is None:
                continue
            lfs = entry.get("lfs")
            sha256 = None
            if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
                sha256 = lfs["oid"].lower()
            files.append(
                RemoteFile(
                    path=relative,
                    size=size,
                    etag=sha256 or oid,
                    sha256=sha256,
                    git_sha1=None if sha256 else oid.lower(),
                    ranged=True,
                    ref=path,
                )
            )
        return files

    def file_url(self, repo_path: str) -> str:
        assert self.commit is not None
        quoted = urllib.parse.quote(repo_path, safe="/")
        return f"{self.endpoint}/{_RESOLVE_PREFIX[self.repo_type]}{self.repo_id}/resolve/{self.commit}/{quoted}"
