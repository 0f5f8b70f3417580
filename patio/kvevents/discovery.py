"""Where the engine publishes its KV events, asked of the engine when no endpoint is configured.

- vLLM: ``GET /kv_event_sources`` (``vllm/entrypoints/serve/kv_events/api_router.py``):
  one source per data-parallel rank, ``{"data_parallel_rank", "endpoint",
  "replay_endpoint", "topic"}``; answered as ``{"sources": [...]}`` (f123199) or, in an
  earlier form of the route, as the bare list (153c3aa).  Endpoints are the resolved
  bind addresses (``tcp://0.0.0.0:41001`` with an ephemeral port).
- SGLang: ``GET /get_server_info`` (``python/sglang/srt/entrypoints/http_server.py``)
  returns the server arguments, among them ``kv_events_config`` (the JSON string given
  to ``--kv-events-config``; ``KVEventsConfig`` in ``disaggregation/kv_events.py``:
  ``publisher`` "null"/"zmq", ``endpoint`` default ``tcp://*:5557``, ``replay_endpoint``,
  ``topic`` default ""), ``dp_size`` and ``enable_dp_attention``.  With DP attention each
  rank publishes on the port plus its rank (``ZmqEventPublisher.offset_endpoint_port``).

A wildcard bind host (``*``, ``0.0.0.0``, ``::``) is the engine's own host.  Parsing is
pure; ``fetch`` is the one blocking call (the bridge thread's, with its timeout).
An engine without the route (404) offers nothing: the bridge uses Kthena's default.
"""

from dataclasses import dataclass
from typing import Any, List, Optional

from patio import jsontext
from patio.errors import PatioError
from patio.http.client import bearer, http_request, split_url
from patio.kvevents.settings import parse_endpoint

PATHS = {"vllm": "/kv_event_sources", "sglang": "/get_server_info"}
# An answer larger than this is not a discovery answer (SGLang's server info is a few KB).
MAX_ANSWER_BYTES = 1024 * 1024
# More sources than this are refused (one per data-parallel rank).
MAX_SOURCES = 64
_WILDCARDS = ("*", "0.0.0.0", "::", "")


class DiscoveryError(Exception):
    """The engine's answer could not be used (or the engine did not answer)."""


@dataclass(frozen=True)
class Source:
    rank: int
    endpoint: str
    replay_endpoint: Optional[str]
    topic: str


def _reachable(endpoint: str, engine_host: str) -> str:
    """``endpoint`` with a wildcard bind host replaced by the engine's host."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if host.strip("[]") in _WILDCARDS:
        host = f"[{engine_host}]" if ":" in engine_host else engine_host
    return f"tcp://{host}:{port}"


def _endpoint(value: Any, engine_host: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 512:
        raise DiscoveryError(f"{what} is not an endpoint string")
    reachable = _reachable(value.strip(), engine_host)
    try:
        parse_endpoint(reachable)
    except ValueError as exc:
        raise DiscoveryError(f"{what}: {exc}") from None
    return reachable


def _topic(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 256:
        raise DiscoveryError("topic is not a string")
    return value


def parse_vllm(body: bytes, engine_host: str) -> List[Source]:
    try:
        answer = jsontext.loads(body)
    except ValueError as exc:
        raise DiscoveryError(f"GET /kv_event_sources: not JSON ({exc})") from None
    entries = answer.get("sources") if isinstance(answer, dict) else answer
    if not isinstance(entries, list) or len(entries) > MAX_SOURCES:
        raise DiscoveryError("GET /kv_event_sources: not a list of sources")
    sources: List[Source] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DiscoveryError("GET /kv_event_sources: a source is not an object")
        rank = entry.get("data_parallel_rank", 0)
        if type(rank) is not int or not 0 <= rank < 4096:
            raise DiscoveryError("GET /kv_event_sources: data_parallel_rank is not a rank")
        replay = entry.get("replay_endpoint")
        sources.append(
            Source(
                rank,
                _endpoint(entry.get("endpoint"), engine_host, "endpoint"),
                None if replay is None else _endpoint(replay, engine_host, "replay_endpoint"),
                _topic(entry.get("topic")),
            )
        )
    return sorted(sources, key=lambda s: s.rank)


def _offset(endpoint: Optional[str], rank: int) -> Optional[str]:
    """SGLang's ``offset_endpoint_port``: the port plus the rank (tcp only)."""
    if endpoint is None or rank == 0 or not endpoint.startswith("tcp://"):
        return endpoint
    base, _, port = endpoint.rpartition(":")
    return f"{base}:{int(port) + rank}"


def parse_sglang(body: bytes, engine_host: str) -> List[Source]:
    try:
        info = jsontext.loads(body)
    except ValueError as exc:
        raise DiscoveryError(f"GET /get_server_info: not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DiscoveryError("GET /get_server_info: not an object")
    raw = info.get("kv_events_config")
    if not raw:
        return []  # the engine publishes no KV events
    try:
        config = jsontext.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise DiscoveryError(f"kv_events_config is not JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("publisher", "null") != "zmq":
        return []
    endpoint = _endpoint(config.get("endpoint", "tcp://*:5557"), engine_host, "endpoint")
    replay = config.get("replay_endpoint")
    replay_endpoint = None if replay is None else _endpoint(replay, engine_host, "replay_endpoint")
    topic = _topic(config.get("topic", ""))
    dp_size = info.get("dp_size", 1)
    ranks = dp_size if info.get("enable_dp_attention") is True and type(dp_size) is int and dp_size > 1 else 1
    if ranks > MAX_SOURCES:
        raise DiscoveryError(f"dp_size {dp_size} is more ranks than {MAX_SOURCES}")
    out = []
    for rank in range(ranks):
        shifted = _offset(endpoint, rank)
        assert shifted is not None
        out.append(Source(rank, shifted, _offset(replay_endpoint, rank), topic))
    return out


PARSERS = {"vllm": parse_vllm, "sglang": parse_sglang}


def fetch(engine: str, engine_url: str, api_key: Optional[str], timeout: float) -> Optional[List[Source]]:
    """The engine's sources; None when it offers no discovery route (an older engine)."""
    path = PATHS[engine]
    try:
        answer = http_request(
            "GET", engine_url.rstrip("/") + path, headers=bearer(api_key), timeout=timeout, max_bytes=MAX_ANSWER_BYTES
        )
    except PatioError as exc:
        raise DiscoveryError(f"GET {path}: {exc}") from None
    if answer.status in (404, 405):
        return None
    if answer.status != 200:
        raise DiscoveryError(f"GET {path} answered {answer.status}")
    return PARSERS[engine](answer.body, engine_host(engine_url))


def engine_host(engine_url: str) -> str:
    try:
        return split_url(engine_url)[0].host
    except PatioError:
        return "localhost"
