"""Read each module of the zipapp once at start, not twice.

``zipimport`` (CPython 3.8 through 3.13) answers ``get_filename`` by loading the module's code
(``_get_module_code``: the entry read from the archive, inflated and unmarshalled), and the
import system asks ``get_filename`` while it builds the module's spec, right before
``get_code`` loads the same code again.  Every module of ``patio.pyz`` was therefore inflated and
unmarshalled twice: about 9 ms of a 106 ms start on this machine's image Python
(``bench/cost.py``).  ``install`` keeps the first load of each module until the second asks for
it, then lets it go; a load nobody asks for again stays only until the same module is loaded
next (the zip holds a bounded set of modules).  Where ``zipimport`` has no such function it
does nothing.
"""

import zipimport
from typing import Any, Callable, Dict, Tuple

Key = Tuple[str, str, str]


def install() -> bool:
    """Route ``zipimport``'s code loading through a one-shot hand-over; False where not needed."""
    load: Callable[[Any, str], Any] = getattr(zipimport, "_get_module_code", None)  # type: ignore[assignment]
    if load is None or getattr(load, "patio_once", False):
        return False
    pending: Dict[Key, Any] = {}

    def once(importer: Any, fullname: str) -> Any:
        key = (importer.archive, importer.prefix, fullname)
        loaded = pending.pop(key, None)
        if loaded is None:
            loaded = load(importer, fullname)  # raises ZipImportError for what is not there
            pending[key] = loaded  # for the get_code that follows get_filename
        return loaded

    once.patio_once = True  # type: ignore[attr-defined]
    zipimport._get_module_code = once  # type: ignore[attr-defined]
    return True
