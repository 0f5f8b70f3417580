"""Serve a metrics payload as a fake engine in its own process: python fake_engine_server.py PORT FILE [COPIES]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes.engine import FakeEngine


def main() -> None:
    port, payload = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    engine = FakeEngine("sglang" if b"sglang:" in payload else "vllm", port=port)
    engine.metrics_body = payload
    import threading

    threading.Event().wait()


if __name__ == "__main__":
    main()
