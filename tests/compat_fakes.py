"""Fakes for issue 12's clients: a ModelScope hub and a Kubernetes-mounted secret.

``FakeModelScope`` serves the legacy file API that the ``modelscope`` client's
``snapshot_download`` uses (modelscope 1.40 -> modelscope_hub 0.5.1,
``_legacy_api.py``): ``GET /api/v1/models/{org}/{name}/repo/files?Revision=&Recursive=``
and ``GET /api/v1/models/{org}/{name}/repo?Revision=&FilePath=`` (redirected to a CDN
for files listed in ``cdn``, as the hub redirects large files to object storage).
The real client (``modelscope_hub``) is run against it in the tests, so the fake
follows the contract the client reads, not only Patio's reading of it.
"""

import hashlib
import json
import os
import re
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from artifacts_fakes import BaseFake, FakeCdn, send, send_bytes

_FILES = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/repo/files$")
_FILE = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/repo$")


class FakeModelScope(BaseFake):
    def __init__(self, cdn: FakeCdn, token: Optional[str] = None) -> None:
        self.cdn = cdn
        self.token = token  # when set, listing and files need it (Bearer or the m_session_id cookie)
        self.repos: Dict[Tuple[str, str], Dict[str, bytes]] = {}  # (repo, revision) -> files
        self.on_cdn: set = set()  # paths served by a redirect to the CDN
        super().__init__()

    def add(
        self, repo_id: str, files: Mapping[str, bytes], revision: str = "master", cdn: Tuple[str, ...] = ()
    ) -> None:
        self.repos[(repo_id, revision)] = dict(files)
        for path in cdn:
            self.on_cdn.add(path)
            self.cdn.blobs[hashlib.sha256(files[path]).hexdigest()] = files[path]

    def _authorised(self, h: Any) -> bool:
        if self.token is None:
            return True
        cookie = h.headers.get("Cookie") or ""
        return h.headers.get("Authorization") == f"Bearer {self.token}" or f"m_session_id={self.token}" in cookie

    def handle(self, h: Any, method: str) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(parts.query)
        head = method == "HEAD"
        json_type = {"Content-Type": "application/json"}
        if not self._authorised(h):
            body = {"Code": 10010205001, "Message": "Unauthorized", "Success": False}
            send(h, 401, json.dumps(body).encode(), json_type, head)
            return
        listing, single = _FILES.match(parts.path), _FILE.match(parts.path)
        match = listing or single
        revision = query.get("Revision", ["master"])[0]
        files = self.repos.get((match.group(1), revision)) if match else None
        if files is None:
            body = {"Code": 10010205001, "Message": "model or revision not found", "Success": False}
            send(h, 404, json.dumps(body).encode(), json_type, head)
            return
        if listing:
            entries = []
            folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
            for folder in sorted(folders):
                entries.append({"Name": folder.rsplit("/", 1)[-1], "Path": folder, "Type": "tree", "Size": 0})
            for path, data in sorted(files.items()):
                entries.append(
                    {
                        "Name": path.rsplit("/", 1)[-1],
                        "Path": path,
                        "Type": "blob",
                        "Size": len(data),
                        "Sha256": hashlib.sha256(data).hexdigest(),
                        "Revision": "c0ffee" + revision,
                        "IsLFS": path in self.on_cdn,
                    }
                )
            body = {"Code": 200, "Data": {"Files": entries}, "Message": "success", "Success": True}
            send(h, 200, json.dumps(body).encode(), json_type, head)
            return
        path = query.get("FilePath", [""])[0]
        if path not in files:
            send(h, 404, json.dumps({"Code": 10010205001, "Message": "file not found"}).encode(), json_type, head)
            return
        if path in self.on_cdn:
            digest = hashlib.sha256(files[path]).hexdigest()
            send(h, 302, b"", {"Location": f"{self.cdn.url}/oss/{digest}?Expires=1&Signature=abc"}, head)
            return
        send_bytes(h, files[path], {"Content-Type": "application/octet-stream"}, head)


def kubernetes_secret(root: Path, name: str, values: Mapping[str, str]) -> Path:
    """A secret volume laid out as the kubelet does: ``NAME/KEY -> ..data/KEY``, ``..data -> ..TIMESTAMP``."""
    secret = root / name
    secret.mkdir(parents=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.123456789", time.gmtime())
    (secret / stamp).mkdir()
    for key, value in values.items():
        (secret / stamp / key).write_text(value + "\n")  # kubectl-created values often end in a newline
    os.symlink(stamp, secret / "..data")
    for key in values:
        os.symlink(f"..data/{key}", secret / key)
    return secret


# --- the wire -----------------------------------------------------------------------------------


def replay(port: int, raw: bytes, timeout: float = 30.0) -> Tuple[int, Dict[str, str], bytes]:
    """Send one request as raw bytes; read one whole answer (Content-Length framed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
        return int(lines[0].split()[1]), headers, body


def go_request(port: int, method: str, path: str, payload: Optional[Dict[str, Any]], key: Optional[str]) -> bytes:
    """What Go's net/http writes for lora_client.go's requests (json.Marshal: sorted keys, no spaces)."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "User-Agent: Go-http-client/1.1"]
    if payload is not None:
        lines.append(f"Content-Length: {len(body)}")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if payload is not None:
        lines.append("Content-Type: application/json")
    lines.append("Accept-Encoding: gzip")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def httpx_request(port: int, path: str, payload: Dict[str, Any]) -> bytes:
    """What httpx writes for ``client.post(url, json=payload)`` (Kthena's callers and its own runtime)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: */*",
        "Accept-Encoding: gzip, deflate",
        "Connection: keep-alive",
        "User-Agent: python-httpx/0.28.1",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def tree(root: Path) -> Dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".patio" not in p.relative_to(root).parts
    }
