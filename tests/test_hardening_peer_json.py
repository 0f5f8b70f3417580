"""Issue 13, row 17 for peers: JSON from the engine, the routers and the artifact stores goes
through one depth-bounded parser (patio/jsontext.py), so an answer of 100,000 nested ``[`` is
a clear peer error (502 engine_bad_answer, a router error), never a RecursionError or a 500."""

from pathlib import Path
from typing import Any, Callable

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

from patio import jsontext
from patio.artifacts.auth.credentials import parse_config
from patio.engines import sglang, vllm
from patio.engines.base import BAD_ANSWER, INTERNAL, OK
from patio.engines.client import EngineClient
from patio.errors import BadRequest, EngineError
from patio.topology.answers import RouterError, interpret_listing, interpret_lookup, interpret_register

BOMB = b"[" * 100_000
URL = "http://127.0.0.1:30000"


def _raises(exc: type, call: Callable[[], Any], message: str) -> None:
    with pytest.raises(exc) as info:
        call()
    assert message in str(getattr(info.value, "message", info.value))


PEER_PARSERS = [
    ("router_register", lambda: _raises(RouterError, lambda: interpret_register("sglang", 200, BOMB), "not JSON")),
    ("router_listing", lambda: _raises(RouterError, lambda: interpret_listing("sglang", 200, BOMB, URL), "not JSON")),
    ("router_lookup", lambda: _raises(RouterError, lambda: interpret_lookup("vllm", 200, BOMB, URL), "not JSON")),
    ("sglang_load_200", lambda: sglang.SPEC.classify_body("load", 200, BOMB.decode()).kind == BAD_ANSWER),
    ("vllm_load_500", lambda: vllm.SPEC.classify_body("load", 500, BOMB.decode()).kind == INTERNAL),
    ("vllm_load_200_plain", lambda: vllm.SPEC.classify_body("load", 200, BOMB.decode()).kind == OK),
    ("kthena_config_string", lambda: _raises(BadRequest, lambda: parse_config(BOMB.decode()), "deeper than 64")),
    ("helper", lambda: _raises(jsontext.JsonTooDeep, lambda: jsontext.loads(BOMB), "deeper than 64")),
]


@pytest.mark.parametrize("check", [c[1] for c in PEER_PARSERS], ids=[c[0] for c in PEER_PARSERS])
def test_deeply_nested_peer_json_is_a_clear_error(check: Callable[[], Any]) -> None:
    assert check() is not False


def test_helper_keeps_ordinary_json() -> None:
    assert jsontext.loads(b'{"a": "[[[[", "b": [[1]]}') == {"a": "[[[[", "b": [[1]]}
    assert jsontext.loads('"\\"[["') == '"[['
    assert jsontext.loads(b"[" * 64 + b"]" * 64) is not None


def test_engine_model_list_bomb_is_an_engine_error() -> None:
    """The reconcile's listing of the engine's adapters."""
    with FakeEngine("vllm") as engine:
        engine.models_body = BOMB
        client = EngineClient(vllm.SPEC, engine.url, None)
        _raises(EngineError, lambda: client.adapters(5.0), "not a model list")


def test_models_proxy_bomb_is_a_502(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine:
        env = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(tmp_path)}
        with RunningPatio(make_settings([], env)) as patio:
            engine.models_body = BOMB
            status, body = http_json("GET", patio.url + "/v1/models")
            assert (status, body["object"], body["code"]) == (502, "error", 502), body
            assert "not JSON" in body["message"]
            engine.models_body = None
            assert http_json("GET", patio.url + "/v1/models")[0] == 200  # and Patio is still fine


def test_measuring_the_depth_of_a_long_string_costs_no_memory() -> None:
    """A 1 MiB JSON string (a request body at the limit, a 500 KB key in the adapters file) made
    the string-skipping regex keep ~115 bytes of backtracking state per character: 120 MB of RSS
    to learn the depth was 1.  Measured in a fresh interpreter so nothing else counts."""
    import subprocess
    import sys

    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[1])\n"
        "from patio import jsontext\n"
        "data = b'{\"' + b'k' * (1024 * 1024) + b'\": [[1]]}'\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert jsontext.json_depth(data) == 3\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 8, f"{out.stdout.strip()} MB to measure one string's depth"
