"""Command line: ``patio [flags]`` serves; ``patio download ...`` fetches a model once.

Exit status: 0 after a graceful shutdown, 2 for invalid settings (naming the
setting), 1 for a failure to start (e.g. the port is taken).
"""

import importlib
import logging
import os
import sys
from types import ModuleType
from typing import List, Optional

from patio.config import load_settings
from patio.errors import ConfigError
from patio.logs import configure

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


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "download":
        cli = importlib.import_module("patio.artifacts.cli")
        return int(cli.main(args[1:]))
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"patio: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure(settings.core.log_level, settings.core.log_format)
    asyncio = load_asyncio()
    from patio.lifecycle import serve

    try:
        code = asyncio.run(serve(settings))
    except OSError as exc:
        logging.getLogger("patio").error("cannot start: %s", exc)
        return EXIT_FAILURE
    return code


def run() -> None:
    """Entry for ``python patio.pyz`` and ``python patio.py``."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads may still be inside a long engine call (a LoRA load can take
    # minutes); the shutdown budget is spent, so leave without joining them.
    os._exit(code)
