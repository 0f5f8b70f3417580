"""Turning ``Response`` values and errors into bytes on the wire.

This is the one place an error becomes the JSON shape
``{"object":"error","type","message","param","code"}``.
"""

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Dict, List, Optional, Tuple

from patio.errors import PatioError
from patio.http.types import Header, Response

_REASONS: Dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
_REASONS[431] = "Request Header Fields Too Large"


def error_response(error: PatioError, request_id: str = "") -> Response:
    headers: List[Header] = [(str(k), str(v)) for k, v in error.extra_headers()]
    return Response.json(error.to_dict(), status=error.status, headers=headers)


class DateCache:
    """The ``Date`` header, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


def serialize(
    response: Response,
    *,
    keep_alive: bool,
    head_only: bool,
    date: str,
    request_id: str = "",
    extra: Optional[List[Tuple[str, str]]] = None,
) -> bytes:
    status = response.status
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Date: {date}", "Server: patio"]
    if response.content_type:
        lines.append(f"Content-Type: {response.content_type}")
    lines.append(f"Content-Length: {len(response.body)}")
    if request_id:
        lines.append(f"X-Request-Id: {request_id}")
    for key, value in response.headers:
        lines.append(f"{key}: {value}")
    for key, value in extra or ():
        lines.append(f"{key}: {value}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
