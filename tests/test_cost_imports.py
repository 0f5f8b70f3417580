"""What a start loads is a budget: a feature that is off costs nothing, not even its import.

A subprocess (``tests/start_modules.py``, run ``-I -S``) starts Patio through ``patio.cli.main``
exactly as ``python3 patio.pyz --port N`` does and lists ``sys.modules`` once it serves, with the
module whose import loaded each one.  Deterministic: no clock, no network beyond the loopback
(every peer endpoint is a closed port on 127.0.0.1).

- a default start loads none of ``OFF_BY_DEFAULT`` (each names the feature that needs it);
- each row of ``FEATURES`` turns one feature on (and uses it, where it loads on first use) and
  shows that its modules do load then, so the list above cannot pass by naming dead modules;
- the total number of modules at a default start is a budget (``START_BUDGET``, set from the
  measured count with a small margin); past it, the failure names the modules that were not
  there when the budget was set and who imported each.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "start_modules.py"
# A closed port on the loopback: every peer (engine, router, Redis, stores) is unreachable there.
NOWHERE = "http://127.0.0.1:9"
# Seconds one listing start may take (a loaded CI machine starts slowly; the start is ~0.1 s).
START_TIMEOUT = 120

# Module -> the feature that loads it.  None of these may load at a default start.
OFF_BY_DEFAULT: Dict[str, str] = {
    "patio.kvevents.bridge": "KV events (REDIS_HOST with --pod and --model)",
    "patio.kvevents.zmtp": "KV events",
    "patio.kvevents.writer": "KV events",
    "patio.lora.desired_sync": "the adapters file (--adapters-file)",
    "patio.lora.desired": "the adapters file",
    "patio.lora.yaml_subset": "the adapters file",
    "patio.lora.resolver_dir": "the resolver dir (--resolver-dir, with an adapters file)",
    "patio.topology.component": "topology (TOPO_TYPE with a router)",
    "patio.topology.heartbeat": "topology",
    "patio.topology.router_client": "topology",
    "patio.topology.answers": "topology",
    "patio.topology.membership": "topology",
    "patio.topology.pacing": "topology",
    "patio.topology.api": "topology",
    "patio.kvevents.source": "KV events",
    "patio.kvevents.sync": "KV events",
    "patio.kvevents.intake": "KV events",
    "patio.kvevents.backlog": "KV events",
    "patio.kvevents.redis_client": "KV events",
    "patio.kvevents.publisher_client": "KV events",
    "patio.kvevents.msgpack": "KV events",
    "patio.runtime.component": "the model-runtime API (--enable-runtime)",
    "patio.runtime.service": "the model-runtime API",
    "patio.runtime.supervisor": "the model-runtime API (the engine supervisor)",
    "patio.runtime.api": "the model-runtime API",
    "patio.runtime.control": "the model-runtime API (sleep and wake)",
    "patio.api.openapi": "the OpenAPI document (--enable-docs, built on request)",
    "patio.artifacts.sources": "a download (its first request)",
    "patio.artifacts.fetch.run": "a download",
    "patio.artifacts.fetch.transfer": "a download",
    "patio.artifacts.fetch.workers": "a download",
    "patio.artifacts.fetch.net": "a download from a remote store",
    "patio.artifacts.fetch.verify": "a download",
    "patio.artifacts.stores.s3": "an s3://, tos:// or obs:// download",
    "patio.artifacts.auth.sigv4": "an s3://, tos:// or obs:// download (request signing)",
    "patio.artifacts.auth.aws": "an s3://, tos:// or obs:// download (credentials)",
    "patio.artifacts.stores.gcs": "a gs:// download",
    "patio.artifacts.auth.rs256": "a gs:// download (service-account signing)",
    "patio.artifacts.stores.modelscope": "an ms:// download",
    "patio.artifacts.stores.hf": "an hf:// download",
    "patio.artifacts.stores.hub": "an hf:// or ms:// download",
    "patio.artifacts.stores.http": "an https:// download",
    "patio.artifacts.cli": "the downloader command (patio download, aibrix_download)",
    "patio.metrics.pipeline": "the first scrape of /metrics (the text path)",
    "patio.metrics.parse": "the first scrape of /metrics (the parser)",
    "patio.metrics.plan": "the first scrape of /metrics (the scrape plan)",
    "patio.metrics.rules": "the first scrape of /metrics (the rename tables)",
    "patio.metrics.protocol": "the first scrape of /metrics (the router view)",
    "patio.metrics.protocol_tables": "the first scrape of /metrics (the router view's sources)",
    "ssl": "an https peer (OpenSSL: megabytes resident)",
    "hashlib": "a download's checksums, KV events' block hashes (OpenSSL)",
    "http.client": "a download from a remote store",
    "urllib.request": "a download from a remote store",
    "email": "a download (HTTP-date Retry-After)",
    "xml.etree.ElementTree": "an S3 listing",
    "shutil": "a download or the resolver dir (pulls in bz2 and lzma)",
    "bz2": "nothing of Patio's",
    "lzma": "nothing of Patio's",
    "ctypes": "handing memory back after a large scrape",
    "random": "retry jitter of a download or the topology heartbeat",
    "base64": "a download (credentials, GCS)",
    "datetime": "request signing",
    "struct": "KV events (ZMTP, msgpack)",
    "hmac": "request signing",
    "tempfile": "nothing at run time",
    "gzip": "nothing: /metrics compresses with zlib",
}

# The modules of a default start when the budget was set (CPython 3.11, -I -S): 246, of which
# 100 are Patio's (``tests/start_modules.json`` lists them; docs/development.md says why each is
# there).  The text path of /metrics (parser, plan, rename tables, router view) loads with the
# first scrape, not at start.  Past START_BUDGET the failure lists the modules that are new
# since, with their importer.
START_MODULES = 246
START_BUDGET = START_MODULES + 3


def listing(
    tmp_path: Path, env: Optional[Dict[str, str]] = None, argv: Sequence[str] = (), requests: Sequence[Any] = ()
) -> Tuple[Dict[str, str], List[int]]:
    """Start Patio as ``python3 patio.pyz`` would, send ``requests``, list what loaded."""
    base = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": NOWHERE,
        "PATIO_STATE_DIR": str(tmp_path / "state"),
        "PATIO_MODELS_ROOT": str(tmp_path / "models"),
        "PATIO_ADAPTER_DIR": str(tmp_path / "adapters"),
        "HOME": str(tmp_path),  # no ~/.cache/huggingface/token of the machine's
    }
    job = {
        "argv": ["--host", "127.0.0.1", "--port", "0", *argv],
        "program": "patio.pyz",
        "env": {**base, **(env or {})},
        "requests": list(requests),
    }
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["modules"], result["answers"]


@pytest.fixture(scope="module")
def default_start(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    modules, _ = listing(tmp_path_factory.mktemp("default"))
    return modules


def test_a_default_start_loads_nothing_of_what_is_off(default_start: Dict[str, str]) -> None:
    loaded = [
        f"{name} (imported by {default_start[name]}; needed only for {feature})"
        for name, feature in OFF_BY_DEFAULT.items()
        if name in default_start
    ]
    assert not loaded, "a default start loads what only an off feature needs:\n  " + "\n  ".join(loaded)


def test_a_default_start_stays_within_its_module_budget(default_start: Dict[str, str]) -> None:
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        pytest.skip("the count was taken on CPython 3.11 (the image's); other versions load other stdlib modules")
    baseline = set(json.loads((ROOT / "tests" / "start_modules.json").read_text(encoding="utf-8")))
    new = [f"{name} (imported by {default_start[name]})" for name in default_start if name not in baseline]
    assert len(default_start) <= START_BUDGET, (
        f"a default start loads {len(default_start)} modules, the budget is {START_BUDGET} "
        f"({START_MODULES} when it was set); new since:\n  " + "\n  ".join(new)
    )


def _download(source: str) -> Any:
    # Kthena's route answers when the download is over (here: failed, every store is unreachable),
    # so the store's modules have loaded by the time the listing is taken.
    return ["POST", "/v1/download_model", {"source": source, "output_dir": "x"}]


STORES_NOWHERE = {
    "AWS_ENDPOINT_URL": NOWHERE,
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "example",
    "TOS_ENDPOINT": NOWHERE,
    "TOS_ACCESS_KEY": "AKIDEXAMPLE",
    "TOS_SECRET_KEY": "example",
    "STORAGE_EMULATOR_HOST": NOWHERE,
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "HF_ENDPOINT": NOWHERE,
    "MODELSCOPE_ENDPOINT": NOWHERE,
    "DOWNLOADER_MAX_RETRIES": "1",
}

FEATURES = [
    (
        {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "9", "POD_NAME": "p", "MODEL_NAME": "m"},
        [],
        [],
        ["patio.kvevents.bridge"],
    ),
    ({"PATIO_ADAPTERS_FILE": "/nonexistent/adapters.yaml"}, [], [], ["patio.lora.desired_sync", "patio.lora.desired"]),
    (
        {"PATIO_ADAPTERS_FILE": "/nonexistent/adapters.yaml", "PATIO_RESOLVER_DIR": "/nonexistent/resolver"},
        [],
        [],
        ["patio.lora.resolver_dir"],
    ),
    (
        {"TOPO_TYPE": "sglang", "SGL_ROUTER_ENDPOINT": NOWHERE, "WORKER_PORT": "8000"},
        [],
        [],
        ["patio.topology.component", "patio.topology.heartbeat", "patio.topology.router_client"],
    ),
    ({}, ["--enable-docs"], [["GET", "/openapi.json", None]], ["patio.api.openapi"]),
    (
        {},
        [],
        [["GET", "/metrics", None]],
        ["patio.metrics.pipeline", "patio.metrics.parse", "patio.metrics.plan", "patio.metrics.protocol"],
    ),
    (
        {"PATIO_RUNTIME": "true"},
        [],
        [],
        ["patio.runtime.component", "patio.runtime.service", "patio.runtime.supervisor", "patio.runtime.api"],
    ),
    (
        STORES_NOWHERE,
        [],
        [_download("s3://bucket/model")],
        ["patio.artifacts.stores.s3", "patio.artifacts.auth.sigv4", "patio.artifacts.fetch.run"],
    ),
    (STORES_NOWHERE, [], [_download("tos://bucket/model")], ["patio.artifacts.stores.s3", "patio.artifacts.auth.aws"]),
    (STORES_NOWHERE, [], [_download("gs://bucket/model")], ["patio.artifacts.stores.gcs"]),
    (STORES_NOWHERE, [], [_download("ms://org/model")], ["patio.artifacts.stores.modelscope"]),
    (STORES_NOWHERE, [], [_download("hf://org/model")], ["patio.artifacts.stores.hf"]),
]


@pytest.mark.parametrize(
    "env, argv, requests, expected",
    FEATURES,
    ids=[
        "kv events configured",
        "an adapters file",
        "an adapters file with a resolver dir",
        "topology with a router",
        "the OpenAPI document asked for",
        "the first scrape of /metrics",
        "the model-runtime API on",
        "an s3:// download",
        "a tos:// download",
        "a gs:// download",
        "an ms:// download",
        "an hf:// download",
    ],
)
def test_a_feature_turned_on_loads_its_modules(
    tmp_path: Path, env: Dict[str, str], argv: List[str], requests: List[Any], expected: List[str]
) -> None:
    modules, answers = listing(tmp_path, env, argv, requests)
    assert len(answers) == len(requests)
    missing = [name for name in expected if name not in modules]
    assert not missing, f"turned on, the feature did not load {missing}: the off-by-default list names dead modules"
    for name in expected:
        assert name in OFF_BY_DEFAULT, f"{name} is not in OFF_BY_DEFAULT: a default start would not be checked for it"


def test_the_listing_names_who_imported_each_module(default_start: Dict[str, str]) -> None:
    # The failure messages above are only useful if the importer is right.
    assert default_start["patio.lifecycle"] == "patio.cli"
    assert default_start["patio.http.server"] == "patio.lifecycle"
    assert default_start["patio.config"] == "patio.cli"
