"""What Patio's sleep probe imports (vllm/platforms/interface.py is_sleep_mode_available).

FAKE_SLEEP_MODE=1 plays a CUDA platform; anything else plays the CPU build."""

import os


class _Platform:
    device_type = "cuda" if os.environ.get("FAKE_SLEEP_MODE") == "1" else "cpu"

    def is_sleep_mode_available(self) -> bool:
        return os.environ.get("FAKE_SLEEP_MODE") == "1"


current_platform = _Platform()
