"""What the rest of Patio says to ``/metrics`` without loading its scrape path.

The settings choose a scheme and a mode from these names, and the assembly hands the router
view the LoRA facts, at start. The parser, the plan, the rename tables and the protocol view
load with the first scrape (``patio.metrics.component``): a probe never waits for them.
"""

from typing import NamedTuple, Optional, Tuple

# The rename schemes (``patio.metrics.rules``) and output modes (``patio.metrics.assemble``).
SCHEMES = ("patio", "aibrix", "kthena")
MODES = ("standard", "both", "raw")


class LoraFacts(NamedTuple):
    """What Patio's LoRA side knows, as the metrics component asks it at each scrape (a callable
    handed over at assembly): the adapters the engine confirmed serving, a configured max_lora."""

    adapters: Tuple[str, ...] = ()
    max_lora: Optional[int] = None
