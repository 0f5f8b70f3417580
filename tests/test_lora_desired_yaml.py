"""The YAML subset: good documents equal PyYAML's reading, bad ones fail naming line and column,
and the LoRA syncer's documented ConfigMaps (tests/lora_syncer_data, cited there) read byte for byte."""

import random
from pathlib import Path

import pytest
import yaml

from patio.errors import PatioError
from patio.lora.desired import load_desired
from patio.lora.yaml_subset import MAX_DEPTH, YamlError, parse

DATA = Path(__file__).parent / "lora_syncer_data"
EXAMPLES = sorted(p.name for p in DATA.glob("*.yaml"))

GOOD = [
    ("empty", "", None),
    ("only_comments", "# nothing\n  # here\n", None),
    ("scalar_doc", "hello\n", "hello"),
    ("flat_mapping", "a: 1\nb: two\nc: 1.5\n", {"a": 1, "b": "two", "c": 1.5}),
    ("nested_mapping", "a:\n  b:\n    c: d\n", {"a": {"b": {"c": "d"}}}),
    ("sequence", "- a\n- b\n", ["a", "b"]),
    ("indented_sequence", "k:\n  - a\n  - b\n", {"k": ["a", "b"]}),
    ("pyyaml_sequence", "k:\n- a\n- b\nz: 1\n", {"k": ["a", "b"], "z": 1}),
    ("mapping_in_sequence", "- id: a\n  source: s\n- id: b\n", [{"id": "a", "source": "s"}, {"id": "b"}]),
    ("nested_sequence", "- - a\n  - b\n- c\n", [["a", "b"], "c"]),
    ("empty_item_then_block", "-\n  a: b\n", [{"a": "b"}]),
    ("null_values", "a:\nb: ~\nc: null\n", {"a": None, "b": None, "c": None}),
    ("booleans", "a: true\nb: False\n", {"a": True, "b": False}),
    ("numbers", "a: -3\nb: 0x1F\nc: 1.0e+3\nd: .5\n", {"a": -3, "b": 31, "c": 1000.0, "d": 0.5}),
    ("comments", "a: b # c\n# d\ne: 'f # g' # h\n", {"a": "b", "e": "f # g"}),
    ("hash_inside_plain", "a: b#c\n", {"a": "b#c"}),
    ("colon_inside_plain", "a: s3://bucket/x:y\n", {"a": "s3://bucket/x:y"}),
    ("double_quoted_escapes", 'a: "x\\ty\\u00e9\\"z\\\\"\n', {"a": 'x\tyé"z\\'}),
    ("single_quoted", "a: 'it''s: fine'\n", {"a": "it's: fine"}),
    ("quoted_key", "'a b': 1\n\"c\": 2\n", {"a b": 1, "c": 2}),
    ("quoted_numbers_stay_strings", "a: '010'\nb: \"yes\"\n", {"a": "010", "b": "yes"}),
    ("empty_flow", "a: []\nb: {}\n", {"a": [], "b": {}}),
    ("document_start", "--- # doc\na: 1\n", {"a": 1}),
    ("crlf", "a: 1\r\nb:\r\n- c\r\n", {"a": 1, "b": ["c"]}),
    ("bom", "\ufeffa: 1\n", {"a": 1}),
    ("trailing_spaces", "a: b   \nc: d\n", {"a": "b", "c": "d"}),
    ("no_final_newline", "a: b", {"a": "b"}),
    ("deeper_first_indent", "  a: 1\n  b: 2\n", {"a": 1, "b": 2}),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_documents_read_as_pyyaml_reads_them(text, expected):
    assert parse(text) == expected
    assert yaml.safe_load(text) == expected  # the oracle agrees, so the case itself is right


BAD = [
    ("anchor", "a: &x 1\n", 1, 4, "anchors"),
    ("alias", "a: *x\n", 1, 4, "aliases"),
    ("tag", "a: !!str 1\n", 1, 4, "tags"),
    ("block_literal", "a: |\n  x\n", 1, 4, "block scalars"),
    ("block_folded", "a: >\n  x\n", 1, 4, "block scalars"),
    ("flow_sequence", "a: [1, 2]\n", 1, 4, "flow sequences"),
    ("flow_mapping", "a: {b: 1}\n", 1, 4, "flow mappings"),
    ("mapping_on_one_line", "a: b: c\n", 1, 4, "same line"),
    ("colon_space_in_value", "- a: b\n- x: y: z\n", 2, 6, "same line"),
    ("tab_indent", "a:\n\tb: 1\n", 2, 1, "tab"),
    ("duplicate_key", "a: 1\nb: 2\na: 3\n", 3, 1, "duplicate key 'a' (first at line 1)"),
    ("yaml11_bool", "a: yes\n", 1, 4, "YAML 1.1"),
    ("yaml11_octal", "a: 0755\n", 1, 4, "YAML 1.1"),
    ("yaml11_sexagesimal", "a: 1:20\n", 1, 4, "YAML 1.1"),
    ("yaml11_date", "a: 2024-01-31\n", 1, 4, "YAML 1.1"),
    ("float_without_dot", "a: 1e5\n", 1, 4, "YAML 1.1"),
    ("unterminated_double", 'a: "x\n', 1, 4, "unterminated double-quoted"),
    ("unterminated_single", "a: 'x\n", 1, 4, "unterminated single-quoted"),
    ("bad_escape", 'a: "\\q"\n', 1, 5, "unknown escape"),
    ("text_after_quote", "a: 'x' y\n", 1, 8, "after a quoted scalar"),
    ("multiline_plain", "a:\n  b\n  c\n", 3, 3, "multi-line"),
    ("over_indented_key", "a: 1\n  b: 2\n", 2, 3, "unexpected indentation"),
    ("sequence_in_mapping", "a: 1\n- b\n", 2, 1, "sequence entry"),
    ("dedent_below_document", "  a: 1\nb: 2\n", 2, 1, "unexpected content"),
    ("two_documents", "a: 1\n---\nb: 2\n", 2, 1, "several YAML documents"),
    ("document_end", "a: 1\n...\n", 2, 1, "document end"),
    ("directive", "%YAML 1.2\na: 1\n", 1, 1, "directives"),
    ("complex_key", "? a\n: b\n", 1, 1, "complex keys"),
    ("empty_key", ": b\n", 1, 1, "without a key"),
    ("reserved_at", "a: @x\n", 1, 4, "reserved"),
    ("too_deep", "a:\n" + "".join("  " * i + "- \n" for i in range(1, 40)), None, None, "nesting deeper"),
]


@pytest.mark.parametrize("text,line,column,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_outside_the_subset_is_an_error_naming_line_and_column(text, line, column, fragment):
    with pytest.raises(YamlError) as caught:
        parse(text)
    error = caught.value
    assert fragment in error.message
    if line is not None:
        assert (error.line, error.column) == (line, column), error.message
        assert error.message.startswith(f"line {line}, column {column}: ")
    assert error.status == 400 and error.to_dict()["type"] == "invalid_adapters_file"


def test_nesting_is_bounded():
    text = "".join("  " * i + "-\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "x\n"
    with pytest.raises(YamlError, match="nesting deeper"):
        parse(text)


def mounted_file(example: str) -> bytes:
    """What kubelet writes into the mounted file: the ConfigMap's data["configmap.yaml"]."""
    manifest = yaml.safe_load((DATA / example).read_bytes())
    assert manifest["kind"] == "ConfigMap"
    return manifest["data"]["configmap.yaml"].encode("utf-8")


@pytest.mark.parametrize("example", EXAMPLES)
def test_syncer_examples_read_byte_for_byte(example):
    raw = mounted_file(example)
    assert parse(raw.decode()) == yaml.safe_load(raw)
    state = load_desired(raw, "/config/configmap.yaml", 256)
    config = yaml.safe_load(raw)["vLLMLoRAConfig"]
    default = config.get("defaultBaseModel")
    # The syncer handed source to vLLM, which reads a bare org/name as a Hub repo: Patio says hf://.
    wanted = [(m["id"], "hf://" + m["source"], m.get("base-model", default)) for m in config["ensureExist"]["models"]]
    assert [(a.name, a.source, a.base_model) for a in state.adapters] == wanted
    unwanted = [m["id"] for m in (config.get("ensureNotExist") or {}).get("models", [])]
    assert list(state.absent) == unwanted
    assert state.shape == "syncer" and state.config_name == config["name"]


def test_the_manifest_itself_is_refused_at_its_block_scalar():
    """Mounting the whole ConfigMap manifest instead of its data key is a clear error, not a guess."""
    text = (DATA / "deployment.yaml").read_text()
    with pytest.raises(YamlError) as caught:
        parse(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "configmap.yaml: |" in row)
    assert (caught.value.line, caught.value.column) == (line, text.splitlines()[line - 1].index("|") + 1)


# tools/dynamic-lora-sidecar/sidecar/test_sidecar.py (same commit): TEST_CONFIG_DATA, fed to the
# syncer as yaml.dump(TEST_CONFIG_DATA).  Its test_reconcile expects loads of uncensored-lora-v1 and
# already_exists, unloads of uncensored-lora-v2 and to_remove; v3 (in both lists) is skipped.
SIDECAR_TEST_CONFIG = {
    "vLLMLoRAConfig": {
        "host": "localhost",
        "name": "uncensored-loras-qwen",
        "port": 8000,
        "ensureExist": {
            "models": [
                {"base-model": "Qwen/Qwen3-32B", "id": "uncensored-lora-v1", "source": "nicoboss/Qwen3-32B-Uncensored"},
                {"base-model": "Qwen/Qwen3-32B", "id": "uncensored-lora-v3", "source": "nicoboss/Qwen3-32B-Uncensored"},
                {"base-model": "Qwen/Qwen3-32B", "id": "already_exists", "source": "nicoboss/Qwen3-32B-Uncensored"},
            ]
        },
        "ensureNotExist": {
            "models": [
                {"base-model": "Qwen/Qwen3-32B", "id": "uncensored-lora-v2", "source": "nicoboss/Qwen3-32B-Uncensored"},
                {"base-model": "Qwen/Qwen3-32B", "id": "uncensored-lora-v3", "source": "nicoboss/Qwen3-32B-Uncensored"},
                {"base-model": "Qwen/Qwen3-32B", "id": "to_remove", "source": "nicoboss/Qwen3-32B-Uncensored"},
            ]
        },
    }
}


def test_the_syncers_own_test_config_as_pyyaml_dumps_it():
    raw = yaml.dump(SIDECAR_TEST_CONFIG).encode()
    assert parse(raw.decode()) == SIDECAR_TEST_CONFIG
    state = load_desired(raw, "/config/configmap.yaml", 256)
    assert state.names() == ("uncensored-lora-v1", "already_exists")
    assert state.absent == ("uncensored-lora-v2", "to_remove")
    assert state.conflicts == ("uncensored-lora-v3",)


def test_fuzz_only_our_error_escapes():
    """Mutated syncer files: the parser returns a value or raises YamlError, nothing else."""
    rng = random.Random(15)
    seeds = [mounted_file(e).decode() for e in EXAMPLES]
    alphabet = "-:#'\"[]{}|>&*!% \t\n\\abc0"
    for _ in range(1500):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(text) + 1)
            action = rng.random()
            if action < 0.4:
                text.insert(position, rng.choice(alphabet))
            elif action < 0.8 and text:
                del text[min(position, len(text) - 1)]
            else:
                text[position:position] = rng.choice(alphabet) * rng.randint(1, 4)
        try:
            parse("".join(text))
        except YamlError:
            pass
        try:
            load_desired("".join(text).encode(), "/f", 8)
        except PatioError:
            pass
