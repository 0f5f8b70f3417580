"""The downloads component: the model-download API and the LoRA adapter seam.

Owns ``adapters`` (``AdapterArtifacts``, handed to the LoRA component by
``build_app``) and ``downloads`` (``Downloads``).  On shutdown, running downloads
are cancelled; what they wrote stays resumable.
"""

import logging
from typing import Sequence

from patio.artifacts.adapters import AdapterArtifacts
from patio.artifacts.api import DownloadApi
from patio.artifacts.jobs import Downloads
from patio.artifacts.settings import ArtifactSettings
from patio.component import AppContext, Component
from patio.http.types import Route


class ArtifactsComponent(Component):
    name = "artifacts"

    def __init__(self, context: AppContext, settings: ArtifactSettings) -> None:
        self.context = context
        self.settings = settings
        self.downloads = Downloads(context, settings)
        self.adapters = AdapterArtifacts(context, settings, self.downloads)
        self.api = DownloadApi(context, settings, self.downloads)

    def routes(self) -> Sequence[Route]:
        return self.api.routes()

    async def start(self) -> None:
        if self.context.core.api_key is None:
            # Said once, at start: downloads (and every other management route) answer anyone who
            # can reach the port, and a download is a request Patio makes on the caller's behalf.
            logging.getLogger("patio").warning(
                "no --api-key (PATIO_API_KEY) is set: the management routes (downloads, LoRA loads and "
                "unloads, ...) are open to anyone who can reach port %d; set a key in production",
                self.context.core.port,
            )

    async def stop(self) -> None:
        await self.adapters.stop()
        await self.downloads.stop()
