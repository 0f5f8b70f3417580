"""Credentials a request may carry, and the environment the sources read.

A request's ``credentials`` object (AIBrix's delegated-load field, Kthena's
``config``, or the download API's) is parsed once into ``RequestCredentials``;
unknown keys are an error naming the accepted ones.  ``merge_credentials``
layers several origins (a mounted secret, the request, AIBrix's
``additional_config``) the way AIBrix's runtime does; there, keys Patio does
not know are skipped, because those objects carry other settings too.
Neither class ever prints a secret.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from patio import jsontext
from patio.errors import BadRequest
from patio.validate import is_clean, shown

# Request key (lower-case) -> field.  Spellings of boto3, AIBrix, Kthena and the HF/GCS clients.
_ALIASES: Dict[str, str] = {
    "access_key_id": "access_key_id",
    "aws_access_key_id": "access_key_id",
    "access_key": "access_key_id",
    "ak": "access_key_id",
    "tos_access_key": "access_key_id",
    "secret_access_key": "secret_access_key",
    "aws_secret_access_key": "secret_access_key",
    "secret_key": "secret_access_key",
    "sk": "secret_access_key",
    "tos_secret_key": "secret_access_key",
    "session_token": "session_token",
    "aws_session_token": "session_token",
    "security_token": "session_token",
    "region": "region",
    "aws_region": "region",
    "region_name": "region",
    "endpoint": "endpoint",
    "endpoint_url": "endpoint",
    "aws_endpoint_url": "endpoint",
    "hf_endpoint": "endpoint",
    "addressing_style": "addressing_style",
    "token": "token",
    "hf_token": "token",
    "access_token": "access_token",
    "service_account_json": "service_account_json",
    "service_account": "service_account_json",
    "google_application_credentials": "service_account_json",
    "headers": "headers",
    # AIBrix's runtime downloaders (python/aibrix/aibrix/runtime/downloaders.py).
    "huggingface_token": "token",
    "access-key": "access_key_id",
    "secret-key": "secret_access_key",
    "gcp_service_account_json": "service_account_json",
    "tos_session_key": "session_token",
    "session_key": "session_token",
    "tos_endpoint": "endpoint",
    "tos_region": "region",
    # Kthena's config (python/kthena/downloader/app.py load_config).
    "ms_token": "token",
    "hf_revision": "revision",
    "ms_revision": "revision",
    "revision": "revision",
}
# Longest credential value accepted (a service-account JSON is ~2.4 KB).
MAX_VALUE_LENGTH = 64 * 1024
# Longest Kthena ``config`` string accepted (a handful of keys and tokens).
MAX_CONFIG_LENGTH = 256 * 1024


@dataclass(frozen=True)
class RequestCredentials:
    access_key_id: Optional[str] = None
    secret_access_key: Optional[str] = None
    session_token: Optional[str] = None
    region: Optional[str] = None
    endpoint: Optional[str] = None
    addressing_style: Optional[str] = None
    token: Optional[str] = None  # HuggingFace or ModelScope token
    access_token: Optional[str] = None  # OAuth2 bearer for GCS
    service_account_json: Optional[str] = None
    headers: Tuple[Tuple[str, str], ...] = ()  # HTTP(S) downloads; never logged
    revision: Optional[str] = None  # HF / ModelScope revision when the URI names none

    def __repr__(self) -> str:
        present = [name for name in self.__dataclass_fields__ if getattr(self, name)]
        return f"RequestCredentials({', '.join(present)})"

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)


def parse_credentials(raw: Any, param: str = "credentials") -> RequestCredentials:
    if raw is None:
        return RequestCredentials()
    return merge_credentials([(param, raw, True)])


def parse_config(raw: Any, param: str = "config") -> Optional[Dict[str, Any]]:
    """Kthena's ``config``: an object, or a JSON string holding one (Kthena json.loads it)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if not raw.strip():
            return None
        if len(raw) > MAX_CONFIG_LENGTH:
            raise BadRequest(f"{param} is longer than {MAX_CONFIG_LENGTH} characters", param=param)
        try:
            raw = jsontext.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"{param} is a string but not valid JSON: {exc}", param=param) from None
    if not isinstance(raw, dict):
        raise BadRequest(f"{param} must be a JSON object, or a JSON string holding one", param=param)
    return raw


# Keys AIBrix's downloaders accept that change nothing here: Patio verifies every file it can
# whatever they say (TOS's enable_crc).  Accepted, so AIBrix requests keep working, and ignored.
_NO_EFFECT = frozenset(("enable_crc", "tos_enable_crc"))


def merge_credentials(layers: Sequence[Tuple[str, Any, bool]]) -> RequestCredentials:
    """``(param, object, strict)`` layers, later ones winning key by key.

    ``strict`` layers refuse keys Patio does not know; the others skip them (a
    mounted secret or AIBrix's ``additional_config`` holds more than credentials).
    """
    values: Dict[str, Any] = {}
    for param, raw, strict in layers:
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise BadRequest(f"{param} must be a JSON object", param=param)
        values.update(_fields(raw, param, strict))
    if bool(values.get("access_key_id")) != bool(values.get("secret_access_key")):
        raise BadRequest("credentials need both an access key id and a secret access key", param=layers[-1][0])
    return RequestCredentials(**values)


def _fields(raw: Mapping[str, Any], param: str, strict: bool) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        name = _ALIASES.get(str(key).lower())
        if name is None and str(key).lower() in _NO_EFFECT:
            continue
        if name is None:
            if strict:
                accepted = ", ".join(sorted(set(_ALIASES)))
                raise BadRequest(f"{param} has an unknown key {shown(key)}; accepted: {accepted}", param=param)
            continue
        if value is None:
            continue
        if name == "headers":
            values[name] = _headers(value, f"{param}.headers")
            continue
        if name == "service_account_json" and isinstance(value, dict):
            value = json.dumps(value)
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(f"{param}.{key} must be a non-empty string", param=param)
        if len(value) > MAX_VALUE_LENGTH:
            raise BadRequest(f"{param}.{key} is longer than {MAX_VALUE_LENGTH} characters", param=param)
        if name != "service_account_json" and not is_clean(value):
            # Keys and tokens end up in request headers: a CR/LF there would split the request.
            raise BadRequest(f"{param}.{key} holds control characters (not shown)", param=param)
        if name == "addressing_style" and value not in ("auto", "path", "virtual"):
            raise BadRequest(f"{param}.{key} must be auto, path or virtual", param=param)
        values[name] = value.strip()
    return values


def _headers(value: Any, param: str) -> Tuple[Tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise BadRequest(f"{param} must be an object of header names to values", param=param)
    result = []
    for name, header_value in value.items():
        if not isinstance(name, str) or not isinstance(header_value, str):
            raise BadRequest(f"{param} names and values must be strings", param=param)
        if not name or any(c in name for c in ":\r\n ") or any(c in header_value for c in "\r\n\x00"):
            raise BadRequest(f"{param} has an invalid header {name!r}", param=param)
        if name.lower() in ("host", "range", "content-length", "transfer-encoding", "connection"):
            raise BadRequest(f"{param} must not set {name}", param=param)
        result.append((name, header_value))
    return tuple(result)


@dataclass(frozen=True)
class SourceEnv:
    """The environment variables the sources read, captured once at start.

    Read through ``first``; an empty value counts as unset.  ``repr`` shows names only.
    """

    values: Mapping[str, str] = field(default_factory=dict)

    def first(self, *names: str) -> Optional[str]:
        """The value of the first of ``names`` that is set (stripped), else None.

        Every argument is a variable, in priority order: ``first("AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL")`` falls back to the second variable, never to a literal (this is not
        ``dict.get``, whose second argument is a default).
        """
        for name in names:
            value = self.values.get(name)
            if value is not None and value.strip() != "":
                return value.strip()
        return None

    def __repr__(self) -> str:
        return f"SourceEnv({', '.join(sorted(self.values))})"
