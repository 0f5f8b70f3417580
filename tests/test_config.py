"""Settings: flags win over environment, every bad value names its setting, incumbent names work."""

import argparse
import dataclasses
import importlib.util
import pathlib

import pytest

from patio.artifacts.settings import ArtifactSettings
from patio.config import build_arg_parser, load_settings, tables
from patio.core_settings import CoreSettings, Limits
from patio.errors import ConfigError
from patio.kvevents.settings import KvEventsSettings, parse_endpoint
from patio.lora.settings import LoraSettings
from patio.metrics.settings import MetricsSettings
from patio.options import (
    Section,
    Setting,
    as_str,
    base_url,
    env_words,
    host_port_url,
    http_url,
    parse_bool,
    positive_int,
    seconds,
)
from patio.profiles import PROFILES
from patio.topology.settings import TopologySettings

CASES = [
    (
        "defaults",
        [],
        {},
        {
            "host": "0.0.0.0",
            "port": 9091,
            "engine": "sglang",
            "engine_endpoint": "http://localhost:8000",
            "metrics_path": "/metrics",
            "log_level": "INFO",
            "scrape_engine_metrics": True,
        },
    ),
    (
        "env",
        [],
        {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": "http://e:1", "METRIC_SCRAPE_PATH": "/m"},
        {"engine": "vllm", "engine_endpoint": "http://e:1", "metrics_path": "/m"},
    ),
    (
        "flag_wins_over_env",
        ["--port", "1234", "-E", "sglang", "-I", "p", "-N", "m"],
        {"PATIO_PORT": "1", "INFERENCE_ENGINE": "vllm"},
        {"port": 1234, "engine": "sglang"},
    ),
    (
        "kthena_flags",
        [
            "-E",
            "vllm",
            "-H",
            "127.0.0.1",
            "-P",
            "9000",
            "-B",
            "http://localhost:30000",
            "-M",
            "/stats",
            "-I",
            "pod-1",
            "-N",
            "llama",
        ],
        {},
        {
            "engine": "vllm",
            "host": "127.0.0.1",
            "port": 9000,
            "engine_endpoint": "http://localhost:30000",
            "metrics_path": "/stats",
            "pod": "pod-1",
            "model": "llama",
        },
    ),
    (
        "endpoint_without_scheme",
        [],
        {"INFERENCE_ENGINE_ENDPOINT": "localhost:8000/"},
        {"engine_endpoint": "http://localhost:8000"},
    ),
    ("log_level_any_case", ["--log-level", "debug"], {}, {"log_level": "DEBUG"}),
    ("scrape_false_means_false", ["--scrape-engine-metrics", "false"], {}, {"scrape_engine_metrics": False}),
    ("scrape_bare_flag_means_true", ["--scrape-engine-metrics"], {}, {"scrape_engine_metrics": True}),
    ("scrape_zero", ["--scrape-engine-metrics", "0"], {}, {"scrape_engine_metrics": False}),
    ("docs_alias", ["--enable-fastapi-docs"], {}, {"enable_docs": True}),
    ("engine_key", [], {"INFERENCE_ENGINE_API_KEY": "k1", "VLLM_API_KEY": "k2"}, {"engine_api_key": "k1"}),
    ("vllm_key_fallback", [], {"VLLM_API_KEY": "k2"}, {"engine_api_key": "k2"}),
    (
        "rbg_names",
        [],
        {"RBG_GROUP_NAME": "g", "GROUP_NAME": "old", "RBG_ROLE_NAME": "r", "RBG_ROLE_INDEX": "0"},
        {"group_name": "g", "role_name": "r", "role_index": "0"},
    ),
    (
        "legacy_names",
        [],
        {"GROUP_NAME": "g", "ROLE_NAME": "r", "ROLE_INDEX": "3"},
        {"group_name": "g", "role_name": "r", "role_index": "3"},
    ),
    ("instance_info", ["--instance-info", '{"data":{"port":8000}}'], {}, {"instance_info": {"data": {"port": 8000}}}),
    ("heartbeat", [], {"HEARTBEAT_INTERVAL": "5"}, {"heartbeat_interval": 5.0}),
]


@pytest.mark.parametrize("argv,env,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_settings(argv, env, expected):
    core = load_settings(argv, env).core
    for key, value in expected.items():
        assert getattr(core, key) == value, key


BAD = [
    ("port_range", ["--port", "70000"], {}, "--port"),
    ("port_text", [], {"PATIO_PORT": "http"}, "PATIO_PORT"),
    ("engine", [], {"INFERENCE_ENGINE": "trtllm"}, "INFERENCE_ENGINE"),
    ("log_level", ["--log-level", "LOUD"], {}, "--log-level"),
    ("log_format", ["--log-format", "xml"], {}, "--log-format"),
    ("boolean", ["--scrape-engine-metrics", "maybe"], {}, "--scrape-engine-metrics"),
    ("endpoint_scheme", [], {"INFERENCE_ENGINE_ENDPOINT": "ftp://x"}, "INFERENCE_ENGINE_ENDPOINT"),
    ("metrics_path", ["-M", "metrics"], {}, "--engine-metrics-path"),
    ("base_url", ["-B", "ftp://x"], {}, "--engine-base-url"),
    ("instance_info_json", ["--instance-info", "{nope"], {}, "--instance-info"),
    ("instance_info_list", ["--instance-info", "[1]"], {}, "--instance-info"),
    ("body_limit", ["--max-body-bytes", "0"], {}, "--max-body-bytes"),
    ("timeout", ["--request-timeout", "-1"], {}, "--request-timeout"),
    ("drain_over_budget", ["--shutdown-timeout", "2", "--drain-timeout", "5"], {}, "--drain-timeout"),
    ("heartbeat_zero", [], {"HEARTBEAT_INTERVAL": "0"}, "HEARTBEAT_INTERVAL"),
    ("api_key_file_missing", [], {"PATIO_API_KEY_FILE": "/nonexistent/key"}, "PATIO_API_KEY_FILE"),
    ("metrics_scheme", ["--metrics-scheme", "datadog"], {}, "--metrics-scheme"),
    ("metrics_mode", [], {"METRICS_MODE": "half"}, "METRICS_MODE"),
    ("aibrix_passthrough", [], {"METRICS_RAW_PASSTHROUGH_MODE": "perhaps"}, "METRICS_RAW_PASSTHROUGH_MODE"),
    ("reconcile_interval", ["--lora-reconcile-interval", "soon"], {}, "--lora-reconcile-interval"),
]


@pytest.mark.parametrize("argv,env,setting", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_values_name_the_setting(argv, env, setting):
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    assert setting in str(info.value)


def test_unknown_flag_exits_2():
    with pytest.raises(SystemExit) as info:
        load_settings(["--frobnicate"], {})
    assert info.value.code == 2


def test_api_key_from_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    assert load_settings([], {"PATIO_API_KEY_FILE": str(key)}).core.api_key == "s3cret"
    assert load_settings(["--api-key", "flag"], {"PATIO_API_KEY_FILE": str(key)}).core.api_key == "flag"


def test_settings_are_frozen_and_repr_hides_secrets():
    settings = load_settings(["--api-key", "topsecret"], {"INFERENCE_ENGINE_API_KEY": "enginesecret"})
    with pytest.raises(AttributeError):
        settings.core.port = 1  # type: ignore[misc]
    assert "secret" not in repr(settings.core)


def test_messages_name_the_setting_and_the_rule():
    with pytest.raises(ConfigError) as info:
        load_settings(["--port", "70000"], {})
    assert str(info.value) == "invalid setting --port: must be <= 65535, got 70000"


# --- the table of settings (patio.options): one row states everything about a setting ---

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("settings_reference", ROOT / "deploy" / "settings_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_manual_is_written_from_the_rows():
    generator = _generator()
    page = generator.PAGE.read_text(encoding="utf-8")
    assert generator.render(page) == page, "docs/configuration.md is stale: run python3 deploy/settings_reference.py"


def test_help_names_each_rows_variables_and_default():
    text = " ".join(build_arg_parser().format_help().split())
    for table in tables():
        for row in table.rows:
            if row.flags and row.env and "{" not in row.env:
                assert f"env {', '.join(row.env.split())}" in text, row.name


SECTION_CLASSES = [
    ("server", CoreSettings),
    ("http", Limits),
    ("http", CoreSettings),
    ("worker", CoreSettings),
    ("metrics", MetricsSettings),
    ("lora", LoraSettings),
    ("topology", TopologySettings),
    ("artifacts", ArtifactSettings),
    ("kvevents", KvEventsSettings),
]


@pytest.mark.parametrize("section,cls", SECTION_CLASSES, ids=[f"{s}-{c.__name__}" for s, c in SECTION_CLASSES])
def test_a_field_named_like_a_row_takes_its_default_from_the_row(section, cls):
    table = next(t for t in tables() if t.name == section)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for row in table.rows:
        if row.name in fields and row.default is not None:
            assert fields[row.name].default == row.default, f"{cls.__name__}.{row.name}"


def test_every_profile_default_is_written_as_a_rows_variables():
    """A profile's default is a variable a row reads, with all its aliases in order (else the row ignores it)."""
    variables = {tuple(row.env.split()) for table in tables() for row in table.rows}
    for profile in PROFILES.values():
        for names, _ in profile.env_defaults:
            assert names in variables, f"{profile.name}: {names}"


def _table(**row: object) -> Section:
    fields = {"name": "x", "flags": "--x", "env": "X_A X_B", "default": "d", "parse": as_str, "help": "h"}
    fields.update(row)
    return Section("t", "T", (Setting(**fields),))  # type: ignore[arg-type]


READS = [
    # (id, row fields, argv, env, value)
    ("default", {}, [], {}, "d"),
    ("first_variable_wins", {}, [], {"X_A": "a", "X_B": "b"}, "a"),
    ("empty_variable_is_unset", {}, [], {"X_A": "", "X_B": "b"}, "b"),
    ("flag_wins", {}, ["--x", "f"], {"X_A": "a"}, "f"),
    ("keep_empty_makes_empty_a_value", {"keep_empty": True}, [], {"X_A": "", "X_B": "b"}, ""),
    ("blank_unset_skips_spaces", {"blank_unset": True}, [], {"X_A": "  ", "X_B": "b"}, "b"),
    ("spaces_are_a_value_otherwise", {}, [], {"X_A": "  ", "X_B": "b"}, "  "),
    ("switch_alone_is_true", {"switch": True, "parse": parse_bool, "default": False}, ["--x"], {}, True),
    ("switch_false", {"switch": True, "parse": parse_bool, "default": False}, ["--x", "false"], {}, False),
    ("environment_only", {"flags": ""}, [], {"X_B": "b"}, "b"),
]


@pytest.mark.parametrize("row,argv,env,value", [r[1:] for r in READS], ids=[r[0] for r in READS])
def test_a_row_reads_flag_then_variables_then_default(row, argv, env, value):
    table = _table(**row)
    parser = argparse.ArgumentParser()
    table.add_flags(parser)
    assert table.read(parser.parse_args(argv), env) == {"x": value}


def test_a_bad_value_names_where_it_came_from():
    table = _table(parse=positive_int)
    parser = argparse.ArgumentParser()
    table.add_flags(parser)
    with pytest.raises(ConfigError, match="invalid setting X_B: must be >= 1"):
        table.read(parser.parse_args([]), {"X_B": "0"})
    with pytest.raises(ConfigError, match="invalid setting --x: expected an integer"):
        table.read(parser.parse_args(["--x", "y"]), {})


def test_placeholders_name_the_variables_per_engine():
    table = Section("t", "T", (Setting("x", "", "{E}_X", None, as_str, "h"),), forms={"E": ("A", "B")})
    assert table.read(None, {"A_X": "a", "B_X": "b"}, E="B") == {"x": "b"}
    assert env_words(table.rows[0], table.forms) == "A_X or B_X"


def test_two_tables_never_share_an_argparse_destination():
    one = Section("one", "1", (Setting("timeout", "--one-timeout", "", 1.0, seconds, "h"),))
    two = Section("two", "2", (Setting("timeout", "--two-timeout", "", 2.0, seconds, "h"),))
    parser = argparse.ArgumentParser()
    one.add_flags(parser)
    two.add_flags(parser)
    args = parser.parse_args(["--two-timeout", "5"])
    assert (one.read(args, {}), two.read(args, {})) == ({"timeout": 1.0}, {"timeout": 5.0})


# --- addresses: one splitter under every URL and endpoint setting ---

URLS = [
    # (id, parser, raw, value or error)
    ("engine_host_port", base_url, "localhost:8000/", "http://localhost:8000"),
    ("engine_path_kept", base_url, "https://e.example/v1/", "https://e.example/v1"),
    ("engine_userinfo", base_url, "http://u:p@e:1", "http://u:p@e:1"),
    ("engine_ipv6", base_url, "http://[fd00::1]:8000", "http://[fd00::1]:8000"),
    ("engine_scheme", base_url, "ftp://x", "must be an http:// or https:// URL, got 'ftp://x'"),
    ("engine_no_host", base_url, "http:///x", "has no host: 'http:///x'"),
    ("engine_bad_port", base_url, "e:http", "invalid port in 'e:http'"),
    ("hub_needs_scheme", http_url, "huggingface.co", "must be an http:// or https:// URL, got 'huggingface.co'"),
    ("hub", http_url, "https://hf.example/", "https://hf.example"),
    ("router_host_port", host_port_url, "Router.NS:9000", "http://router.ns:9000"),
    ("router_path_dropped", host_port_url, "http://10.0.0.9:8000/x", "http://10.0.0.9:8000"),
    ("router_ipv6_in_brackets", host_port_url, "http://[fd00::1]:80", "http://[fd00::1]:80"),
    ("router_no_port", host_port_url, "router", "no port in 'router'"),
    ("router_port_range", host_port_url, "r:70000", "invalid port in 'r:70000'"),
    ("router_scheme", host_port_url, "ftp://r:1", "expected host:port or http://host:port, got 'ftp://r:1'"),
]


@pytest.mark.parametrize("parse,raw,expected", [u[1:] for u in URLS], ids=[u[0] for u in URLS])
def test_url_settings(parse, raw, expected):
    if expected.startswith("http"):
        assert parse("S", raw) == expected
    else:
        with pytest.raises(ConfigError) as info:
            parse("S", raw)
        assert str(info.value) == f"invalid setting S: {expected}"


ENDPOINTS = [
    ("tcp", "tcp://engine:5557", ("tcp", ("engine", 5557))),
    ("wildcard_is_local", "tcp://*:5557", ("tcp", ("127.0.0.1", 5557))),
    ("ipv6_bracketed", "tcp://[::1]:5557", ("tcp", ("::1", 5557))),
    ("ipv6_bare_as_engines_print_it", "tcp://fd00::1:5557", ("tcp", ("fd00::1", 5557))),
    ("ipc", "ipc:///tmp/kv.sock", ("ipc", "/tmp/kv.sock")),
    ("no_port", "tcp://engine", "endpoint needs a host and a port"),
    ("port_range", "tcp://engine:70000", "endpoint needs a host and a port"),
    ("scheme", "http://engine:5557", "endpoint must be tcp://host:port or ipc://path"),
]


@pytest.mark.parametrize("raw,expected", [e[1:] for e in ENDPOINTS], ids=[e[0] for e in ENDPOINTS])
def test_kv_event_endpoints(raw, expected):
    if isinstance(expected, tuple):
        assert parse_endpoint(raw) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            parse_endpoint(raw)
