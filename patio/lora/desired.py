"""The adapters file: bytes -> a validated ``DesiredState``, or one error saying everything wrong.

Two shapes, each in JSON or in the YAML subset (``patio.lora.yaml_subset``):

* the Gateway API Inference Extension LoRA syncer's ConfigMap
  (tools/dynamic-lora-sidecar/sidecar/sidecar.py and validation.yaml)::

      vLLMLoRAConfig:
        name: NAME                 # optional
        host: H                    # optional; accepted, unused (Patio talks to its own engine)
        port: 8000                 # optional; likewise
        defaultBaseModel: BASE     # optional
        ensureExist:    {models: [{id, source, base-model?, pinned?, required?}]}
        ensureNotExist: {models: [{id, source?, base-model?}]}

* Patio's own: ``{"adapters": [{"name", "source", "base_model"?, "pinned"?, "required"?}], "remove"?: [NAME]}``.

``pinned`` (SGLang) and ``required`` are Patio's: a required adapter must be loaded (or, in
resolver mode, in place) before ``/ready`` answers 200 (``patio.lora.readiness``).

Semantics: the file is the whole desired set of adapters *it* owns; an adapter
loaded from the file and later dropped from it is unloaded.  Names under
``ensureNotExist``/``remove`` are unloaded whoever loaded them.  A name in both
lists is left alone and reported (what the syncer did).  Names past
``max_adapters`` are refused and reported, so the adapter count (and the
metrics' cardinality) stays bounded.  Unknown keys are errors: a typo such as
``ensureExists`` must not silently mean "nothing".

Sans-IO: callers read the file (at most ``MAX_FILE_BYTES``) and pass the bytes.
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from patio import jsontext
from patio.errors import BadRequest
from patio.lora.yaml_subset import YamlError, parse
from patio.validate import ADAPTER_NAME, check_source, shown

# A ConfigMap holds at most 1 MiB; an adapters file larger than that is not one.
MAX_FILE_BYTES = 1024 * 1024
# Problems listed in one error; past this the message says how many more.
MAX_REPORTED_PROBLEMS = 20
# One problem's text at most: what it quotes of the file is cut (a 500 KB key was echoed whole
# into the status and the log).
MAX_PROBLEM_CHARS = 300
# Refused names listed in the status (the count is always exact).
MAX_REPORTED_REFUSED = 10
# Longest source accepted (a URI or a path), as the artifacts parser allows.
MAX_SOURCE_LENGTH = 4096

# The syncer passed ``source`` to vLLM, which reads a bare ``org/name`` as a Hugging Face repo id.
HF_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

SYNCER_ROOT = "vLLMLoRAConfig"
_SYNCER_KEYS = ("name", "host", "port", "defaultBaseModel", "ensureExist", "ensureNotExist")
_SYNCER_MODEL_KEYS = ("id", "source", "base-model", "pinned", "required")
_PATIO_KEYS = ("adapters", "remove")
_PATIO_ADAPTER_KEYS = ("name", "source", "base_model", "pinned", "required")


class AdaptersFileError(BadRequest):
    """The adapters file is not valid; nothing of it is applied."""

    error_type = "invalid_adapters_file"


@dataclass(frozen=True)
class DesiredAdapter:
    name: str
    source: str
    base_model: Optional[str] = None
    pinned: Optional[bool] = None  # SGLang only; None: not said
    required: bool = False  # /ready waits for it


@dataclass(frozen=True)
class DesiredState:
    adapters: Tuple[DesiredAdapter, ...]  # to be present, in file order, at most max_adapters
    absent: Tuple[str, ...]  # to be absent, whoever loaded them
    conflicts: Tuple[str, ...] = ()  # named in both lists: left alone
    refused: Tuple[str, ...] = ()  # past max_adapters
    shape: str = "patio"  # "syncer" or "patio"
    config_name: Optional[str] = None

    def names(self) -> Tuple[str, ...]:
        return tuple(a.name for a in self.adapters)


class _Problems:
    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, where: str, message: str) -> None:
        text = f"{where}: {message}"
        self.items.append(text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…")

    def raise_if_any(self, path: str) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_PROBLEMS]
        more = len(self.items) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more else "")
        raise AdaptersFileError(f"{path} is not a valid adapters file: {text}")


def parse_document(raw: bytes, path: str) -> Any:
    """Bytes -> the document's value: JSON when it looks like JSON, else the YAML subset."""
    if len(raw) > MAX_FILE_BYTES:
        raise AdaptersFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdaptersFileError(f"{path} is not UTF-8 (byte {exc.start})") from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if path.endswith(".json") or stripped.startswith("{") or stripped.startswith("["):
        try:
            # The API bodies' depth bound: json.loads recurses once per level, and 1,000 nested
            # '[' (a 2 KB file) raised a RecursionError no caller caught.
            return jsontext.loads(stripped)
        except jsontext.JsonTooDeep as exc:
            raise AdaptersFileError(f"{path}: {exc}") from None
        except ValueError as exc:
            line, column = getattr(exc, "lineno", 0), getattr(exc, "colno", 0)
            reason = getattr(exc, "msg", str(exc))
            raise AdaptersFileError(f"{path}: line {line}, column {column}: invalid JSON: {reason}") from None
    try:
        return parse(text)
    except YamlError as exc:
        raise AdaptersFileError(f"{path}: {exc.message}") from None


def load_desired(raw: bytes, path: str, max_adapters: int) -> DesiredState:
    """The validated desired state of an adapters file; ``AdaptersFileError`` names every problem."""
    document = parse_document(raw, path)
    problems = _Problems()
    if document is None:
        problems.add("file", f"is empty; write '{SYNCER_ROOT}: {{}}' or '{{\"adapters\": []}}' for no adapters")
    elif not isinstance(document, dict):
        problems.add("file", f"must be a mapping with {SYNCER_ROOT!r} or 'adapters', not {_kind(document)}")
    elif SYNCER_ROOT in document:
        state = _syncer(document, problems)
        problems.raise_if_any(path)
        return _limited(state, max_adapters)
    elif "adapters" in document:
        state = _patio(document, problems)
        problems.raise_if_any(path)
        return _limited(state, max_adapters)
    else:
        problems.add("file", f"must have {SYNCER_ROOT!r} (the LoRA syncer's shape) or 'adapters' (Patio's)")
    problems.raise_if_any(path)
    raise AssertionError("unreachable")  # pragma: no cover


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _unknown_keys(value: Mapping[str, Any], allowed: Sequence[str], where: str, problems: _Problems) -> None:
    for key in value:
        if key not in allowed:
            problems.add(where, f"unknown key {shown(key)} (allowed: {', '.join(allowed)})")


def _string(value: Any, where: str, problems: _Problems, *, required: bool = True) -> Optional[str]:
    if value is None:
        if required:
            problems.add(where, "is required")
        return None
    if not isinstance(value, str):
        problems.add(where, f"must be a string, not {_kind(value)}")
        return None
    return value


def _name(value: Any, where: str, problems: _Problems) -> Optional[str]:
    name = _string(value, where, problems)
    if name is not None and ADAPTER_NAME.fullmatch(name) is None:
        problems.add(where, f"{shown(name)} must match {ADAPTER_NAME.pattern} (it names a directory and a model)")
        return None
    return name


def _source(value: Any, where: str, problems: _Problems, *, required: bool = True) -> Optional[str]:
    """A URI or an absolute path; the syncer's bare ``org/name`` becomes ``hf://org/name``."""
    source = _string(value, where, problems, required=required)
    if source is None:
        return None
    source = source.strip()
    if not source or len(source) > MAX_SOURCE_LENGTH:
        problems.add(where, f"must be a non-empty path or URI of at most {MAX_SOURCE_LENGTH} characters")
        return None
    try:
        check_source(source, where)
    except BadRequest as exc:
        problems.add(where, exc.message[len(where) + 1 :] if exc.message.startswith(where) else exc.message)
        return None
    if HF_REPO_ID.fullmatch(source):
        return "hf://" + source
    if _SCHEME.match(source) is None and not source.startswith("/"):
        problems.add(where, "must be a URI, an absolute path or a Hugging Face repo id (org/name)")
        return None
    return source


def _flag(value: Any, where: str, problems: _Problems) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        problems.add(where, f"must be true or false, not {_kind(value)}")
        return None
    return value


def _syncer(document: Mapping[str, Any], problems: _Problems) -> DesiredState:
    _unknown_keys(document, (SYNCER_ROOT,), "file", problems)
    config = document[SYNCER_ROOT]
    if config is None:
        config = {}
    if not isinstance(config, dict):
        problems.add(SYNCER_ROOT, f"must be a mapping, not {_kind(config)}")
        return DesiredState((), (), shape="syncer")
    _unknown_keys(config, _SYNCER_KEYS, SYNCER_ROOT, problems)
    name = _string(config.get("name"), f"{SYNCER_ROOT}.name", problems, required=False)
    _string(config.get("host"), f"{SYNCER_ROOT}.host", problems, required=False)
    port = config.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        problems.add(f"{SYNCER_ROOT}.port", f"must be an integer, not {_kind(port)}")
    default_base = _string(config.get("defaultBaseModel"), f"{SYNCER_ROOT}.defaultBaseModel", problems, required=False)
    present = _syncer_models(config, "ensureExist", default_base, problems, need_source=True)
    absent = _syncer_models(config, "ensureNotExist", default_base, problems, need_source=False)
    return _combine(present, [a.name for a in absent], "syncer", name)


def _syncer_models(
    config: Mapping[str, Any], key: str, default_base: Optional[str], problems: _Problems, *, need_source: bool
) -> List[DesiredAdapter]:
    where = f"{SYNCER_ROOT}.{key}"
    section = config.get(key)
    if section is None:
        if key in config:
            problems.add(where, "must be a mapping with 'models'")
        return []
    if not isinstance(section, dict):
        problems.add(where, f"must be a mapping with 'models', not {_kind(section)}")
        return []
    _unknown_keys(section, ("models",), where, problems)
    models = section.get("models")
    if not isinstance(models, list):
        problems.add(f"{where}.models", "is required" if models is None else f"must be a list, not {_kind(models)}")
        return []
    out: List[DesiredAdapter] = []
    for index, item in enumerate(models):
        at = f"{where}.models[{index}]"
        if not isinstance(item, dict):
            problems.add(at, f"must be a mapping with 'id' and 'source', not {_kind(item)}")
            continue
        _unknown_keys(item, _SYNCER_MODEL_KEYS, at, problems)
        name = _name(item.get("id"), f"{at}.id", problems)
        source = _source(item.get("source"), f"{at}.source", problems, required=need_source)
        base = _string(item.get("base-model"), f"{at}.base-model", problems, required=False)
        pinned = _flag(item.get("pinned"), f"{at}.pinned", problems)
        required = bool(_flag(item.get("required"), f"{at}.required", problems)) and need_source
        if "required" in item and not need_source:
            problems.add(f"{at}.required", "applies to adapters to be present, not to ones to remove")
        if name is not None and (source is not None or not need_source):
            base = base if base is not None else default_base
            out.append(DesiredAdapter(name, source or "", base, pinned, required))
    _duplicates(out, where, problems)
    return out


def _patio(document: Mapping[str, Any], problems: _Problems) -> DesiredState:
    _unknown_keys(document, _PATIO_KEYS, "file", problems)
    adapters = document.get("adapters")
    present: List[DesiredAdapter] = []
    if not isinstance(adapters, list):
        problems.add("adapters", f"must be a list, not {_kind(adapters)}")
    else:
        for index, item in enumerate(adapters):
            at = f"adapters[{index}]"
            if not isinstance(item, dict):
                problems.add(at, f"must be a mapping with 'name' and 'source', not {_kind(item)}")
                continue
            _unknown_keys(item, _PATIO_ADAPTER_KEYS, at, problems)
            name = _name(item.get("name"), f"{at}.name", problems)
            source = _source(item.get("source"), f"{at}.source", problems)
            base = _string(item.get("base_model"), f"{at}.base_model", problems, required=False)
            pinned = _flag(item.get("pinned"), f"{at}.pinned", problems)
            required = bool(_flag(item.get("required"), f"{at}.required", problems))
            if name is not None and source is not None:
                present.append(DesiredAdapter(name, source, base, pinned, required))
        _duplicates(present, "adapters", problems)
    remove = document.get("remove", [])
    absent: List[str] = []
    if not isinstance(remove, list):
        problems.add("remove", f"must be a list of names, not {_kind(remove)}")
    else:
        for index, item in enumerate(remove):
            name = _name(item, f"remove[{index}]", problems)
            if name is not None:
                absent.append(name)
    return _combine(present, absent, "patio", None)


def _duplicates(adapters: Sequence[DesiredAdapter], where: str, problems: _Problems) -> None:
    first: Dict[str, int] = {}
    for index, adapter in enumerate(adapters):
        if adapter.name in first:
            problems.add(where, f"{adapter.name!r} is listed twice (entries {first[adapter.name]} and {index})")
        else:
            first[adapter.name] = index


def _combine(present: List[DesiredAdapter], absent: List[str], shape: str, name: Optional[str]) -> DesiredState:
    both = set(a.name for a in present) & set(absent)
    return DesiredState(
        adapters=tuple(a for a in present if a.name not in both),
        absent=tuple(dict.fromkeys(n for n in absent if n not in both)),
        conflicts=tuple(sorted(both)),
        shape=shape,
        config_name=name,
    )


def _limited(state: DesiredState, max_adapters: int) -> DesiredState:
    if len(state.adapters) <= max_adapters:
        return state
    kept, refused = state.adapters[:max_adapters], state.adapters[max_adapters:]
    return DesiredState(
        adapters=kept,
        absent=state.absent,
        conflicts=state.conflicts,
        refused=tuple(a.name for a in refused),
        shape=state.shape,
        config_name=state.config_name,
    )


def refused_message(state: DesiredState, max_adapters: int) -> Optional[str]:
    """The clear error for names past the limit, or None."""
    if not state.refused:
        return None
    shown = ", ".join(state.refused[:MAX_REPORTED_REFUSED])
    more = len(state.refused) - MAX_REPORTED_REFUSED
    return (
        f"the file names {len(state.adapters) + len(state.refused)} adapters; at most {max_adapters} are kept "
        f"(--max-adapters): refused {shown}" + (f" and {more} more" if more > 0 else "")
    )
