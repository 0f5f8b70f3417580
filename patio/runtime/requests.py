"""The model-runtime API's request bodies, field for field AIBrix 0.8.0's, checked once.

Shapes from ``aibrix/openapi/protocol.py`` (``ActivateRuntimeModelRequest`` ...), which
forbid unknown fields (``extra="forbid"``; AIBrix answers 422, Patio 400 naming the
field).  Everything that later becomes argv, an environment variable, a file name or a
log line is checked here: engine flags are ``--name`` tokens with clean values and a
named bound on their number, credentials are environment names with values that hold
no NUL, names are plain text.  Sans-IO: dicts in, frozen values out, ``BadRequest`` out.
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from patio.errors import BadRequest
from patio.http.bodies import Body, Field
from patio.validate import check_text

ENGINES = ("vllm", "sglang")
# A served model name: what clients put in "model".  HuggingFace-style names carry one "/".
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,255}")
# One engine flag: "--max-model-len", "-tp".  The value travels as its own argv item.
FLAG = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_.-]{0,126}")
# An environment variable name (POSIX portable).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Bounds on what one request may carry (the body limit is 1 MiB; these say what is sane).
MAX_ENGINE_ARGS = 128
MAX_ARG_VALUE = 4096
MAX_CREDENTIALS = 64
MAX_CREDENTIAL_VALUE = 64 * 1024
MAX_OPERATION_ID = 512
MAX_IPC_NAME = 200
MAX_CLAIM_FIELD = 253  # a Kubernetes name, namespace or uid
# Environment names a request may not set in an engine: they change what code runs
# (LD_PRELOAD, PYTHONPATH) or how Patio recognises its engines (PATIO_*).
_FORBIDDEN_ENV = re.compile(r"(LD_|PYTHON|PATIO_).*|PATH|HOME")
# additional_config keys of this form are engine flags (AIBrix's legacy spelling, _engine_args).
LEGACY_ARG_PREFIX = "engine-arg:"

ACTIVATE_BODY = Body(
    (
        Field("model_name", "string", "the served model name", required=True),
        Field(
            "artifact_url", "string", "weights: s3://, gs://, hf://, a bare org/name, or a local path", required=True
        ),
        Field("engine", "string", "vllm (default) or sglang"),
        Field("port", "integer", "0 lets Patio pick a free port", minimum=0, maximum=65535),
        Field("ipc_name", "string", "kvcached KVCACHED_IPC_NAME; derived when empty", nullable=True),
        Field("credentials", "object", "download credentials; also the engine's environment", nullable=True),
        Field("engine_config", "object", '{"args": {"--flag": "value"}}', nullable=True),
        Field("claim_ref", "object", "{namespace, name, uid} of the ModelClaim", nullable=True),
        Field("additional_config", "object", 'legacy: "engine-arg:--flag" keys', nullable=True),
    )
)
DEACTIVATE_BODY = Body(
    (
        Field("model_name", "string", required=True),
        Field("mode", "string", '"stop" (AIBrix treats any other mode as stop)'),
    )
)
SLEEP_BODY = Body(
    (
        Field("model_name", "string", required=True),
        Field("level", "integer", "1: weights to host memory; 2: discard them", required=True, minimum=1, maximum=2),
        Field("operation_id", "string", "the same id again is answered without acting again", required=True),
    )
)
WAKE_BODY = Body(
    (
        Field("model_name", "string", required=True),
        Field("operation_id", "string", required=True),
    )
)
KV_LIMIT_BODY = Body(
    (
        Field("model_name", "string", required=True),
        Field("limit_bytes", "integer", "the kvcached limit", required=True, minimum=0),
        Field("operation_id", "string", required=True),
    )
)


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def to_json(self) -> Dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}


@dataclass(frozen=True)
class Activate:
    model_name: str
    artifact_url: str
    engine: str
    port: int
    ipc_name: str  # sanitized, never empty
    args: Tuple[Tuple[str, str], ...]  # (flag, value); "" = a flag without a value
    claim_ref: Optional[ClaimRef]
    credentials: Tuple[Tuple[str, str], ...] = ()  # never logged, never persisted

    def __repr__(self) -> str:  # never print credentials
        return f"Activate(model_name={self.model_name!r}, engine={self.engine!r}, port={self.port})"


@dataclass(frozen=True)
class Operation:
    """A sleep, wake or kv-limit request: what, on which model, under which operation id."""

    action: str
    model_name: str
    operation_id: str
    level: int = 0
    limit_bytes: int = 0


def sanitize_ipc_name(name: str) -> str:
    """kvcached's KVCACHED_IPC_NAME rule (AIBrix ``sanitize_ipc_name``): outside [A-Za-z0-9_-] -> '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def check_model_name(value: Any, field: str = "model_name") -> str:
    text = check_text(value, field)
    if MODEL_NAME.fullmatch(text) is None or ".." in text.split("/") or "//" in text:
        shown = repr(text) if len(text) <= 100 else "the value given"
        raise BadRequest(f"{field} {shown} must match {MODEL_NAME.pattern} (no empty or '..' segment)", param=field)
    return text


def _string_map(value: Any, field: str, limit: int) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object of strings", param=field)
    if len(value) > limit:
        raise BadRequest(f"{field} has {len(value)} entries; at most {limit} are accepted", param=field)
    for key, item in value.items():
        if not isinstance(item, str):
            raise BadRequest(f"{field} values must be strings ({key!r} is not)", param=field)
    return value


def _flag(key: str, value: str, field: str) -> Tuple[str, str]:
    if FLAG.fullmatch(key) is None:
        shown = repr(key) if len(key) <= 100 and check_clean(key) else "a key"
        raise BadRequest(f"{field}: {shown} is not an engine flag (--name, letters, digits, . _ -)", param=field)
    if len(value) > MAX_ARG_VALUE:
        raise BadRequest(f"{field}: the value of {key} is longer than {MAX_ARG_VALUE} characters", param=field)
    if not check_clean(value):  # no newline, NUL or other control character
        raise BadRequest(f"{field}: the value of {key} must not contain control characters", param=field)
    return key, value


def check_clean(text: str) -> bool:
    try:
        check_text(text, "x")
    except BadRequest:
        return False
    return True


def engine_args(engine_config: Any, additional_config: Any) -> Tuple[Tuple[str, str], ...]:
    """``engine_config.args`` then the legacy ``engine-arg:`` keys, later ones winning (AIBrix's order)."""
    args: Dict[str, str] = {}
    if engine_config is not None:
        if not isinstance(engine_config, dict):
            raise BadRequest("engine_config must be an object", param="engine_config")
        unknown = [k for k in engine_config if k != "args"]
        if unknown:
            raise BadRequest(
                f"engine_config has an unknown field {unknown[0]!r}; accepted: args", param="engine_config"
            )
        raw = engine_config.get("args")
        if raw is not None:
            for key, value in _string_map(raw, "engine_config.args", MAX_ENGINE_ARGS).items():
                flag, text = _flag(key, value, "engine_config.args")
                args[flag] = text
    if additional_config is not None:
        extra = _string_map(additional_config, "additional_config", MAX_ENGINE_ARGS)
        for key, value in extra.items():
            if key.startswith(LEGACY_ARG_PREFIX):
                flag, text = _flag(key[len(LEGACY_ARG_PREFIX) :], value, "additional_config")
                args[flag] = text
    if len(args) > MAX_ENGINE_ARGS:
        raise BadRequest(f"at most {MAX_ENGINE_ARGS} engine flags are accepted, got {len(args)}", param="engine_config")
    return tuple(args.items())


def _claim_ref(value: Any) -> Optional[ClaimRef]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("claim_ref must be an object {namespace, name, uid}", param="claim_ref")
    fields = ("namespace", "name", "uid")
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise BadRequest(
            f"claim_ref has an unknown field {unknown[0]!r}; accepted: namespace, name, uid", param="claim_ref"
        )
    parts = []
    for name in fields:
        item = value.get(name)
        if not isinstance(item, str):
            raise BadRequest(f"claim_ref.{name} is required and must be a string", param="claim_ref")
        if len(item) > MAX_CLAIM_FIELD:
            raise BadRequest(f"claim_ref.{name} is longer than {MAX_CLAIM_FIELD} characters", param="claim_ref")
        parts.append(check_text(item, f"claim_ref.{name}"))
    return ClaimRef(*parts)


def _credentials(value: Any) -> Tuple[Tuple[str, str], ...]:
    if value is None:
        return ()
    items = _string_map(value, "credentials", MAX_CREDENTIALS)
    out = []
    for key, secret in items.items():
        if ENV_NAME.fullmatch(key) is None:
            raise BadRequest(
                "credentials keys become environment variables of the engine: letters, digits and _ "
                "(not starting with a digit)",
                param="credentials",
            )
        if _FORBIDDEN_ENV.fullmatch(key.upper()) is not None:
            raise BadRequest(f"credentials must not set {key} in the engine's environment", param="credentials")
        if "\x00" in secret or len(secret) > MAX_CREDENTIAL_VALUE:
            # The value is a secret: described, never quoted.
            raise BadRequest(
                f"credentials.{key} must hold no NUL and at most {MAX_CREDENTIAL_VALUE} characters",
                param="credentials",
            )
        out.append((key, secret))
    return tuple(out)


def parse_activate(raw: Mapping[str, Any]) -> Activate:
    body = ACTIVATE_BODY.check(raw)
    name = check_model_name(body["model_name"])
    artifact = check_text(body["artifact_url"], "artifact_url").strip()
    if not artifact:
        raise BadRequest("artifact_url must not be empty", param="artifact_url")
    engine = check_text(body.get("engine", "vllm"), "engine")
    if engine not in ENGINES:
        shown = repr(engine) if len(engine) <= 40 else "the value given"
        raise BadRequest(f"engine {shown} is not supported; use one of {', '.join(ENGINES)}", param="engine")
    ipc_raw = body.get("ipc_name") or ""
    check_text(ipc_raw, "ipc_name")
    if len(ipc_raw) > MAX_IPC_NAME:
        raise BadRequest(f"ipc_name is longer than {MAX_IPC_NAME} characters", param="ipc_name")
    ipc_name = sanitize_ipc_name(ipc_raw or f"kvc_{name}")
    return Activate(
        model_name=name,
        artifact_url=artifact,
        engine=engine,
        port=int(body.get("port", 0)),
        ipc_name=ipc_name,
        args=engine_args(body.get("engine_config"), body.get("additional_config")),
        claim_ref=_claim_ref(body.get("claim_ref")),
        credentials=_credentials(body.get("credentials")),
    )


def parse_deactivate(raw: Mapping[str, Any]) -> Tuple[str, str]:
    body = DEACTIVATE_BODY.check(raw)
    mode = check_text(body.get("mode", "stop"), "mode")
    return check_model_name(body["model_name"]), mode


def _operation_id(value: Any) -> str:
    text = check_text(value, "operation_id")
    if not text:
        raise BadRequest("operation_id must not be empty", param="operation_id")
    if len(text) > MAX_OPERATION_ID:
        raise BadRequest(f"operation_id is longer than {MAX_OPERATION_ID} characters", param="operation_id")
    return text


def parse_operation(action: str, raw: Mapping[str, Any]) -> Operation:
    table = {"sleep": SLEEP_BODY, "wake": WAKE_BODY, "kv-limit": KV_LIMIT_BODY}[action]
    body = table.check(raw)
    return Operation(
        action=action,
        model_name=check_model_name(body["model_name"]),
        operation_id=_operation_id(body["operation_id"]),
        level=int(body.get("level", 0)),
        limit_bytes=int(body.get("limit_bytes", 0)),
    )
