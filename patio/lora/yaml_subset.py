"""A small, strict YAML subset for adapter files (the LoRA syncer's ConfigMap shape).

Sans-IO: text in, Python values out.  Accepted: block mappings, block
sequences (also ``key:`` followed by ``- item`` at the key's own indentation,
as PyYAML writes them), plain scalars, single- and double-quoted scalars on
one line, the empty flow collections ``[]`` and ``{}``, comments, and one
leading ``---``.  Anything else (anchors, aliases, tags, block scalars, other
flow collections, multi-line scalars, several documents, tabs in the
indentation, duplicate keys) is a ``YamlError`` naming the line and column:
a file Patio would read differently from PyYAML must fail, never be guessed.

Plain scalars follow YAML 1.2's core schema.  Scalars YAML 1.1 readers (PyYAML,
which the syncer used) turn into something else -- ``yes``/``no``/``on``/
``off``, ``010``, ``1_000``, ``1:20`` -- are errors asking for quotes.
Mapping keys are always strings.  Must not do I/O.
"""

import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from patio.errors import BadRequest
from patio.validate import shown

# Nesting deeper than this is not an adapter file; it also bounds the recursion.
MAX_DEPTH = 32

_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_TRUE = frozenset(("true", "True", "TRUE"))
_FALSE = frozenset(("false", "False", "FALSE"))
# YAML 1.1 booleans that YAML 1.2 reads as strings: the two readers disagree, so refuse.
_AMBIGUOUS_BOOLS = frozenset(w for word in ("yes", "no", "on", "off") for w in (word, word.capitalize(), word.upper()))
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(inf|Inf|INF)$")
_NAN = re.compile(r"^\.(nan|NaN|NAN)$")
# YAML 1.1 numbers and dates: leading-zero octal, 0o/0b, underscores, base 60, timestamps.
_AMBIGUOUS_NUMBER = re.compile(
    r"^([-+]?(0[0-9]+|[0-9][0-9_]*(_|:)[0-9_:]*)(\.[0-9_]*)?|[-+]?0[ob][0-9a-fA-F_]+|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*)$"
)
# A float YAML 1.1 reads as a float too: a dot, and a signed exponent if any.
_FLOAT_11 = re.compile(r"^[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?$")
_COMMENT = re.compile(r"[ \t]#")
# What an indicator at the start of a plain scalar means, for the error message.
_INDICATORS = {
    "&": "anchors (&) are not supported",
    "*": "aliases (*) are not supported",
    "!": "tags (!) are not supported",
    "|": "block scalars (|) are not supported; put the text on one line, quoted if needed",
    ">": "block scalars (>) are not supported; put the text on one line, quoted if needed",
    "%": "directives (%) are not supported",
    "@": "'@' is reserved in YAML; quote the value",
    "`": "'`' is reserved in YAML; quote the value",
    "[": "flow sequences are not supported (only []); write a block sequence",
    "{": "flow mappings are not supported (only {}); write a block mapping",
    "]": "unexpected ']'",
    "}": "unexpected '}'",
    ",": "unexpected ','; quote the value",
}
_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class YamlError(BadRequest):
    """Text outside the subset, or not YAML at all; ``line`` and ``column`` count from 1."""

    error_type = "invalid_adapters_file"

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.reason = message


class _Line(NamedTuple):
    number: int  # 1-based
    indent: int  # 0-based column of the first character that is not a space
    text: str


def _lines(text: str) -> List[_Line]:
    out: List[_Line] = []
    if text.startswith("\ufeff"):
        text = text[1:]
    seen_start = False
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        body = stripped.rstrip(" \t")
        if not body.strip("\t") or body.lstrip("\t").startswith("#"):
            continue
        if stripped.startswith("\t"):
            raise YamlError(number, indent + 1, "tab in indentation; indent with spaces")
        if indent == 0 and (body == "---" or body.startswith("--- ") or body.startswith("---\t")):
            rest = body[3:].strip(" \t")
            if seen_start or out:
                raise YamlError(number, 1, "several YAML documents in one file; keep one")
            if rest and not rest.startswith("#"):
                raise YamlError(number, 5, "content after '---' is not supported; start it on the next line")
            seen_start = True
            continue
        if indent == 0 and (body == "..." or body.startswith("... ")):
            raise YamlError(number, 1, "document end markers ('...') are not supported")
        if indent == 0 and body.startswith("%"):
            raise YamlError(number, 1, _INDICATORS["%"])
        out.append(_Line(number, indent, line.rstrip(" \t")))
    return out


def parse(text: str) -> Any:
    """The value of one YAML document in the subset; an empty document is ``None``."""
    return _Parser(_lines(text)).document()


class _Parser:
    def __init__(self, lines: List[_Line]) -> None:
        self.lines = lines
        self.depth = 0

    def document(self) -> Any:
        if not self.lines:
            return None
        first = self.lines[0]
        value, index = self.node(0, first.indent)
        if index < len(self.lines):
            line = self.lines[index]
            raise YamlError(line.number, line.indent + 1, "unexpected content after the document's top-level node")
        return value

    # -- structure ------------------------------------------------------------------
    def node(self, index: int, col: int) -> Tuple[Any, int]:
        """The node whose first character is at ``col`` of line ``index``; returns (value, next line)."""
        self.depth += 1
        try:
            line = self.lines[index]
            if self.depth > MAX_DEPTH:
                raise YamlError(line.number, col + 1, f"nesting deeper than {MAX_DEPTH} levels")
            if _is_sequence_entry(line.text, col):
                return self.sequence(index, col)
            if self.key_end(line, col) is not None:
                return self.mapping(index, col)
            value = self.value(line, col)
            self.no_continuation(index + 1, col)
            return value, index + 1
        finally:
            self.depth -= 1

    def no_continuation(self, index: int, col: int) -> None:
        if index < len(self.lines) and self.lines[index].indent > col:
            line = self.lines[index]
            raise YamlError(
                line.number,
                line.indent + 1,
                "unexpected indentation (multi-line scalars are not supported; put the value on one line)",
            )

    def sequence(self, index: int, col: int) -> Tuple[List[Any], int]:
        items: List[Any] = []
        while index < len(self.lines):
            line = self.lines[index]
            start = col if not items else line.indent
            if items:
                if line.indent < col:
                    break
                if line.indent > col:
                    raise YamlError(line.number, line.indent + 1, "unexpected indentation inside a sequence")
                if not _is_sequence_entry(line.text, col):
                    break  # a key of the mapping this sequence is the value of; the caller decides
            after = start + 1
            while after < len(line.text) and line.text[after] == " ":
                after += 1
            if after >= len(line.text) or line.text[after] == "#":
                value, index = self.nested_or_null(index, col)
            else:
                value, index = self.node(index, after)
            items.append(value)
        return items, index

    def mapping(self, index: int, col: int) -> Tuple[Dict[str, Any], int]:
        result: Dict[str, Any] = {}
        where: Dict[str, int] = {}
        first = True
        while index < len(self.lines):
            line = self.lines[index]
            start = col if first else line.indent
            if not first:
                if line.indent < col:
                    break
                if line.indent > col:
                    raise YamlError(
                        line.number,
                        line.indent + 1,
                        "unexpected indentation (multi-line scalars are not supported; put the value on one line)",
                    )
                if _is_sequence_entry(line.text, col):
                    raise YamlError(line.number, col + 1, "a sequence entry where a mapping key was expected")
            first = False
            found = self.key_end(line, start)
            if found is None:
                raise YamlError(line.number, start + 1, "expected 'key: value' at this indentation")
            key, colon = found
            if key in result:
                raise YamlError(line.number, start + 1, f"duplicate key {shown(key)} (first at line {where[key]})")
            where[key] = line.number
            after = colon + 1
            while after < len(line.text) and line.text[after] == " ":
                after += 1
            if after >= len(line.text) or line.text[after] == "#":
                nxt = index + 1
                if (
                    nxt < len(self.lines)
                    and self.lines[nxt].indent == col
                    and _is_sequence_entry(self.lines[nxt].text, col)
                ):
                    # ``key:`` then ``- item`` at the key's own indentation (PyYAML's default output).
                    self.depth += 1
                    try:
                        value, index = self.sequence(nxt, col)
                    finally:
                        self.depth -= 1
                else:
                    value, index = self.nested_or_null(index, col)
            else:
                if _is_sequence_entry(line.text, after) or self.key_end(line, after) is not None:
                    raise YamlError(
                        line.number,
                        after + 1,
                        "a nested collection on the same line as its key is not supported; start it on the next line",
                    )
                value = self.value(line, after)
                index += 1
            result[key] = value
        return result, index

    def nested_or_null(self, index: int, col: int) -> Tuple[Any, int]:
        """The block below an entry that has nothing after its indicator, or null when there is none."""
        nxt = index + 1
        if nxt < len(self.lines) and self.lines[nxt].indent > col:
            return self.node(nxt, self.lines[nxt].indent)
        return None, nxt

    # -- scalars --------------------------------------------------------------------
    def key_end(self, line: _Line, col: int) -> Optional[Tuple[str, int]]:
        """(key, index of its ':') when a mapping key starts at ``col``; else None."""
        text = line.text
        if col >= len(text):
            return None
        char = text[col]
        if char in "\"'":
            key, end = _quoted(line, col)
            probe = end
            while probe < len(text) and text[probe] == " ":
                probe += 1
            if probe < len(text) and text[probe] == ":" and (probe + 1 == len(text) or text[probe + 1] == " "):
                return key, probe
            return None
        if char == "?" and (col + 1 == len(text) or text[col + 1] == " "):
            raise YamlError(line.number, col + 1, "complex keys ('? ') are not supported")
        if char == ":" and (col + 1 == len(text) or text[col + 1] == " "):
            raise YamlError(line.number, col + 1, "a mapping entry without a key")
        position = col
        while True:
            position = text.find(":", position)
            if position < 0:
                return None
            if _COMMENT.search(text, col, position):
                return None  # the colon is inside a comment
            if position + 1 == len(text) or text[position + 1] == " ":
                key = text[col:position].rstrip(" ")
                if key[:1] in _INDICATORS and key[:1] not in "]},":
                    raise YamlError(line.number, col + 1, _INDICATORS[key[0]])
                return key, position
            position += 1

    def value(self, line: _Line, col: int) -> Any:
        text = line.text
        char = text[col]
        if char in "\"'":
            value, end = _quoted(line, col)
            _only_comment(line, end)
            return value
        if text.startswith("[]", col) or text.startswith("{}", col):
            _only_comment(line, col + 2)
            return [] if char == "[" else {}
        if char in _INDICATORS:
            raise YamlError(line.number, col + 1, _INDICATORS[char])
        if char in "-?:" and col + 1 < len(text) and text[col + 1] == " ":
            raise YamlError(line.number, col + 1, f"unexpected '{char} ' here")
        comment = _COMMENT.search(text, col)
        raw = (text[col:] if comment is None else text[col : comment.start()]).rstrip(" \t")
        colon = raw.find(": ")
        if colon >= 0 or raw.endswith(":"):
            at = colon if colon >= 0 else len(raw) - 1
            raise YamlError(line.number, col + at + 1, "':' followed by a space inside a value; quote the value")
        return _resolve(raw, line.number, col)


def _is_sequence_entry(text: str, col: int) -> bool:
    return text.startswith("-", col) and (col + 1 == len(text) or text[col + 1] == " ")


def _only_comment(line: _Line, end: int) -> None:
    rest = line.text[end:]
    stripped = rest.lstrip(" \t")
    if stripped and not (stripped.startswith("#") and len(stripped) < len(rest)):
        raise YamlError(line.number, end + len(rest) - len(stripped) + 1, "unexpected text after a quoted scalar")


def _quoted(line: _Line, col: int) -> Tuple[str, int]:
    """A quoted scalar starting at ``col``; returns (value, index just past the closing quote)."""
    text, quote = line.text, line.text[col]
    out: List[str] = []
    i = col + 1
    while i < len(text):
        char = text[i]
        if quote == "'":
            if char == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), i + 1
            out.append(char)
            i += 1
            continue
        if char == '"':
            return "".join(out), i + 1
        if char != "\\":
            out.append(char)
            i += 1
            continue
        if i + 1 >= len(text):
            break
        code = text[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
            continue
        width = _HEX_ESCAPES.get(code)
        digits = text[i + 2 : i + 2 + width] if width else ""
        if not width or len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise YamlError(line.number, i + 1, f"unknown escape '\\{code}' in a double-quoted string")
        point = int(digits, 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise YamlError(line.number, i + 1, f"escape '\\{code}{digits}' is not a valid character")
        out.append(chr(point))
        i += 2 + width
    kind = "single" if quote == "'" else "double"
    raise YamlError(
        line.number, col + 1, f"unterminated {kind}-quoted string (quoted strings must end on the same line)"
    )


def _resolve(raw: str, number: int, col: int) -> Any:
    """A plain scalar's value under YAML 1.2's core schema."""
    if raw in _NULLS:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    if raw in _AMBIGUOUS_BOOLS or _AMBIGUOUS_NUMBER.match(raw):
        raise YamlError(
            number, col + 1, f"{raw!r} means something else to YAML 1.1 readers (PyYAML); quote it if it is a string"
        )
    if _INT.match(raw):
        return int(raw)
    if _INT_HEX.match(raw):
        return int(raw[2:], 16)
    if _FLOAT.match(raw):
        if not _FLOAT_11.match(raw):
            raise YamlError(
                number, col + 1, f"{raw!r} is a string to YAML 1.1 readers (PyYAML); write 1.0e+5 or quote it"
            )
        return float(raw)
    if _INF.match(raw):
        return float("-inf") if raw.startswith("-") else float("inf")
    if _NAN.match(raw):
        return float("nan")
    return raw
