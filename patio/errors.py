"""The one error family of Patio.

Every error a request can meet is a ``PatioError`` subclass that knows its HTTP
status and its error ``type``.  Code raises the precise class where the problem
is found; exactly one place (``patio.http.responses.error_response``) turns it
into the JSON shape ``{"object","type","message","param","code"}``.

Nothing here does I/O.
"""

from typing import Any, Dict, Optional, Sequence


class PatioError(Exception):
    """Base of every error that maps to an HTTP answer."""

    status = 500
    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: Optional[str] = None,
        status: Optional[int] = None,
        error_type: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type

    def to_dict(self) -> Dict[str, Any]:
        return {
            "object": "error",
            "type": self.error_type,
            "message": self.message,
            "param": self.param,
            "code": self.status,
        }

    def extra_headers(self) -> Sequence[Any]:
        """Headers the answer must carry (``Allow`` for 405, ``WWW-Authenticate`` for 401)."""
        return ()


class BadRequest(PatioError):
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(PatioError):
    status = 401
    error_type = "unauthorized"

    def extra_headers(self) -> Sequence[Any]:
        return (("WWW-Authenticate", 'Bearer realm="patio"'),)


class Forbidden(PatioError):
    status = 403
    error_type = "forbidden"


class NotFound(PatioError):
    status = 404
    error_type = "not_found"


class MethodNotAllowed(PatioError):
    status = 405
    error_type = "method_not_allowed"

    def __init__(self, message: str, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.allow = tuple(allow)

    def extra_headers(self) -> Sequence[Any]:
        return (("Allow", ", ".join(self.allow)),)


class RequestTimeout(PatioError):
    status = 408
    error_type = "request_timeout"


class Conflict(PatioError):
    status = 409
    error_type = "conflict"


class LengthRequired(PatioError):
    status = 411
    error_type = "length_required"


class PayloadTooLarge(PatioError):
    status = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(PatioError):
    status = 415
    error_type = "unsupported_media_type"


class HeadersTooLarge(PatioError):
    status = 431
    error_type = "request_header_fields_too_large"


class InternalError(PatioError):
    status = 500
    error_type = "internal_error"


class HttpVersionNotSupported(PatioError):
    status = 505
    error_type = "http_version_not_supported"


class NotImplementedMethod(PatioError):
    status = 501
    error_type = "not_implemented"


class PeerError(PatioError):
    """A peer Patio calls (the engine, a router) could not be asked (a bad URL, a header with a
    line break) or answered unusably (larger than the limit).  The wire type predates routers as
    peers and stays what clients already match on."""

    status = 502
    error_type = "engine_error"


class EngineError(PeerError):
    """The engine answered, and the answer was a failure we cannot map more precisely."""

    def __init__(
        self,
        message: str,
        *,
        engine_status: Optional[int] = None,
        engine_body: str = "",
        param: Optional[str] = None,
        status: Optional[int] = None,
        error_type: Optional[str] = None,
    ) -> None:
        super().__init__(message, param=param, status=status, error_type=error_type)
        self.engine_status = engine_status
        self.engine_body = engine_body


class ServiceUnavailable(PatioError):
    status = 503
    error_type = "service_unavailable"


class PeerUnavailable(PatioError):
    """A peer could not be reached (refused, reset, DNS) or broke off its answer.  ``sent`` says
    whether the request may have reached it: only a request that surely did not may be retried
    (the default, True, is the safe assumption)."""

    status = 503
    error_type = "engine_unavailable"

    def __init__(self, message: str, *, sent: bool = True, param: Optional[str] = None) -> None:
        super().__init__(message, param=param)
        self.sent = sent


class PeerTimeout(PatioError):
    """A peer did not accept the connection, or did not answer, within the call's deadline."""

    status = 504
    error_type = "engine_timeout"


# The names these had when only the engine was a peer; the scrape and the LoRA manager still
# raise and catch them (the same classes, not subclasses: a catch of either name sees both).
EngineUnavailable = PeerUnavailable
EngineTimeout = PeerTimeout


class ConfigError(Exception):
    """A setting is invalid.  The process exits with status 2 and this message."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"invalid setting {setting}: {message}")
        self.setting = setting
