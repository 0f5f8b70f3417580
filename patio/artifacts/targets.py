"""Directories a caller names (Kthena's ``output_dir``, AIBrix's ``local_dir``), confined to Patio's roots.

Blocking (it looks at the disk); nothing here creates or deletes anything.  A directory that does
not exist yet, below a root that may not exist yet either (Kthena's documented
``"output_dir": "/models/my-lora"`` on a fresh pod), is a valid target: the download creates it.
Containment is judged on the real path of the part that exists plus the rest as written, so only
a symlink that really leads out is called one.
"""

import os
from typing import Any, Sequence

from patio.artifacts.fetch.manifest import META_DIR, within
from patio.errors import BadRequest
from patio.validate import shown


def confine(raw: Any, roots: Sequence[str], param: str, base: str) -> str:
    """Blocking: ``raw`` (absolute, or relative to ``base``) as a directory strictly inside one of ``roots``.

    Checked on the real, symlink-resolved path of whatever part already exists, so a
    link on the way cannot lead out; nothing is created here.
    """
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise BadRequest(f"{param} must be a non-empty path", param=param)
    if ".." in raw.replace("\\", "/").split("/"):
        raise BadRequest(f"{param} must not contain '..'", param=param)
    path = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(base, raw))
    for root in roots:
        given, real_root = os.path.normpath(root), os.path.realpath(root)
        if within(given, path):
            candidate = os.path.join(real_root, os.path.relpath(path, given))
        elif within(real_root, path):
            candidate = path
        else:
            continue
        candidate = os.path.normpath(candidate)
        if candidate == real_root:
            raise BadRequest(f"{param} must be a directory below {root}, not the root itself", param=param)
        if META_DIR in candidate[len(real_root) :].split(os.sep):
            raise BadRequest(f"{param} must not use the name {META_DIR}", param=param)
        if not within(real_root, _resolved(candidate)):
            raise BadRequest(f"{param} {shown(raw)} resolves outside {root} through a symlink", param=param)
        if os.path.islink(candidate):
            raise BadRequest(f"{param} {shown(raw)} is a symlink; refusing to write through it", param=param)
        return candidate
    raise BadRequest(f"{param} {shown(raw)} must lie inside {' or '.join(roots)}; nothing was written", param=param)


def _resolved(path: str) -> str:
    """``path`` with the symlinks of its existing part resolved and the part not created yet appended."""
    probe, rest = path, ""
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        rest = os.path.join(os.path.basename(probe), rest) if rest else os.path.basename(probe)
        probe = parent
    real = os.path.realpath(probe)
    return os.path.normpath(os.path.join(real, rest)) if rest else real
