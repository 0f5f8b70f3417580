"""Topology without a router: address derivation tables and heartbeat/stop ordering with a fake clock."""

import pytest

from patio.config import load_settings
from patio.errors import ConfigError
from patio.topology.heartbeat import Heartbeat
from patio.topology.settings import TopologySettings, derive

RBG = {
    "RBG_GROUP_NAME": "g",
    "RBG_ROLE_NAME": "prefill",
    "RBG_ROLE_INDEX": "2",
    "SGL_ROUTER_ROLE_NAME": "router",
    "SGL_ROUTER_PORT": "8000",
    "TOPO_TYPE": "SGLang",
}
INFO = ["--instance-info", '{"data":{"port":8000,"worker_type":"prefill","bootstrap_port":34000}}']

DERIVATION = [
    (
        "rbg_names",
        INFO,
        RBG,
        "http://g-router-0.s-g-router:8000",
        "http://g-prefill-2.s-g-prefill:8000",
        "prefill",
        34000,
    ),
    (
        "legacy_names",
        INFO,
        {
            "GROUP_NAME": "g",
            "ROLE_NAME": "decode",
            "ROLE_INDEX": "0",
            "SGL_ROUTER_ROLE_NAME": "r",
            "SGL_ROUTER_PORT": "30000",
            "TOPO_TYPE": "sglang",
        },
        "http://g-r-0.s-g-r:30000",
        "http://g-decode-0.s-g-decode:8000",
        "prefill",
        34000,
    ),
    (
        "rbg_wins_over_legacy",
        INFO,
        {**RBG, "GROUP_NAME": "old"},
        "http://g-router-0.s-g-router:8000",
        "http://g-prefill-2.s-g-prefill:8000",
        "prefill",
        34000,
    ),
    (
        "pod_ip_wins",
        INFO,
        {**RBG, "POD_IP": "10.1.2.3"},
        "http://g-router-0.s-g-router:8000",
        "http://10.1.2.3:8000",
        "prefill",
        34000,
    ),
    (
        "router_endpoint_host_port",
        INFO,
        {**RBG, "SGL_ROUTER_ENDPOINT": "router.ns:9000"},
        "http://router.ns:9000",
        "http://g-prefill-2.s-g-prefill:8000",
        "prefill",
        34000,
    ),
    (
        "router_endpoint_url",
        INFO,
        {"TOPO_TYPE": "SGLANG", "SGL_ROUTER_ENDPOINT": "http://10.0.0.9:8000/", "POD_IP": "1.2.3.4"},
        "http://10.0.0.9:8000",
        "http://1.2.3.4:8000",
        "prefill",
        34000,
    ),
    (
        "hostname_fallback",
        INFO,
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1"},
        "http://r:1",
        "http://pod-x:8000",
        "prefill",
        34000,
    ),
    (
        "worker_from_env",
        [],
        {
            "TOPO_TYPE": "SGLang",
            "SGL_ROUTER_ENDPOINT": "r:1",
            "POD_IP": "1.1.1.1",
            "WORKER_TYPE": "decode",
            "WORKER_PORT": "30001",
        },
        "http://r:1",
        "http://1.1.1.1:30001",
        "decode",
        None,
    ),
    (
        "topo_type_inside_instance_info",
        ["--instance-info", '{"topo_type":"SGLang","data":{"port":7000}}'],
        {"SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "1.1.1.1"},
        "http://r:1",
        "http://1.1.1.1:7000",
        "regular",
        None,
    ),
    (
        "port_from_engine_endpoint",
        [],
        {
            "TOPO_TYPE": "SGLang",
            "SGL_ROUTER_ENDPOINT": "r:1",
            "POD_IP": "1.1.1.1",
            "INFERENCE_ENGINE_ENDPOINT": "http://localhost:30000",
        },
        "http://r:1",
        "http://1.1.1.1:30000",
        "regular",
        None,
    ),
]


@pytest.mark.parametrize(
    "argv,env,router,worker,wtype,bootstrap", [c[1:] for c in DERIVATION], ids=[c[0] for c in DERIVATION]
)
def test_derivation(argv, env, router, worker, wtype, bootstrap):
    core = load_settings(argv, env).core
    settings = derive(core, env, hostname=lambda: "pod-x")
    assert (settings.enabled, settings.router_url, settings.worker_url) == (True, router, worker)
    assert (settings.worker_type, settings.bootstrap_port) == (wtype, bootstrap)


ERRORS = [
    ("unknown_topo_type", [], {"TOPO_TYPE": "etcd"}, "TOPO_TYPE"),
    ("router_unknown", INFO, {"TOPO_TYPE": "SGLang", "POD_IP": "1.1.1.1"}, "SGL_ROUTER_ENDPOINT"),
    ("router_port_missing", INFO, {**RBG, "SGL_ROUTER_PORT": ""}, "SGL_ROUTER_PORT"),
    (
        "bad_worker_type",
        ["--instance-info", '{"data":{"port":1,"worker_type":"mixer"}}'],
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1"},
        "worker_type",
    ),
    (
        "bad_port",
        ["--instance-info", '{"data":{"port":"x"}}'],
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1"},
        "worker port",
    ),
    (
        "router_endpoint_without_port",
        INFO,
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "router"},
        "SGL_ROUTER_ENDPOINT",
    ),
    (
        "no_worker_port",
        [],
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "INFERENCE_ENGINE_ENDPOINT": "http://e"},
        "WORKER_PORT",
    ),
]


@pytest.mark.parametrize("argv,env,setting", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_derivation_errors_name_the_setting(argv, env, setting):
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    assert setting in str(info.value)


@pytest.mark.parametrize("value", ["", "none", "None"])
def test_disabled(value):
    assert load_settings([], {"TOPO_TYPE": value}).topology.enabled is False


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.log = []

    def __call__(self):
        return self.now


class FakeStop:
    """A stop event whose wait() advances the fake clock; it sets itself after ``stop_after`` seconds."""

    def __init__(self, clock, stop_after):
        self.clock, self.stop_after, self.flag = clock, stop_after, False

    def wait(self, timeout=None):
        self.clock.now += timeout or 0
        if self.clock.now >= self.stop_after:
            self.flag = True
        return self.flag

    def is_set(self):
        return self.flag

    def set(self):
        self.flag = True
        self.clock.log.append((self.clock.now, "STOP"))


class FakeRouter:
    def __init__(self, clock, ids=None, fail_at=()):
        self.clock, self.ids, self.fail_at = clock, list(ids or []), set(fail_at)
        self.posts = 0

    def register(self):
        from patio.errors import EngineUnavailable

        self.posts += 1
        self.clock.log.append((self.clock.now, "POST"))
        if self.posts in self.fail_at:
            raise EngineUnavailable("router down")
        return self.ids[0] if len(self.ids) == 1 else self.ids.pop(0)

    def find(self, url, timeout=None):
        self.clock.log.append((self.clock.now, "GET"))
        return None

    def delete(self, worker_id, timeout=None):
        self.clock.log.append((self.clock.now, f"DELETE {worker_id}"))


SETTINGS = TopologySettings(enabled=True, router_url="http://r:1", worker_url="http://w:2", heartbeat_interval=30.0)


def test_waits_for_engine_then_registers_and_heartbeats():
    clock = FakeClock()
    health = iter([False, False, False] + [True] * 100)
    router = FakeRouter(clock, ids=["id-1"])
    beat = Heartbeat(SETTINGS, router, lambda: next(health), stop=FakeStop(clock, 100), clock=clock, wall=clock)
    beat.run()
    posts = [t for t, what in clock.log if what == "POST"]
    assert posts == [6.0, 36.0, 66.0, 96.0]  # after 3 probes 2 s apart, then every 30 s
    assert beat.registered and beat.worker_id == "id-1"


def test_router_restart_is_detected_and_adopted():
    clock = FakeClock()
    restarts = []
    router = FakeRouter(clock, ids=["id-1", "id-1", "id-2", "id-2"])
    beat = Heartbeat(
        SETTINGS,
        router,
        lambda: True,
        stop=FakeStop(clock, 100),
        clock=clock,
        wall=clock,
        on_router_restart=lambda: restarts.append(clock.now),
    )
    beat.run()
    assert beat.worker_id == "id-2" and restarts == [60.0]


def test_failures_back_off_exponentially_capped_at_interval():
    clock = FakeClock()
    router = FakeRouter(clock, ids=["id-1"], fail_at={1, 2, 3, 4, 5, 6})
    results = []
    beat = Heartbeat(
        SETTINGS, router, lambda: True, stop=FakeStop(clock, 140), clock=clock, wall=clock, on_heartbeat=results.append
    )
    beat.run()
    posts = [t for t, what in clock.log if what == "POST"]
    assert posts[:8] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]
    assert results[:7] == ["error"] * 6 + ["success"]


def test_no_post_after_stop_and_delete_comes_last():
    clock = FakeClock()
    router = FakeRouter(clock, ids=["id-1"])
    stop = FakeStop(clock, 65)
    beat = Heartbeat(SETTINGS, router, lambda: True, stop=stop, clock=clock, wall=clock, sleep=lambda s: None)
    beat.run()
    assert beat.shutdown(budget=5.0) is True
    kinds = [what for _, what in clock.log]
    assert kinds == ["POST", "POST", "POST", "STOP", "DELETE id-1", "GET"]
    assert beat.unregistered and not beat.registered


def test_unregister_gives_up_within_budget_when_router_is_down():
    from patio.errors import EngineUnavailable

    clock = FakeClock()

    class DownRouter(FakeRouter):
        def delete(self, worker_id, timeout=None):
            clock.log.append((clock.now, "DELETE"))
            raise EngineUnavailable("router down")

    router = DownRouter(clock, ids=["id-1"])
    beat = Heartbeat(SETTINGS, router, lambda: True, stop=FakeStop(clock, 1), clock=clock, wall=clock)
    beat.sleep = lambda s: setattr(clock, "now", clock.now + s)
    beat.run()
    began = clock.now
    assert beat.shutdown(budget=3.0) is False
    assert clock.now - began <= 3.0
    assert sum(1 for _, w in clock.log if w == "DELETE") >= 3


def test_engine_unhealthy_skips_heartbeat_posts():
    clock = FakeClock()
    health = iter([True, True, False, False, True] + [True] * 10)
    router = FakeRouter(clock, ids=["id-1"])
    results = []
    beat = Heartbeat(
        SETTINGS,
        router,
        lambda: next(health),
        stop=FakeStop(clock, 100),
        clock=clock,
        wall=clock,
        on_heartbeat=results.append,
    )
    beat.run()
    assert results == ["success", "engine_unhealthy", "engine_unhealthy", "success"]
