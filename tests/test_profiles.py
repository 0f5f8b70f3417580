"""Start profiles: what Patio infers from how it was started, and that a setting wins.

Each row starts Patio's settings loader the way an incumbent's manifest or docs start it and
checks the defaults that incumbent documents (cited per profile in patio/profiles.py):

- AIBrix (vllm-project/aibrix python/aibrix/aibrix/app.py, envs.py): ``aibrix_runtime``,
  port 8080, ``aibrix:`` names, adapters in /tmp/aibrix/adapters, models in /tmp/aibrix/models;
- Kthena (volcano-sh/kthena python/kthena/runtime/app.py ``parse_arguments``): -E/-I/-N
  required, -P 9000, ``kthena:`` names;
- RoleBasedGroup Patio (rolebasedgroup/inference-engine-runtime envs.py): port 9091,
  ``patio:`` names, SGLang until the engine says otherwise, version v0.5.3.
"""

import os
from typing import Any, Dict

import pytest

from patio.config import load_settings
from patio.errors import ConfigError
from patio.profiles import default_state_dir

KTHENA_ARGS = ["--port", "8900", "--engine", "vllm", "--engine-base-url", "http://localhost:8000"]
KTHENA_ARGS += ["--engine-metrics-path", "/metrics", "--pod", "p.ns", "--model", "test-model"]

ROWS = [
    # (id, program, argv, env, expected)
    (
        "patio_own",
        "patio.pyz",
        [],
        {},
        {"profile": "patio", "port": 9091, "scheme": "patio", "engine": "sglang", "configured": False},
    ),
    ("rbg_module", "patio.app", ["--host", "127.0.0.1", "--port", "9091"], {}, {"profile": "patio", "port": 9091}),
    (
        "aibrix_command",
        "/usr/local/bin/aibrix_runtime",
        ["--port", "8080"],
        {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": "http://localhost:8000"},
        {
            "profile": "aibrix",
            "port": 8080,
            "scheme": "aibrix",
            "mode": "both",
            "engine": "vllm",
            "configured": True,
            "adapter_dir": "/tmp/aibrix/adapters",
            "models_root": "/tmp/aibrix/models",
        },
    ),
    (
        "aibrix_command_default_port",
        "aibrix_runtime",
        [],
        {},
        {"profile": "aibrix", "port": 8080, "engine": "vllm", "configured": False, "version": "0.6.1"},
    ),
    (
        "aibrix_switches",
        "patio.pyz",
        [],
        {"METRICS_ENABLE_TRANSFORMATION": "1", "METRICS_RAW_PASSTHROUGH_MODE": "0"},
        {"profile": "aibrix", "scheme": "aibrix", "mode": "both", "port": 8080},
    ),
    (
        "aibrix_passthrough_switch",
        "patio.pyz",
        [],
        {"METRICS_RAW_PASSTHROUGH_MODE": "1"},
        {"profile": "aibrix", "scheme": "aibrix", "mode": "raw"},
    ),
    (
        "aibrix_downloader_dir_kept",
        "aibrix_runtime",
        [],
        {"DOWNLOADER_LOCAL_DIR": "/data/models"},
        {"models_root": "/data/models"},
    ),
    (
        "kthena_manifest",
        "patio.pyz",
        KTHENA_ARGS,
        {},
        {
            "profile": "kthena",
            "port": 8900,
            "scheme": "kthena",
            "engine": "vllm",
            "configured": True,
            "pod": "p.ns",
            "model": "test-model",
            "models_root": "/models",
        },
    ),
    (
        "kthena_default_port",
        "patio.pyz",
        ["-E", "sglang", "-I", "p", "-N", "m"],
        {},
        {"profile": "kthena", "port": 9000, "scheme": "kthena", "engine": "sglang"},
    ),
    (
        "kthena_short_attached",
        "patio.pyz",
        ["-Evllm", "-Ip", "-Nm"],
        {},
        {"profile": "kthena", "engine": "vllm", "pod": "p", "model": "m"},
    ),
    (
        "kthena_pod_model_from_env",
        "patio.pyz",
        ["-E", "vllm"],
        {"POD_NAME": "p", "MODEL_NAME": "m"},
        {"profile": "kthena", "pod": "p", "model": "m"},
    ),
    (
        "pod_and_model_alone_stay_patio",
        "patio.pyz",
        ["-I", "pod-a", "-N", "tiny"],
        {},
        {"profile": "patio", "scheme": "patio", "port": 9091},
    ),
    (
        "setting_wins_over_profile",
        "aibrix_runtime",
        ["--metrics-scheme", "patio", "--port", "9999"],
        {"PATIO_ADAPTER_DIR": "/a"},
        {"profile": "aibrix", "scheme": "patio", "port": 9999, "adapter_dir": "/a"},
    ),
    (
        "env_wins_over_profile",
        "patio.pyz",
        KTHENA_ARGS[2:],
        {"METRICS_SCHEME": "aibrix", "PATIO_PORT": "7000", "PATIO_MODELS_ROOT": "/m"},
        {"profile": "kthena", "scheme": "aibrix", "port": 7000, "models_root": "/m"},
    ),
    (
        "explicit_profile",
        "aibrix_runtime",
        ["--profile", "patio"],
        {},
        {"profile": "patio", "port": 9091, "scheme": "patio"},
    ),
    (
        "explicit_profile_env",
        "patio.pyz",
        [],
        {"PATIO_PROFILE": "Kthena", "POD_NAME": "p", "MODEL_NAME": "m", "INFERENCE_ENGINE": "vllm"},
        None,
    ),
]


def _view(settings: Any) -> Dict[str, Any]:
    core = settings.core
    return {
        "profile": core.profile,
        "port": core.port,
        "scheme": settings.metrics.scheme,
        "mode": settings.metrics.mode,
        "engine": core.engine,
        "configured": core.engine_configured,
        "version": core.engine_version or core.engine_version_default,
        "pod": core.pod,
        "model": core.model,
        "adapter_dir": settings.artifacts.adapter_dir,
        "models_root": settings.artifacts.models_root,
    }


@pytest.mark.parametrize("program,argv,env,expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_profile_defaults(program, argv, env, expected):
    if expected is None:  # PATIO_PROFILE=kthena without -E: Kthena's rule, -E/--engine required
        with pytest.raises(ConfigError) as info:
            load_settings(argv, env, program=program)
        assert info.value.setting == "-E/--engine"
        return
    view = _view(load_settings(argv, env, program=program))
    assert {key: view[key] for key in expected} == expected


@pytest.mark.parametrize(
    "argv,env,missing",
    [
        (["--engine", "vllm", "--port", "8900"], {}, "-I/--pod, -N/--model"),
        (["--engine-base-url", "http://localhost:8000", "--pod", "p", "--model", "m"], {}, "-E/--engine"),
        (["-M", "/metrics"], {"INFERENCE_ENGINE": "vllm"}, "-E/--engine, -I/--pod, -N/--model"),
        (["-E", "vllm", "-N", "m"], {}, "-I/--pod"),
    ],
    ids=["no_pod_no_model", "no_engine", "env_engine_is_not_kthenas_flag", "no_pod"],
)
def test_kthena_required_flags(argv, env, missing):
    """Kthena's argparse: ``-E/--engine``, ``-I/--pod``, ``-N/--model`` are ``required=True``."""
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    assert info.value.setting == missing
    assert "Kthena" in str(info.value) and "--profile patio" in str(info.value)


def test_unknown_profile_is_refused():
    with pytest.raises(ConfigError) as info:
        load_settings(["--profile", "triton"], {})
    assert info.value.setting == "--profile"


def test_kv_events_need_the_engine_named():
    """The bridge's stream and Redis keys differ per engine: it is not run on a guess."""
    with pytest.raises(ConfigError) as info:
        load_settings([], {"REDIS_HOST": "r", "POD_NAME": "p", "MODEL_NAME": "m"})
    assert info.value.setting == "INFERENCE_ENGINE"
    assert load_settings([], {"REDIS_HOST": "r", "POD_NAME": "p", "MODEL_NAME": "m", "INFERENCE_ENGINE": "vllm"})


STATE = [
    # (id, first run's (endpoint, port), second run's, shared?)
    (
        "same_engine_same_port_is_one_run_restarted",
        ("http://localhost:8000", 9091),
        ("http://localhost:8000/", 9091),
        True,
    ),
    ("another_port", ("http://localhost:8000", 9091), ("http://localhost:8000", 9092), False),
    ("another_engine", ("http://localhost:8000", 9091), ("http://localhost:8001", 9091), False),
]


@pytest.mark.parametrize("first,second,shared", [r[1:] for r in STATE], ids=[r[0] for r in STATE])
def test_default_state_dir_is_not_shared_by_unrelated_runs(first, second, shared, tmp_path):
    env = {"TMPDIR": str(tmp_path)}

    def state_dir(endpoint: str, port: int) -> str:
        return load_settings(["--port", str(port)], {**env, "INFERENCE_ENGINE_ENDPOINT": endpoint}).lora.state_dir

    a, b = state_dir(*first), state_dir(*second)
    assert (a == b) is shared
    assert a.startswith(str(tmp_path / f"patio-{os.getuid()}") + os.sep)
    # Another user never shares it either.
    assert default_state_dir(env, first[0], first[1], os.getuid() + 1) != a


def test_state_dir_setting_wins(tmp_path):
    assert load_settings([], {"PATIO_STATE_DIR": str(tmp_path)}).lora.state_dir == str(tmp_path)
    assert load_settings(["--state-dir", "/x"], {"PATIO_STATE_DIR": str(tmp_path)}).lora.state_dir == "/x"
