"""JSON request bodies as data: one table per body drives validation and the OpenAPI schema.

A ``Body`` is a tuple of ``Field`` rows.  ``Body.check(raw, engine)`` refuses
unknown fields, wrong types, missing required fields and fields another engine
owns, each as a ``BadRequest`` naming the field; ``Body.schema(engine)`` is the
JSON schema the OpenAPI document shows for the same table.  Sans-IO: no
handler logic here, only shape.
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

from patio.errors import BadRequest

# Kinds a field may have -> (JSON schema, words for the error message).
_KINDS: Mapping[str, Tuple[Dict[str, Any], str]] = {
    "string": ({"type": "string"}, "a string"),
    "boolean": ({"type": "boolean"}, "true or false"),
    "integer": ({"type": "integer"}, "an integer"),
    "object": ({"type": "object"}, "an object"),
    # Kthena's runtime json.loads its config, so its own clients send a JSON string; its docs show an object.
    "object_or_json": (
        {"oneOf": [{"type": "object"}, {"type": "string", "description": "a JSON object, serialised"}]},
        "an object or a JSON string holding one",
    ),
    "string_or_list": (
        {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "a string or a list of strings",
    ),
}


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "object_or_json":
        return isinstance(value, (dict, str))
    if kind == "string_or_list":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    raise AssertionError(kind)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    description: str = ""
    required: bool = False
    engines: FrozenSet[str] = frozenset()  # empty: every engine; else only these understand it
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    pattern: Optional[str] = None
    nullable: bool = False  # null means "not given" (clients that serialise every optional field)

    def schema(self) -> Dict[str, Any]:
        base = dict(_KINDS[self.kind][0])
        if self.minimum is not None:
            base["minimum"] = self.minimum
        if self.maximum is not None:
            base["maximum"] = self.maximum
        if self.pattern is not None:
            base["pattern"] = self.pattern
        if self.description:
            base["description"] = self.description
        if self.nullable and "type" in base:
            base["type"] = [base["type"], "null"]
        return base


@dataclass(frozen=True)
class Body:
    fields: Tuple[Field, ...]

    def __post_init__(self) -> None:
        for f in self.fields:
            assert f.kind in _KINDS, f"{f.name}: unknown kind {f.kind}"

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def check(self, raw: Mapping[str, Any], engine: Optional[str] = None) -> Dict[str, Any]:
        """The body with nulls of nullable fields dropped; ``BadRequest`` naming the first bad field."""
        table = {f.name: f for f in self.fields}
        out: Dict[str, Any] = {}
        for name, value in raw.items():
            spec = table.get(name)
            if spec is None:
                accepted = ", ".join(f.name for f in self.fields if engine is None or _serves(f, engine))
                raise BadRequest(f"unknown field {name!r}; accepted: {accepted}", param=name)
            if spec.engines and engine is not None and engine not in spec.engines:
                raise BadRequest(f"field {name!r} is not supported by {engine}", param=name)
            if value is None and spec.nullable:
                continue
            if not _is(spec.kind, value):
                raise BadRequest(f"{name} must be {_KINDS[spec.kind][1]}", param=name)
            if spec.pattern is not None and spec.kind == "string" and not re.fullmatch(spec.pattern, value):
                raise BadRequest(f"{name} must match {spec.pattern}", param=name)
            if spec.kind == "integer":
                if spec.minimum is not None and value < spec.minimum:
                    raise BadRequest(f"{name} must be at least {spec.minimum}", param=name)
                if spec.maximum is not None and value > spec.maximum:
                    raise BadRequest(f"{name} must be at most {spec.maximum}", param=name)
            out[name] = value
        for spec in self.fields:
            if spec.required and spec.name not in out:
                raise BadRequest(f"{spec.name} is required", param=spec.name)
        return out

    def schema(self, engine: Optional[str] = None) -> Dict[str, Any]:
        shown = [f for f in self.fields if engine is None or _serves(f, engine)]
        result: Dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: f.schema() for f in shown},
        }
        required = [f.name for f in shown if f.required]
        if required:
            result["required"] = required
        return result


def _serves(spec: Field, engine: str) -> bool:
    return not spec.engines or engine in spec.engines
