"""Client of the SGLang router's worker API (sglang-router 0.3.x), blocking.

``POST /workers`` -> 202 with ``worker_id`` (the same id when the URL is known;
a new one after a router restart); ``GET /workers``; ``DELETE /workers/{id}``
(a second DELETE is 404, which counts as done).  Every call has a timeout.
"""

import json
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from patio.engines.transport import HttpResult, bearer, http_request
from patio.errors import PatioError
from patio.topology.settings import TopologySettings

# Router answers are small JSON; a larger answer is refused.
MAX_ROUTER_ANSWER = 4 * 1024 * 1024


class RouterError(PatioError):
    status = 502
    error_type = "router_error"


class RouterClient:
    def __init__(self, settings: TopologySettings) -> None:
        self.settings = settings
        self.base = settings.router_url

    def _call(
        self, method: str, path: str, body: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None
    ) -> HttpResult:
        headers: Dict[str, str] = dict(bearer(self.settings.api_key))
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        return http_request(
            method,
            self.base + path,
            body=data,
            headers=headers,
            timeout=timeout if timeout is not None else self.settings.request_timeout,
            max_bytes=MAX_ROUTER_ANSWER,
            peer="router",
        )

    def worker_payload(self) -> Dict[str, Any]:
        payload: Dict[str, Any] = {"url": self.settings.worker_url, "worker_type": self.settings.worker_type}
        if self.settings.bootstrap_port is not None:
            payload["bootstrap_port"] = self.settings.bootstrap_port
        return payload

    def register(self) -> str:
        """POST the worker; its id (looked up by URL if the answer has none)."""
        result = self._call("POST", "/workers", self.worker_payload())
        if result.status in (401, 403):
            raise RouterError(f"router refused the registration ({result.status}): check SGL_ROUTER_API_KEY")
        if result.status not in (200, 201, 202):
            raise RouterError(f"router answered {result.status} to POST /workers: {result.text()[:300]}")
        try:
            worker_id = json.loads(result.body).get("worker_id")
        except (ValueError, AttributeError):
            worker_id = None
        if isinstance(worker_id, str) and worker_id:
            return worker_id
        found = self.find(self.settings.worker_url)
        if found is None:
            raise RouterError("router accepted the worker but does not list it")
        return found

    def workers(self, timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        result = self._call("GET", "/workers", timeout=timeout)
        if result.status != 200:
            raise RouterError(f"router answered {result.status} to GET /workers")
        try:
            workers = json.loads(result.body)["workers"]
        except (ValueError, KeyError, TypeError):
            raise RouterError("router's GET /workers answer has no worker list") from None
        return [w for w in workers if isinstance(w, dict)]

    def find(self, url: str, timeout: Optional[float] = None) -> Optional[str]:
        for worker in self.workers(timeout):
            if worker.get("url") == url:
                return str(worker.get("id") or worker.get("worker_id") or "") or None
        return None

    def delete(self, worker_id: str, timeout: Optional[float] = None) -> None:
        # The id comes from the router: quoted so it can only ever name one path segment.
        result = self._call("DELETE", f"/workers/{quote(worker_id, safe='')}", timeout=timeout)
        if result.status in (200, 202, 204, 404):  # 404: already gone, which is what we want
            return
        raise RouterError(f"router answered {result.status} to DELETE /workers/{worker_id}")
