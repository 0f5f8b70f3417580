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

import urllib.parse
from typing import List, Tuple

from patio import jsontext
from patio.artifacts.errors import ArtifactError, ArtifactNotFound
from patio.artifacts.fetch.listing import RemoteFile
from patio.artifacts.fetch.net import MAX_ERROR_BODY, Response, error_for_status
from patio.artifacts.stores.hub import HubSource

# The hub answers at most this many entries to one recursive listing (modelscope_hub constants.py).
TRUNCATION_LIMIT = 3000
# Largest listing answer read (3000 entries of a few hundred bytes each).
MAX_LISTING_BYTES = 16 * 1024 * 1024


class ModelScopeSource(HubSource):
    default_revision = "master"

    def _scheme(self) -> str:
        return "ms://"

    def _token_headers(self, token: str) -> List[Tuple[str, str]]:
        # The modelscope client sends both.
        return [("Authorization", f"Bearer {token}"), ("Cookie", f"m_session_id={token}")]

    def _base(self) -> str:
        return f"{self.endpoint}/api/v1/models/{self.repo_id}"

    def _fail(self, response: Response, what: str) -> Exception:
        message = ""
        try:
            body = jsontext.loads(response.read_all(MAX_ERROR_BODY))
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

        body, _ = self._get_json(url, what, MAX_LISTING_BYTES)
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
        files = []
        for entry in entries:
            if not isinstance(entry, dict) or (entry.get("Type") or "blob") == "tree":
                continue
            path, size, sha256 = entry.get("Path") or entry.get("Name"), entry.get("Size"), entry.get("Sha256")
            if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool):
                raise ArtifactError(f"{what}: entry without Path/Size: {str(entry)[:200]}")
            relative = self._in_subpath(path)
            if relative is None:
                continue
            digest = sha256.lower() if isinstance(sha256, str) and len(sha256) == 64 else None
            files.append(
                RemoteFile(
                    path=relative,
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
