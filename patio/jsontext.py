"""JSON parsing with a nesting bound: the one place Patio turns untrusted bytes into JSON values.

Used for request bodies and for every answer a peer sends (engine, routers, artifact stores).
``json.loads`` recurses once per level, so 100,000 nested ``[`` end in a RecursionError and a
500 rather than a clear error.  The depth is counted first, without
recursion; a deeper document raises ``JsonTooDeep``, a ``ValueError`` like every other
malformed JSON, so callers keep one ``except ValueError`` for "not JSON".  No I/O.
"""

import json
import re
from typing import Any, Union

# Deepest nesting of arrays and objects accepted: management bodies are flat (depth 2-3) and
# peer answers shallow (a vLLM model card is depth 4); far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64
# Quotes and backslashes: where strings begin and end.  Strings are skipped by scanning for
# these rather than removed with a regex: ``"(?:[^"\\]|\\.)*"`` keeps backtracking state for
# every character of a string (about 115 bytes each), so one 1 MiB string cost 120 MB of RSS.
_QUOTE_OR_ESCAPE = re.compile(rb'["\\]')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class JsonTooDeep(ValueError):
    """The document nests arrays or objects deeper than the bound."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``data`` (brackets inside strings do not count).

    Memory linear in ``data`` at most (the text outside strings).  Malformed input gets some
    number; ``json.loads`` reports the real problem afterwards.
    """
    outside = []
    start = 0  # where the current stretch outside strings began
    in_string = False
    skip = -1  # the byte after a backslash inside a string is escaped
    for match in _QUOTE_OR_ESCAPE.finditer(data):
        at = match.start()
        if at == skip:
            continue
        if in_string:
            if data[at] == 0x5C:  # backslash
                skip = at + 1
            else:
                in_string, start = False, at + 1
        elif data[at] == 0x22:  # "
            outside.append(data[start:at])
            in_string = True
    if not in_string:
        outside.append(data[start:])
    depth = deepest = 0
    for byte in _NOT_BRACKET.sub(b"", b"".join(outside)):
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth = max(depth - 1, 0)
    return deepest


def loads(data: Union[bytes, str], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` after checking the nesting depth; raises ``ValueError`` (incl. ``JsonTooDeep``)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth(raw) > max_depth:
        raise JsonTooDeep(f"nests arrays or objects deeper than {max_depth} levels")
    return json.loads(data)
