"""The seam for an engine that sleeps and wakes: ``TopologyComponent.leave()`` / ``rejoin()``,
on the three real routers (sglang-router 0.3.2, smg 1.13.0, vllm-router 0.1.17).

Patio runs in this process (tests/support.py RunningPatio: the real server, the real
heartbeat thread) so the coroutines are called on its own loop, as the lifecycle will call
them.  ``leave()`` takes the worker out of the router and no heartbeat puts it back;
``rejoin()`` registers it again at once and heartbeats resume; a router that is down makes
``leave()`` give up within its budget, and ``rejoin()`` succeed once it is back.
"""

import json
import time
from typing import Any, Dict, Iterator

import pytest
from fakes.engine import FakeEngine
from peers.polling import wait_for
from peers.routers import GENERATIONS, RealRouter
from support import RunningPatio, http_call, http_json, make_settings

from patio.topology.component import TopologyComponent

pytestmark = pytest.mark.slow

HEARTBEAT = 0.3
ROUTER_TIMEOUT = 0.5
# Room for smg's drain of the registration the leave removed (5 s) plus the backoff steps.
REJOIN_BUDGET = 15.0


@pytest.fixture(scope="module", params=GENERATIONS, ids=[g.name for g in GENERATIONS])
def router(request: Any) -> Iterator[RealRouter]:
    r = RealRouter(request.param)
    yield r
    r.stop()


@pytest.fixture()
def engine() -> Iterator[FakeEngine]:
    e = FakeEngine("sglang")
    yield e
    e.stop()


def running(router: RealRouter, engine: FakeEngine, *args: str) -> RunningPatio:
    env = {
        "TOPO_TYPE": router.generation.topo_type,
        "SGL_ROUTER_ENDPOINT": router.url,
        "POD_IP": "127.0.0.1",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "SGL_ROUTER_TIMEOUT": str(ROUTER_TIMEOUT),
    }
    argv = ["--instance-info", json.dumps({"data": {"port": engine.port}}), "--scrape-engine-metrics", "false"]
    return RunningPatio(make_settings([*argv, *args], env))


def topology(patio: RunningPatio) -> Dict[str, Any]:
    return http_json("GET", patio.url + "/v1/topology")[1]


def test_leave_keeps_the_worker_out_until_rejoin(router: RealRouter, engine: FakeEngine) -> None:
    with running(router, engine) as patio:
        topo = patio.app.find(TopologyComponent)
        assert wait_for(lambda: topology(patio)["registered"] and router.routable(engine.url)), router.workers()
        first_id = topology(patio)["worker_id"]

        assert patio.call(topo.leave) is True
        assert router.routable(engine.url) is None, router.workers()  # out of rotation when leave returns
        time.sleep(5 * HEARTBEAT)  # five heartbeats' worth: none puts it back
        assert router.routable(engine.url) is None, router.workers()
        snapshot = topology(patio)
        assert snapshot["left_router"] is True and snapshot["registered"] is False, snapshot
        status, _, body = http_call("GET", patio.url + "/ready")
        assert status == 200 and b"left the router" in body, body  # first-registration readiness
        assert patio.call(topo.leave) is True  # idempotent

        # smg keeps the left worker "draining" for --drain-settle-secs (5 s) and refuses its POST
        # meanwhile (409): rejoin() waits on the heartbeat's backoff, within its budget.
        assert patio.call(lambda: topo.rejoin(REJOIN_BUDGET)) is True
        # Accepted when rejoin returns; listed once the router's own add job checked the worker.
        assert wait_for(lambda: router.routable(engine.url)), router.workers()
        snapshot = topology(patio)
        assert snapshot["registered"] and not snapshot["left_router"] and snapshot["router_restarts"] == 0
        if router.generation.detected != "vllm-router":
            assert snapshot["worker_id"] not in (None, first_id)  # a new registration, a new id
        assert patio.call(topo.rejoin) is True  # idempotent
        time.sleep(3 * HEARTBEAT)
        assert topology(patio)["last_heartbeat_error"] is None  # heartbeats resumed, healthy
    assert router.routable(engine.url) is None  # and the shutdown removed it as always


def test_strict_readiness_is_503_while_left(router: RealRouter, engine: FakeEngine) -> None:
    with running(router, engine, "--topology-readiness", "strict") as patio:
        topo = patio.app.find(TopologyComponent)
        assert wait_for(lambda: http_call("GET", patio.url + "/ready")[0] == 200)
        assert patio.call(topo.leave) is True
        assert http_call("GET", patio.url + "/ready")[0] == 503
        assert patio.call(lambda: topo.rejoin(REJOIN_BUDGET)) is True
        assert http_call("GET", patio.url + "/ready")[0] == 200


def test_leave_gives_up_in_time_when_the_router_is_down_and_rejoin_follows_it_back(
    router: RealRouter, engine: FakeEngine
) -> None:
    with running(router, engine) as patio:
        topo = patio.app.find(TopologyComponent)
        assert wait_for(lambda: topology(patio)["registered"] and router.listed(engine.url))
        router.kill()
        try:
            began = time.monotonic()
            assert patio.call(topo.leave) is False
            assert time.monotonic() - began < 3 * ROUTER_TIMEOUT + 1.5  # LEAVE_TIMEOUTS router timeouts
            assert patio.call(topo.rejoin) is False  # still down: the heartbeat retries on its backoff
        finally:
            router.start()
        assert wait_for(lambda: router.routable(engine.url), timeout=10), router.workers()
        assert topology(patio)["registered"] is True
