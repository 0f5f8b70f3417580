"""Start Patio as ``patio.cli`` does and print the modules the start loaded, and who imported each.

    python -I -S tests/start_modules.py < job.json

The job (JSON on stdin): ``argv`` (flags), ``env`` (the whole environment the start sees),
``program`` (``sys.argv[0]``) and ``requests``: ``[method, path, body-or-null]`` sent in turn,
after the start and before the list is taken (a feature that loads on first use shows its
modules only once used).  Prints one JSON object: ``{"modules": {name: importer}, "answers":
[status, ...]}`` where ``importer`` is the module whose import statement first loaded it
(``<interpreter>`` for what was loaded before Patio, ``<start>`` for this script's own).

Run with ``-I -S``: no site packages, no ``PYTHON*`` variables, so the list is the start's own.
Nothing but the loopback is reached: the engine endpoint is whatever ``env`` says.
"""

import json
import os
import sys
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# How long the requests of a job may take before the start is stopped regardless.
REQUESTS_DEADLINE = 60.0
# Largest answer read per request (the test's routes answer small JSON).
MAX_ANSWER = 1 << 20


# Frames of the import machinery, skipped when looking for the module that asked for an import.
_MACHINERY = (
    "_frozen_importlib",
    "_frozen_importlib_external",
    "importlib",
    "importlib._bootstrap",
    "importlib._bootstrap_external",
    "zipimport",
)


class ImportWitness:
    """A meta path finder that finds nothing: asked first for every module about to be loaded,
    it records who asked (the nearest frame outside the import machinery) and lets the real
    finders load it."""

    def __init__(self, importers: Dict[str, str]) -> None:
        self.importers = importers

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name not in self.importers:
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__") in _MACHINERY:
                frame = frame.f_back
            self.importers[name] = frame.f_globals.get("__name__", "?") if frame is not None else "?"
        return None


def main() -> None:
    job = json.load(sys.stdin)
    importers: Dict[str, str] = {name: "<interpreter>" for name in sys.modules}
    sys.path.insert(0, ROOT)
    os.environ.clear()
    os.environ.update(job["env"])
    for name in sys.modules:
        importers.setdefault(name, "<start>")  # json, this script's own
    sys.meta_path.insert(0, ImportWitness(importers))  # type: ignore[arg-type]
    import patio.cli

    asyncio = patio.cli.load_asyncio()  # as the start loads it (without ssl), before any request

    answers: List[int] = []
    snapshot: Dict[str, str] = {}

    async def ask(port: int, method: str, path: str, body: Optional[Any]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        answer = await reader.read(MAX_ANSWER)
        writer.close()
        return int(answer.split(b" ", 2)[1])

    async def drive(running: Any) -> None:
        try:
            for method, path, body in job["requests"]:
                answers.append(await ask(running.server.port, method, path, body))
        finally:
            snapshot.update({name: importers.get(name, "?") for name in sys.modules})
            running.stop.set()

    def on_started(running: Any) -> None:
        task = asyncio.ensure_future(asyncio.wait_for(drive(running), REQUESTS_DEADLINE))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    patio.cli.main(job["argv"], program=job["program"], on_started=on_started)
    print(json.dumps({"modules": snapshot, "answers": answers}))


if __name__ == "__main__":
    main()
