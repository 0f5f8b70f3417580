"""The adapters file as a ConfigMap an attacker (or a broken pipeline) writes (issue 24 item 2;
issue 28 items 7 and 8).

Patio runs as a real process (the zipapp) watching a file laid out as the kubelet mounts a
ConfigMap: ``DIR/adapters.json -> ..data/adapters.json``, ``..data -> ..TIMESTAMP/``, updated by
swapping ``..data`` atomically (the kubelet's AtomicWriter).  One valid set is applied, then
each hostile version is swapped in: invalid bytes, a 50 MB file, 100,000 entries, JSON nested
1,000 deep (a 2 KB file that raised an uncaught RecursionError and left the status at
"applied"), a 500 KB unknown key (echoed whole into the status and the log), duplicate names,
hostile names and sources (one carrying a secret in its userinfo), a symlink loop, the file
gone and back; then the ``..data`` link is swapped every 10 ms for a minute between valid and
invalid versions.  Throughout: the last valid set stays in force in the engine (no adapter
lost, none loaded twice), the status names the problem in bounded text, Patio answers its
probes, its memory and threads stay bounded, and the secret appears in no output.  At the end
the engine converges to the final file.
"""

import json
import os
import time
from typing import Any, Callable, Dict, Iterator

import pytest
from configmap_support import ConfigMapMount
from fakes.engine import FakeEngine
from hostile_support import Vitals, leaks, probes_honest
from support import PatioProcess, http_json

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
# How long the ..data link is swapped every 10 ms (the minute; shorter runs may set less).
SWAP_SECONDS = float(os.environ.get("PATIO_ADAPTERS_SWAP_SECONDS", "60"))
SWAP_EVERY = 0.01
MAX_ADAPTERS = 3
# What the whole run may add to Patio's RSS: files are read at most 1 MiB + 1 byte at a time.
RSS_BUDGET_MB = 30.0
THREAD_BUDGET = 8
# Longest status error accepted: 20 problems of at most 300 characters, and the framing.
MAX_STATUS_ERROR = 7000

V1 = {"a": "/m/a1", "b": "/m/b1", "c": "/m/c1"}
V2 = {"a": "/m/a2", "d": "/m/d1", "e": "/m/e1"}


def _file(adapters: Dict[str, str], **extra: Any) -> bytes:
    return json.dumps({"adapters": [{"name": n, "source": s} for n, s in adapters.items()], **extra}).encode()


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile-file")
    mount = ConfigMapMount(root / "config")
    mount.write(_file(V1))
    engine = FakeEngine("vllm")
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_STATE_DIR": str(root / "state"),
        "PATIO_ADAPTER_DIR": str(root / "adapters"),
    }
    args = ["--adapters-file", str(mount.path), "--adapters-file-interval", "0.02", "--lora-reconcile-interval", "0"]
    args += ["--max-adapters", str(MAX_ADAPTERS), "--adapter-apply-backoff", "0.05"]
    patio = PatioProcess(args, env=env)
    answers = []
    try:
        _wait(lambda: engine.adapters == V1, what="the first set")
        with Vitals(patio.proc.pid) as vitals:
            yield {"patio": patio, "engine": engine, "mount": mount, "root": root, "vitals": vitals, "answers": answers}
    finally:
        patio.kill()
        engine.stop()


def _status(w: Dict[str, Any]) -> Dict[str, Any]:
    status, body = http_json("GET", w["patio"].url + "/v1/lora_adapters")
    assert status == 200
    w["answers"].append(json.dumps(body))
    return body["desired"]


def _loads(w: Dict[str, Any]) -> int:
    return len(w["engine"].calls_to("/v1/load_lora_adapter")) + len(w["engine"].calls_to("/v1/unload_lora_adapter"))


def _bigger_than_a_configmap() -> bytes:
    return b'{"adapters": [' + b" " * (50 * 1024 * 1024) + b"]}"


def _hundred_thousand() -> bytes:
    return _file({f"n{i:06d}": f"/m/{i}" for i in range(100_000)})


def _unknown_key() -> bytes:
    return _file(V1, **{"k" * 500_000: 1})


HOSTILE = [
    # (name, content, state the file is reported in, words in its error)
    ("invalid_bytes", b"\xff\xfe\x00\x81garbage", "invalid", "not UTF-8"),
    ("fifty_megabytes", _bigger_than_a_configmap, "invalid", "larger than 1048576 bytes"),
    ("hundred_thousand_entries", _hundred_thousand, "invalid", "larger than"),
    ("json_nested_1000", b"[" * 1000 + b"]" * 1000, "invalid", "deeper than 64"),
    ("object_nested_1000", b'{"a":' * 1000 + b"1" + b"}" * 1000, "invalid", "deeper than 64"),
    ("unknown_key_500kb", _unknown_key, "invalid", "unknown key"),
    (
        "duplicate_names",
        b'{"adapters": [{"name": "a", "source": "/x"}, {"name": "a", "source": "/y"}]}',
        "invalid",
        "twice",
    ),
    ("traversal_name", _file({"../../etc": "/m/x"}), "invalid", "must match"),
    ("nul_name", b'{"adapters": [{"name": "a\\u0000b", "source": "/m/x"}]}', "invalid", "must match"),
    ("newline_name", b'{"adapters": [{"name": "a\\nb", "source": "/m/x"}]}', "invalid", "must match"),
    ("long_name", _file({"n" * 100_000: "/m/x"}), "invalid", "must match"),
    ("secret_in_source", _file({"s": f"s3://AKIAEXAMPLE:{SECRET}@bucket/x"}), "invalid", "credentials"),
    ("control_in_source", b'{"adapters": [{"name": "s", "source": "/m/x\\r\\nInjected: 1"}]}', "invalid", "control"),
    ("relative_source", _file({"s": "relative/dir/x"}), "invalid", "absolute path"),
    ("not_a_mapping", b"[1, 2, 3]", "invalid", "must be a mapping"),
]


def _content(content: Any) -> bytes:
    return content() if callable(content) else content


@pytest.mark.parametrize("content,state,words", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_version_changes_nothing(world: Dict[str, Any], content: Any, state: str, words: str) -> None:
    before = _loads(world)
    world["mount"].write(_content(content))
    desired = _wait(
        lambda: (lambda d: d if d["state"] == state and words in (d["error"] or "") else None)(_status(world)),
        what=f"{state}: {words}",
    )
    assert words in desired["error"], desired["error"][:500]
    assert len(desired["error"]) < MAX_STATUS_ERROR, "what the file holds is echoed, not quoted"
    assert world["engine"].adapters == V1 and _loads(world) == before, "the last valid set must stay in force"
    probes_honest(world["patio"])
    print("RSS", world["vitals"].summary())
    world["mount"].write(_file(V1))  # the operator fixes it: nothing to do, the set is in force
    _wait(lambda: _status(world)["state"] == "applied", what="applied again")
    assert world["engine"].adapters == V1 and _loads(world) == before


def test_a_symlink_loop_and_a_file_that_goes_and_comes_back(world: Dict[str, Any]) -> None:
    mount, before = world["mount"], _loads(world)
    mount.loop()
    desired = _wait(lambda: (lambda d: d if d["state"] == "unreadable" else None)(_status(world)), what="unreadable")
    assert "Too many levels of symbolic links" in desired["error"]
    mount.unloop()
    _wait(lambda: _status(world)["state"] == "applied", what="applied after the loop")
    mount.remove_key()
    desired = _wait(lambda: (lambda d: d if d["state"] == "missing" else None)(_status(world)), what="missing")
    assert "stay as they are" in desired["error"]
    time.sleep(0.3)  # several polls with the file gone: a remount must not unload anything
    assert world["engine"].adapters == V1
    mount.restore_key()
    _wait(lambda: _status(world)["state"] == "applied", what="applied after it came back")
    assert world["engine"].adapters == V1 and _loads(world) == before
    probes_honest(world["patio"])


def test_more_adapters_than_the_limit_keeps_the_first(world: Dict[str, Any]) -> None:
    before = _loads(world)
    many = dict(V1, **{f"x{i:05d}": f"/m/x{i}" for i in range(20_000)})  # under 1 MiB
    world["mount"].write(_file(many))
    desired = _wait(lambda: (lambda d: d if d.get("refused", {}).get("count") == 20_000 else None)(_status(world)))
    assert desired["state"] == "applied" and "at most 3 are kept" in desired["error"]
    assert len(desired["refused"]["names"]) == 10 and len(desired["error"]) < MAX_STATUS_ERROR
    assert world["engine"].adapters == V1 and _loads(world) == before
    world["mount"].write(_file(V1))
    _wait(lambda: _status(world).get("refused", {}).get("count") == 0, what="the limit lifted")


def test_swapped_every_10_ms_for_a_minute_then_converges(world: Dict[str, Any]) -> None:
    versions = [_file(V1), b"{broken", _file(V2), _unknown_key(), _file({"dup": "/x"}) + b"}", _file(V2)]
    deadline = time.monotonic() + SWAP_SECONDS
    swaps = 0
    last_probe = slowest = 0.0
    while time.monotonic() < deadline:
        world["mount"].write(versions[swaps % len(versions)])
        swaps += 1
        if time.monotonic() - last_probe > 1.0:
            started = time.monotonic()
            probes_honest(world["patio"])
            last_probe = time.monotonic()
            slowest = max(slowest, last_probe - started)
        time.sleep(SWAP_EVERY)
    world["mount"].write(_file(V2))
    _wait(lambda: world["engine"].adapters == V2, timeout=60, what="the engine at the final file")
    desired = _wait(
        lambda: (lambda d: d if d["state"] == "applied" and all(a["state"] == "ok" for a in d["adapters"]) else None)(
            _status(world)
        ),
        what="every adapter ok",
    )
    assert {a["name"] for a in desired["adapters"]} == set(V2)
    time.sleep(0.5)
    assert world["engine"].adapters == V2  # and it stays there
    print(f"{swaps} swaps in {SWAP_SECONDS:.0f}s, slowest probe round {slowest:.3f}s; {world['vitals'].summary()}")


def test_bounded_and_no_secret_anywhere(world: Dict[str, Any]) -> None:
    vitals = world["vitals"]
    probes_honest(world["patio"])
    assert vitals.peak_rss - vitals.start_rss < RSS_BUDGET_MB, vitals.summary()
    assert vitals.peak_threads - vitals.start_threads <= THREAD_BUDGET, vitals.summary()
    log = world["patio"].output()
    assert "Traceback" not in log
    assert max(len(line) for line in log.splitlines()) < MAX_STATUS_ERROR + 200, "a log line echoed the file"
    found = leaks(SECRET, world["patio"], world["answers"], [world["root"] / "state", world["root"] / "adapters"])
    assert found == [], found
    print(vitals.summary())
