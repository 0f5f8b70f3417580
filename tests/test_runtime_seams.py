"""The runtime's seams in the other rooms, and its cost when off.

- Topology: ``Heartbeat.hold`` removes the worker and keeps every later beat from
  registering it; ``release`` registers it again, waiting out an entry smg still lists as
  draining (smg 1.13 keeps a removed worker for ``--drain-settle-secs``), and counts no
  router restart.
- LoRA: ``LoraManager.engine_asleep`` keeps reconcile from calling the engine at all.
- Off (the default): not one ``patio.runtime`` module but its settings is imported, no
  runtime task or thread runs, and the runtime routes do not exist.
"""

import asyncio
import subprocess
import sys
from typing import Any, Dict, List, Optional

from support import ROOT, RunningPatio, http_call, make_settings

from patio.topology.answers import GENERATIONS, Member, Registered
from patio.topology.heartbeat import Heartbeat
from patio.topology.settings import TopologySettings

SETTINGS = TopologySettings(enabled=True, router_url="http://r:1", worker_url="http://w:2", heartbeat_jitter=0.0)


class DrainingRouter:
    """smg's answers as the heartbeat sees them: ids, a removal that leaves a draining entry."""

    def __init__(self, drain_looks: int) -> None:
        self.drain_looks = drain_looks
        self.current: Optional[Member] = None
        self.calls: List[str] = []
        self.next_id = 0

    generation = GENERATIONS["smg"]
    generation_name = "smg"
    generation_evidence = "scripted"

    def lookup(self, worker_id: Optional[str], timeout: Optional[float] = None) -> Optional[Member]:
        self.calls.append("GET")
        member = self.current
        if member is not None and member.leaving:
            self.drain_looks -= 1
            if self.drain_looks < 0:
                self.current = None
        return self.current

    def find_by_url(self, timeout: Optional[float] = None) -> Optional[Member]:
        return self.lookup(None)

    def register(self) -> Registered:
        self.calls.append("POST")
        if self.current is not None:
            return Registered(self.current.worker_id, already=True)
        self.next_id += 1
        self.current = Member(f"id-{self.next_id}", "regular", None)
        return Registered(self.current.worker_id, already=False)

    def remove(self, worker_id: Optional[str], timeout: Optional[float] = None) -> None:
        self.calls.append("DELETE")
        if self.current is not None:
            self.current = Member(self.current.worker_id, "regular", None, leaving=True)

    def replace(self, member: Member) -> Any:
        raise AssertionError("not expected")


def heartbeat(router: DrainingRouter) -> Heartbeat:
    beat = Heartbeat(SETTINGS, router, lambda: True, sleep=lambda s: None)
    beat.beat()
    beat._mark_registered()
    return beat


def test_hold_removes_the_worker_and_release_waits_out_the_draining_entry() -> None:
    router = DrainingRouter(drain_looks=3)
    beat = heartbeat(router)
    assert router.calls == ["GET", "POST"]
    assert beat.hold(5.0) is True
    assert beat.held and not beat.registered and router.calls[-2:] == ["DELETE", "GET"]
    router.calls.clear()
    assert beat.release(5.0) is True
    # The entry drains for two more looks (hold's own look was the first), then is gone:
    # only then is the worker registered anew, and confirmed.
    assert router.calls == ["GET", "GET", "GET", "POST", "GET"]
    assert beat.registered and not beat.held and beat.worker_id == "id-2"
    assert beat.router_restarts == 0  # leaving on purpose is no router restart


def test_a_held_heartbeat_does_not_register() -> None:
    router = DrainingRouter(drain_looks=0)
    beat = heartbeat(router)
    beat.hold(5.0)
    router.calls.clear()
    stop = iter([False, False, True])

    class Stop:
        def wait(self, timeout: Optional[float] = None) -> bool:
            return next(stop)

        def is_set(self) -> bool:
            return False

        def set(self) -> None:
            return None

    beat.stop = Stop()
    beat.waiting_for_engine = False
    beat._wait_for_engine = lambda: True  # type: ignore[method-assign]
    beat.run()
    assert "POST" not in router.calls


def test_a_release_with_the_router_down_gives_up_within_its_budget() -> None:
    from patio.errors import EngineUnavailable

    router = DrainingRouter(drain_looks=0)
    beat = heartbeat(router)
    beat.hold(5.0)
    clock = iter(range(100))
    beat.clock = lambda: float(next(clock))

    def down(worker_id: Optional[str], timeout: Optional[float] = None) -> Optional[Member]:
        raise EngineUnavailable("router unreachable")

    router.lookup = down  # type: ignore[method-assign]
    assert beat.release(3.0) is False and not beat.held  # the heartbeat thread carries on


def test_reconcile_never_calls_an_engine_asleep(tmp_path: Any) -> None:
    from patio.component import AppContext, Pools
    from patio.engines.client import SPECS, EngineClient
    from patio.lora.manager import LoraManager
    from patio.metrics.registry import Registry

    settings = make_settings(env={"PATIO_STATE_DIR": str(tmp_path)})
    asked: List[str] = []

    async def scenario() -> List[int]:
        context = AppContext(core=settings.core, registry=Registry(), pools=Pools.create())
        client = EngineClient(SPECS["vllm"], "http://127.0.0.1:9", None)
        manager = LoraManager(context, settings.lora, client, None)

        async def engine_adapters() -> Dict[str, str]:  # what reconcile asks the engine first
            asked.append("list")
            return {}

        manager.engine_adapters = engine_adapters  # type: ignore[method-assign]
        manager.engine_asleep = lambda: True
        counts = [await manager.reconcile("asleep"), len(asked)]
        manager.engine_asleep = lambda: False
        counts += [await manager.reconcile("awake"), len(asked)]
        context.pools.shutdown()
        return counts

    assert asyncio.run(scenario()) == [0, 0, 0, 1]


OFF = """
import sys, threading, asyncio
from patio.config import load_settings
from patio.app import build_app
settings = load_settings(["--host", "127.0.0.1", "--port", "0"], {"PATIO_STATE_DIR": sys.argv[1]})
assert settings.runtime.enabled is False
app = build_app(settings)
loaded = sorted(m for m in sys.modules if m.startswith("patio.runtime"))
assert loaded == ["patio.runtime", "patio.runtime.settings"], loaded
paths = {r.path for r in app.routes()}
assert not any(p.startswith("/v1/runtime") for p in paths), paths
print("ok")
"""


def test_off_costs_nothing_but_its_settings(tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-c", OFF, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_off_the_routes_are_404_and_no_runtime_task_runs(tmp_path: Any) -> None:
    env = {"PATIO_STATE_DIR": str(tmp_path), "INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9"}
    with RunningPatio(make_settings(env=env)) as patio:
        assert http_call("GET", patio.url + "/v1/runtime/models")[0] == 404
        assert http_call("POST", patio.url + "/v1/runtime/models/activate", {})[0] == 404
        tasks = patio.call(lambda: _task_names())
        assert not any("runtime" in name or "supervis" in name for name in tasks), tasks


async def _task_names() -> List[str]:
    return [repr(task.get_coro()) for task in asyncio.all_tasks()]
