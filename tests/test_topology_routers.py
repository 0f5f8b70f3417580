"""Topology against every router generation in use today, each the real PyPI build.

One scenario table, run against sglang-router 0.3.2, smg 1.13.0 and vllm-router
0.1.17 (tests/peers/routers.py; venvs built by tests/run.sh).  Patio runs as the
real pyz process; the worker is a fake engine answering /health.  Each generation's
router is started once for the module; scenarios that need another configuration
(an API key, prefill/decode) start their own.  Heartbeats every 0.3 s keep it fast.
"""

import json
import re
import signal
import time
from typing import Any, Dict, Iterator, Optional

import pytest
from fakes.engine import FakeEngine
from peers.polling import wait_for
from peers.routers import GENERATIONS, RealRouter
from support import PatioProcess, http_call, http_json

from patio.topology.answers import Member
from patio.topology.router_client import RouterClient
from patio.topology.settings import TopologySettings

HEARTBEAT = 0.3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=GENERATIONS, ids=[g.name for g in GENERATIONS])
def router(request: Any) -> Iterator[RealRouter]:
    r = RealRouter(request.param)
    yield r
    r.stop()


@pytest.fixture()
def live_router(router: RealRouter) -> Iterator[RealRouter]:
    """The module's router, started again after a scenario that stopped it."""
    yield router
    if router.proc is None or router.proc.poll() is not None:
        router.start()


@pytest.fixture()
def engine() -> Iterator[FakeEngine]:
    e = FakeEngine("sglang")
    yield e
    e.stop()


def patio(
    router: RealRouter,
    engine: FakeEngine,
    worker_type: str = "regular",
    bootstrap: Optional[int] = None,
    env: Optional[Dict[str, str]] = None,
    args: tuple = (),
    interval: float = HEARTBEAT,
    wait: bool = True,
) -> PatioProcess:
    data: Dict[str, Any] = {"port": engine.port, "worker_type": worker_type}
    if bootstrap is not None:
        data["bootstrap_port"] = bootstrap
    full_env = {
        "TOPO_TYPE": router.generation.topo_type,
        "SGL_ROUTER_ENDPOINT": router.url,
        "POD_IP": "127.0.0.1",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "HEARTBEAT_INTERVAL": str(interval),
        "PATIO_LOG_LEVEL": "INFO",
    }
    full_env.update(env or {})
    argv = ["--instance-info", json.dumps({"data": data}), "--scrape-engine-metrics", "false", *args]
    return PatioProcess(argv, env=full_env, wait=wait)


def topology(p: PatioProcess) -> Dict[str, Any]:
    status, body = http_json("GET", p.url + "/v1/topology")
    assert status == 200
    return body


def ready(p: PatioProcess) -> int:
    return http_call("GET", p.url + "/ready")[0]


def metric(p: PatioProcess, name: str, labels: str = "") -> float:
    text = http_call("GET", p.url + "/metrics")[2].decode()
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def beats(p: PatioProcess, result: str = "success") -> float:
    return metric(p, "patio_topology_heartbeats_total", f'{{result="{result}"}}')


# -- the scenario table ----------------------------------------------------------------------


def test_client_register_twice_lookup_and_remove(live_router: RealRouter, engine: FakeEngine) -> None:
    """The client alone: a second POST for a known URL is "registered" on every generation
    (smg answers 409 naming the id, vllm-router 400 "already exists", sglang-router 202)."""
    gen = live_router.generation
    client = RouterClient(
        TopologySettings(
            enabled=True, topo_type=gen.topo_type.lower(), router_url=live_router.url, worker_url=engine.url
        )
    )
    first = client.register()
    assert wait_for(lambda: live_router.listed(engine.url))
    second = client.register()
    assert client.generation_name == gen.detected, client.generation_evidence
    assert second.worker_id == first.worker_id  # None on vllm-router: it has no ids
    assert second.already is (gen.detected in ("smg", "vllm-router"))
    member = client.lookup(first.worker_id)
    assert member is not None and member.worker_id == first.worker_id
    # sglang-router queues an add job even for a repeated POST; a DELETE sent while it is still
    # pending loses the race (the job re-adds the worker: sglang-router.md, "DELETE while the add
    # job is still pending can lose the race; re-check after registration settles"). Remove once
    # the router settled; on a loaded machine the job may show up late, so a worker re-added
    # after the DELETE is removed again, as the reference says (at most twice more).
    worker_id = first.worker_id
    for _attempt in range(3):
        assert wait_for(lambda w=worker_id: not (client.lookup(w) or Member(None, None, None)).pending)
        client.remove(worker_id)
        # smg drains a removed worker (lookup: "status": "draining") while the listing drops it.
        assert wait_for(lambda w=worker_id: (client.lookup(w) or Member(None, None, None, leaving=True)).leaving)
        if wait_for(lambda: live_router.routable(engine.url) is None):
            break
        worker_id = (client.find_by_url() or Member(worker_id, None, None)).worker_id  # the re-added entry
    assert live_router.routable(engine.url) is None


def test_registers_then_sigterm_removes_before_exit(live_router: RealRouter, engine: FakeEngine) -> None:
    """Register (regular); ready; generation shown; SIGTERM: 503 first, removed, then exit 0."""
    router = live_router
    p = patio(router, engine)
    try:
        assert wait_for(lambda: router.listed(engine.url)), p.output()
        assert wait_for(lambda: ready(p) == 200, timeout=5), p.output()
        topo = topology(p)
        assert topo["registered"] and topo["router_generation"] == router.generation.detected, topo
        info = f'{{generation="{router.generation.detected}"}}'
        assert metric(p, "patio_topology_router_info", info) == 1.0
        assert metric(p, "patio_topology_registered") == 1.0
        assert p.stop(signal.SIGTERM) == 0
        assert router.routable(engine.url) is None  # out of rotation before Patio exits
        assert wait_for(lambda: router.listed(engine.url) is None, timeout=10)  # and forgotten after smg's drain
        log = p.output()
        order = [log.index(s) for s in ("readiness now 503", "unregistered", "shutdown complete")]
        assert order == sorted(order), log
    finally:
        p.kill()


def test_known_worker_stays_registered_over_five_heartbeats(live_router: RealRouter, engine: FakeEngine) -> None:
    """The router already lists the worker (smg answers 409, vllm-router 400 to a re-POST)."""
    router = live_router
    status, _ = router.add(engine.url)
    assert status in (200, 202), status
    assert wait_for(lambda: router.listed(engine.url))
    with patio(router, engine) as p:
        assert wait_for(lambda: beats(p) >= 6, timeout=10), p.output()
        topo = topology(p)
        assert topo["registered"] and topo["last_heartbeat_error"] is None, topo
        assert beats(p, "error") == 0 and ready(p) == 200
        assert [w["url"] for w in router.workers()].count(engine.url) == 1
        assert p.stop() == 0
    assert router.routable(engine.url) is None


def test_router_restart_is_relearned_within_one_heartbeat(live_router: RealRouter, engine: FakeEngine) -> None:
    router = live_router
    with patio(router, engine) as p:
        assert wait_for(lambda: router.listed(engine.url))
        first = topology(p)["worker_id"]
        router.restart()
        back = time.monotonic()
        assert wait_for(lambda: router.listed(engine.url), timeout=HEARTBEAT + 5), p.output()
        relearned = time.monotonic() - back
        # One interval, plus the router's own add job and first health check of the worker.
        assert relearned < HEARTBEAT + 3.0, relearned
        assert wait_for(lambda: metric(p, "patio_topology_router_restarts_total") == 1.0, timeout=3), p.output()
        if router.generation.detected != "vllm-router":  # the only generation without ids
            assert topology(p)["worker_id"] != first
        assert ready(p) == 200  # first-registration readiness: a restart takes no worker out
        assert p.stop() == 0
    assert router.routable(engine.url) is None


def test_router_down_at_start_registers_when_it_comes_up(live_router: RealRouter, engine: FakeEngine) -> None:
    router = live_router
    router.kill()
    with patio(router, engine) as p:
        assert wait_for(lambda: topology(p)["last_heartbeat_result"] == "error", timeout=5)
        assert ready(p) == 503
        assert "not registered" in http_json("GET", p.url + "/ready")[1]["message"]
        router.start()
        assert wait_for(lambda: router.listed(engine.url), timeout=10), p.output()
        assert wait_for(lambda: ready(p) == 200, timeout=5)
        assert p.stop() == 0


def test_strict_readiness_follows_the_router(live_router: RealRouter, engine: FakeEngine) -> None:
    router = live_router
    with patio(router, engine, args=("--topology-readiness", "strict")) as p:
        assert wait_for(lambda: ready(p) == 200, timeout=10), p.output()
        router.kill()
        assert wait_for(lambda: ready(p) == 503, timeout=5), p.output()
        router.start()
        assert wait_for(lambda: ready(p) == 200, timeout=10), p.output()
        assert p.stop() == 0


def test_first_registration_readiness_survives_an_outage(live_router: RealRouter, engine: FakeEngine) -> None:
    router = live_router
    with patio(router, engine) as p:
        assert wait_for(lambda: ready(p) == 200, timeout=10), p.output()
        router.kill()
        assert wait_for(lambda: beats(p, "error") >= 3, timeout=10), p.output()
        status, body = http_json("GET", p.url + "/ready")
        assert status == 200 and "failing now" in json.dumps(body), body
        assert metric(p, "patio_topology_registered") == 0.0
        router.start()
        assert wait_for(lambda: router.listed(engine.url), timeout=10)
        assert p.stop() == 0


def test_router_down_at_sigterm_exits_within_budget(live_router: RealRouter, engine: FakeEngine) -> None:
    router = live_router
    p = patio(router, engine, args=("--shutdown-timeout", "4", "--drain-timeout", "1"))
    try:
        assert wait_for(lambda: router.listed(engine.url)), p.output()
        router.kill()
        started = time.monotonic()
        assert p.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 4.5
        assert "could not unregister" in p.output()
    finally:
        p.kill()


def test_api_key(router: RealRouter, engine: FakeEngine) -> None:
    """With the key Patio registers; without it the 401 is reported and retried at the beat pace."""
    keyed = RealRouter(router.generation, "--api-key", "router-secret")
    try:
        with patio(keyed, engine, env={"SGL_ROUTER_API_KEY": "router-secret"}) as p:
            assert wait_for(lambda: keyed.listed(engine.url, key="router-secret")), p.output()
            assert "router-secret" not in json.dumps(topology(p)) and "router-secret" not in p.output()
            assert p.stop() == 0
        assert keyed.routable(engine.url, key="router-secret") is None
        if not router.generation.control_plane_auth:
            # vllm-router 0.1.17's --api-key is what it sends to workers (vllm_router/router.py);
            # /workers is open, so Patio without the key registers too.
            with patio(keyed, engine) as p:
                assert wait_for(lambda: keyed.listed(engine.url)), p.output()
                assert p.stop() == 0
            return
        with patio(keyed, engine, interval=1.0) as p:
            assert wait_for(lambda: topology(p)["auth_failures"] >= 1, timeout=5), p.output()
            topo = topology(p)
            assert not topo["registered"] and "SGL_ROUTER_API_KEY" in topo["last_heartbeat_error"], topo
            assert ready(p) == 503
            time.sleep(2.5)
            # Never a tight loop: at most one attempt per (jittered) interval of 0.8-1 s.
            assert 2 <= metric(p, "patio_topology_router_auth_failures_total") <= 5
            assert "SGL_ROUTER_API_KEY" in p.output()
            assert keyed.routable(engine.url, key="router-secret") is None
            assert p.stop() == 0
    finally:
        keyed.stop()


def test_prefill_and_decode_and_a_changed_type_is_replaced(router: RealRouter) -> None:
    gen = router.generation
    pd = RealRouter(gen, *gen.pd_flags)
    prefill, decode = FakeEngine("sglang"), FakeEngine("sglang")
    try:
        # A stale registration of the decode worker's URL as "regular" (a pod that changed role).
        pd.add(decode.url)
        assert wait_for(lambda: pd.listed(decode.url))
        with patio(pd, prefill, "prefill", 34000) as p1, patio(pd, decode, "decode") as p2:
            assert wait_for(lambda: (pd.listed(prefill.url) or {}).get("worker_type") == "prefill"), p1.output()
            assert wait_for(lambda: (pd.listed(decode.url) or {}).get("worker_type") == "decode"), p2.output()
            bootstrap = pd.listed(prefill.url).get("bootstrap_port")
            assert bootstrap in (34000, None if gen.pd_detected == "vllm-router-igw" else 34000)
            assert topology(p1)["router_generation"] == gen.pd_detected
            assert ready(p1) == 200 and ready(p2) == 200
            assert p1.stop() == 0 and p2.stop() == 0
            assert pd.routable(prefill.url) is None and pd.routable(decode.url) is None, pd.workers()
    finally:
        pd.stop()
        prefill.stop()
        decode.stop()


def test_prefill_on_a_regular_router_is_listed_or_warned(live_router: RealRouter, engine: FakeEngine) -> None:
    """sglang-router and smg accept a prefill worker without PD mode; vllm-router (single mode)
    drops worker_type, and Patio says so in /v1/topology instead of pretending."""
    router = live_router
    with patio(router, engine, "prefill", 34000) as p:
        assert wait_for(lambda: router.listed(engine.url)), p.output()
        if router.generation.detected == "vllm-router":
            assert wait_for(lambda: topology(p)["warnings"], timeout=5), p.output()
            assert "--enable-igw" in topology(p)["warnings"][0]
            assert router.listed(engine.url)["worker_type"] == "regular"
        else:
            assert wait_for(lambda: (router.listed(engine.url) or {}).get("bootstrap_port") == 34000), p.output()
            assert router.listed(engine.url)["worker_type"] == "prefill" and topology(p)["warnings"] == []
        assert ready(p) == 200
        assert p.stop() == 0
    assert router.routable(engine.url) is None
