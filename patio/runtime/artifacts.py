"""Where an activated model's weights come from: a local path inside the allowed roots, or a
download through Patio's own downloaders (the same jobs, stores and credentials as
``POST /v1/model/download``).

A local ``artifact_url`` (an absolute path, or ``pvc://`` below the PVC root) must exist
and resolve, symlinks followed, inside one of the roots: the engine reads what it is
given, so a path that escapes would serve any file the pod can read.  ``file://`` URLs
are refused (name the path itself).  A remote one (``s3://``, ``gs://``/``gcs://``,
``tos://``, ``obs://``, ``hf://``, a bare ``org/name``, ``ms://``, ``http(s)://``) is
fetched into ``<models root>/runtime/<model>`` and the engine gets that directory; a
second activation of the same model while it downloads joins the running job.
"""

import asyncio
import os
import re
from typing import Sequence, Tuple

from patio.artifacts.api import resolve_target
from patio.artifacts.auth.credentials import merge_credentials
from patio.artifacts.fetch.manifest import within
from patio.artifacts.jobs import Downloads
from patio.artifacts.settings import ArtifactSettings
from patio.artifacts.uri import display_uri, parse_uri
from patio.component import AppContext
from patio.errors import BadRequest, InternalError, PatioError
from patio.runtime.requests import Activate

RUNTIME_DIR = "runtime"  # below the models root: where activated models are downloaded


def _dir_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "--", model_name)


def confine_local(path: str, roots: Sequence[str]) -> str:
    """Blocking: ``path``'s real path when it exists inside one of ``roots``, else ``BadRequest``."""
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise BadRequest("artifact_url must be an absolute path without '..', or a URI", param="artifact_url")
    real = os.path.realpath(path)
    if not any(within(os.path.realpath(root), real) and os.path.realpath(root) != real for root in roots):
        raise BadRequest(
            f"artifact_url resolves outside the model roots ({', '.join(roots)}); "
            "set PATIO_RUNTIME_MODEL_ROOTS to allow another directory",
            param="artifact_url",
        )
    if not os.path.exists(real):
        raise BadRequest(f"artifact_url {display_uri(path)} does not exist", param="artifact_url")
    return real


class ModelArtifacts:
    def __init__(
        self, context: AppContext, settings: ArtifactSettings, downloads: Downloads, roots: Sequence[str]
    ) -> None:
        self.context = context
        self.settings = settings
        self.downloads = downloads
        self.roots = tuple(roots) or (settings.models_root, settings.pvc_root)

    async def resolve(self, request: Activate) -> Tuple[str, str]:
        """(what the engine loads, the artifact's display form)."""
        spec = parse_uri(request.artifact_url, param="artifact_url", bare_hub=True)
        display = spec.display
        if spec.kind == "local":
            if request.artifact_url.lower().startswith("file:"):
                raise BadRequest("artifact_url: file:// URLs are refused; give the absolute path", param="artifact_url")
            path = os.path.normpath(os.path.join(self.settings.pvc_root, spec.path)) if spec.pvc else spec.path
            return await self.context.run_blocking(confine_local, path, self.roots), display
        creds = merge_credentials([("credentials", dict(request.credentials), False)])
        target = await self.context.run_blocking(
            resolve_target, self.settings.models_root, RUNTIME_DIR, _dir_name(request.model_name), spec
        )
        job, _created = self.downloads.submit(spec, target, creds, self.settings.fetch_options())
        assert job.future is not None
        # Shielded: an activation whose caller gave up leaves the download running for the retry.
        await asyncio.shield(job.future)
        if job.status != "completed":
            if isinstance(job.exception, PatioError):
                raise job.exception
            raise InternalError(f"downloading {display} did not complete ({job.status})")
        return job.local_dir, display
