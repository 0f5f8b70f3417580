"""The option kit: every setting is one row of a table, and the parsers the rows use.

A ``Setting`` row names a value of a settings section (the field of its frozen dataclass),
its flags (short forms first), its environment variables in priority order, its default,
the parser that turns a raw string into the value, and its help.  A ``Section`` is a table
of rows, and everything about a setting follows from its row:

- ``SECTION.add_flags(parser)`` adds the argparse flags; the help names the variables and
  the default, so ``--help`` never disagrees with the table;
- ``SECTION.read(args, env)`` reads every value: the flag if given, else the first variable
  set (an empty one counts as unset), else the default.  A bad value raises ``ConfigError``
  naming the flag or the variable it came from (``invalid setting --port: must be <= 65535,
  got 70000``);
- ``SECTION.default(name)`` is the default of the dataclass field, stated only in the row;
- ``deploy/settings_reference.py`` writes the reference tables of ``docs/configuration.md``
  from the rows (``tests/test_config.py`` fails when the page and the rows disagree).

Adding a setting to an existing section (``patio/<capability>/settings.py``)::

    # 1. one row in the section's SETTINGS table
    Setting("ready_timeout", "--ready-timeout", "PATIO_READY_TIMEOUT", 1.0, positive_seconds,
            "seconds /ready may take before it answers from what it knows"),
    # 2. the field, its default taken from the row
    ready_timeout: float = SETTINGS.default("ready_timeout")
    # 3. nothing in from_sources: it builds the dataclass from SETTINGS.read(...) by field name

then ``python3 deploy/settings_reference.py`` to rewrite the manual's reference.  A row whose
value is not a field of its own (an input a derived field is built from) is read the same
way and used by name in ``from_sources``.

Adding a section: a module ``patio/<capability>/settings.py`` with ``SETTINGS = Section(...)``,
its frozen dataclass and ``from_sources(args, env, core) -> TheSettings`` (it may import this
module and ``patio.core_settings``, never ``patio.config``); then one line in
``patio.config.SECTIONS`` and one field in ``patio.config.Settings``.

Row fields in short: ``flags`` and ``env`` are space-separated (``"-P --port"``,
``"PATIO_LOG_LEVEL LOG_LEVEL"``; ``""`` for none); ``{NAME}`` in ``env`` is filled by
``read(..., NAME=...)`` (the KV-event variables are named after the engine); ``shown`` is
the default as people read it where the value is computed (a profile's, the engine's);
``switch`` makes ``--flag`` alone mean true; ``keep_empty`` makes an empty variable a value
(``os.getenv`` semantics); ``blank_unset`` makes a variable of only spaces count as unset.

Imports nothing of Patio's but the error type.  Nothing runs at import time but the
definitions.
"""

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from patio.errors import ConfigError

_TRUE = frozenset(("1", "true", "yes", "on", "y", "t"))
_FALSE = frozenset(("0", "false", "no", "off", "n", "f", ""))

# A parser: (the flag or variable the raw value came from, the raw value) -> the value.
Parse = Callable[[str, str], Any]


# --- the parsers ---------------------------------------------------------------------------
# Every section converts with these, so one kind of value is checked and worded the same way
# everywhere.  Each takes the setting's name (for the message) and the raw string.


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


def parse_float(setting: str, raw: str, *, minimum: Optional[float] = None, maximum: Optional[float] = None) -> float:
    try:
        value = float(raw.strip())
    except (TypeError, ValueError):
        raise ConfigError(setting, f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(setting, f"expected a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(setting, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(setting, f"must be <= {maximum:g}, got {raw!r}")
    return value


def parse_choice(setting: str, raw: str, choices: Sequence[str], *, upper: bool = False) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(setting, f"must be one of {', '.join(choices)}, got {raw!r}")
    return value


def as_str(setting: str, raw: str) -> str:
    return raw


def stripped(setting: str, raw: str) -> str:
    return raw.strip()


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


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Parse:
    """An integer parser with bounds (inclusive)."""

    def parse(setting: str, raw: str) -> int:
        return parse_int(setting, raw, minimum=minimum, maximum=maximum)

    return parse


def number(minimum: Optional[float] = None, maximum: Optional[float] = None) -> Parse:
    """A finite number parser with bounds (inclusive)."""

    def parse(setting: str, raw: str) -> float:
        return parse_float(setting, raw, minimum=minimum, maximum=maximum)

    return parse


def choice(*choices: str, upper: bool = False) -> Parse:
    """One of ``choices``, any case (folded to lower, or to upper with ``upper``)."""

    def parse(setting: str, raw: str) -> str:
        return parse_choice(setting, raw, choices, upper=upper)

    return parse


def absolute_path(setting: str, raw: str) -> str:
    value = raw.strip()
    if not os.path.isabs(value):
        raise ConfigError(setting, f"must be an absolute path, got {raw!r}")
    return os.path.normpath(value)


def url_path(setting: str, raw: str) -> str:
    """The path part of a URL, such as ``/metrics``."""
    value = raw.strip()
    if not value.startswith("/"):
        raise ConfigError(setting, f"must start with '/', got {raw!r}")
    return value


def json_object(setting: str, raw: str) -> Mapping[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(setting, f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(setting, "must be a JSON object")
    return value


# --- URLs and endpoints: one splitter, a few policies --------------------------------------


class Url(NamedTuple):
    scheme: str  # as written ("http"), or the default scheme when none was written
    host: str  # without the brackets of an IPv6 literal
    port: Optional[int]
    path: str  # "" or from the first "/", "?" or "#" on

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, an IPv6 host in brackets (the only form routers reach)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port is None else f":{self.port}")


def split_host_port(authority: str) -> Tuple[str, Optional[int]]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` -> (host without brackets, port or None).

    An unbracketed IPv6 literal followed by a port (``fd00::1:5557``, as engines print a
    wildcard bind) splits at its last colon.  ``ValueError("invalid port")`` for a port that
    is not a number in 0..65535, ``ValueError("malformed IPv6 literal")`` for a bracket left open.
    """
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("malformed IPv6 literal")
        port_text: Optional[str] = rest[1:] if rest else None
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon:
            return authority, None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("invalid port")
    return host, int(port_text)


def parse_url(raw: str, default_scheme: str = "") -> Url:
    """Split ``scheme://[userinfo@]host[:port][/path]``; ``host:port/path`` takes ``default_scheme``.

    Only the shape: which schemes are welcome and whether a host or a port is needed are the
    caller's policy.  ``ValueError`` ("no scheme", "invalid port", "malformed IPv6 literal").
    """
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if not sep:
        if not default_scheme:
            raise ValueError("no scheme")
        scheme, rest = default_scheme, value
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    host, port = split_host_port(rest[:cut].rpartition("@")[2])
    return Url(scheme, host, port, rest[cut:])


_HTTP_URL = "an http:// or https:// URL"


def _http(setting: str, value: str, raw: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(setting, f"must be {_HTTP_URL}, got {raw!r}")
    try:
        url = parse_url(value)
    except ValueError as exc:
        raise ConfigError(setting, f"{exc} in {raw!r}") from None
    if not url.host:
        raise ConfigError(setting, f"has no host: {raw!r}")
    return value


def http_url(setting: str, raw: str) -> str:
    """An ``http://`` or ``https://`` URL with a host; returned without a trailing ``/``."""
    return _http(setting, raw.strip().rstrip("/"), raw)


def base_url(setting: str, raw: str) -> str:
    """``http_url``, where ``host:port`` alone means ``http://host:port`` (the engine's base URL)."""
    value = raw.strip().rstrip("/")
    return _http(setting, value if "://" in value else "http://" + value, raw)


def host_port_url(setting: str, raw: str) -> str:
    """``host:port`` or ``http(s)://host:port[/...]`` -> ``http(s)://host:port`` (a router's address)."""
    try:
        url = parse_url(raw.strip().rstrip("/"), default_scheme="http")
    except ValueError as exc:
        raise ConfigError(setting, f"{exc} in {raw!r}") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https") or not url.host:
        raise ConfigError(setting, f"expected host:port or http://host:port, got {raw!r}")
    if url.port is None:
        raise ConfigError(setting, f"no port in {raw!r}")
    return Url(scheme, url.host.lower(), url.port, "").origin


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: where it is read from, its default, how it is checked, what it is for."""

    name: str  # the field of the section's dataclass (or an input a derived field is built from)
    flags: str  # argparse names, space-separated, short forms first; "" for environment only
    env: str  # variables in priority order, space-separated; "" for none
    default: Any
    parse: Parse
    help: str  # plain words: --help and the manual both show it
    shown: str = ""  # the default as people read it, where the value is computed
    switch: bool = False  # "--flag" alone means true; "--flag false" is false
    keep_empty: bool = False  # a variable set to "" is a value, not "unset" (os.getenv semantics)
    blank_unset: bool = False  # a variable of only spaces counts as unset
    metavar: str = ""

    @property
    def flag_names(self) -> Tuple[str, ...]:
        return tuple(self.flags.split())

    @property
    def flag(self) -> str:
        """The flag an error names: the first long form."""
        names = self.flag_names
        return next((n for n in names if n.startswith("--")), names[0] if names else "")

    def env_names(self, forms: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
        names = self.env.split()
        return tuple(n.format_map(forms) for n in names) if forms else tuple(names)

    def shown_default(self) -> str:
        """The default in words ("" when there is none)."""
        if self.shown:
            return self.shown
        value = self.default
        if value is None or value == "" or value == ():
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)


@dataclass(frozen=True)
class Section:
    """A table of settings: one capability's, or a part of the core's."""

    name: str  # the --help group and the prefix of the argparse destinations
    title: str  # the heading of its table in docs/configuration.md
    rows: Tuple[Setting, ...]
    # Placeholders of ``env`` names and the values they take, for the manual: {"ENGINE": ("VLLM", "SGLANG")}.
    forms: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [row.name for row in self.rows]
        assert len(names) == len(set(names)), f"{self.name}: a setting named twice"
        for row in self.rows:
            assert row.flags or row.env, f"{self.name}.{row.name}: neither a flag nor a variable"
            assert not (row.switch and not row.flags), f"{self.name}.{row.name}: a switch needs a flag"

    def __getitem__(self, name: str) -> Setting:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def default(self, name: str) -> Any:
        return self[name].default

    def dest(self, name: str) -> str:
        """The argparse destination: prefixed, so two sections' settings never share one."""
        return f"{self.name}.{name}"

    def add_flags(self, parser: Any) -> None:
        for row in self.rows:
            if not row.flags:
                continue
            options: Dict[str, Any] = {"dest": self.dest(row.name), "help": _flag_help(row, self.forms)}
            if row.switch:
                options.update(nargs="?", const="true", metavar=row.metavar or "true|false")
            else:
                options["metavar"] = row.metavar or row.flag.lstrip("-").replace("-", "_").upper()
            parser.add_argument(*row.flag_names, **options)

    def given(self, args: Optional[argparse.Namespace], name: str) -> bool:
        """True when the setting's flag was on the command line."""
        return args is not None and getattr(args, self.dest(name), None) is not None

    def value(
        self,
        name: str,
        args: Optional[argparse.Namespace],
        env: Mapping[str, str],
        forms: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """One setting: the flag if given, else the first variable set, else the default."""
        return self._value(self[name], args, env, forms)

    def read(self, args: Optional[argparse.Namespace], env: Mapping[str, str], **forms: str) -> Dict[str, Any]:
        """Every setting of the table by name, in row order (the first bad one raises)."""
        return {row.name: self._value(row, args, env, forms) for row in self.rows}

    def _value(
        self,
        row: Setting,
        args: Optional[argparse.Namespace],
        env: Mapping[str, str],
        forms: Optional[Mapping[str, str]],
    ) -> Any:
        if row.flags and args is not None:
            raw = getattr(args, self.dest(row.name), None)
            if raw is not None:
                return row.parse(row.flag, raw)
        for variable in row.env_names(forms):
            raw = env.get(variable)
            if raw is None or (raw == "" and not row.keep_empty) or (row.blank_unset and not raw.strip()):
                continue
            return row.parse(variable, raw)
        return row.default


def fields_of(cls: Any, values: Mapping[str, Any], **computed: Any) -> Dict[str, Any]:
    """The keyword arguments of dataclass ``cls``: the values named like its fields, then ``computed``."""
    names = cls.__dataclass_fields__
    out = {name: value for name, value in values.items() if name in names}
    out.update(computed)
    return out


def _flag_help(row: Setting, forms: Mapping[str, Tuple[str, ...]]) -> str:
    notes = []
    names = env_words(row, forms)
    if names:
        notes.append("env " + names)
    default = row.shown_default()
    if default:
        notes.append("default " + default)
    text = row.help + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")  # argparse %-formats help


def env_words(row: Setting, forms: Mapping[str, Tuple[str, ...]], mark: str = "{}") -> str:
    """The variables of a row as people read them: ``A, B``; a placeholder as each of its forms.

    ``mark`` dresses each name (``"`{}`"`` for Markdown).
    """
    names = []
    for name in row.env.split():
        keys = [key for key in forms if "{" + key + "}" in name]
        if keys:
            names.append(" or ".join(mark.format(name.format_map({keys[0]: value})) for value in forms[keys[0]]))
        else:
            names.append(mark.format(name))
    return ", ".join(names)


def terminal_columns(environ: Mapping[str, str]) -> int:
    """The width for ``--help``: ``COLUMNS``, else the terminal's, else 80."""
    value = environ.get("COLUMNS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return os.get_terminal_size(2).columns
    except OSError:  # not a terminal
        return 80
