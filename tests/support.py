"""Test harness shared by every test module: run Patio in-process or as a real
process, make raw HTTP calls, find free ports, build the zipapp.

Imports only the standard library and ``patio``.
"""

import asyncio
import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from patio.config import Settings, load_settings
from patio.lifecycle import Running, serve

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PYZ = ROOT / "dist" / "patio.pyz"
# The suite's peers (moto, the fake hubs and stores, the fake engine) listen on loopback, which
# the download egress policy refuses.  Tests allow it through the setting a deployment uses for
# an in-cluster mirror (patio/artifacts/fetch/egress.py); tests of the policy set their own.
PEERS_ALLOWED = {"PATIO_EGRESS_ALLOW": "127.0.0.0/8,::1"}


def shared_path(*parts: str) -> Path:
    """A file under ../shared; fails loudly (never skips) when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"shared material missing: {path} (tests expect ../shared beside the checkout)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(argv: Sequence[str] = (), env: Optional[Mapping[str, str]] = None) -> Settings:
    """Settings from ``argv`` and an *isolated* environment (the test process's env is not read).

    Binds 127.0.0.1 on a free port unless ``argv`` says otherwise.
    """
    args = list(argv)
    if "--host" not in args and "-H" not in args:
        args += ["--host", "127.0.0.1"]
    if "--port" not in args and "-P" not in args:
        args += ["--port", "0"]
    base = {"PATIO_STATE_DIR": tempfile.mkdtemp(prefix="patio-state-"), **PEERS_ALLOWED}
    base.update(env or {})
    return load_settings(args, base)


class RunningPatio:
    """Patio's real server in a background thread with its own event loop.

    with RunningPatio(make_settings(...)) as patio:
        http_call("GET", patio.url + "/health")
    """

    def __init__(self, settings: Settings, start_timeout: float = 10.0) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        self.running: Optional[Running] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.error: Optional[BaseException] = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patio-test-server", daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop

        def started(running: Running) -> None:
            self.running = running
            self._started.set()

        try:
            loop.run_until_complete(serve(self.settings, install_signals=False, on_started=started))
        except BaseException as exc:  # surfaced to the test thread
            self.error = exc
            self._started.set()
        finally:
            loop.close()

    def __enter__(self) -> "RunningPatio":
        self._thread.start()
        if not self._started.wait(self.start_timeout):
            raise RuntimeError("Patio did not start in time")
        if self.error is not None:
            raise RuntimeError(f"Patio failed to start: {self.error!r}") from self.error
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        if self.running is not None and self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.running.stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("Patio did not stop in time")

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self) -> Any:
        assert self.running is not None
        return self.running.app

    @property
    def context(self) -> Any:
        return self.app.context

    def call(self, coro_factory: Any, timeout: float = 30.0) -> Any:
        """Run ``coro_factory()`` on Patio's loop and return its result (for white-box checks)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro_factory(), self.loop).result(timeout)


def http_call(
    method: str,
    url: str,
    body: Any = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = 10.0,
) -> Tuple[int, Dict[str, str], bytes]:
    """One request on a fresh connection.  ``body`` may be bytes, str, or a JSON-able value."""
    assert url.startswith("http://")
    hostport, _, path = url[len("http://") :].partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    all_headers = dict(headers or {})
    payload: Optional[bytes]
    if body is None:
        payload = None
    elif isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    else:
        payload = json.dumps(body).encode("utf-8")
        all_headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, "/" + path, body=payload, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def http_json(
    method: str, url: str, body: Any = None, headers: Optional[Mapping[str, str]] = None, timeout: float = 10.0
) -> Tuple[int, Any]:
    status, _headers, data = http_call(method, url, body, headers, timeout)
    return status, json.loads(data) if data else None


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes and read what comes back (until close, or the first answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: List[bytes] = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


@functools.lru_cache(maxsize=1)
def build_pyz() -> Path:
    """Build dist/patio.pyz once per test session."""
    subprocess.run(["bash", str(ROOT / "build_pyz.sh")], check=True, cwd=ROOT, capture_output=True)
    return PYZ


def wait_http_ok(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, _, _ = http_call("GET", url, timeout=1.0)
            if status == 200:
                return
            last = status
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"{url} not 200 within {timeout}s (last: {last!r})")


class PatioProcess:
    """``python3 -I -S dist/patio.pyz ARGS`` as a real process, logs in a temp file."""

    def __init__(
        self,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        python: str = sys.executable,
        wait: bool = True,
        port: Optional[int] = None,
    ) -> None:
        self.port = port or free_port()
        pyz = build_pyz()
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PATIO_STATE_DIR": tempfile.mkdtemp(prefix="patio-state-"),
            **PEERS_ALLOWED,
        }
        full_env.update(env or {})
        self.log_path = Path(tempfile.mkstemp(prefix="patio-log-", suffix=".txt")[1])
        self._log = open(self.log_path, "wb")
        argv = [python, "-I", "-S", str(pyz), "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        if wait:
            try:
                wait_http_ok(self.url + "/health", timeout=15.0)
            except TimeoutError:
                self.kill()
                raise RuntimeError(f"Patio process did not start; log:\n{self.output()}") from None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def __enter__(self) -> "PatioProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()
