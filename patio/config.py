"""Settings: flags + environment -> one frozen, validated object, built once.

Flags win over environment; environment wins over defaults.  A bad value raises
``ConfigError`` naming the setting; ``patio.cli`` turns it into exit status 2.

The core section (``patio.core_settings``) and each capability's own section (a module
``patio/<capability>/settings.py`` with a table of rows, ``SETTINGS``, and
``from_sources(args, env, core)``) are composed here, in ``SECTIONS``; the sections read
their values with ``patio.options`` and never import this module.  How to add a setting or
a section: ``patio.options``.  Nothing here runs at import time.
"""

import argparse
import functools
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from patio import __version__, core_settings, profiles
from patio.artifacts import settings as artifacts_settings
from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.kvevents import settings as kvevents_settings
from patio.lora import settings as lora_settings
from patio.metrics import settings as metrics_settings
from patio.options import Section, terminal_columns
from patio.runtime import settings as runtime_settings
from patio.topology import settings as topology_settings

# Each capability's settings module, in the order their flags appear in --help and the manual.
SECTIONS: Tuple[Tuple[str, Any], ...] = (
    ("topology", topology_settings),  # beside the core's last table, the worker's names
    ("metrics", metrics_settings),
    ("lora", lora_settings),
    ("artifacts", artifacts_settings),
    ("kvevents", kvevents_settings),
    ("runtime", runtime_settings),
)


@dataclass(frozen=True)
class Settings:
    core: CoreSettings
    metrics: metrics_settings.MetricsSettings
    lora: lora_settings.LoraSettings
    topology: topology_settings.TopologySettings
    artifacts: artifacts_settings.ArtifactSettings
    kvevents: kvevents_settings.KvEventsSettings
    runtime: runtime_settings.RuntimeSettings


def build_arg_parser() -> argparse.ArgumentParser:
    # argparse builds a formatter per flag; left without a width, each one imports shutil to
    # ask the terminal, which loads bz2 and lzma into every start.  Asked once, here.
    width = max(terminal_columns(os.environ) - 2, 40)
    parser = argparse.ArgumentParser(
        prog="patio",
        formatter_class=functools.partial(argparse.HelpFormatter, width=width),
        description="Patio: a sidecar for LLM inference engines (LoRA, metrics, topology, probes, downloads).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"patio {__version__}")
    for table in tables():
        if any(row.flags for row in table.rows):
            table.add_flags(parser.add_argument_group(table.title))
    return parser


def tables() -> Tuple[Section, ...]:
    """Every table of settings, in the order of --help and of docs/configuration.md."""
    return core_settings.SECTIONS + tuple(module.SETTINGS for _, module in SECTIONS)


def load_settings(argv: Sequence[str], env: Optional[Mapping[str, str]] = None, program: str = "") -> Settings:
    """Parse ``argv`` (without the program name) and ``env`` into ``Settings``.

    ``program`` is the command Patio was started as (``sys.argv[0]``): with the flags and the
    environment it selects the start profile (``patio.profiles``), whose defaults apply where
    the user set nothing.  argparse exits with status 2 on unknown flags; validation raises
    ``ConfigError``.
    """
    environ: Mapping[str, str] = dict(os.environ if env is None else env)
    args = build_arg_parser().parse_args(list(argv))
    recognised = profiles.recognise(program, argv, environ, core_settings.SERVER.value("profile", args, environ))
    profile = recognised.profile
    environ = profiles.with_defaults(profile, environ)
    core = core_settings.from_sources(args, environ, profile, recognised.why)
    missing = profiles.missing_required(
        profile, {r.dest: core_settings.SERVER.given(args, r.dest) for r in profile.required}, environ
    )
    if missing:
        # Kthena's argparse: "the following arguments are required: -E/--engine, -I/--pod, -N/--model".
        raise ConfigError(
            ", ".join(missing),
            f"missing: started as Kthena's runtime ({recognised.why}), whose parser requires -E/--engine, "
            "-I/--pod and -N/--model (Patio also takes POD_NAME and MODEL_NAME); give them, or start with "
            "--profile patio",
        )
    if not environ.get("PATIO_STATE_DIR"):
        environ = dict(environ)
        environ["PATIO_STATE_DIR"] = profiles.default_state_dir(environ, core.engine_endpoint, core.port, os.getuid())
    sections: Dict[str, Any] = {}
    for section, module in SECTIONS:
        sections[section] = module.from_sources(args, environ, core)
    if sections["kvevents"].enabled and not core.engine_configured:
        raise ConfigError(
            "INFERENCE_ENGINE",
            "the KV-event bridge needs the engine named (INFERENCE_ENGINE or -E): vLLM and SGLang publish "
            "different event streams and Kthena's router reads different Redis keys for each",
        )
    return Settings(core=core, **sections)
