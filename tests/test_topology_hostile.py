"""Topology against a hostile router (tests/peers/scripted_router.py): bodies that are HTML
or garbage, 500s, a 409 that names no id, answers that never come, resets, bytes that are
not HTTP, a head then silence, 1 GiB bodies, drips, membership flipping at every beat.
Each must end in bounded retries and a clear error in the snapshot that ``/v1/topology``
serves, never a crash or a stuck shutdown.  The real Heartbeat and RouterClient run their
real thread over real sockets; the attack table (tests/peers/router_attacks.py) runs the
whole pyz with a kubelet-like prober on /ready and RSS and threads sampled from /proc."""

import json
import signal
import time
from typing import Dict, Iterator, List, Tuple

import pytest
from fakes.engine import FakeEngine
from peers.polling import wait_for
from peers.router_attacks import ATTACK_SECONDS, ATTACKS, Attack, run_attack
from peers.router_attacks import INTERVAL as ATTACK_INTERVAL
from peers.scripted_router import Action, Cycle, ScriptedRouter, Slow
from support import PatioProcess, build_pyz, free_port, http_json

from patio.topology.heartbeat import Heartbeat
from patio.topology.router_client import RouterClient
from patio.topology.settings import TopologySettings

INTERVAL = 0.3
TIMEOUT = 0.3
WORKER = "http://127.0.0.1:9"  # never contacted: the router is scripted
EMPTY = {("GET", "/workers"): (200, {"workers": [], "total": 0})}

HOSTILE = [
    ("html_on_post", "sglang", {("POST", "/workers"): (200, b"<html><body>502 Bad Gateway</body></html>")}, "not JSON"),
    ("json_list_on_post", "sglang", {("POST", "/workers"): (202, [1, 2])}, "router answered 202 to POST /workers"),
    ("status_500", "sglang", {("POST", "/workers"): (500, {"error": "boom"})}, "answered 500 to POST /workers"),
    (
        "conflict_without_id",
        "sglang",
        {("POST", "/workers"): (409, {"error": "Worker already exists", "code": "WORKER_ALREADY_EXISTS"})},
        "already exists but does not list it",
    ),
    ("hang_on_post", "sglang", {("POST", "/workers"): "hang"}, "did not answer POST"),
    ("reset_on_post", "sglang", {("POST", "/workers"): "reset"}, "router"),
    ("not_http", "sglang", {("POST", "/workers"): "garbage"}, "malformed"),
    ("listing_is_html", "sglang", {("GET", "/workers"): (200, b"<html>login</html>")}, "not JSON"),
    # 100,000 nested '[': json.loads recursed into a RecursionError that killed the heartbeat thread.
    ("deeply_nested_json_on_post", "sglang", {("POST", "/workers"): (200, b"[" * 100_000)}, "not JSON"),
    ("deeply_nested_listing", "sglang", {("GET", "/workers"): (200, b"[" * 100_000)}, "not JSON"),
    ("listing_without_list", "sglang", {("GET", "/workers"): (200, {"workers": "many"})}, "no worker list"),
    ("lookup_hangs", "vllm", {("GET", "/workers/"): "hang"}, "did not answer GET"),
    (
        "vllm_400_other_than_exists",
        "vllm",
        {("POST", "/workers"): (400, {"error": "Invalid URL", "code": "ADD_WORKER_FAILED"})},
        "answered 400 to POST /workers: 'Invalid URL'",
    ),
    ("unauthorized", "vllm", {("GET", "/workers/"): (401, "You must provide a valid API key")}, "SGL_ROUTER_API_KEY"),
    ("forbidden", "sglang", {("GET", "/workers"): (403, {"error": "forbidden"})}, "SGL_ROUTER_API_KEY"),
]


def settings(url: str, family: str) -> TopologySettings:
    return TopologySettings(
        enabled=True,
        topo_type=family,
        router_url=url,
        worker_url=WORKER,
        heartbeat_interval=INTERVAL,
        request_timeout=TIMEOUT,
        heartbeat_jitter=0.2,
    )


@pytest.fixture()
def peer() -> Iterator[ScriptedRouter]:
    router = ScriptedRouter()
    yield router
    router.stop()


@pytest.mark.parametrize("family,rules,error", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_router_is_retried_boundedly_and_reported(
    peer: ScriptedRouter, family: str, rules: Dict[Tuple[str, str], Action], error: str
) -> None:
    peer.rules = {**EMPTY, ("DELETE", "/workers/"): (404, {}), **rules}
    beat = Heartbeat(settings(peer.url, family), RouterClient(settings(peer.url, family)), lambda: True)
    beat.start()
    assert wait_for(lambda: beat.consecutive_failures >= 3), beat.snapshot()
    window_start, calls_before = time.monotonic(), peer.count()
    time.sleep(0.6)
    snapshot = beat.snapshot()
    assert error in str(snapshot["last_heartbeat_error"]), snapshot
    assert snapshot["registered"] is False and snapshot["ever_registered"] is False
    assert beat._thread is not None and beat._thread.is_alive()  # never a crash
    # Bounded: failures wait at least half the (capped) backoff step, 401/403 a whole beat;
    # each beat makes at most a few calls.  A tight loop would make hundreds.
    elapsed = time.monotonic() - window_start
    assert peer.count() - calls_before <= 3 * (elapsed / (INTERVAL / 2) + 1), peer.requests
    if error == "SGL_ROUTER_API_KEY":
        assert snapshot["auth_failures"] >= 1
    json.dumps(snapshot)  # what /v1/topology serves is always JSON
    began = time.monotonic()
    beat.shutdown(budget=1.5)
    assert not beat._thread.is_alive()
    assert time.monotonic() - began < 1.5 + TIMEOUT + 1.0  # bounded by the budget, never stuck


def test_409_naming_no_id_adopts_the_listing(peer: ScriptedRouter) -> None:
    worker_id = "01a22974-03a7-7191-b4cd-4d36c52b2981"
    entry = {"id": worker_id, "url": WORKER, "worker_type": "regular", "status": "ready", "runtime_type": "sglang"}
    peer.rules = {
        ("GET", "/workers"): (200, {"workers": []}),
        ("POST", "/workers"): (409, {"error": "exists", "code": "WORKER_ALREADY_EXISTS"}),
    }
    beat = Heartbeat(settings(peer.url, "sglang"), RouterClient(settings(peer.url, "sglang")), lambda: True)
    beat.start()
    assert wait_for(lambda: beat.consecutive_failures >= 1)
    peer.rules[("GET", "/workers")] = (200, {"workers": [entry]})
    peer.rules[("GET", "/workers/")] = (200, entry)
    assert wait_for(lambda: beat.registered), beat.snapshot()
    snapshot = beat.snapshot()
    assert snapshot["worker_id"] == worker_id and snapshot["router_generation"] == "smg"
    assert snapshot["router_restarts"] == 0
    peer.rules[("DELETE", "/workers/")] = (202, {"status": "accepted"})
    peer.rules[("GET", "/workers/")] = (404, {"code": "WORKER_NOT_FOUND"})
    assert beat.shutdown(budget=2.0) is True
    assert ("DELETE", f"/workers/{worker_id}") in peer.requests


def test_patio_exits_within_budget_when_every_router_call_hangs(peer: ScriptedRouter) -> None:
    """The whole pyz: registered, then the router hangs every call; SIGTERM still exits 0 in time."""
    entry = {"id": "d68605b2-bb4f-405e-a020-e10688bffd44", "url": "", "worker_type": "regular"}
    engine = FakeEngine("sglang")
    entry["url"] = engine.url
    peer.rules = {
        ("GET", "/workers"): (200, {"workers": [entry]}),
        ("GET", "/workers/"): (200, entry),
        ("POST", "/workers"): (202, {"status": "accepted", "worker_id": entry["id"]}),
    }
    env = {
        "TOPO_TYPE": "SGLang",
        "SGL_ROUTER_ENDPOINT": peer.url,
        "POD_IP": "127.0.0.1",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "HEARTBEAT_INTERVAL": str(INTERVAL),
        "SGL_ROUTER_TIMEOUT": "1",
    }
    info = json.dumps({"data": {"port": engine.port}})
    argv = ["--instance-info", info, "--scrape-engine-metrics", "false", "--shutdown-timeout", "4"]
    p = PatioProcess([*argv, "--drain-timeout", "1"], env=env)
    try:
        assert wait_for(lambda: http_json("GET", p.url + "/v1/topology")[1]["registered"]), p.output()
        for key in list(peer.rules):
            peer.rules[key] = "hang"
        assert wait_for(lambda: "did not answer" in str(http_json("GET", p.url + "/v1/topology")[1]))
        assert http_json("GET", p.url + "/ready")[0] == 200  # registered once: an outage keeps it ready
        began = time.monotonic()
        assert p.stop(signal.SIGTERM) == 0
        assert time.monotonic() - began < 4.5
        assert "could not unregister" in p.output()
    finally:
        p.kill()
        engine.stop()


# -- a hostile router against the whole pyz (tests/peers/router_attacks.py) -------------------
# Patio's RSS may grow by the router answer limit (MAX_ROUTER_ANSWER, 4 MiB) while one answer
# is read, plus one copy when its pieces are joined and the allocator's slack; never with
# the size of what the router sends (1 GiB) or with the number of beats.
RSS_SLACK_MB = 16.0
# The pools may start a thread for a probe the baseline did not need; the heartbeat is one
# thread whatever the router does.
THREAD_SLACK = 2


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_hostile_router_against_the_pyz(attack: Attack) -> None:
    out = run_attack(build_pyz(), attack, free_port())
    report = {k: v for k, v in out.__dict__.items() if k not in ("log", "statuses")}
    assert out.alive and out.exit_code == 0, (report, out.log[-3000:])
    # /ready stays fast and honest: registered once, so an outage keeps it 200 (first-registration).
    assert out.probes >= 20 and out.failed_probes == 0, (report, sorted(set(out.statuses)))
    if attack.error is not None:
        assert attack.error in str(out.last_error), report
    # Patio's own retries never take its worker out of the router, nor re-register it blindly.
    assert out.deletes <= attack.max_deletes, report
    if attack.error is not None:
        assert out.posts == 0, report  # every lookup failed: nothing says the worker is absent
    # Bounded retries: at most a few calls per backoff step (>= half the capped 0.3 s).
    assert out.calls <= 3 * (ATTACK_SECONDS / (ATTACK_INTERVAL / 2) + 1), report
    # Bounded reads: of a 1 GiB body Patio takes its answer limit and hangs up.
    assert out.bytes_sent_per_call < 64 * 1024 * 1024, report
    assert out.rss_peak_mb - out.rss_base_mb <= RSS_SLACK_MB, report
    assert out.threads_peak <= out.threads_base + THREAD_SLACK, report
    assert out.recovered, (report, out.log[-3000:])  # the router behaves again: registered again
    assert "unregistered" in out.log, out.log[-3000:]


def test_a_heartbeat_ends_by_its_deadline_however_slowly_each_call_answers(peer: ScriptedRouter) -> None:
    """Each call answers in 0.6 of the router timeout: three calls in a row (look up, POST, find
    the id) would stretch one beat to 1.8 timeouts, past the shutdown's wait for it."""
    timeout = 1.0
    slow = 0.6 * timeout
    peer.rules = {
        ("GET", "/workers"): Slow(slow, 200, {"workers": []}),
        ("POST", "/workers"): Slow(slow, 202, {"status": "accepted"}),  # no id: look it up by URL
    }
    config = TopologySettings(**{**settings(peer.url, "sglang").__dict__, "request_timeout": timeout})
    results: List[float] = []
    client = RouterClient(config)
    beat = Heartbeat(config, client, lambda: True, on_heartbeat=lambda _: results.append(time.monotonic()))
    beat.start()
    try:
        assert wait_for(lambda: results, timeout=10)
        began = peer.log[0].at
        first_beat = [c for c in peer.log if c.at < results[0]]
        assert [(c.method, c.path) for c in first_beat] == [("GET", "/workers"), ("POST", "/workers")], peer.log
        assert results[0] - began <= timeout + 0.3, results[0] - began  # its deadline, plus one last read
        assert "did not answer POST" in str(beat.last_error), beat.snapshot()
    finally:
        beat.shutdown(budget=2.0)


def test_no_post_after_a_shutdown_that_began_during_a_replace(peer: ScriptedRouter) -> None:
    """sglang-router replaces a listing of another worker_type by DELETE then POST.  A shutdown
    that begins between the two must not be followed by the POST: the router would list a
    worker that is gone, and routers never evict one by themselves."""
    listed = {"id": "d68605b2-bb4f-405e-a020-e10688bffd44", "url": WORKER, "worker_type": "decode"}
    peer.rules = {
        ("GET", "/workers"): (200, {"workers": [listed]}),
        ("GET", "/workers/"): Cycle([(200, listed), Slow(0.5, 404, {"code": "WORKER_NOT_FOUND"})]),
        ("DELETE", "/workers/"): (202, {"status": "accepted"}),
        ("POST", "/workers"): (202, {"status": "accepted", "worker_id": listed["id"]}),
    }
    config = TopologySettings(**{**settings(peer.url, "sglang").__dict__, "request_timeout": 2.0})
    beat = Heartbeat(config, RouterClient(config), lambda: True)
    beat.start()
    assert wait_for(lambda: peer.count("DELETE") >= 1)  # the replace's DELETE; its look is slow
    stopped = time.monotonic()
    peer.rules[("GET", "/workers/")] = (404, {"code": "WORKER_NOT_FOUND"})
    assert beat.shutdown(budget=4.0) is True
    assert [c.path for c in peer.log if c.method == "POST" and c.at > stopped] == [], peer.log
