"""One LoRA load, as a frozen value that is valid by construction.

Every caller -- the HTTP API (``patio.lora.api``) and the adapters file
(``patio.lora.desired_sync``) -- builds a ``LoadRequest`` and hands it to
``LoraManager.load``; the manager trusts it and checks nothing again.  The rules are
the edge's (``patio.validate``), applied here once: nothing unchecked reaches a
directory name, a log line, the held set on disk or the engine.

A remote source (``patio.artifacts.uri``: a store, or ``pvc://``) carries its
``FetchPlan``: credentials and a named target, checked before the load starts (so a
missing secret or an ``output_dir`` outside the roots is the caller's 400 at once,
even for Kthena's ``async_download``).  ``None``: fetched with no credentials of its
own, into ``--adapter-dir/NAME``.
"""

import copy as _copy
from dataclasses import InitVar, dataclass, field
from typing import Any, Dict, Optional, Tuple

from patio.artifacts.adapters import FetchPlan
from patio.artifacts.uri import is_materialized
from patio.errors import BadRequest
from patio.lora.records import ORIGIN_API
from patio.validate import check_local_or_uri, check_name, check_source


@dataclass(frozen=True)
class LoadRequest:
    name: str
    # A local path or a URI; stored stripped (Kthena's bare ``org/name`` as ``hf://org/name``).
    source: str
    # The body field the source came from: errors name it; ``source`` is Kthena's.
    source_field: InitVar[str] = "lora_path"
    # Engine fields kept with the adapter for reloads (SGLang's ``pinned``), as (key, value) pairs.
    options: Tuple[Tuple[str, Any], ...] = ()
    load_inplace: bool = False
    # Delete the downloaded copy on unload (a directory the caller named is the caller's).
    cleanup_local: bool = True
    origin: str = ORIGIN_API
    fetch: Optional[FetchPlan] = None
    # The engine's key for this adapter's calls (AIBrix's additional_config["api-key"]).
    engine_key: Optional[str] = field(default=None, repr=False)
    # AIBrix's credentials_secret: the name of a mounted secret, kept to read it anew on a reload.
    credentials_secret: Optional[str] = None

    def __post_init__(self, source_field: str) -> None:
        check_name(self.name, "lora_name")
        text = check_source(self.source, source_field).strip()
        if not text:
            raise BadRequest(f"{source_field} must not be empty", param=source_field)
        if source_field == "source" and "://" not in text and not text.startswith("/"):
            # Kthena's sources name a HuggingFace repo as bare org/name (python/kthena/downloader).
            text = "hf://" + text
        check_local_or_uri(text, source_field)
        object.__setattr__(self, "source", text)

    @property
    def remote(self) -> bool:
        """Patio fetches (or resolves) the source before the engine reads it: the one scheme table."""
        return is_materialized(self.source)

    def engine_options(self) -> Dict[str, Any]:
        return dict(self.options)

    def planned(self, fetch: FetchPlan, credentials_secret: Optional[str]) -> "LoadRequest":
        """This request with its download half planned.  A copy, not checked again: this one is valid."""
        copy = _copy.copy(self)
        object.__setattr__(copy, "fetch", fetch)
        object.__setattr__(copy, "credentials_secret", credentials_secret)
        return copy
