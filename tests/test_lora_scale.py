"""Per-adapter work stays constant as the held set grows (issue 28 item 10), as budgets.

With ``--max-adapters 10000`` loads slowed from 146/s to 16/s by 3,000 adapters: every load
rewrote the whole state file and listed the engine's whole ``/v1/models``.  Measured rates are
in ``bench/bench_lora_scale.py``; here the deterministic part: records serialised and engine
listings per load, and the journal that makes the first constant (patio/lora/held_set.py).
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from fakes.engine import FakeEngine
from support import RunningPatio, http_json, make_settings

from patio.lora import records as records
from patio.lora.held_set import JOURNAL_FILE, STATE_FILE, WHOLE_WRITE_MAX, HeldSetFile, read_held_set, write_held_set


def _patio(engine: FakeEngine, state: Path) -> RunningPatio:
    env = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url, "PATIO_STATE_DIR": str(state)}
    return RunningPatio(make_settings(["--lora-reconcile-interval", "0", "--max-adapters", "10000"], env))


def _load(patio: RunningPatio, name: str) -> None:
    status, body = http_json("POST", patio.url + "/load_lora_adapter", {"lora_name": name, "lora_path": f"/m/{name}"})
    assert status == 200, body


def test_a_load_costs_the_same_at_400_adapters_as_at_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"persisted": 0}
    real = records.Adapter.persisted

    def counted(self: Any) -> Dict[str, Any]:
        calls["persisted"] += 1
        return real(self)

    monkeypatch.setattr(records.Adapter, "persisted", counted)
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        for i in range(300):
            _load(patio, f"a{i:04d}")
        listings = len(engine.calls_to("/v1/models", "GET"))
        calls["persisted"] = 0
        for i in range(300, 400):
            _load(patio, f"a{i:04d}")
        # 100 loads at 300-400 held: one record each, plus at most one snapshot of the set (the
        # journal reaches the set's size at most once).  Rewriting the set each time was ~35,000.
        assert calls["persisted"] <= 100 + 400, calls
        assert len(engine.calls_to("/v1/models", "GET")) == listings  # the engine's answer confirms a load
        views = {v["name"]: v for v in http_json("GET", patio.url + "/v1/lora_adapters")[1]["data"]}
        assert all(v["engine_confirmed"] for v in views.values()) and len(views) == 400
        for i in range(0, 400, 2):
            assert http_json("POST", patio.url + "/unload_lora_adapter", {"lora_name": f"a{i:04d}"})[0] == 200
    saved = sorted(a["name"] for a in read_held_set(str(tmp_path)))
    assert saved == [f"a{i:04d}" for i in range(1, 400, 2)]


def test_a_restart_after_a_journalled_set_reloads_everything(tmp_path: Path) -> None:
    with FakeEngine("vllm") as engine:
        with _patio(engine, tmp_path) as patio:
            for i in range(WHOLE_WRITE_MAX + 40):
                _load(patio, f"b{i:04d}")
        assert (tmp_path / JOURNAL_FILE).exists()
        engine.restart(forget=True)
        with _patio(engine, tmp_path):  # restores the set, and its first reconcile reloads it
            deadline = time.monotonic() + 30
            while len(engine.adapters) < WHOLE_WRITE_MAX + 40 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert len(engine.adapters) == WHOLE_WRITE_MAX + 40


def _entry(name: str, **extra: Any) -> Dict[str, Any]:
    return {"name": name, "path": f"/m/{name}", **extra}


def _journalled(tmp_path: Path, names: List[str]) -> HeldSetFile:
    store = HeldSetFile(str(tmp_path))
    store.read()
    store.write_snapshot([_entry(n) for n in names])
    return store


def test_journal_changes_replay_over_the_snapshot(tmp_path: Path) -> None:
    names = [f"c{i:04d}" for i in range(WHOLE_WRITE_MAX + 10)]
    store = _journalled(tmp_path, names)
    assert not store.needs_snapshot(len(names))
    store.append({"new": _entry("new"), names[0]: None})
    store.append({names[1]: _entry(names[1], extra={"pinned": True})})
    got = {a["name"]: a for a in read_held_set(str(tmp_path))}
    assert "new" in got and names[0] not in got and got[names[1]]["extra"] == {"pinned": True}
    assert len(got) == len(names)
    assert oct(os.stat(tmp_path / JOURNAL_FILE).st_mode & 0o777) == "0o600"


def test_a_torn_last_line_is_skipped_and_the_next_change_snapshots(tmp_path: Path) -> None:
    names = [f"d{i:04d}" for i in range(WHOLE_WRITE_MAX + 10)]
    store = _journalled(tmp_path, names)
    store.append({"kept": _entry("kept")})
    with open(tmp_path / JOURNAL_FILE, "ab") as handle:
        handle.write(b'{"put": {"name": "torn", "pa')  # a crash mid-append
    again = HeldSetFile(str(tmp_path))
    got = {a["name"] for a in again.read()}
    assert "kept" in got and "torn" not in got
    assert again.needs_snapshot(len(got))  # appending after the torn bytes would merge two lines


def test_a_journal_older_than_the_snapshot_is_ignored(tmp_path: Path) -> None:
    names = [f"e{i:04d}" for i in range(WHOLE_WRITE_MAX + 10)]
    store = _journalled(tmp_path, names)
    store.append({names[0]: None})
    stale = (tmp_path / JOURNAL_FILE).read_bytes()
    store.write_snapshot([_entry(n) for n in names])  # a new snapshot that still holds names[0] ...
    (tmp_path / JOURNAL_FILE).write_bytes(stale)  # ... and the crash left the old journal behind
    assert names[0] in {a["name"] for a in read_held_set(str(tmp_path))}


def test_the_journal_is_folded_once_it_is_as_long_as_the_set(tmp_path: Path) -> None:
    names = [f"f{i:04d}" for i in range(WHOLE_WRITE_MAX + 10)]
    store = _journalled(tmp_path, names)
    for i in range(len(names) - 1):
        store.append({names[i]: _entry(names[i], loaded_at=i)})
    assert not store.needs_snapshot(len(names))
    store.append({names[-1]: _entry(names[-1])})
    assert store.needs_snapshot(len(names))
    assert store.needs_snapshot(len(names), scrub=True) and HeldSetFile(str(tmp_path)).needs_snapshot(10_000)


def test_an_engine_key_leaves_the_disk_with_its_adapter(tmp_path: Path) -> None:
    key = "engine-key-5e1d"
    with FakeEngine("vllm") as engine, _patio(engine, tmp_path) as patio:
        for i in range(WHOLE_WRITE_MAX + 5):
            _load(patio, f"g{i:04d}")
        body = {"lora_name": "keyed", "artifact_url": "/m/keyed", "additional_config": {"api-key": key}}
        assert http_json("POST", patio.url + "/v1/lora_adapter/load", body)[0] == 200
        assert key in (tmp_path / JOURNAL_FILE).read_text() + (tmp_path / STATE_FILE).read_text()
        assert http_json("POST", patio.url + "/v1/lora_adapter/unload", {"lora_name": "keyed"})[0] == 200
    on_disk = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert key not in on_disk


def test_write_held_set_still_replaces_the_set_whole(tmp_path: Path) -> None:
    write_held_set(str(tmp_path), [_entry("a")])
    write_held_set(str(tmp_path), [_entry("b")])
    assert [a["name"] for a in read_held_set(str(tmp_path))] == ["b"]
    assert json.loads((tmp_path / STATE_FILE).read_text())["generation"] == 2
