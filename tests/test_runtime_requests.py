"""The model-runtime API's bodies: AIBrix's fields accepted as AIBrix defines them
(``aibrix/openapi/protocol.py``, aibrix 0.8.0), everything else refused with a message
naming the field, and nothing that could become a shell word, a second flag or a secret
in argv getting through."""

from typing import Any, Dict

import pytest

from patio.errors import BadRequest
from patio.runtime import engines
from patio.runtime.requests import (
    engine_args,
    parse_activate,
    parse_deactivate,
    parse_operation,
    sanitize_ipc_name,
)

BASE: Dict[str, Any] = {"model_name": "m1", "artifact_url": "hf://Org/Model"}


def test_the_controllers_activation_parses_whole() -> None:
    # What pkg/controller/modelclaim/modelclaim_controller.go sends (the Go struct's fields).
    parsed = parse_activate(
        {
            "model_name": "m1",
            "artifact_url": "s3://bucket/llama",
            "engine": "vllm",
            "ipc_name": "kvc_m1",
            "engine_config": {"args": {"--max-model-len": "2048", "--enforce-eager": ""}},
            "claim_ref": {"namespace": "default", "name": "claim", "uid": "claim-uid"},
            "credentials": {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t"},
        }
    )
    assert (parsed.model_name, parsed.engine, parsed.port, parsed.ipc_name) == ("m1", "vllm", 0, "kvc_m1")
    assert parsed.args == (("--max-model-len", "2048"), ("--enforce-eager", ""))
    assert parsed.claim_ref is not None and parsed.claim_ref.uid == "claim-uid"
    assert dict(parsed.credentials)["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert "s3cr3t" not in repr(parsed)


def test_defaults_are_aibrixs() -> None:
    parsed = parse_activate(dict(BASE))
    assert (parsed.engine, parsed.port, parsed.ipc_name, parsed.args, parsed.claim_ref) == (
        "vllm",
        0,
        "kvc_m1",
        (),
        None,
    )


@pytest.mark.parametrize(
    "name, expected",
    [("qwen3-0.6b", "qwen3-0-6b"), ("kvc_Org/Model", "kvc_Org-Model"), ("a b:c", "a-b-c")],
    ids=["dots (kvcached rewrites them)", "a slash", "space and colon"],
)
def test_ipc_names_follow_kvcached(name: str, expected: str) -> None:
    assert sanitize_ipc_name(name) == expected


def test_legacy_engine_args_in_additional_config_win_over_engine_config() -> None:
    # AIBrix _engine_args: engine_config.args first, then additional_config "engine-arg:" keys.
    args = engine_args({"args": {"--max-model-len": "1024"}}, {"engine-arg:--max-model-len": "4096", "other": "x"})
    assert args == (("--max-model-len", "4096"),)


BAD_ACTIVATIONS = [
    ({"engine": "tgi"}, "engine", "not supported"),
    ({"engine": "vLLM "}, "engine", "not supported"),
    ({"model_name": ""}, "model_name", "must match"),
    ({"model_name": "a/../b"}, "model_name", "'..'"),
    ({"model_name": "m\n1"}, "model_name", "control characters"),
    ({"artifact_url": ""}, "artifact_url", "must not be empty"),
    ({"artifact_url": "/models/m\x00"}, "artifact_url", "control characters"),
    ({"port": -1}, "port", "at least 0"),
    ({"port": 70000}, "port", "at most 65535"),
    ({"port": "8000"}, "port", "an integer"),
    ({"port": True}, "port", "an integer"),
    ({"hbm_reservation_fraction": 0.45}, "hbm_reservation_fraction", "unknown field"),
    ({"engine_config": {"args": {"--flag": "a\nb"}}}, "engine_config.args", "control characters"),
    ({"engine_config": {"args": {"--flag": "a\x00b"}}}, "engine_config.args", "control characters"),
    ({"engine_config": {"args": {"--flag": 3}}}, "engine_config.args", "strings"),
    ({"engine_config": {"args": {"not-a-flag": "x"}}}, "engine_config.args", "not an engine flag"),
    ({"engine_config": {"args": {"--a; rm -rf /": "x"}}}, "engine_config.args", "not an engine flag"),
    ({"engine_config": {"args": {"--a=b": "x"}}}, "engine_config.args", "not an engine flag"),
    ({"engine_config": {"args": {"--x": "v" * 5000}}}, "engine_config.args", "longer than"),
    ({"engine_config": {"args": {f"--f{i}": "" for i in range(10_000)}}}, "engine_config.args", "at most 128"),
    ({"engine_config": {"argv": []}}, "engine_config", "unknown field"),
    ({"engine_config": []}, "engine_config", "an object"),
    ({"claim_ref": {"namespace": "n", "name": "c"}}, "claim_ref", "uid is required"),
    ({"claim_ref": {"namespace": "n", "name": "c", "uid": "u", "extra": 1}}, "claim_ref", "unknown field"),
    ({"credentials": {"HF-TOKEN": "x"}}, "credentials", "environment variables"),
    ({"credentials": {"LD_PRELOAD": "/tmp/evil.so"}}, "credentials", "must not set"),
    ({"credentials": {"PYTHONPATH": "/tmp"}}, "credentials", "must not set"),
    ({"credentials": {"PATIO_RUNTIME_OWNER": "x"}}, "credentials", "must not set"),
    ({"credentials": {"HF_TOKEN": "hf_\x00secret"}}, "credentials", "no NUL"),
    ({"credentials": {"HF_TOKEN": 1}}, "credentials", "strings"),
    ({"ipc_name": "x" * 300}, "ipc_name", "longer than"),
]


@pytest.mark.parametrize(
    "change, param, words",
    BAD_ACTIVATIONS,
    ids=[
        "an unknown engine",
        "an engine name with a trailing space",
        "an empty model name",
        "a model name with a .. segment",
        "a model name with a newline",
        "an empty artifact",
        "an artifact with NUL",
        "a negative port",
        "a port past 65535",
        "a port as a string",
        "a port as a boolean",
        "a field AIBrix's runtime refuses too (422 there)",
        "a flag value with a newline",
        "a flag value with NUL",
        "a flag value that is no string",
        "a key that is no flag",
        "a key that is a shell command",
        "a key with its value glued on",
        "a flag value of 5000 characters",
        "10k flags",
        "engine_config with a field AIBrix does not have",
        "engine_config that is no object",
        "a claim_ref without uid",
        "a claim_ref with an extra field",
        "a credential that is no environment name",
        "a credential that would preload a library",
        "a credential that would change the module path",
        "a credential that forges Patio's engine markers",
        "a credential with NUL",
        "a credential that is no string",
        "an ipc_name of 300 characters",
    ],
)
def test_bad_activations_are_refused_naming_the_field(change: Dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_activate({**BASE, **change})
    assert caught.value.param == param
    assert words in caught.value.message
    assert "evil" not in caught.value.message and "secret" not in caught.value.message


@pytest.mark.parametrize(
    "engine, flag",
    [
        ("vllm", "--port"),
        ("vllm", "--served_model_name"),
        ("vllm", "--model"),
        ("vllm", "--api-key"),
        ("vllm", "--enable-sleep-mode"),
        ("sglang", "--model-path"),
        ("sglang", "--admin-api-key"),
        ("sglang", "--enable-memory-saver"),
    ],
    ids=[
        "vllm port",
        "vllm served name with underscores",
        "vllm model",
        "vllm api key (a secret in argv)",
        "vllm sleep switch",
        "sglang model path",
        "sglang admin key",
        "sglang memory saver",
    ],
)
def test_flags_patio_sets_cannot_be_given(engine: str, flag: str) -> None:
    with pytest.raises(BadRequest, match="must not set"):
        engines.check_args(engines.KINDS[engine], ((flag, "x"),))


def test_argv_is_a_list_with_each_value_its_own_item() -> None:
    argv = engines.argv(
        engines.VLLM,
        "/usr/bin/python3",
        "/models/m",
        "org/m",
        "0.0.0.0",
        20001,
        True,
        (("--chat-template", "{{ x }} $(id) `id` ; rm"), ("--enforce-eager", "")),
    )
    assert argv == [
        "/usr/bin/python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/m",
        "--served-model-name",
        "org/m",
        "--host",
        "0.0.0.0",
        "--port",
        "20001",
        "--enable-sleep-mode",
        "--chat-template",
        "{{ x }} $(id) `id` ; rm",
        "--enforce-eager",
    ]


def test_engine_environment_drops_patios_secrets_and_carries_the_markers() -> None:
    env = engines.environment(
        {"PATH": "/bin", "PATIO_API_KEY": "k", "SGL_ROUTER_API_KEY": "r", "HF_HOME": "/hf"},
        kind=engines.VLLM,
        owner="own",
        model_name="m",
        launch_id="l1",
        ipc_name="kvc_m",
        kvcached=True,
        credentials=(("HF_TOKEN", "hf_x"),),
    )
    assert "PATIO_API_KEY" not in env and "SGL_ROUTER_API_KEY" not in env
    assert env["HF_HOME"] == "/hf" and env["HF_TOKEN"] == "hf_x"
    assert (env["KVCACHED_IPC_NAME"], env["ENABLE_KVCACHED"], env["VLLM_SERVER_DEV_MODE"]) == ("kvc_m", "true", "1")
    assert (env[engines.OWNER_ENV], env[engines.MODEL_ENV], env[engines.LAUNCH_ENV]) == ("own", "m", "l1")


def test_an_explicit_dev_mode_is_kept() -> None:
    env = engines.environment(
        {"VLLM_SERVER_DEV_MODE": "0"},
        kind=engines.VLLM,
        owner="o",
        model_name="m",
        launch_id="l",
        ipc_name="i",
        kvcached=False,
        credentials=(),
    )
    assert env["VLLM_SERVER_DEV_MODE"] == "0" and "ENABLE_KVCACHED" not in env


@pytest.mark.parametrize(
    "action, body, param",
    [
        ("sleep", {"model_name": "m", "level": 3, "operation_id": "o"}, "level"),
        ("sleep", {"model_name": "m", "level": 0, "operation_id": "o"}, "level"),
        ("sleep", {"model_name": "m", "operation_id": "o"}, "level"),
        ("sleep", {"model_name": "m", "level": 1, "operation_id": ""}, "operation_id"),
        ("sleep", {"model_name": "m", "level": 1, "operation_id": "o", "mode": "abort"}, "mode"),
        ("wake", {"model_name": "m"}, "operation_id"),
        ("wake", {"model_name": "m", "operation_id": "o" * 600}, "operation_id"),
        ("kv-limit", {"model_name": "m", "limit_bytes": -1, "operation_id": "o"}, "limit_bytes"),
        ("kv-limit", {"model_name": "m", "limit_bytes": 1.5, "operation_id": "o"}, "limit_bytes"),
    ],
    ids=[
        "level 3",
        "level 0 (the drain is Patio's, not the caller's)",
        "no level",
        "an empty operation id",
        "a field AIBrix's request has not",
        "a wake without operation id",
        "an operation id of 600 characters",
        "a negative limit",
        "a fractional limit",
    ],
)
def test_bad_operations_are_refused(action: str, body: Dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_operation(action, body)
    assert caught.value.param == param


def test_deactivate_takes_any_mode_as_aibrix_does() -> None:
    assert parse_deactivate({"model_name": "m", "mode": "drain"}) == ("m", "drain")
    assert parse_deactivate({"model_name": "m"}) == ("m", "stop")
