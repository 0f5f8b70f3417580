"""The runtime's seams in the other rooms, and its cost when off.

- Topology: the worker leaves the router before a sleep and rejoins after the wake through
  ``TopologyComponent.leave``/``rejoin``, tested on the three real routers in
  ``tests/test_topology_sleep.py`` (smg's draining entry included) and end to end in
  ``tests/test_runtime_beside.py``.
- LoRA: ``LoraManager.engine_asleep`` keeps reconcile from calling the engine at all.
- Off (the default): not one ``patio.runtime`` module but its settings is imported, no
  runtime task or thread runs, and the runtime routes do not exist.
"""

import asyncio
import subprocess
import sys
from typing import Any, Dict, List

from support import ROOT, RunningPatio, http_call, make_settings


def test_reconcile_never_calls_an_engine_asleep(tmp_path: Any) -> None:
    from patio.component import AppContext, Pools
    from patio.engines.client import SPECS, EngineClient
    from patio.lora.manager import LoraManager
    from patio.lora.reconcile import Reconciler
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
        asleep = [True]
        reconciler = Reconciler(manager, lambda: asleep[0])  # as patio.app wires the runtime's predicate
        counts = [await reconciler.reconcile("asleep"), len(asked)]
        asleep[0] = False
        counts += [await reconciler.reconcile("awake"), len(asked)]
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
