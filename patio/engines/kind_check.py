"""The readiness line that says which engine Patio speaks to, and fails on a mismatch.

A component of its own, so ``/ready`` gains the check without touching the probe handler:
``engine-kind`` is not ready only when ``INFERENCE_ENGINE`` names one engine and the engine
answers as the other (every LoRA call would go to routes the engine does not have); otherwise
it has no say (which engine, and how Patio knows, is on ``GET /`` and ``patio_build_info``).
"""

from typing import Optional

from patio.component import AppContext, Component, ReadyCheck


class EngineKindCheck(Component):
    name = "engine-kind"

    def __init__(self, context: AppContext) -> None:
        self.engine = context.engine

    async def ready(self) -> Optional[ReadyCheck]:
        mismatch = self.engine.mismatch()
        return None if mismatch is None else ReadyCheck("engine-kind", False, mismatch)
