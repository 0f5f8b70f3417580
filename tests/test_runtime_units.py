"""The runtime's small parts, each on its own: the registry file, kvcached's segment, the
nvidia-smi reading, AIBrix's served-model markers, the bounded engine log, /proc liveness,
and the runtime's metrics through promtool."""

import json
import os
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from patio.metrics.registry import Registry
from patio.metrics.write import render
from patio.runtime import enginelog, gpus, kvcache, markers, processes, registry
from patio.runtime.metrics import RuntimeMetrics
from patio.runtime.records import ModelRecord, from_registry, iso, parse_iso
from patio.runtime.requests import ClaimRef


def record(**fields: Any) -> ModelRecord:
    base = dict(
        model_name="org/m",
        engine="vllm",
        port=20001,
        ipc_name="kvc_org-m",
        artifact_url="s3://bucket/m",
        model_path="/models/m",
        args=(("--max-model-len", "2048"),),
        claim_ref=ClaimRef("ns", "c", "u"),
        pid=4242,
        start_time="123456",
        launch_id="abc",
        restart_count=2,
        failures=1,
        last_error="the engine process was killed by SIGKILL",
        credentials=(("HF_TOKEN", "hf_secret"),),
    )
    base.update(fields)
    return ModelRecord(**base)  # type: ignore[arg-type]


def test_registry_round_trip_is_whole_private_and_holds_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "run" / "engines.json"
    original = record()
    original.remember("sleep", "op-1")
    registry.save(str(path), [original.to_registry()])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "hf_secret" not in path.read_text()
    assert not [p for p in path.parent.iterdir() if p.name != "engines.json"]  # no temporary left
    loaded, invalid = registry.load(str(path))
    assert invalid == 0 and len(loaded) == 1
    back = loaded[0]
    assert (back.model_name, back.port, back.pid, back.start_time, back.args, back.claim_ref) == (
        "org/m",
        20001,
        4242,
        "123456",
        (("--max-model-len", "2048"),),
        ClaimRef("ns", "c", "u"),
    )
    assert back.completed("sleep", "op-1") and back.credentials == ()
    assert (back.restart_count, back.failures, back.last_error) == (2, 1, "the engine process was killed by SIGKILL")


@pytest.mark.parametrize(
    "content, invalid",
    [
        (b"", 1),
        (b"{not json", 1),
        (b'{"version": 2, "engines": []}', 1),
        (b'{"version": 1, "engines": {}}', 1),
        (b'{"version": 1, "engines": [{"model_name": "m"}]}', 1),
        (
            b'{"version": 1, "engines": [{"model_name": "m", "engine": "vllm", "port": 0, "ipc_name": "i", '
            b'"artifact_url": "a", "model_path": "p"}]}',
            1,
        ),
        (
            b'{"version": 1, "engines": [{"model_name": "m", "engine": "vllm", "port": 1, "ipc_name": "i", '
            b'"artifact_url": "a", "model_path": "p", "pid": 1}]}',
            1,
        ),
        (
            b'{"version": 1, "engines": [{"model_name": "m", "engine": "vllm", "port": 1, "ipc_name": "i", '
            b'"artifact_url": "a", "model_path": "p", "phase": "dancing"}]}',
            1,
        ),
    ],
    ids=[
        "an empty file",
        "not JSON",
        "another version",
        "engines not a list",
        "a record missing its fields",
        "port 0",
        "pid 1 (init: never signalled)",
        "an unknown phase",
    ],
)
def test_an_unusable_registry_is_ignored_and_counted(tmp_path: Path, content: bytes, invalid: int) -> None:
    path = tmp_path / "engines.json"
    path.write_bytes(content)
    assert registry.load(str(path)) == ([], invalid)


def test_iso_times_are_what_go_parses() -> None:
    assert iso(0.5) == "1970-01-01T00:00:00.500000Z"
    assert parse_iso(iso(1768000000.25)) == 1768000000.25
    assert from_registry(record().to_registry()).last_transition > 0


def test_kv_segment_read_and_limit_under_the_engines_lock(tmp_path: Path) -> None:
    (tmp_path / "kvc_m").write_bytes(struct.pack("<3q", 10, 3, 4) + b"rest")
    assert kvcache.read_segment(str(tmp_path), "kvc_m") == (10, 3, 4)
    assert kvcache.read_segment(str(tmp_path), "missing") is None
    assert kvcache.read_segment(str(tmp_path), "../etc") is None
    import fcntl

    holder = os.open(tmp_path / "kvc_m", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the engine rewriting its struct
    released = threading.Timer(0.2, lambda: os.close(holder))
    released.start()
    kvcache.write_limit(str(tmp_path), "kvc_m", 7 << 30)
    released.join()
    assert kvcache.read_segment(str(tmp_path), "kvc_m") == (7 << 30, 3, 4)
    assert (tmp_path / "kvc_m").read_bytes()[24:] == b"rest"
    with pytest.raises(kvcache.SegmentMissing):
        kvcache.write_limit(str(tmp_path), "missing", 1)
    held = os.open(tmp_path / "kvc_m", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(kvcache.SegmentLocked):
            kvcache.write_limit(str(tmp_path), "kvc_m", 1, lock_timeout=0.1)
    finally:
        os.close(held)
    assert kvcache.read_segment(str(tmp_path), "kvc_m") == (7 << 30, 3, 4)


# What `nvidia-smi --query-gpu=uuid,memory.total,memory.free --format=csv,noheader,nounits`
# and `--query-compute-apps=pid,gpu_uuid,used_memory` print (MiB).
CARDS = "GPU-aaaa, 81559, 1024\nGPU-bbbb, 81559, [N/A]\n"
APPS = "4242, GPU-aaaa, 70000\n4243, GPU-aaaa, 1000\n4243, GPU-cccc, 5000\nbad line\n"


def test_nvidia_smi_is_parsed_and_peaks_are_per_card() -> None:
    cards = gpus.parse_cards(CARDS)
    assert [c.to_json() for c in cards] == [
        {"id": "GPU-aaaa", "hbm_total_bytes": 81559 << 20, "hbm_free_bytes": 1024 << 20, "hbm_usable_bytes": -1}
    ]
    usage = gpus.parse_apps(APPS)
    assert gpus.peak_bytes([4242, 4243], usage) == 71000 << 20
    assert gpus.peak_bytes([999], usage) == 0


def test_the_snapshot_asks_nvidia_smi_once_per_ttl(tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    count = tmp_path / "count"
    script.write_text(
        "#!/bin/sh\necho x >> " + str(count) + "\n"
        'case "$1" in --query-gpu*) printf "GPU-aaaa, 100, 50\\n";; *) printf "7, GPU-aaaa, 10\\n";; esac\n'
    )
    script.chmod(0o755)
    reader = gpus.Gpus(str(script))
    for _ in range(3):
        cards, usage = reader.observe()
    assert len(cards) == 1 and usage == {7: {"GPU-aaaa": 10 << 20}}
    assert len(count.read_text().split()) == 2  # one query of each kind
    assert gpus.Gpus(str(tmp_path / "absent")).observe() == ([], {})


def test_markers_are_aibrixs_and_a_bad_one_is_skipped(tmp_path: Path) -> None:
    markers.write_marker(str(tmp_path), "org/model", "s3://bucket/model")
    markers.write_marker(str(tmp_path), "other", "hf://o/other")
    served = tmp_path / ".aibrix" / "served"
    (served / "broken.json").write_text("{")
    assert json.loads((served / "org--model.json").read_text()) == {
        "model_name": "org/model",
        "artifact_url": "s3://bucket/model",
    }
    assert markers.cached_artifacts(str(tmp_path)) == ["hf://o/other", "s3://bucket/model"]
    assert markers.cached_artifacts(str(tmp_path / "none")) == []


def test_the_engine_log_is_trimmed_while_the_writer_keeps_appending(tmp_path: Path) -> None:
    path = enginelog.prepare(str(tmp_path / "logs"), "org/m")
    assert Path(path).name.startswith("org-m-")
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(writer, b"x" * 100_000 + b"\n")
    assert enginelog.trim(path, 64 * 1024) is True
    os.write(writer, b"ERROR \x1b[31mthe last words\x1b[0m\n")
    os.close(writer)
    assert os.path.getsize(path) < 100  # appends continue at the new end, not at the old offset
    assert os.path.getsize(path + ".1") == 100_001
    assert enginelog.last_line(path) == "ERROR the last words"
    assert enginelog.trim(path, 64 * 1024) is False


def test_liveness_is_the_process_that_started_not_a_reused_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        started = processes.start_time(child.pid)
        assert started and processes.is_alive(child.pid, started)
        assert not processes.is_alive(child.pid, str(int(started) + 1))  # same pid, another start: not ours
        assert processes.group_members(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert not processes.is_alive(child.pid, started) and processes.group_members(child.pid) == []
    assert processes.group_members(1) == [] and not processes.signal_group(1, 0)  # never init's group


def test_describe_exit() -> None:
    assert processes.describe_exit(-9) == "the engine process was killed by SIGKILL"
    assert processes.describe_exit(3) == "the engine process exited with status 3"


def test_runtime_metrics_pass_promtool() -> None:
    registry_ = Registry()
    records = [record(), record(model_name='we"ird\\name\n', phase="sleeping", sleep_level=1)]
    metrics = RuntimeMetrics(registry_, lambda: records)
    metrics.transition("org/m", "sleep", "applied", 0.2)
    metrics.transition('we"ird\\name\n', "wake", "failed", 1.0)
    metrics.restarted("org/m")
    metrics.kv_limit("org/m", "applied")
    text = render(registry_.collect())
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr + check.stdout
    assert 'patio_runtime_engines{phase="sleeping"} 1' in text and 'patio_runtime_engines{phase="failed"} 0' in text
    metrics.forget("org/m")  # deactivated: its series end
    after = render(registry_.collect())
    assert 'patio_runtime_engine_restarts_total{model="org/m"}' not in after
    assert 'patio_runtime_kv_limit_operations_total{model="org/m"' not in after
