"""Turning ``Response`` values and errors into bytes on the wire.

This is the one place an error becomes the JSON shape
``{"object":"error","type","message","param","code"}``.
"""

import time
from typing import Dict, List

from patio.errors import PatioError
from patio.http.types import Header, Response

# Reason phrases (RFC 9110 and friends), as a table: http.HTTPStatus is an enum of ~60 members
# built at import for one dict lookup per answer.
REASONS: Dict[int, str] = {
    100: "Continue",
    101: "Switching Protocols",
    102: "Processing",
    103: "Early Hints",
    200: "OK",
    201: "Created",
    202: "Accepted",
    203: "Non-Authoritative Information",
    204: "No Content",
    205: "Reset Content",
    206: "Partial Content",
    207: "Multi-Status",
    208: "Already Reported",
    226: "IM Used",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable",
    417: "Expectation Failed",
    418: "I'm a Teapot",
    421: "Misdirected Request",
    422: "Unprocessable Entity",
    423: "Locked",
    424: "Failed Dependency",
    425: "Too Early",
    426: "Upgrade Required",
    428: "Precondition Required",
    429: "Too Many Requests",
    451: "Unavailable For Legal Reasons",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates",
    507: "Insufficient Storage",
    508: "Loop Detected",
    510: "Not Extended",
    511: "Network Authentication Required",
    431: "Request Header Fields Too Large",
}


# The status line of every known status, built once.
STATUS_LINES: Dict[int, bytes] = {
    status: f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1") for status, reason in REASONS.items()
}
_SERVER = b"\r\nServer: patio\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"


def error_response(error: PatioError) -> Response:
    """The one place an error becomes its JSON answer (with the headers it requires)."""
    headers: List[Header] = [(str(k), str(v)) for k, v in error.extra_headers()]
    return Response.json(error.to_dict(), status=error.status, headers=headers)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: float) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), independent of the locale; ``email.utils`` is not loaded for it."""
    t = time.gmtime(seconds)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class DateCache:
    """The ``Date`` header's value as bytes, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = http_date(now).encode("ascii")
        return self._value


def head_bytes(response: Response, *, keep_alive: bool, date: bytes, request_id: str = "") -> bytes:
    """The status line and header block of ``response``: Date, Server, Content-Type,
    Content-Length, X-Request-Id, the response's own headers, Connection, in that order."""
    status = response.status
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Unknown\r\n".encode("latin-1")
    ctype = response.content_type
    tail = response.shared_tail
    length = len(response.body) + sum(map(len, tail)) if tail else len(response.body)
    fields = f"Content-Type: {ctype}\r\n" if ctype else ""
    fields += f"Content-Length: {length}\r\n"
    if request_id:
        fields += f"X-Request-Id: {request_id}\r\n"
    for key, value in response.headers:
        fields += f"{key}: {value}\r\n"
    return b"".join((line, b"Date: ", date, _SERVER, fields.encode("latin-1"), _KEEP_ALIVE if keep_alive else _CLOSE))


def serialize(response: Response, *, keep_alive: bool, date: bytes, request_id: str = "") -> bytes:
    """The whole answer on the wire: head and body."""
    return head_bytes(response, keep_alive=keep_alive, date=date, request_id=request_id) + b"".join(response.parts())
