"""How one setting is read: the flag if given, else the environment, else the default, validated.

The kit every settings section uses (``pick`` and the shared validators), so one kind of
value is checked and worded the same way everywhere.  A bad value raises ``ConfigError``
naming the setting.  It imports nothing of Patio's but the error type.
"""

import argparse
import os
from typing import Callable, Mapping, Optional, Sequence, TypeVar

from patio.errors import ConfigError

_TRUE = frozenset(("1", "true", "yes", "on", "y", "t"))
_FALSE = frozenset(("0", "false", "no", "off", "n", "f", ""))

T = TypeVar("T")

# Flags whose argparse destination differs from their name (error messages name the flag).
_FLAG_NAMES = {"metrics_path": "--engine-metrics-path", "engine_endpoint": "--engine-base-url"}


def parse_bool(setting: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(setting, f"expected true or false, got {raw!r}")


def parse_int(setting: str, raw: str, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    try:
        value = int(raw.strip())
    except (TypeError, ValueError):
        raise ConfigError(setting, f"expected an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(setting, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(setting, f"must be <= {maximum}, got {value}")
    return value


def parse_float(setting: str, raw: str, *, minimum: Optional[float] = None) -> float:
    try:
        value = float(raw.strip())
    except (TypeError, ValueError):
        raise ConfigError(setting, f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(setting, f"expected a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(setting, f"must be >= {minimum}, got {value}")
    return value


def parse_choice(setting: str, raw: str, choices: Sequence[str], *, upper: bool = False) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(setting, f"must be one of {', '.join(choices)}, got {raw!r}")
    return value


def pick(
    args: argparse.Namespace,
    env: Mapping[str, str],
    flag: str,
    env_names: Sequence[str],
    default: T,
    convert: Callable[[str, str], T],
) -> T:
    """The value of one setting: the flag if given, else the first env var set, else ``default``.

    ``convert(setting_name, raw)`` validates; the name it gets says where the value came from.
    """
    raw = getattr(args, flag, None)
    if raw is not None:
        if not isinstance(raw, str):
            return raw
        return convert(_FLAG_NAMES.get(flag, "--" + flag.replace("_", "-")), raw)
    for name in env_names:
        value = env.get(name)
        if value is not None and value != "":
            return convert(name, value)
    return default


def as_str(setting: str, raw: str) -> str:
    return raw


# The shared validators: every section converts with these, so one kind of value is
# checked and worded the same way everywhere.
def seconds(setting: str, raw: str) -> float:
    """A duration, 0 allowed (0 usually means "off")."""
    return parse_float(setting, raw, minimum=0.0)


def positive_seconds(setting: str, raw: str) -> float:
    value = parse_float(setting, raw, minimum=0.0)
    if value <= 0:
        raise ConfigError(setting, f"must be > 0, got {raw!r}")
    return value


def positive_int(setting: str, raw: str) -> int:
    return parse_int(setting, raw, minimum=1)


def port_number(setting: str, raw: str) -> int:
    return parse_int(setting, raw, minimum=0, maximum=65535)


def terminal_columns(environ: Mapping[str, str]) -> int:
    """The width for ``--help``: ``COLUMNS``, else the terminal's, else 80."""
    value = environ.get("COLUMNS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return os.get_terminal_size(2).columns
    except OSError:  # not a terminal
        return 80
