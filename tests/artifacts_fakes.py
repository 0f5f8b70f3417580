"""Peers for the artifact tests: moto (a real S3/IAM/STS server), a throttling TCP proxy,
and small local servers speaking the HuggingFace Hub, GCS JSON API and plain HTTP protocols.

Every server binds 127.0.0.1 on a free port and records the requests it saw, so tests
can check what was sent where (tokens, ranges).  Everything is stopped by the tests.
"""

import base64
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from support import free_port

VENV_BIN = Path(sys.executable).parent
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


# --- moto ----------------------------------------------------------------------------


class MotoServer:
    """``moto_server`` as a subprocess.  With ``auth=True`` it checks SigV4 signatures against IAM keys."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = VENV_BIN / "moto_server"
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moto-{self.port}.log"), "wb")
        env = dict(os.environ)
        env.pop("AWS_ENDPOINT_URL", None)
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    def client(self, service: str, key: str = "AKIAIOSFODNN7EXAMPLE", secret: str = "x", **kw: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 2}, **kw),
        )

    def iam_user(self, name: str = "patio") -> Tuple[str, str]:
        """An IAM user allowed everything on S3; its (key, secret)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName=name)["AccessKey"]
        return created["AccessKeyId"], created["SecretAccessKey"]

    def enable_auth(self) -> None:
        # A raw numeric body: moto reads it as the count of further unchecked requests.
        request = urllib.request.Request(
            self.endpoint + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# --- a throttling TCP proxy ---------------------------------------------------------


class ThrottleProxy:
    """Forwards TCP to ``target_port``; answers are slowed to ``rate`` bytes/s per connection."""

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: Optional[float]) -> None:
        chunk = 16 * 1024
        try:
            while not self.stopped.is_set():
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass


# --- plain HTTP servers ---------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: Dict[str, str]
    port: int


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class BaseFake:
    """A threaded HTTP/1.1 server; subclasses implement ``handle(handler, method)``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _do(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                fake.seen.append(Seen(method, self.path, {k.lower(): v for k, v in self.headers.items()}, fake.port))
                try:
                    fake.handle(self, method)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def do_GET(self) -> None:
                self._do("GET")

            def do_HEAD(self) -> None:
                self._do("HEAD")

            def do_POST(self) -> None:
                self._do("POST")

        self.seen: List[Seen] = []
        self.server = _Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host if host != '0.0.0.0' else '127.0.0.1'}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, h: Any, method: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "BaseFake":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def send(h: Any, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None, head: bool = False) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if not head and body:
        h.wfile.write(body)


def send_bytes(
    h: Any,
    data: bytes,
    headers: Dict[str, str],
    head: bool,
    *,
    ranges: bool = True,
    delay: float = 0.0,
    cut_after: Optional[int] = None,
) -> None:
    """200 or 206 for ``data`` honouring ``Range``; ``cut_after`` drops the connection mid-body."""
    start, end, status = 0, len(data) - 1, 200
    wanted = h.headers.get("Range")
    if ranges and wanted:
        match = _RANGE.match(wanted.strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
            else:
                start = max(0, len(data) - int(match.group(2)))
            end = min(end, len(data) - 1)
            if start > end:
                send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                return
            status = 206
    body = data[start : end + 1]
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name, value)
    if ranges:
        h.send_header("Accept-Ranges", "bytes")
    if status == 206:
        h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if head:
        return
    step = 64 * 1024
    for offset in range(0, len(body), step):
        if cut_after is not None and offset >= cut_after:
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body[offset : offset + step])
        if delay:
            time.sleep(delay)


class FileServer(BaseFake):
    """Static files with ETag/Range, and scripted faults per path."""

    def __init__(self, files: Dict[str, bytes], host: str = "127.0.0.1") -> None:
        self.files = dict(files)
        self.faults: Dict[str, List[Tuple[int, Dict[str, str]]]] = {}
        self.cut: Dict[str, int] = {}  # path -> drop the connection after N body bytes (once)
        self.no_head: set = set()
        self.no_ranges: set = set()
        self.redirect: Dict[str, str] = {}
        self.delay = 0.0
        super().__init__(host)

    def handle(self, h: Any, method: str) -> None:
        path = urllib.parse.urlsplit(h.path).path
        head = method == "HEAD"
        if path in self.redirect:
            send(h, 302, b"", {"Location": self.redirect[path]}, head)
            return
        queue = self.faults.get(path)
        if queue:
            status, headers = queue.pop(0)
            send(h, status, b"fault", headers, head)
            return
        if head and path in self.no_head:
            send(h, 403, b"", {}, head)
            return
        data = self.files.get(path)
        if data is None:
            send(h, 404, b"not found", {}, head)
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        cut = self.cut.pop(path, None) if not head else None
        send_bytes(h, data, {"ETag": etag}, head, ranges=path not in self.no_ranges, delay=self.delay, cut_after=cut)


# --- a HuggingFace Hub ----------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    files: Dict[str, bytes]
    lfs: Tuple[str, ...] = ()  # paths stored in LFS (served through the CDN)
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: Dict[str, str] = field(default_factory=lambda: {"main": "0123456789abcdef0123456789abcdef01234567"})


class FakeCdn(BaseFake):
    def __init__(self) -> None:
        self.blobs: Dict[str, bytes] = {}
        self.delay = 0.0
        super().__init__()

    def handle(self, h: Any, method: str) -> None:
        path = urllib.parse.urlsplit(h.path).path
        sha = path.rsplit("/", 1)[-1]
        data = self.blobs.get(sha)
        if data is None:
            send(h, 404, b"", {}, method == "HEAD")
            return
        send_bytes(h, data, {"ETag": f'"{sha}"'}, method == "HEAD", delay=self.delay)


class FakeHub(BaseFake):
    """The endpoints ``snapshot_download`` and Patio use (artifact-protocols.md §1.9's minimum)."""

    def __init__(self, cdn: FakeCdn, page_size: int = 2, token: Optional[str] = None) -> None:
        self.cdn = cdn
        self.repos: Dict[str, HubRepo] = {}
        self.page_size = page_size
        self.token = token  # when set, every request must carry it
        self.corrupt: set = set()  # LFS paths whose CDN body is flipped (same size)
        super().__init__()

    def add(self, repo: HubRepo) -> None:
        self.repos[repo.repo_id] = repo
        for path in repo.lfs:
            data = repo.files[path]
            digest = hashlib.sha256(data).hexdigest()
            self.cdn.blobs[digest] = data

    def _entries(self, repo: HubRepo) -> List[Dict[str, Any]]:
        entries: List[Dict[str, Any]] = []
        folders = set()
        for path in sorted(repo.files):
            parts = path.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
        for folder in sorted(folders):
            entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
        for path in sorted(repo.files):
            data = repo.files[path]
            entry: Dict[str, Any] = {"type": "file", "size": len(data), "path": path}
            if path in repo.lfs:
                digest = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n"
                entry["oid"] = git_blob_sha1(pointer.encode())
                entry["lfs"] = {"oid": digest, "size": len(data), "pointerSize": len(pointer)}
            else:
                entry["oid"] = git_blob_sha1(data)
            entries.append(entry)
        return entries

    def handle(self, h: Any, method: str) -> None:
        parts = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parts.path)
        query = urllib.parse.parse_qs(parts.query)
        head = method == "HEAD"
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            send(h, 401, b'{"error":"Invalid credentials"}', {"X-Error-Code": "RepoNotFound"}, head)
            return
        match = re.match(r"^/api/models/(.+?)/revision/(.+)$", path)
        if match:
            repo = self.repos.get(match.group(1))
            if repo is None:
                send(h, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                return
            sha = repo.revisions.get(match.group(2))
            if sha is None:
                send(h, 404, b'{"error":"Revision not found"}', {"X-Error-Code": "RevisionNotFound"}, head)
                return
            body = {"id": repo.repo_id, "sha": sha, "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
            send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            return
        match = re.match(r"^/api/models/(.+?)/tree/([0-9a-f]{40})$", path)
        if match:
            repo = self.repos.get(match.group(1))
            if repo is None:
                send(h, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)
                return
            entries = self._entries(repo)
            cursor = int(query.get("cursor", ["0"])[0])
            page = entries[cursor : cursor + self.page_size]
            headers = {"Content-Type": "application/json"}
            if cursor + self.page_size < len(entries):
                nxt = f"{self.url}{parts.path}?recursive=true&expand=false&cursor={cursor + self.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            send(h, 200, json.dumps(page).encode(), headers, head)
            return
        match = re.match(r"^/(.+?)/resolve/([0-9a-f]{40})/(.+)$", path)
        if match:
            repo = self.repos.get(match.group(1))
            file_path = match.group(3)
            if repo is None or file_path not in repo.files:
                send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha if repo else ""}, head)
                return
            data = repo.files[file_path]
            common = {"X-Repo-Commit": match.group(2)}
            if file_path in repo.lfs:
                digest = hashlib.sha256(data).hexdigest()
                if file_path in self.corrupt:
                    flipped = bytes([data[0] ^ 0xFF]) + data[1:]
                    self.cdn.blobs[digest + "-bad"] = flipped
                    location = f"{self.cdn.url}/lfs/{digest}-bad?X-Sig=abc"
                else:
                    location = f"{self.cdn.url}/lfs/{digest}?X-Sig=abc"
                headers = dict(common, Location=location, ETag=f'"{git_blob_sha1(b"pointer")}"')
                headers["X-Linked-Etag"] = f'"{digest}"'
                headers["X-Linked-Size"] = str(len(data))
                send(h, 302, b"", headers, head)
                return
            send_bytes(h, data, dict(common, ETag=f'"{git_blob_sha1(data)}"'), head)
            return
        send(h, 404, b"", {}, head)

    def auth_seen(self) -> List[Optional[str]]:
        return [s.headers.get("authorization") for s in self.seen]


# --- a GCS JSON API with an OAuth2 token endpoint ----------------------------------------


class FakeGcs(BaseFake):
    """``/storage/v1`` listing + ``/download`` media, and ``/token`` (JWT bearer grant, verified)."""

    def __init__(
        self, verify_jwt: Optional[Callable[[str], Optional[str]]] = None, page_size: int = 2, host: str = "127.0.0.1"
    ) -> None:
        self.buckets: Dict[str, Dict[str, Tuple[bytes, int]]] = {}
        self.verify_jwt = verify_jwt  # assertion -> client email or None
        self.tokens: Dict[str, str] = {}
        self.page_size = page_size
        self.require_token = verify_jwt is not None
        self.bad_md5: set = set()
        super().__init__(host)

    def put(self, bucket: str, name: str, data: bytes) -> None:
        objects = self.buckets.setdefault(bucket, {})
        generation = objects[name][1] + 1 if name in objects else 1000
        objects[name] = (data, generation)

    def _item(self, bucket: str, name: str) -> Dict[str, Any]:
        data, generation = self.buckets[bucket][name]
        md5 = hashlib.md5(data if name not in self.bad_md5 else data + b"x").digest()
        return {
            "kind": "storage#object",
            "name": name,
            "bucket": bucket,
            "size": str(len(data)),
            "md5Hash": base64.b64encode(md5).decode(),
            "generation": str(generation),
        }

    def handle(self, h: Any, method: str) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(parts.query)
        head = method == "HEAD"
        if parts.path == "/token" and method == "POST":
            form = urllib.parse.parse_qs(h.body.decode())
            assertion = form.get("assertion", [""])[0]
            grant = form.get("grant_type", [""])[0]
            email = self.verify_jwt(assertion) if self.verify_jwt else None
            if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or email is None:
                send(h, 400, b'{"error":"invalid_grant","error_description":"bad assertion"}', {}, head)
                return
            token = "ya29." + hashlib.sha1(assertion.encode()).hexdigest()
            self.tokens[token] = email
            body = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
            send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            return
        if self.require_token:
            auth = h.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                send(h, 401, b'{"error":{"code":401,"message":"Anonymous caller"}}', {}, head)
                return
        match = re.match(r"^(/download)?/storage/v1/b/([^/]+)/o(?:/(.+))?$", parts.path)
        if not match:
            send(h, 404, b"{}", {}, head)
            return
        bucket = urllib.parse.unquote(match.group(2))
        if bucket not in self.buckets:
            send(h, 404, b'{"error":{"code":404,"message":"The specified bucket does not exist."}}', {}, head)
            return
        objects = self.buckets[bucket]
        if match.group(3) is None:
            prefix = query.get("prefix", [""])[0]
            names = sorted(n for n in objects if n.startswith(prefix))
            start = int(query.get("pageToken", ["0"])[0])
            page = names[start : start + self.page_size]
            body: Dict[str, Any] = {"kind": "storage#objects", "items": [self._item(bucket, n) for n in page]}
            if start + self.page_size < len(names):
                body["nextPageToken"] = str(start + self.page_size)
            send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            return
        name = urllib.parse.unquote(match.group(3))
        if name not in objects:
            send(h, 404, b'{"error":{"code":404,"message":"No such object"}}', {}, head)
            return
        data, generation = objects[name]
        if query.get("alt") == ["media"]:
            wanted = query.get("generation")
            if wanted and wanted[0] != str(generation):
                send(h, 404, b'{"error":{"code":404,"message":"No such object"}}', {}, head)
                return
            send_bytes(h, data, {"X-Goog-Generation": str(generation)}, head)
            return
        send(h, 200, json.dumps(self._item(bucket, name)).encode(), {"Content-Type": "application/json"}, head)
