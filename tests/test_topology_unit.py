"""Topology without a router: address derivation tables, and the heartbeat's membership
checks, jitter, backoff and stop ordering with a fake clock and a scripted router."""

import time
from typing import List, Optional
from urllib.parse import urlsplit

import pytest

from patio.config import load_settings
from patio.errors import ConfigError, EngineUnavailable
from patio.topology.answers import GENERATIONS, Member, Registered, RouterAuthError
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
    # smg refuses http://fd00::1:8000 with 400 "Invalid URL format: empty host" (observed on
    # 1.13.0; smg config/validation.rs validate_worker_url): an IPv6 host is bracketed.
    (
        "pod_ip_ipv6",
        INFO,
        {**RBG, "POD_IP": "fd00::1:2"},
        "http://g-router-0.s-g-router:8000",
        "http://[fd00::1:2]:8000",
        "prefill",
        34000,
    ),
    (
        "pod_ip_ipv6_bracketed",
        INFO,
        {**RBG, "POD_IP": "[fd00::7]"},
        "http://g-router-0.s-g-router:8000",
        "http://[fd00::7]:8000",
        "prefill",
        34000,
    ),
    (
        "router_endpoint_ipv6",
        INFO,
        {**RBG, "SGL_ROUTER_ENDPOINT": "[fd00::9]:30000"},
        "http://[fd00::9]:30000",
        "http://g-prefill-2.s-g-prefill:8000",
        "prefill",
        34000,
    ),
    (
        "router_endpoint_upper_scheme",
        INFO,
        {**RBG, "SGL_ROUTER_ENDPOINT": "HTTP://Router.NS:9000"},
        "http://router.ns:9000",
        "http://g-prefill-2.s-g-prefill:8000",
        "prefill",
        34000,
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
    # Never a schemeless or upper-case scheme (smg PR #1977 refuses both with 400), always a
    # host and a port that a URL parser finds again.
    parts = urlsplit(settings.worker_url)
    assert settings.worker_url.startswith("http://") and parts.hostname and parts.port


ERRORS = [
    ("unknown_topo_type", [], {"TOPO_TYPE": "etcd"}, "TOPO_TYPE"),
    (
        "unknown_readiness",
        ["--topology-readiness", "lenient"],
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "1.1.1.1"},
        "--topology-readiness",
    ),
    (
        "jitter_too_large",
        [],
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "1.1.1.1", "PATIO_HEARTBEAT_JITTER": "1.5"},
        "PATIO_HEARTBEAT_JITTER",
    ),
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
        "pod_ip_with_a_scheme",
        INFO,
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "http://10.0.0.1"},
        "POD_IP",
    ),
    (
        "pod_ip_with_a_port",
        INFO,
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "10.0.0.1:80"},
        "POD_IP",
    ),
    (
        "pod_ip_ipv6_zone",
        INFO,
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "fe80::1%eth0"},
        "POD_IP",
    ),
    (
        "pod_ip_with_space",
        INFO,
        {"TOPO_TYPE": "SGLang", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "10.0.0.1 x"},
        "POD_IP",
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


FAMILIES = [
    ("sglang", "SGLang", "sglang"),
    ("sglang_upper", "SGLANG", "sglang"),
    ("vllm", "vLLM", "vllm"),
    ("vllm_lower", "vllm", "vllm"),
]


@pytest.mark.parametrize("topo,family", [c[1:] for c in FAMILIES], ids=[c[0] for c in FAMILIES])
def test_topo_type_picks_the_router_family(topo, family):
    env = {"TOPO_TYPE": topo, "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "1.1.1.1", "SGL_ROUTER_API_KEY": "k"}
    settings = load_settings(INFO, env).topology
    assert (settings.topo_type, settings.api_key, settings.readiness) == (family, "k", "first-registration")
    assert "'k'" not in repr(settings)


def test_readiness_and_jitter_from_env_and_flags():
    env = {"TOPO_TYPE": "vLLM", "SGL_ROUTER_ENDPOINT": "r:1", "POD_IP": "1.1.1.1"}
    settings = load_settings(INFO, {**env, "PATIO_TOPOLOGY_READINESS": "STRICT", "PATIO_HEARTBEAT_JITTER": "0"})
    assert (settings.topology.readiness, settings.topology.heartbeat_jitter) == ("strict", 0.0)
    flags = load_settings([*INFO, "--topology-readiness", "first-registration"], env).topology
    assert flags.readiness == "first-registration"


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

    def wake(self):
        self.clock.log.append((self.clock.now, "WAKE"))


class ScriptedRouter:
    """The heartbeat's view of one router generation: what it lists for this worker, a call log,
    and scheduled faults (down, refusing the key, a restart that forgets everything)."""

    def __init__(self, clock, generation="sglang-router", ids=("id-1", "id-2", "id-3")):
        self.clock = clock
        self.gen = GENERATIONS[generation]
        self.ids = list(ids)
        self.current: Optional[Member] = None
        self.down_until = -1.0
        self.auth_failing = False
        self.restart_at: Optional[float] = None

    @property
    def generation(self):
        return self.gen

    @property
    def generation_name(self):
        return self.gen.name

    @property
    def generation_evidence(self):
        return "scripted"

    def _call(self, what):
        self.clock.log.append((self.clock.now, what))
        if self.restart_at is not None and self.clock.now >= self.restart_at:
            self.current, self.restart_at = None, None
        if self.clock.now < self.down_until:
            raise EngineUnavailable("router unreachable")
        if self.auth_failing:
            raise RouterAuthError("router refused POST /workers with 401: set SGL_ROUTER_API_KEY")

    def lookup(self, worker_id, deadline=None):
        self._call("GET")
        member = self.current
        if member is None or (self.gen.ids and worker_id and member.worker_id != worker_id):
            return None
        return member

    def find_by_url(self, deadline=None):
        self._call("LIST")
        return self.current

    def register(self, deadline=None):
        self._call("POST")
        if self.current is not None:
            return Registered(self.current.worker_id, already=True)
        worker_id = self.ids.pop(0) if self.gen.ids else None
        self.current = Member(worker_id, "regular", None)
        return Registered(worker_id, already=False)

    def remove(self, worker_id, deadline=None):
        self._call(f"DELETE {worker_id}")
        known = self.current is not None
        self.current = None
        return known

    def replace(self, member, deadline=None, proceed=None):
        self._call("REPLACE")
        self.current = Member(member.worker_id, "prefill", 34000)
        return member.worker_id, "PUT /workers/{id}"


SETTINGS = TopologySettings(
    enabled=True, router_url="http://r:1", worker_url="http://w:2", heartbeat_interval=30.0, heartbeat_jitter=0.0
)


def make(router, clock, *, stop_after=100, health=lambda: True, settings=SETTINGS, rand=lambda: 0.5, **kw):
    return Heartbeat(
        settings, router, health, stop=FakeStop(clock, stop_after), clock=clock, wall=clock, rand=rand, **kw
    )


def calls(clock, kind=None) -> List[float]:
    return [t for t, what in clock.log if kind is None or what == kind]


def test_waits_for_engine_registers_once_then_checks_membership():
    clock = FakeClock()
    health = iter([False, False, False] + [True] * 100)
    router = ScriptedRouter(clock)
    beat = make(router, clock, health=lambda: next(health))
    beat.run()
    assert [what for _, what in clock.log] == ["GET", "POST", "GET", "GET", "GET"]
    assert calls(clock, "POST") == [0.75]  # after 3 reads 0.25 s apart; then a look every 30 s, no re-POST
    assert calls(clock, "GET") == [0.75, 30.75, 60.75, 90.75]
    assert beat.registered and beat.ever_registered and beat.worker_id == "id-1"


@pytest.mark.parametrize("generation", ["sglang-router", "smg", "vllm-router-igw"])
def test_router_restart_is_a_new_id_and_counted_once(generation):
    clock = FakeClock()
    router = ScriptedRouter(clock, generation)
    router.restart_at = 50.0
    restarts = []
    beat = make(router, clock, on_router_restart=lambda: restarts.append(clock.now))
    beat.run()
    assert restarts == [60.0] and beat.worker_id == "id-2"
    assert calls(clock, "POST") == [0.0, 60.0]


def test_router_without_ids_restart_is_absence_after_listing():
    clock = FakeClock()
    router = ScriptedRouter(clock, "vllm-router")
    router.restart_at = 50.0
    restarts = []
    beat = make(router, clock, on_router_restart=lambda: restarts.append(clock.now))
    beat.run()
    assert restarts == [60.0] and beat.worker_id is None
    assert calls(clock, "POST") == [0.0, 60.0]


def test_known_worker_is_adopted_without_a_post_or_a_restart():
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    router.current = Member("id-9", "regular", None)
    restarts = []
    beat = make(router, clock, on_router_restart=lambda: restarts.append(1))
    beat.run()
    assert calls(clock, "POST") == [] and restarts == []
    assert beat.worker_id == "id-9" and beat.registered


def test_failures_back_off_exponentially_capped_at_interval_without_jitter():
    clock = FakeClock()
    router = ScriptedRouter(clock)
    router.down_until = 80.0
    results = []
    beat = make(router, clock, stop_after=140, on_heartbeat=results.append)
    beat.run()
    assert calls(clock)[:8] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]
    assert results[:8] == ["error"] * 7 + ["success"]
    assert beat.consecutive_failures == 0


@pytest.mark.parametrize(
    "r,expected",
    [(0.0, [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 30.5, 45.5]), (0.999999, [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0])],
    ids=["low", "high"],
)
def test_failure_backoff_jitter_stays_between_half_and_full_step(r, expected):
    clock = FakeClock()
    router = ScriptedRouter(clock)
    router.down_until = 1000.0
    settings = TopologySettings(**{**SETTINGS.__dict__, "heartbeat_jitter": 0.2})
    beat = make(router, clock, stop_after=95, settings=settings, rand=lambda: r)
    beat.run()
    assert [round(t, 3) for t in calls(clock)[:8]] == expected


def test_beats_are_jittered_and_a_registration_gets_a_random_phase():
    clock = FakeClock()
    router = ScriptedRouter(clock)
    settings = TopologySettings(**{**SETTINGS.__dict__, "heartbeat_jitter": 0.2})
    beat = make(router, clock, settings=settings, rand=lambda: 0.5)
    beat.run()
    # POST at 0; the next look at a random phase (0.5 * 30); then every 30 * (1 - 0.2 * 0.5)
    assert calls(clock) == [0.0, 0.0, 15.0, 42.0, 69.0, 96.0]


def test_auth_failures_wait_a_whole_interval_and_are_counted():
    clock = FakeClock()
    router = ScriptedRouter(clock)
    router.auth_failing = True
    auth = []
    beat = make(router, clock, on_auth_failure=lambda: auth.append(clock.now))
    beat.run()
    assert auth == [0.0, 30.0, 60.0, 90.0]  # never the 1-2-4 s backoff of an outage
    assert not beat.ever_registered and "SGL_ROUTER_API_KEY" in beat.last_error
    assert beat.auth_failures == 4


def test_no_post_after_stop_and_removal_comes_last_and_is_confirmed():
    clock = FakeClock()
    router = ScriptedRouter(clock)
    beat = make(router, clock, stop_after=65)
    beat.sleep = lambda s: None
    beat.run()
    assert beat.shutdown(budget=5.0) is True
    kinds = [what for _, what in clock.log]
    # The removal looks before it deletes (an add job still running must settle first).
    assert kinds == ["GET", "POST", "GET", "GET", "STOP", "GET", "DELETE id-1", "GET"]
    assert beat.unregistered and not beat.registered and beat.stopping


def test_unregister_gives_up_within_budget_when_router_is_down():
    clock = FakeClock()
    router = ScriptedRouter(clock)
    beat = make(router, clock, stop_after=1)
    beat.sleep = lambda s: setattr(clock, "now", clock.now + s)
    beat.run()
    router.down_until = 1e9
    began = clock.now
    assert beat.shutdown(budget=3.0) is False
    assert clock.now - began <= 3.0
    # At least three removal rounds, each failing at its first call (the look before the DELETE).
    assert sum(1 for t, w in clock.log if t >= began and (w in ("GET", "LIST") or w.startswith("DELETE"))) >= 3


def test_never_registered_means_nothing_to_remove():
    clock = FakeClock()
    router = ScriptedRouter(clock)
    beat = make(router, clock, stop_after=5, health=lambda: False)
    beat.run()
    assert beat.shutdown(budget=3.0) is True
    assert [what for _, what in clock.log] == ["STOP"]


def test_engine_unhealthy_skips_router_calls():
    clock = FakeClock()
    health = iter([True, True, False, False, True] + [True] * 10)
    router = ScriptedRouter(clock)
    results = []
    beat = make(router, clock, health=lambda: next(health), on_heartbeat=results.append)
    beat.run()
    assert results == ["success", "engine_unhealthy", "engine_unhealthy", "success"]


@pytest.mark.parametrize(
    "generation,replaced", [("smg", True), ("sglang-router", True), ("vllm-router", False)], ids=str
)
def test_a_listing_with_another_type_is_replaced_or_reported(generation, replaced):
    clock = FakeClock()
    router = ScriptedRouter(clock, generation)
    router.current = Member("id-9" if router.gen.ids else None, "regular", None)
    settings = TopologySettings(**{**SETTINGS.__dict__, "worker_type": "prefill", "bootstrap_port": 34000})
    beat = make(router, clock, settings=settings)
    beat.run()
    assert calls(clock, "REPLACE") == ([0.0] if replaced else [])
    assert bool(beat.warnings) is not replaced
    assert beat.registered and beat.router_restarts == 0


def test_a_pending_listing_is_not_replaced():
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    router.current = Member("id-9", "regular", None, pending=True)
    settings = TopologySettings(**{**SETTINGS.__dict__, "worker_type": "decode"})
    beat = make(router, clock, settings=settings)
    beat.run()
    assert calls(clock, "REPLACE") == [] and beat.warnings == []


def test_a_draining_listing_after_delete_counts_as_removed():
    """smg keeps a removed worker as "draining" for --drain-settle-secs: out of rotation already."""
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    beat = make(router, clock, stop_after=1)
    beat.run()

    def drain(worker_id, deadline=None):
        clock.log.append((clock.now, f"DELETE {worker_id}"))
        router.current = Member(worker_id, "regular", None, pending=True, leaving=True)

    router.remove = drain
    assert beat.shutdown(budget=3.0) is True
    assert [w for _, w in clock.log].count("DELETE id-1") == 1


class FlippingRouter(ScriptedRouter):
    """Lists this worker as another worker_type at every other lookup (a router, or a second
    registrant, that keeps changing it): what a replace could never fix."""

    def __init__(self, clock, generation):
        super().__init__(clock, generation)
        self.current = Member("id-9" if self.gen.ids else None, "regular", None)
        self.flip = False

    def lookup(self, worker_id, deadline=None):
        member = super().lookup(worker_id, deadline)
        self.flip = not self.flip
        return Member(member.worker_id, "decode", None) if member is not None and self.flip else member

    def replace(self, member, deadline=None, proceed=None):
        self._call("REPLACE")
        return member.worker_id, "DELETE then POST"


@pytest.mark.parametrize("generation", ["sglang-router", "smg"])
def test_a_listing_that_keeps_flipping_is_replaced_once(generation):
    """Replacing takes the worker out of rotation for a moment: Patio must not do it at every beat."""
    clock = FakeClock()
    router = FlippingRouter(clock, generation)
    beat = make(router, clock, stop_after=30 * 40)  # 40 beats, half of them listing "decode"
    beat.run()
    # One replace repairs a stale listing; one that differs again is reported, not fought.
    assert calls(clock, "REPLACE") == [0.0]
    assert any("does not replace it again" in w for w in beat.warnings), beat.warnings
    assert len(beat.warnings) == 1 and beat.registered  # one warning, not one per beat


def test_after_a_router_restart_a_stale_listing_is_repaired_again_but_not_within_the_hold_off():
    clock = FakeClock()
    router = FlippingRouter(clock, "smg")
    restarts = []
    beat = make(router, clock, stop_after=30 * 40, on_router_restart=lambda: restarts.append(clock.now))
    # The router restarts at 100 s (within 10 intervals of the first replace) and at 600 s.
    schedule = [100.0, 600.0]
    real_lookup = router.lookup

    def lookup(worker_id, deadline=None):
        if schedule and clock.now >= schedule[0]:
            schedule.pop(0)
            router.current = None  # the router forgot everything; the next POST gets a new id
            router.flip = True  # and a fresh listing of the right type first
        return real_lookup(worker_id, deadline)

    router.lookup = lookup
    beat.run()
    assert len(restarts) == 2, restarts
    # 0: the first repair.  The restart at 100 s allows one more, but not before 300 s (10
    # intervals) passed: the first "decode" listing after that, 330 s.  The restart at 600 s:
    # 630 s.  Between them every "decode" listing is reported, not replaced.
    assert calls(clock, "REPLACE") == [0.0, 330.0, 630.0]


def test_removal_by_a_stale_id_finds_the_new_one_by_url():
    """A router that restarted and listed this URL again under a new id (smg --worker-urls or
    its service discovery): the old id is unknown there, the listing names the new one."""
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    beat = make(router, clock, stop_after=1)
    beat.run()
    assert beat.worker_id == "id-1"
    router.current = Member("id-7", "regular", None)  # renumbered behind Patio's back
    assert beat.shutdown(budget=3.0) is True
    kinds = [w for _, w in clock.log]
    assert kinds[kinds.index("STOP") :] == ["STOP", "GET", "LIST", "DELETE id-7", "GET"]
    assert router.current is None


def test_removal_waits_for_an_add_job_still_running_then_deletes():
    """sglang-router lets an add job that is still running land after a DELETE (the worker is
    listed again, for a pod that is gone): the removal waits for the job, half its budget at
    most, then deletes."""
    clock = FakeClock()
    router = ScriptedRouter(clock, "sglang-router")
    beat = make(router, clock, stop_after=1)
    beat.sleep = lambda s: setattr(clock, "now", clock.now + s)
    beat.run()
    router.current = Member("id-1", "regular", None, pending=True)  # its AddWorker job runs
    settle_at = clock.now + 0.5
    real_lookup = router.lookup

    def lookup(worker_id, deadline=None):
        if clock.now >= settle_at and router.current is not None:
            router.current = Member("id-1", "regular", None)  # the job finished
        return real_lookup(worker_id, deadline)

    router.lookup = lookup
    assert beat.shutdown(budget=4.0) is True
    deletes = [t for t, w in clock.log if w.startswith("DELETE")]
    assert len(deletes) == 1 and deletes[0] >= settle_at, clock.log

    # A job that never settles: after half the budget the DELETE goes anyway.
    clock2 = FakeClock()
    router2 = ScriptedRouter(clock2, "sglang-router")
    beat2 = make(router2, clock2, stop_after=1)
    beat2.sleep = lambda s: setattr(clock2, "now", clock2.now + s)
    beat2.run()
    router2.current = Member("id-1", "regular", None, pending=True)
    began = clock2.now
    assert beat2.shutdown(budget=4.0) is True
    deletes = [t for t, w in clock2.log if w.startswith("DELETE")]
    assert len(deletes) == 1 and began + 2.0 <= deletes[0] <= began + 4.0, clock2.log


def test_leave_removes_and_no_beat_registers_until_rejoin():
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    beat = make(router, clock, stop_after=1)
    beat.run()  # registered as id-1, then the fake stop ends the thread's loop
    beat.stop.flag = False
    assert beat.leave(budget=3.0) is True
    assert router.current is None and beat.left and not beat.registered and beat.worker_id is None
    assert beat.snapshot()["left_router"] is True
    assert [w for _, w in clock.log][-2:] == ["DELETE id-1", "GET"]  # removed, and confirmed
    before = len(clock.log)
    beat.stop = FakeStop(clock, clock.now + 100)
    beat.run()  # 100 s "asleep": the thread makes no router call while left
    assert clock.log[before:] == [] and clock.now >= 100
    assert beat.router_restarts == 0


def test_rejoin_wakes_the_thread_instead_of_waiting_out_its_interval():
    """The real thread and stop event: after a leave the thread waits a whole interval (30 s);
    rejoin() must get its beat now, well inside a 5 s budget."""
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    beat = Heartbeat(SETTINGS, router, lambda: True, rand=lambda: 0.5)
    beat.start()
    deadline = time.monotonic() + 5
    while not beat.registered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert beat.worker_id == "id-1"
    assert beat.leave(budget=3.0) is True and router.current is None
    assert beat.rejoin(budget=5.0) is True
    assert router.current is not None and beat.worker_id == "id-2" and not beat.left
    assert beat.router_restarts == 0  # leaving on purpose is not a router restart
    assert beat.shutdown(budget=3.0) is True and router.current is None


def test_no_rejoin_once_shutting_down():
    clock = FakeClock()
    router = ScriptedRouter(clock, "smg")
    beat = make(router, clock, stop_after=1)
    beat.run()
    assert beat.shutdown(budget=3.0) is True
    assert beat.rejoin(budget=0.1) is False and beat.leave(budget=0.1) is True
    assert [w for _, w in clock.log].count("POST") == 1


def test_a_replace_interrupted_by_stop_posts_nothing():
    """A DELETE-then-POST replace that sees a shutdown (or leave) begin between the two: no POST."""
    from patio.topology.router_client import RouterClient

    class Client(RouterClient):
        def __init__(self):
            super().__init__(SETTINGS)
            self.sent = []

        def remove(self, worker_id, deadline=None):
            self.sent.append("DELETE")
            return True

        def lookup(self, worker_id, deadline=None):
            return None

        def register(self, deadline=None):
            self.sent.append("POST")
            return Registered("id-2", already=False)

    client = Client()
    assert client.replace(Member("id-1", "regular", None), proceed=lambda: False)[0] is None
    assert client.sent == ["DELETE"]
    assert client.replace(Member("id-1", "regular", None), proceed=lambda: True)[0] == "id-2"
