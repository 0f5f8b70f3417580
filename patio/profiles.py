"""Start profiles: what Patio infers from how it was started.

Each incumbent sidecar has its own command, flags and defaults; a manifest written for it
relies on them.  Patio recognises the incumbent from the way it was started and takes that
incumbent's documented defaults and required flags, so the manifest runs unchanged:

  ``aibrix``  the command ``aibrix_runtime`` (AIBrix's console script, ``pyproject.toml``
              ``aibrix_runtime = 'aibrix.app:main'``), or AIBrix's own metric switches
              ``METRICS_ENABLE_TRANSFORMATION`` / ``METRICS_RAW_PASSTHROUGH_MODE`` set;
  ``kthena``  Kthena's engine flags on the command line (``-E/--engine``,
              ``-B/--engine-base-url``, ``-M/--engine-metrics-path``: no other sidecar takes
              the engine as a flag);
  ``patio``   anything else: Patio's own defaults, which are RoleBasedGroup Patio's
              (``python -m patio.app``, and RBG's profiles that run the image's entrypoint).

``--profile``/``PATIO_PROFILE`` names one explicitly.  A profile only changes *defaults*:
every one is written as the environment variable it stands for (``ENV_DEFAULTS``), so a
flag or a variable the user sets always wins, and ``docs/migrating.md`` can say exactly
what each start implies.  Data and pure functions; no I/O.
"""

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

from patio.errors import ConfigError

PROFILE_NAMES = ("patio", "aibrix", "kthena")


@dataclass(frozen=True)
class Required:
    """A setting the incumbent's own parser requires: its flags, and Patio's env equivalent."""

    dest: str  # argparse destination
    flags: str  # as the incumbent's argparse names it in its error
    env: str  # the variable Patio also accepts for it ("" for none)


@dataclass(frozen=True)
class Profile:
    name: str
    # Defaults written as the variables they stand for: (variable and its aliases, value), applied
    # only where the user set none of them (a flag wins over both, as always).
    env_defaults: Tuple[Tuple[Tuple[str, ...], str], ...]
    # The engine assumed until the engine itself says which it is (INFERENCE_ENGINE unset).
    engine: str
    # The engine version shown when INFERENCE_ENGINE_VERSION is unset and the engine does not tell.
    engine_version: str
    required: Tuple[Required, ...] = ()


PROFILES: Mapping[str, Profile] = {
    # RoleBasedGroup Patio (rolebasedgroup/inference-engine-runtime envs.py at a6acbfe4):
    # INFERENCE_ENGINE "sglang", INFERENCE_ENGINE_VERSION "v0.5.3", port 9091 (config.py).
    "patio": Profile("patio", (), engine="sglang", engine_version="v0.5.3"),
    # AIBrix runtime (vllm-project/aibrix python/aibrix/aibrix/app.py, envs.py at e3e10f9e):
    # --port 8080, INFERENCE_ENGINE "vllm", INFERENCE_ENGINE_VERSION "0.6.1", adapters downloaded to
    # /tmp/aibrix/adapters (runtime/artifact_service.py), models to DOWNLOADER_LOCAL_DIR
    # "/tmp/aibrix/models/"; its metrics are the aibrix: names.
    "aibrix": Profile(
        "aibrix",
        (
            (("PATIO_PORT",), "8080"),
            (("METRICS_SCHEME",), "aibrix"),
            (("PATIO_ADAPTER_DIR",), "/tmp/aibrix/adapters"),
            (("PATIO_MODELS_ROOT", "DOWNLOADER_LOCAL_DIR"), "/tmp/aibrix/models"),
        ),
        engine="vllm",
        engine_version="0.6.1",
    ),
    # Kthena runtime (volcano-sh/kthena python/kthena/runtime/app.py parse_arguments at 3cc05728):
    # -E/--engine, -I/--pod and -N/--model required, -P/--port 9000; its metrics are kthena: names.
    # The models root is /models, where Kthena's documented output_dirs live (runtime/README.md:
    # "output_dir": "/models/my-lora").
    "kthena": Profile(
        "kthena",
        (
            (("PATIO_PORT",), "9000"),
            (("METRICS_SCHEME",), "kthena"),
            (("PATIO_MODELS_ROOT", "DOWNLOADER_LOCAL_DIR"), "/models"),
        ),
        engine="",
        engine_version="",
        required=(
            Required("engine", "-E/--engine", ""),
            Required("pod", "-I/--pod", "POD_NAME"),
            Required("model", "-N/--model", "MODEL_NAME"),
        ),
    ),
}

# Command names that are an incumbent's entry point (the image puts them on PATH).
COMMANDS: Mapping[str, str] = {"aibrix_runtime": "aibrix"}
# AIBrix's own metric switches (aibrix/envs.py): setting either says "this is AIBrix's sidecar".
AIBRIX_SWITCHES = ("METRICS_ENABLE_TRANSFORMATION", "METRICS_RAW_PASSTHROUGH_MODE")
# Kthena's engine flags: the only sidecar that is told its engine on the command line.
KTHENA_FLAGS = ("-E", "--engine", "-B", "--engine-base-url", "-M", "--engine-metrics-path")


@dataclass(frozen=True)
class Recognised:
    profile: Profile
    why: str  # for the start log line: what made Patio choose it


def _has_flag(argv: Sequence[str], flags: Sequence[str]) -> Optional[str]:
    for token in argv:
        if token == "--":
            return None
        for flag in flags:
            if token == flag or (flag.startswith("--") and token.startswith(flag + "=")):
                return flag
            if not flag.startswith("--") and token.startswith(flag) and not token.startswith("--"):
                return flag  # argparse's attached short form, -Evllm
    return None


def recognise(program: str, argv: Sequence[str], env: Mapping[str, str], explicit: Optional[str]) -> Recognised:
    """The profile of this start.  ``explicit`` is ``--profile``/``PATIO_PROFILE`` (validated here)."""
    if explicit:
        name = explicit.strip().lower()
        if name not in PROFILES:
            raise ConfigError("--profile", f"must be one of {', '.join(PROFILE_NAMES)}, got {explicit!r}")
        return Recognised(PROFILES[name], "set by --profile/PATIO_PROFILE")
    command = os.path.basename(program or "")
    if command in COMMANDS:
        return Recognised(PROFILES[COMMANDS[command]], f"started as {command}")
    flag = _has_flag(argv, KTHENA_FLAGS)
    if flag is not None:
        return Recognised(PROFILES["kthena"], f"Kthena's runtime flag {flag} given")
    switches = [name for name in AIBRIX_SWITCHES if name in env]
    if switches:
        return Recognised(PROFILES["aibrix"], f"AIBrix's {switches[0]} set")
    return Recognised(PROFILES["patio"], "Patio's own command")


def with_defaults(profile: Profile, env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` plus the profile's defaults for every variable the user left unset (with its aliases).

    A flag still wins: the settings read the flag before the environment.
    """
    out = dict(env)
    for names, value in profile.env_defaults:
        if not any(out.get(name) for name in names):
            out[names[0]] = value
    return out


def missing_required(profile: Profile, given: Mapping[str, bool], env: Mapping[str, str]) -> Sequence[str]:
    """The incumbent's required flags that were given neither as a flag nor as Patio's env equivalent."""
    return [r.flags for r in profile.required if not given.get(r.dest) and not (r.env and env.get(r.env))]


def default_state_dir(env: Mapping[str, str], engine_endpoint: str, port: int, uid: int) -> str:
    """Where Patio keeps its adapter set when ``PATIO_STATE_DIR`` is unset.

    One directory per user, engine and listen port under the temporary directory:
    ``$TMPDIR/patio-UID/HOST_PORT-LISTENPORT``.  A restart of the same Patio (same engine,
    same port) finds what it loaded; two unrelated runs on one machine (another user,
    another engine, another port) never restore each other's adapters.  The manifests
    set ``PATIO_STATE_DIR`` to their own volume.
    """
    base = env.get("TMPDIR") or "/tmp"
    authority = engine_endpoint.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    key = "".join(c if c.isalnum() or c in ".-" else "_" for c in authority) or "engine"
    return os.path.join(base, f"patio-{uid}", f"{key}-{port}")
