"""Strings from the outside, checked once at the edge: names, paths and URIs.

Used by the LoRA API, the download API and the LoRA state file reader, so
every field that later becomes a directory name, a log line, a JSON answer or
an engine request has passed the same rules:

- names match ``ADAPTER_NAME`` *whole* (``fullmatch``: ``$`` in ``re.match``
  also matches before a final newline, so ``"nl\\n"`` passed);
- no control characters (a ``\\n`` in a path forged log lines) and no
  lone surrogates (JSON's ``"\\ud800"`` decodes to one; it cannot be encoded as
  UTF-8, so every answer that carried it failed with 500);
- no credentials in a URI's authority (``s3://KEY:SECRET@bucket``): they would
  end up in messages, ``last_error`` and the state file.  Secrets
  go in the ``credentials`` field or the environment.

Every refusal is a ``BadRequest`` naming the field, and no message echoes a
refused value that could hold a secret.  Pure functions; no I/O.
"""

import re
from typing import Any

from patio.errors import BadRequest

# A plain directory name: AIBrix's adapter rule, also the engine's model id.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators (log viewers
# break lines there): none belongs in a name, a path or a URI.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A UTF-16 surrogate code point in a Python str is always a lone one (JSON "\ud800").
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# scheme://authority: the part where userinfo (user:password@) would sit.
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# Longest path accepted in a request field, in UTF-8 bytes: Linux's PATH_MAX.  Longer could
# never be created; the OS would answer ENAMETOOLONG deep inside a download (a 507 that echoed
# the whole path).
MAX_PATH_BYTES = 4096
# Longest component of a path: NAME_MAX.
MAX_NAME_BYTES = 255
# How much of a refused value a message quotes; the rest is counted, not echoed.
MAX_SHOWN_CHARS = 80


def is_clean(value: str) -> bool:
    """True when ``value`` holds no control character and no lone surrogate."""
    return _CONTROL.search(value) is None and _SURROGATE.search(value) is None


def check_text(value: Any, field: str) -> str:
    """A string without control characters or lone surrogates, or ``BadRequest`` naming ``field``."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", param=field)
    if _SURROGATE.search(value) is not None:
        raise BadRequest(f"{field} is not valid Unicode (it holds a lone surrogate)", param=field)
    if _CONTROL.search(value) is not None:
        raise BadRequest(f"{field} must not contain control characters", param=field)
    return value


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as a message may quote it: ``repr`` of at most ``limit`` characters (with the
    length when cut), or a description when it holds control characters or is not text."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if not is_clean(value):
        return "the value given"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def check_path(value: Any, field: str) -> str:
    """A path field (``output_dir``, ``local_dir``, ``model_name``): clean text (no control
    characters, so no forged log lines), at most ``MAX_PATH_BYTES``, no component longer than
    ``MAX_NAME_BYTES``.  Refusals never echo the value."""
    text = check_text(value, field)
    if not text.strip():
        raise BadRequest(f"{field} must be a non-empty path", param=field)
    size = len(text.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise BadRequest(f"{field} is {size} bytes long; a path holds at most {MAX_PATH_BYTES}", param=field)
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in text.split("/")):
        raise BadRequest(f"{field} has a component longer than {MAX_NAME_BYTES} bytes", param=field)
    return text


def check_name(value: Any, field: str = "lora_name") -> str:
    """An adapter name: the whole string matches ``ADAPTER_NAME`` (it becomes a directory name)."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", param=field)
    if ADAPTER_NAME.fullmatch(value) is None:
        # Quoting a clean value helps; a dirty one is described, never echoed into logs.
        raise BadRequest(
            f"{field} {shown(value)} must match {ADAPTER_NAME.pattern} (it becomes a directory name)", param=field
        )
    return value


def has_userinfo(uri: str) -> bool:
    """True when ``uri`` carries ``user[:password]@`` in its authority.

    For ``hf://`` an ``@`` in the authority is a revision (``hf://gpt2@main``);
    only ``name:secret@`` counts there, since a Hub id never holds a colon.
    """
    match = _AUTHORITY.match(uri)
    if match is None:
        return False
    authority = match.group(1)
    if "@" not in authority:
        return False
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("hf", "huggingface"):
        return ":" in authority.rsplit("@", 1)[0]
    return True


def check_source(value: Any, field: str) -> str:
    """A path or URI field: clean text, and no credentials in the URI."""
    text = check_text(value, field)
    if has_userinfo(text.strip()):
        raise BadRequest(
            f"{field} must not carry credentials in the URI (user:password@); "
            "pass them in the request's credentials field or in the environment",
            param=field,
        )
    return text


def check_local_or_uri(value: str, field: str) -> str:
    """A LoRA source: a URI (``scheme://``) or an absolute local path; relative paths are refused.

    The one rule: in LoRA requests a value without a scheme is a
    path the engine reads, and a relative one means nothing stable (the engine's
    working directory; vLLM even falls back to fetching it from the Hub).  A Hub
    repo is named explicitly: ``hf://org/name`` or ``huggingface://org/name``.
    """
    text = value.strip()
    if _SCHEME.match(text) is None and not text.startswith("/"):
        raise BadRequest(
            f"{field} must be an absolute path or a URI; relative paths are refused "
            "(name a HuggingFace repo as hf://org/name)",
            param=field,
        )
    return value
