"""The KV-event tests' shared fixtures: one redis-server per module, a fresh client and
publisher per test, bridges stopped after it.  A test module names this file in its
``pytest_plugins``."""

import pytest
from kvevents_peers import Publisher, RedisServer


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture()
def redis(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture()
def publisher():
    pub = Publisher()
    yield pub
    pub.close()


@pytest.fixture()
def bridges():
    started = []
    yield started
    for bridge in started:
        bridge.stop(5)
