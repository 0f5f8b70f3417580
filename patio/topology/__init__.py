"""Topology: register this worker with its router (sglang-router, smg, vLLM's router), keep it
registered, take it out on shutdown or when the engine sleeps.

Standard library only.  Layout, outside in:

    component.py      the component: wires metrics, readiness, the API and the thread;
                      ``leave()`` / ``rejoin()`` for the engine lifecycle
    api.py            GET /v1/topology
    heartbeat.py      the registration thread: its schedule, leave/rejoin, the shutdown removal
    membership.py     one heartbeat's work (look up, register when absent, replace) and one
                      removal round, by the id the router gave
    pacing.py         when the next heartbeat comes (jitter, backoff); pure
    router_client.py  blocking calls to the router's worker API, each within a deadline
    answers.py        what each router generation's answers mean; sans-IO
    settings.py       TOPO_TYPE, the router and worker URLs, timeouts; parsed once
"""
