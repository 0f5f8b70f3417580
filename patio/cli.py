"""Command line: ``patio [flags]`` serves; ``patio download ...`` fetches a model once.

Every entry point ends here (``ENTRY_POINTS``): ``python3 patio.pyz``, ``python3 patio.py``,
``python -m patio``, ``python -m patio.app`` (RoleBasedGroup's command), ``aibrix_runtime``
(AIBrix's, a link to the pyz on the image's PATH), ``python -m aibrix.downloader`` and
``aibrix_download`` (AIBrix's downloader), and the image's entrypoint with Kthena's downloader
flags (its init containers).  How it was started selects the start profile
(``patio.profiles``), logged at start.

Exit status: 0 after a graceful shutdown (logged), 2 for invalid settings (naming the
setting), 1 for a failure to start (e.g. the port is taken).  No entry point exits 0 without
having said what it did.
"""

import importlib
import logging
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Callable, List, Optional

from patio.config import load_settings
from patio.errors import ConfigError
from patio.logs import configure

if TYPE_CHECKING:  # pragma: no cover
    from patio.lifecycle import Running

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def load_asyncio() -> ModuleType:
    """``asyncio``, imported without ``ssl``.

    asyncio imports ssl only to offer TLS transports; Patio serves plain HTTP and
    reaches its peers from worker threads, and loading OpenSSL costs about 6 MB of
    resident memory in a sidecar that should stay under 20 MB.  asyncio is written
    to run where ssl is missing.  ssl stays importable afterwards (an https engine
    or an https download imports it on first use).
    """
    loaded = sys.modules.get("asyncio")
    if loaded is not None:
        return loaded
    block = "ssl" not in sys.modules
    if block:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
    try:
        return importlib.import_module("asyncio")
    finally:
        if block and sys.modules.get("ssl", ...) is None:
            del sys.modules["ssl"]


# Command names (the program's base name) that are a downloader, not the server: AIBrix's
# console script ``aibrix_download = 'aibrix.downloader.__main__:main'`` (python/aibrix/pyproject.toml).
DOWNLOAD_COMMANDS = {"aibrix_download": "aibrix"}
# Kthena's downloader image runs its CLI with only these flags (python/kthena/downloader/app.py:
# -s/--source, -o/--output-dir, -w/--max-workers, -c/--config); none is a server flag, so the
# image's entrypoint given them is Kthena's init container and downloads.
KTHENA_DOWNLOADER_FLAGS = ("-s", "--source", "-o", "--output-dir")


def _download_layout(program: str, args: List[str]) -> Optional[str]:
    """``"patio"``/``"aibrix"`` when this start is a download, else None."""
    command = os.path.basename(program)
    if command in DOWNLOAD_COMMANDS:
        return DOWNLOAD_COMMANDS[command]
    if args and args[0] == "download":
        return "patio"
    if any(a in KTHENA_DOWNLOADER_FLAGS or a.startswith(("--source=", "--output-dir=")) for a in args):
        return "patio"
    return None


def main(
    argv: Optional[List[str]] = None,
    program: Optional[str] = None,
    on_started: Optional[Callable[["Running"], None]] = None,
) -> int:
    """Serve (or download) as the command line says; the exit status.

    ``on_started`` is called once the listener serves and every component has started (the
    start-cost test lists the modules a start loaded there, on this very path).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    program = sys.argv[0] if program is None else program
    layout = _download_layout(program, args)
    if layout is not None:
        cli = importlib.import_module("patio.artifacts.cli")
        return int(cli.main(args[1:] if args and args[0] == "download" else args, layout=layout))
    try:
        settings = load_settings(args, program=program)
    except ConfigError as exc:
        print(f"patio: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure(settings.core.log_level, settings.core.log_format)
    core = settings.core
    logging.getLogger("patio").info(
        "start profile %s (%s): port %d, metrics scheme %s, engine %s",
        core.profile,
        core.profile_reason,
        core.port,
        settings.metrics.scheme,
        core.engine if core.engine_configured else f"from what answers at the endpoint (until then {core.engine})",
    )
    asyncio = load_asyncio()
    from patio.lifecycle import serve

    try:
        code = asyncio.run(serve(settings, on_started=on_started))
    except OSError as exc:
        logging.getLogger("patio").error("cannot start: %s", exc)
        return EXIT_FAILURE
    return code


def run(program: Optional[str] = None) -> None:
    """Entry for ``python patio.pyz``, ``python patio.py`` and the incumbents' commands.

    ``program`` names the command when ``sys.argv[0]`` cannot (``python -m patio.app``).
    """
    code = main(program=program)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads may still be inside a long engine call (a LoRA load can take
    # minutes); the shutdown budget is spent, so leave without joining them.
    os._exit(code)


if __name__ == "__main__":  # python -m patio.cli
    run()
