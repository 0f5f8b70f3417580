"""JSON parsing with a nesting bound: the one place Patio turns untrusted bytes into JSON values.

Used for request bodies and for every answer a peer sends (engine, routers, artifact stores).
``json.loads`` recurses once per level, so 100,000 nested ``[`` end in a RecursionError and a
500 rather than a clear error (issue 13, row 17).  The depth is counted first, without
recursion; a deeper document raises ``JsonTooDeep``, a ``ValueError`` like every other
malformed JSON, so callers keep one ``except ValueError`` for "not JSON".  No I/O.
"""

import json
import re
from typing import Any, Union

# Deepest nesting of arrays and objects accepted: management bodies are flat (depth 2-3) and
# peer answers shallow (a vLLM model card is depth 4); far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64
# JSON strings (with escapes), removed before the brackets are counted.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


class JsonTooDeep(ValueError):
    """The document nests arrays or objects deeper than the bound."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``data`` (brackets inside strings do not count).

    Malformed input gets some number; ``json.loads`` reports the real problem afterwards.
    """
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    depth = deepest = 0
    for byte in brackets:
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
