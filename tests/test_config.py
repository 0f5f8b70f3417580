"""Settings: flags win over environment, every bad value names its setting, incumbent names work."""

import pytest

from patio.config import load_settings
from patio.errors import ConfigError

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
