"""Credentials a request may carry, and the environment the sources read.

A request's ``credentials`` object (AIBrix's delegated-load field, or the
download API's) is parsed once into ``RequestCredentials``; unknown keys are an
error naming the accepted ones.  Neither class ever prints a secret.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from patio.errors import BadRequest

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
}
# Longest credential value accepted (a service-account JSON is ~2.4 KB).
MAX_VALUE_LENGTH = 64 * 1024


@dataclass(frozen=True)
class RequestCredentials:
    access_key_id: Optional[str] = None
    secret_access_key: Optional[str] = None
    session_token: Optional[str] = None
    region: Optional[str] = None
    endpoint: Optional[str] = None
    addressing_style: Optional[str] = None
    token: Optional[str] = None  # HuggingFace token
    access_token: Optional[str] = None  # OAuth2 bearer for GCS
    service_account_json: Optional[str] = None
    headers: Tuple[Tuple[str, str], ...] = ()  # HTTP(S) downloads; never logged

    def __repr__(self) -> str:
        present = [name for name in self.__dataclass_fields__ if getattr(self, name)]
        return f"RequestCredentials({', '.join(present)})"

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)


def parse_credentials(raw: Any, param: str = "credentials") -> RequestCredentials:
    if raw is None:
        return RequestCredentials()
    if not isinstance(raw, dict):
        raise BadRequest(f"{param} must be a JSON object", param=param)
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        name = _ALIASES.get(str(key).lower())
        if name is None:
            accepted = ", ".join(sorted(set(_ALIASES)))
            raise BadRequest(f"{param} has an unknown key {key!r}; accepted: {accepted}", param=param)
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
        if name == "addressing_style" and value not in ("auto", "path", "virtual"):
            raise BadRequest(f"{param}.{key} must be auto, path or virtual", param=param)
        values[name] = value.strip()
    if bool(values.get("access_key_id")) != bool(values.get("secret_access_key")):
        raise BadRequest(f"{param} needs both an access key id and a secret access key", param=param)
    return RequestCredentials(**values)


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

    Read through ``get``; an empty value counts as unset.  ``repr`` shows names only.
    """

    values: Mapping[str, str] = field(default_factory=dict)

    def get(self, *names: str) -> Optional[str]:
        for name in names:
            value = self.values.get(name)
            if value is not None and value.strip() != "":
                return value.strip()
        return None

    def __repr__(self) -> str:
        return f"SourceEnv({', '.join(sorted(self.values))})"
