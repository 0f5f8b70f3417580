"""HTTP API of the topology: what the router knows of this worker.

    GET /v1/topology   the router URL and detected generation, the worker, its id, the last
                       heartbeat's result and error, counters, warnings (Heartbeat.snapshot)

The router's API key is never shown ("set"/"unset").
"""

from typing import Sequence

from patio.http.types import Request, Response, Route
from patio.topology.heartbeat import Heartbeat


class TopologyApi:
    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat

    def routes(self) -> Sequence[Route]:
        return [Route("GET", "/v1/topology", self.show, summary="Router registration state", tag="topology")]

    async def show(self, request: Request) -> Response:
        return Response.json(self.heartbeat.snapshot())
