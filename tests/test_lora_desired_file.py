"""The adapters file model: both shapes, in JSON and YAML; every problem named; limits."""

import json

import pytest

from patio.lora.desired import MAX_FILE_BYTES, AdaptersFileError, load_desired, refused_message

SYNCER = """vLLMLoRAConfig:
  name: demo
  port: 8000
  defaultBaseModel: base
  ensureExist:
    models:
    - id: a
      source: s3://bucket/a
    - id: b
      source: /models/b
      base-model: other
      pinned: true
  ensureNotExist:
    models:
    - id: old
      source: s3://bucket/old
"""


def test_syncer_shape():
    state = load_desired(SYNCER.encode(), "/f.yaml", 10)
    assert [(a.name, a.source, a.base_model, a.pinned) for a in state.adapters] == [
        ("a", "s3://bucket/a", "base", None),
        ("b", "/models/b", "other", True),
    ]
    assert state.absent == ("old",) and state.shape == "syncer" and state.config_name == "demo"


@pytest.mark.parametrize("path", ["/f.json", "/f.yaml"], ids=["json_ext", "json_content"])
def test_patio_shape_in_json(path):
    doc = {"adapters": [{"name": "a", "source": "hf://org/a", "pinned": False}], "remove": ["x"]}
    state = load_desired(json.dumps(doc).encode(), path, 10)
    assert [(a.name, a.source, a.pinned) for a in state.adapters] == [("a", "hf://org/a", False)]
    assert state.absent == ("x",) and state.shape == "patio"


def test_syncer_shape_in_json_too():
    doc = {"vLLMLoRAConfig": {"ensureExist": {"models": [{"id": "a", "source": "/m/a"}]}}}
    assert load_desired(json.dumps(doc).encode(), "/f.json", 10).names() == ("a",)


def test_a_bare_repo_id_is_a_hub_repo():
    doc = b"vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - id: a\n      source: org/name\n"
    assert load_desired(doc, "/f", 10).adapters[0].source == "hf://org/name"


def test_empty_set_is_explicit():
    assert load_desired(b"vLLMLoRAConfig: {}\n", "/f", 10).adapters == ()
    assert load_desired(b'{"adapters": []}', "/f", 10).adapters == ()


BAD = [
    ("empty_file", b"", "is empty"),
    ("not_a_mapping", b"- a\n", "must be a mapping"),
    ("neither_shape", b"foo: 1\n", "'vLLMLoRAConfig' (the LoRA syncer's shape) or 'adapters'"),
    ("typo_key", b"vLLMLoRAConfig:\n  ensureExists:\n    models: []\n", "unknown key 'ensureExists'"),
    ("models_missing", b"vLLMLoRAConfig:\n  ensureExist: {}\n", "vLLMLoRAConfig.ensureExist.models: is required"),
    ("models_not_list", b"vLLMLoRAConfig:\n  ensureExist:\n    models: x\n", "must be a list, not a string"),
    (
        "id_missing",
        b"vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - source: /a\n",
        "vLLMLoRAConfig.ensureExist.models[0].id: is required",
    ),
    (
        "source_missing",
        b"vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - id: a\n",
        "models[0].source: is required",
    ),
    ("bad_name", b'{"adapters": [{"name": "../x", "source": "/a"}]}', "adapters[0].name: '../x' must match"),
    ("number_name", b'{"adapters": [{"name": 5, "source": "/a"}]}', "must be a string, not a number"),
    ("empty_source", b'{"adapters": [{"name": "a", "source": " "}]}', "non-empty path or URI"),
    ("relative_source", b'{"adapters": [{"name": "a", "source": "models/x/y"}]}', "absolute path"),
    ("userinfo", b'{"adapters": [{"name": "a", "source": "s3://k:s@b/x"}]}', "credentials"),
    ("control_char", b'{"adapters": [{"name": "a", "source": "/a\\nb"}]}', "control characters"),
    ("bad_pinned", b'{"adapters": [{"name": "a", "source": "/a", "pinned": "yes"}]}', "true or false"),
    ("bad_port", b"vLLMLoRAConfig:\n  port: '8000'\n", "port: must be an integer"),
    (
        "duplicate",
        b'{"adapters": [{"name": "a", "source": "/a"}, {"name": "a", "source": "/b"}]}',
        "'a' is listed twice (entries 0 and 1)",
    ),
    ("unknown_adapter_key", b'{"adapters": [{"name": "a", "source": "/a", "path": "/x"}]}', "unknown key 'path'"),
    ("bad_json", b'{"adapters": [}', "line 1, column 15: invalid JSON"),
    ("bad_yaml", b"vLLMLoRAConfig:\n  name: &x y\n", "line 2, column 9: anchors"),
    ("not_utf8", b"vLLMLoRAConfig: \xff\n", "not UTF-8"),
    ("too_big", b"#" * (MAX_FILE_BYTES + 1), "larger than"),
]


@pytest.mark.parametrize("raw,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_invalid_files_name_the_problem(raw, fragment):
    with pytest.raises(AdaptersFileError) as caught:
        load_desired(raw, "/config/adapters.yaml", 10)
    assert fragment in caught.value.message
    assert caught.value.message.startswith("/config/adapters.yaml")


def test_every_problem_is_reported_at_once():
    doc = {"adapters": [{"name": "a"}, {"source": "/b"}, {"name": "c", "source": 1}]}
    with pytest.raises(AdaptersFileError) as caught:
        load_desired(json.dumps(doc).encode(), "/f", 10)
    message = caught.value.message
    assert "adapters[0].source" in message and "adapters[1].name" in message and "adapters[2].source" in message


def test_names_in_both_lists_are_left_alone():
    doc = {"adapters": [{"name": "a", "source": "/a"}, {"name": "b", "source": "/b"}], "remove": ["b", "c"]}
    state = load_desired(json.dumps(doc).encode(), "/f", 10)
    assert state.names() == ("a",) and state.absent == ("c",) and state.conflicts == ("b",)


def test_a_thousand_adapters_are_cut_at_the_limit_with_a_clear_error():
    doc = {"adapters": [{"name": f"a{i}", "source": f"/m/{i}"} for i in range(1000)]}
    state = load_desired(json.dumps(doc).encode(), "/f", 256)
    assert len(state.adapters) == 256 and len(state.refused) == 744
    assert state.refused[0] == "a256"
    message = refused_message(state, 256)
    assert message is not None
    assert "names 1000 adapters; at most 256 are kept (--max-adapters)" in message and "and 734 more" in message
