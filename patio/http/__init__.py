"""HTTP, both ways, by job.

Serving:
    server.py          the listener: start, stop accepting, drain (given a handler, the limits)
    server_state.py    what the connections of one server share (handler, limits, slots, caches)
    connection.py      one client connection: bytes in, answers out, within the limits
    admission.py       connection states and their moves; whom to evict (sans-IO)
    output.py          output bounds; the one writer of large answers (round-robin, per loop turn)
    request_parser.py  HTTP/1.1 requests from bytes (sans-IO)
    dispatch.py        the one handler: routes, the API key, request metrics, errors to JSON
    request_metrics.py patio_http_requests_total and the duration histogram, tallied on the loop
    routing.py         the route table (404/405 derived from it)
    eager.py           run a handler until it first waits
    responses.py       status lines, the header block, the JSON error shape
    types.py           Request, Response, Route: what handlers see
    bodies.py          JSON request bodies as tables of fields

Calling peers (the engine, a router):
    client.py          blocking requests with one deadline; Peer* errors
    response_parser.py HTTP/1.1 answers from bytes (sans-IO)
"""
