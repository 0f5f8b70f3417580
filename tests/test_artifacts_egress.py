"""The download egress policy (patio/artifacts/fetch/egress.py) against real sockets.

Patio runs as a real process (the zipapp).  Beside it, on every address of this host
(``0.0.0.0``), listens a service holding a secret, as the engine's ``/v1/models`` does; on
127.0.0.2, which the deployment allows with ``PATIO_EGRESS_ALLOW`` as it would an in-cluster
mirror, a relay that redirects.  Every form of the engine's address, every store reached
through a request-chosen endpoint, and every redirect chain must be refused before a byte
reaches the secret service; the answer says "refused by policy" and nothing about the peer;
a closed port, an open one and a refused one cannot be told apart; Patio stays up.
Loopback and link-local targets and redirect chains included.
"""

import ipaddress
import json
import os
import socket
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from artifacts_fakes import FileServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakes.engine import FakeEngine
from support import PatioProcess, free_port, http_call, http_json

from patio.artifacts.fetch.egress import EgressPolicy, EgressRefused, parse_allow

SECRET = "engine-internal-8c1f0e6a"
RELAY_HOST = "127.0.0.2"  # allowed by the deployment (PATIO_EGRESS_ALLOW), like an in-cluster mirror


def _own_address() -> str:
    """This host's address on its first non-loopback interface (the pod IP in Kubernetes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


# -- the policy as a table: addresses and names, resolved by the real C library ------------
ADDRESSES: List[Tuple[str, Dict[str, Any], bool]] = [
    ("127.0.0.1", {}, False),
    ("127.255.0.9", {}, False),
    ("::1", {}, False),
    ("0.0.0.0", {}, False),
    ("::", {}, False),
    ("::ffff:127.0.0.1", {}, False),
    ("::ffff:169.254.169.254", {}, False),
    ("64:ff9b::7f00:1", {}, False),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::1", {}, False),  # 6to4 of 127.0.0.1
    ("169.254.169.254", {}, False),
    ("169.254.1.1", {}, False),
    ("fe80::1", {}, False),
    ("fd00:ec2::254", {}, False),
    ("100.100.100.200", {}, False),
    ("224.0.0.1", {}, False),
    ("255.255.255.255", {}, False),
    ("10.1.2.3", {}, True),
    ("10.1.2.3", {"refuse_private": True}, False),
    ("172.16.0.1", {"refuse_private": True}, False),
    ("192.168.1.1", {"refuse_private": True}, False),
    ("100.64.0.1", {"refuse_private": True}, False),
    ("fd12::1", {"refuse_private": True}, False),
    ("8.8.8.8", {"refuse_private": True}, True),
    ("2606:4700::1111", {"refuse_private": True}, True),
    ("127.0.0.2", {"allow": "127.0.0.2"}, True),
    ("10.1.2.3", {"refuse_private": True, "allow": "10.0.0.0/8"}, True),
    ("169.254.169.254", {"allow": "169.254.169.254"}, True),
]


def _policy(options: Dict[str, Any]) -> EgressPolicy:
    networks, hosts = parse_allow(str(options.get("allow", "")).split(","))
    return EgressPolicy(networks, hosts, refuse_private=bool(options.get("refuse_private")))


@pytest.mark.parametrize(
    "address,options,allowed", ADDRESSES, ids=[f"{a}-{'+'.join(o) or 'default'}" for a, o, _ in ADDRESSES]
)
def test_address_classes(address: str, options: Dict[str, Any], allowed: bool) -> None:
    assert (_policy(options).refusal(ipaddress.ip_address(address)) is None) is allowed


def test_this_hosts_own_address_is_refused() -> None:
    own = _own_address()
    assert EgressPolicy().refusal(ipaddress.ip_address(own)) is not None
    assert _policy({"allow": own}).refusal(ipaddress.ip_address(own)) is None


NAMES = [
    "2130706433",  # decimal 127.0.0.1
    "0177.0.0.1",  # octal
    "0x7f000001",  # hex
    "0x7f.1",  # hex, short form
    "127.1",  # short form
    "localhost",
    "LOCALHOST.",
    "anything.localhost",
    "metadata.google.internal",
    "metadata.goog",
    "0.0.0.0",
    "0",
    "[::ffff:127.0.0.1]",
    "::1",
]


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_every_form_of_a_refused_address(name: str) -> None:
    with pytest.raises(EgressRefused) as caught:
        EgressPolicy().resolve(name, 80)
    assert caught.value.message.startswith("refused by policy")
    assert "127." not in caught.value.message and "80" not in caught.value.message


@pytest.mark.parametrize(
    "entry,hosts",
    [
        ("mirror.models.svc", ["mirror.models.svc"]),
        (".svc.cluster.local", ["a.svc.cluster.local", "b.c.svc.cluster.local"]),
    ],
    ids=["exact", "suffix"],
)
def test_allowed_names(entry: str, hosts: List[str]) -> None:
    policy = _policy({"allow": entry})
    assert all(policy._host_allowed(h) for h in hosts)
    assert not policy._host_allowed("svc.cluster.local.evil.example")


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "a..b", "under_score.example", "x" * 64 + ".example"])
def test_bad_allow_entries_are_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allow([entry])


# -- against a real Patio process ------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    root = tmp_path_factory.mktemp("egress")
    models, adapters = root / "models", root / "adapters"
    models.mkdir()
    adapters.mkdir()
    secret = FileServer({"/v1/models": SECRET.encode(), "/latest/meta-data/iam": SECRET.encode()}, host="0.0.0.0")
    relay = FileServer({"/ok/model.bin": b"mirror bytes"}, host=RELAY_HOST)
    engine = FakeEngine("vllm")
    env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine.url,
        "PATIO_MODELS_ROOT": str(models),
        "PATIO_ADAPTER_DIR": str(adapters),
        "PATIO_EGRESS_ALLOW": f"{RELAY_HOST}/32",
        "DOWNLOADER_MAX_RETRIES": "1",
        "DOWNLOADER_TIMEOUT": "3",
    }
    patio = PatioProcess(["--lora-reconcile-interval", "0"], env=env)
    try:
        yield {"patio": patio, "secret": secret, "relay": relay, "engine": engine, "models": models, "root": root}
    finally:
        patio.kill()
        for server in (secret, relay):
            server.stop()
        engine.stop()


def _kthena(w: Dict[str, Any], source: str, config: Any = None, name: str = "x") -> Tuple[int, Dict[str, Any]]:
    body: Dict[str, Any] = {"source": source, "output_dir": str(w["models"] / name)}
    if config is not None:
        body["config"] = config
    status, answer = http_json("POST", w["patio"].url + "/v1/download_model", body, timeout=30)
    return status, answer


def _assert_refused(w: Dict[str, Any], status: int, answer: Dict[str, Any], before: int) -> None:
    assert (status, answer["type"]) == (403, "egress_refused"), answer
    text = json.dumps(answer)
    assert answer["message"].startswith("refused by policy")
    # Nothing about the peer: neither the port, nor its address or class, nor what it serves.
    for leak in (str(w["secret"].port), "127.0.0.1", "loopback", "link-local", SECRET):
        assert leak not in text, leak
    assert len(w["secret"].seen) == before, "a request reached the secret service"
    assert http_call("GET", w["patio"].url + "/health")[0] == 200


FORMS = [
    ("loopback", "http://127.0.0.1:{port}/v1/models"),
    ("decimal", "http://2130706433:{port}/v1/models"),
    ("octal", "http://0177.0.0.1:{port}/v1/models"),
    ("hex", "http://0x7f000001:{port}/v1/models"),
    ("short", "http://127.1:{port}/v1/models"),
    ("localhost", "http://localhost:{port}/v1/models"),
    ("localhost_trailing_dot", "http://LOCALHOST.:{port}/v1/models"),
    ("unspecified", "http://0.0.0.0:{port}/v1/models"),
    ("ipv4_mapped_ipv6", "http://[::ffff:127.0.0.1]:{port}/v1/models"),
    ("ipv6_loopback", "http://[::1]:{port}/v1/models"),
    ("own_pod_address", "http://{own}:{port}/v1/models"),
    ("metadata", "http://169.254.169.254/latest/meta-data/iam"),
    ("metadata_ipv6", "http://[fd00:ec2::254]/latest/meta-data/iam"),
    ("metadata_name", "http://metadata.google.internal/computeMetadata/v1/token"),
]


@pytest.mark.parametrize("form", [f for _n, f in FORMS], ids=[n for n, _f in FORMS])
def test_kthena_download_of_an_internal_address_is_refused(world: Dict[str, Any], form: str) -> None:
    before = len(world["secret"].seen)
    started = time.monotonic()
    status, answer = _kthena(world, form.format(port=world["secret"].port, own=_own_address()))
    _assert_refused(world, status, answer, before)
    assert time.monotonic() - started < 2.5, "refused before connecting: no connect timeout"
    leaked = [p for p in world["models"].rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_aibrix_lora_load_and_download_api_are_refused_too(world: Dict[str, Any]) -> None:
    url = f"http://2130706433:{world['secret'].port}/v1/models"
    before = len(world["secret"].seen)
    status, answer = http_json(
        "POST", world["patio"].url + "/v1/lora_adapter/load", {"lora_name": "ssrf", "artifact_url": url}, timeout=30
    )
    _assert_refused(world, status, answer, before)
    assert "ssrf" not in world["engine"].adapters
    status, job = http_json("POST", world["patio"].url + "/v1/model/download", {"model_uri": url, "local_dir": "j"})
    assert status == 202
    deadline = time.monotonic() + 20
    while job["status"] not in ("failed", "completed") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = http_json("GET", world["patio"].url + job["status_url"])[1]
    assert job["status"] == "failed" and job["error"]["type"] == "egress_refused", job
    assert len(world["secret"].seen) == before


def _service_account(token_uri: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {"type": "service_account", "client_email": "x@p.iam.gserviceaccount.com", "private_key": pem.decode()}
    return json.dumps({**info, "token_uri": token_uri})


@pytest.mark.parametrize("store", ["s3", "hf", "ms", "gcs_token_uri"])
def test_every_store_refuses_a_request_chosen_internal_endpoint(world: Dict[str, Any], store: str) -> None:
    endpoint = f"http://127.0.0.1:{world['secret'].port}"
    before = len(world["secret"].seen)
    if store == "s3":
        status, answer = _kthena(world, "s3://bucket/m", {"endpoint": endpoint, "access_key": "a", "secret_key": "b"})
    elif store == "hf":
        status, answer = _kthena(world, "hf://org/name", {"hf_endpoint": endpoint})
    elif store == "ms":
        status, answer = _kthena(world, "ms://org/name", {"endpoint": endpoint})
    else:
        credentials = {"service_account_json": _service_account(endpoint + "/v1/models")}
        body = {"model_uri": "gs://bucket/m", "local_dir": "g", "credentials": credentials}
        status, job = http_json("POST", world["patio"].url + "/v1/model/download", body)
        assert status == 202, job
        deadline = time.monotonic() + 20
        while job["status"] not in ("failed", "completed") and time.monotonic() < deadline:
            time.sleep(0.05)
            job = http_json("GET", world["patio"].url + job["status_url"])[1]
        status, answer = 403, job["error"]
    _assert_refused(world, status, answer, before)


REDIRECTS = [
    ("to_loopback", ["http://127.0.0.1:{port}/v1/models"]),
    ("to_decimal_loopback", ["http://2130706433:{port}/v1/models"]),
    ("to_metadata", ["http://169.254.169.254/latest/meta-data/iam"]),
    ("chain_of_three_to_loopback", ["http://{relay}/hop2", "http://{relay}/hop3", "http://localhost:{port}/v1/models"]),
    ("relative_then_loopback", ["/hop2", "http://[::ffff:127.0.0.1]:{port}/v1/models"]),
]


@pytest.mark.parametrize("hops", [h for _n, h in REDIRECTS], ids=[n for n, _h in REDIRECTS])
def test_redirects_are_checked_on_every_hop(world: Dict[str, Any], hops: List[str]) -> None:
    relay = world["relay"]
    relay_host = f"{RELAY_HOST}:{relay.port}"
    paths = ["/hop1", "/hop2", "/hop3"]
    for path, target in zip(paths, hops):
        relay.redirect[path] = target.format(port=world["secret"].port, relay=relay_host)
    before = len(world["secret"].seen)
    status, answer = _kthena(world, f"http://{relay_host}/hop1")
    _assert_refused(world, status, answer, before)
    assert any(s.path == "/hop1" for s in relay.seen)  # the allowed relay was asked; the hop was not


def test_what_the_setting_allows_is_downloaded(world: Dict[str, Any]) -> None:
    world["relay"].redirect["/moved"] = "/ok/model.bin"  # a same-origin redirect stays allowed
    status, answer = _kthena(world, f"http://{RELAY_HOST}:{world['relay'].port}/moved", name="mirror")
    assert (status, answer["status"]) == (200, "completed"), answer
    assert (world["models"] / "mirror" / "moved").read_bytes() == b"mirror bytes"


def test_no_port_scanning(world: Dict[str, Any]) -> None:
    closed = free_port()
    # Refused by policy: an open port and a closed one read byte for byte the same.
    answers = [_kthena(world, f"http://127.0.0.1:{port}/v1/models") for port in (world["secret"].port, closed)]
    assert answers[0] == answers[1]
    # Allowed destinations: a closed port and a name that does not resolve read the same too.
    seen = []
    for url in (f"http://{RELAY_HOST}:{closed}/f", "http://no-such-host.invalid/f"):
        status, answer = _kthena(world, url)
        seen.append((status, answer["type"], answer["message"].replace(url, "URL")))
    assert seen[0] == seen[1] and "could not connect" in seen[0][2], seen


def test_the_log_tells_the_operator_and_holds_no_secret(world: Dict[str, Any]) -> None:
    log = world["patio"].output()
    assert "egress policy refused a download connection to 2130706433" in log and "(loopback)" in log
    assert SECRET not in log
    assert "management routes" in log and "--api-key" in log  # the start warning (no key set)
    assert os.path.isdir(str(world["root"]))


def test_the_start_warning_is_said_once_and_only_without_a_key() -> None:
    with FakeEngine("vllm") as engine:
        env = {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": engine.url}
        for args, expected in (([], 1), (["--api-key", "k-123"], 0)):
            patio = PatioProcess(args, env=env)
            try:
                time.sleep(0.2)
                assert patio.output().count("no --api-key (PATIO_API_KEY) is set") == expected, patio.output()
            finally:
                patio.kill()
