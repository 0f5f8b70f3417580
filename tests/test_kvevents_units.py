"""KV events, sans-IO parts: msgpack, ZMTP, RESP, event decoding, Kthena's layout.

Oracles: msgspec (the encoder vLLM and SGLang publish with) for msgpack, real libzmq
byte streams (pyzmq) for ZMTP, the recorded vLLM 0.32 payload
(../shared/fixtures/kv-events/), and Kthena's ``compute_standardized_hash``
(volcano-sh/kthena python/kthena/runtime/kv_cache_manager.py) for std hashes.
"""

import hashlib
import logging
import random
import socket
import struct
import time

import msgspec
import pytest
import zmq
from kvevents_peers import SglangBlockRemoved, SglangBlockStored, removed, sglang_batch
from support import make_settings, shared_path

from patio.errors import ConfigError
from patio.kvevents import compact, resp, zmtp
from patio.kvevents import events as ev
from patio.kvevents import layout as lay
from patio.kvevents.backlog import Backlog
from patio.kvevents.msgpack import Ext, Limits, MsgpackError, unpackb
from patio.kvevents.writer import unresolved_removals
from patio.ratelog import RateLimitedLog

FIXTURE = shared_path("fixtures", "kv-events", "vllm-0.32-cpu-blockstored.msgpack").read_bytes()
FIXTURE_HASHES = (1833370376425142648, 1881664714865506252)


def kthena_std_hash(token_ids):
    """Verbatim from Kthena's kv_cache_manager.compute_standardized_hash (logging removed)."""
    if not token_ids:
        return 0
    token_bytes = b"".join(token_id.to_bytes(4, byteorder="big") for token_id in token_ids)
    hash_obj = hashlib.sha256(token_bytes)
    full_hash = int.from_bytes(hash_obj.digest()[:8], byteorder="big")
    return full_hash & 0x7FFFFFFFFFFFFFFF


# -- msgpack ----------------------------------------------------------------------------------
VALUES = [
    ("nil", None),
    ("false", False),
    ("true", True),
    ("positive_fixint", 127),
    ("negative_fixint", -32),
    ("uint8", 200),
    ("uint16", 301),
    ("uint32", 70000),
    ("uint64", 1833370376425142648),
    ("uint64_max", (1 << 64) - 1),
    ("int8", -100),
    ("int16", -1000),
    ("int32", -100000),
    ("int64", -(1 << 40)),
    ("float64", 1795989477.079123),
    ("fixstr", "BlockStored"),
    ("str8", "kv_cache_spec_kind_full_attention_x"),
    ("str16", "x" * 300),
    ("utf8", "gpu-µ"),
    ("bin8", b"\x00\x01"),
    ("bin16", b"z" * 300),
    ("fixarray", [1, 2, 3]),
    ("array16", list(range(64))),
    ("fixmap", {"type": "BlockRemoved", "block_hashes": [1]}),
    ("map16", {str(i): i for i in range(20)}),
    ("nested", [1.5, [{"a": [None, [True]]}], None]),
]


@pytest.mark.parametrize("value", [v for _, v in VALUES], ids=[n for n, _ in VALUES])
def test_msgpack_decodes_what_msgspec_encodes(value):
    assert unpackb(msgspec.msgpack.encode(value)) == value


HANDMADE = [
    ("float32", b"\xca" + struct.pack(">f", 1.5), 1.5),
    ("array32", b"\xdd\x00\x00\x00\x02\x01\x02", [1, 2]),
    ("map32", b"\xdf\x00\x00\x00\x01\xa1k\x05", {"k": 5}),
    ("str32", b"\xdb\x00\x00\x00\x02hi", "hi"),
    ("bin32", b"\xc6\x00\x00\x00\x01\xff", b"\xff"),
    ("fixext1", b"\xd4\x05\x07", Ext(5, b"\x07")),
    ("timestamp32", b"\xd6\xff\x00\x00\x00\x01", Ext(-1, b"\x00\x00\x00\x01")),
    ("ext8", b"\xc7\x02\x01ab", Ext(1, b"ab")),
    ("int_key_map", b"\x81\x01\x02", {1: 2}),
]


@pytest.mark.parametrize("data,value", [(d, v) for _, d, v in HANDMADE], ids=[n for n, _, _ in HANDMADE])
def test_msgpack_types_msgspec_does_not_emit(data, value):
    assert unpackb(data) == value


HOSTILE = [
    ("empty", b"", "truncated"),
    ("truncated_uint64", b"\xcf\x00\x01", "truncated"),
    ("truncated_str", b"\xa5ab", "truncated"),
    ("truncated_array", b"\x93\x01\x02", "truncated"),
    ("huge_array32", b"\xdd\xff\xff\xff\xff\x00", "4294967295 items exceed"),
    ("huge_array_within_limit", b"\xdd\x00\x01\x00\x00\x00", "truncated: 65536 items"),
    ("huge_map32", b"\xdf\x7f\xff\xff\xff", "2147483647 items exceed"),
    ("huge_str32", b"\xdb\x7f\xff\xff\xff", "bin of 2147483647 bytes exceeds"),
    ("huge_bin32", b"\xc6\x00\x20\x00\x00", "bin of 2097152 bytes exceeds"),
    ("depth_bomb", b"\x91" * 100 + b"\xc0", "nesting deeper than 16"),
    ("map_depth_bomb", b"\x81\xa1k" * 40 + b"\xc0", "nesting deeper than 16"),
    ("never_used_byte", b"\xc1", "invalid type byte 0xc1"),
    ("trailing", b"\xc0\xc0", "1 trailing bytes"),
    ("bad_utf8", b"\xa2\xff\xfe", "str is not valid UTF-8"),
    ("list_key", b"\x81\x90\x01", "map key is not a scalar"),
    # 1 MiB of empty arrays: 64 bytes of objects per byte on the wire, refused at 16x + 1 MiB.
    ("empty_array_bomb", b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20), "bytes of objects"),
    ("nested_bomb", b"\xdd" + (1 << 19).to_bytes(4, "big") + b"\x91\x90" * (1 << 19), "bytes of objects"),
]


@pytest.mark.parametrize("data,message", [(d, m) for _, d, m in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_msgpack_hostile_inputs_fail_with_its_own_error(data, message):
    with pytest.raises(MsgpackError) as info:
        unpackb(data)
    assert message in str(info.value)


def test_msgpack_object_count_is_bounded_whatever_the_estimate():
    data = b"\xdd" + (5000).to_bytes(4, "big") + b"\xa1x" * 5000
    with pytest.raises(MsgpackError) as info:
        unpackb(data, Limits(max_objects=1000))
    assert "more than 1000 values" in str(info.value)
    assert len(unpackb(data)) == 5000


def test_msgpack_a_real_batch_fits_its_budget():
    """256 blocks of 32 uint16 token ids: the largest ratio of a real payload (about 13x)."""
    payload = msgspec.msgpack.encode(
        [
            1.0,
            [
                {
                    "type": "BlockStored",
                    "block_hashes": list(range(1, 257)),
                    "token_ids": [300 + t for t in range(256 * 32)],
                }
            ],
            0,
        ]
    )
    assert len(unpackb(payload)[1][0]["token_ids"]) == 256 * 32


def test_msgpack_every_truncation_of_the_fixture_is_an_error():
    for end in range(len(FIXTURE)):
        with pytest.raises(MsgpackError):
            unpackb(FIXTURE[:end])


def test_msgpack_fuzz_only_its_own_error_escapes():
    rng = random.Random(14)
    for _ in range(3000):
        data = bytearray(FIXTURE)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            unpackb(bytes(data), Limits(max_container_items=4096))
        except MsgpackError:
            pass


def test_msgpack_the_recorded_vllm_payload():
    ts, events, rank = unpackb(FIXTURE)
    assert rank == 0 and ts > 1.7e9
    (event,) = events
    assert event["type"] == "BlockStored" and tuple(event["block_hashes"]) == FIXTURE_HASHES
    assert len(event["token_ids"]) == 64 and event["block_size"] == 32 and event["medium"] == "GPU"
    assert event["extra_keys"] == [None, None] and event["kv_cache_spec_kind"] == "full_attention"


# -- events -----------------------------------------------------------------------------------
def test_events_fixture_is_one_block_stored():
    batch = ev.decode_batch(FIXTURE)
    (event,) = batch.events
    assert isinstance(event, ev.BlockStored) and event.block_hashes == FIXTURE_HASHES
    assert len(event.token_ids) == 64 and batch.dp_rank == 0


EVENT_CASES = [
    ("vllm_removed", msgspec.msgpack.encode([1.0, [removed([5, 6])], 0]), [ev.BlockRemoved((5, 6))]),
    (
        "vllm_bytes_hash",
        msgspec.msgpack.encode([1.0, [removed([b"\x01" * 32])], 0]),
        [ev.BlockRemoved((int.from_bytes(b"\x01" * 32, "big") & ((1 << 64) - 1),))],
    ),
    (
        "sglang_arrays",
        sglang_batch([SglangBlockStored([7], None, [1, 2], 2, None), SglangBlockRemoved([7])]),
        [ev.BlockStored((7,), [1, 2]), ev.BlockRemoved((7,))],
    ),
    ("all_cleared_array", msgspec.msgpack.encode([1.0, [["AllBlocksCleared"]]]), [ev.AllBlocksCleared()]),
    ("all_cleared_map", msgspec.msgpack.encode([1.0, [{"type": "AllBlocksCleared"}]]), [ev.AllBlocksCleared()]),
    ("unknown_type", msgspec.msgpack.encode([1.0, [{"type": "BlockMoved", "x": 1}]]), [ev.Unknown("BlockMoved")]),
    (
        "unknown_fields_ignored",
        msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved", "block_hashes": [1], "locality": "LOCAL"}]]),
        [ev.BlockRemoved((1,))],
    ),
    (
        "bad_hashes",
        msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved", "block_hashes": "x"}]]),
        [ev.Malformed("BlockRemoved", "block_hashes is not an array")],
    ),
    (
        "missing_tokens",
        msgspec.msgpack.encode([1.0, [{"type": "BlockStored", "block_hashes": [1]}]]),
        [ev.Malformed("BlockStored", "missing token_ids")],
    ),
    (
        "untagged",
        msgspec.msgpack.encode([1.0, [5]]),
        [ev.Malformed("unknown", "event is neither a tagged map nor a tagged array")],
    ),
    ("map_batch", msgspec.msgpack.encode({"ts": 2.0, "events": [["AllBlocksCleared"]]}), [ev.AllBlocksCleared()]),
]


@pytest.mark.parametrize("payload,expected", [(p, e) for _, p, e in EVENT_CASES], ids=[n for n, _, _ in EVENT_CASES])
def test_events_decode(payload, expected):
    assert ev.decode_batch(payload).events == expected


@pytest.mark.parametrize(
    "payload,reason",
    [(b"\xc1", "payload"), (msgspec.msgpack.encode("x"), "batch"), (msgspec.msgpack.encode(["x", []]), "batch")],
    ids=["not_msgpack", "not_a_batch", "ts_not_a_number"],
)
def test_events_bad_batches(payload, reason):
    with pytest.raises(ev.EventError) as info:
        ev.decode_batch(payload)
    assert info.value.reason == reason


# -- layout -----------------------------------------------------------------------------------
def test_std_hash_is_kthenas():
    tokens = ev.decode_batch(FIXTURE).events[0].token_ids
    for block in (tokens[:32], tokens[32:], [0], [2**32 - 1, 5], list(range(1000))):
        assert lay.std_hash(block) == kthena_std_hash(block)
    assert lay.std_hash([]) == 0
    assert lay.block_std_hashes(tokens, 2) == [kthena_std_hash(tokens[:32]), kthena_std_hash(tokens[32:])]
    with pytest.raises(ValueError):
        lay.std_hash([2**32])


def sent_commands(data):
    """The commands in a RESP request stream (what the bridge would send), as tuples of str."""
    out, i = [], 0
    while i < len(data):
        assert data[i : i + 1] == b"*"
        end = data.index(b"\r\n", i)
        count, i = int(data[i + 1 : end]), end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", i)
            length, i = int(data[i + 1 : end]), end + 2
            args.append(data[i : i + length].decode())
            i += length + 2
        out.append(tuple(args))
    return out


def test_store_commands_follow_kthenas_layout():
    layout = lay.Layout("vllm", "pod-a.ns", "llama")
    item = compact.reduce(0, ev.decode_batch(FIXTURE), True, 0, compact.GroupKinds())
    event = ev.decode_batch(FIXTURE).events[0]
    h0, h1 = FIXTURE_HASHES
    s0, s1 = kthena_std_hash(event.token_ids[:32]), kthena_std_hash(event.token_ids[32:])
    ((op, model, words),) = compact.operations(item)
    assert (op, model, list(words)) == (compact.OP_STORE, 0, [h0, s0, h1, s1])
    stamp = lay.bulk("1700000000")
    assert sent_commands(layout.store(h0, s0, None, stamp) + layout.store(h1, s1, None, stamp)) == [
        ("SET", f"vllm:kv:block:pod-a.ns@{h0}", str(s0), "EX", "86400"),
        ("HSET", f"matrix:kv:block:llama@{s0}", "pod-a.ns", "1700000000"),
        ("SET", f"vllm:kv:block:pod-a.ns@{h1}", str(s1), "EX", "86400"),
        ("HSET", f"matrix:kv:block:llama@{s1}", "pod-a.ns", "1700000000"),
    ]
    assert sent_commands(layout.unclaim(s1, None)) == [("HDEL", f"matrix:kv:block:llama@{s1}", "pod-a.ns")]
    cache = lay.HashCache(4096)
    cache.put(h0, s0)
    removal = compact.reduce(1, ev.Batch(1.0, [ev.BlockRemoved((h0, h1))]), True, 0, compact.GroupKinds())
    assert unresolved_removals(removal, cache) == [h1]
    problems = []
    bad = compact.reduce(2, ev.Batch(1.0, [ev.BlockStored((1, 2), [1, 2, 3])]), True, 0, compact.GroupKinds(), problems)
    assert bad.applied == (0, 0, 0) and bad.skipped[0] == 1 and "do not split into 2 blocks" in problems[0]


def test_layout_patterns_escape_glob_characters():
    layout = lay.Layout("sglang", "p*d[1]", "m?")
    assert layout.mapping_pattern() == "sglang:kv:block:p\\*d\\[1\\]@*"
    assert layout.matrix_pattern() == "matrix:kv:block:m\\?@*"


def test_hash_cache_is_bounded():
    cache = lay.HashCache(3)
    for i in range(10):
        cache.put(i, i * 10)
    assert len(cache) == 3 and cache.get(9) == (90, None) and cache.get(0) is None


# -- RESP -------------------------------------------------------------------------------------
REPLIES = [
    ("simple", b"+OK\r\n", "OK"),
    (
        "error",
        b"-WRONGPASS invalid username-password pair\r\n",
        resp.ReplyError("WRONGPASS invalid username-password pair"),
    ),
    ("integer", b":42\r\n", 42),
    ("negative", b":-1\r\n", -1),
    ("bulk", b"$5\r\nhello\r\n", b"hello"),
    ("bulk_with_crlf", b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    ("empty_bulk", b"$0\r\n\r\n", b""),
    ("nil_bulk", b"$-1\r\n", None),
    ("array", b"*2\r\n$3\r\nfoo\r\n:1\r\n", [b"foo", 1]),
    ("empty_array", b"*0\r\n", []),
    ("nil_array", b"*-1\r\n", None),
    ("scan_page", b"*2\r\n$1\r\n0\r\n*1\r\n$3\r\nkey\r\n", [b"0", [b"key"]]),
    ("nested_error", b"*2\r\n-ERR x\r\n+OK\r\n", [resp.ReplyError("ERR x"), "OK"]),
]


@pytest.mark.parametrize("data,value", [(d, v) for _, d, v in REPLIES], ids=[n for n, _, _ in REPLIES])
@pytest.mark.parametrize("feed", ["whole", "byte_by_byte", "with_trailing_reply"])
def test_resp_replies(data, value, feed):
    parser = resp.RespParser()
    if feed == "byte_by_byte":
        for i in range(len(data)):
            assert parser.next_reply() is resp.NEED_DATA
            parser.receive_data(data[i : i + 1])
    else:
        parser.receive_data(data + (b":7\r\n" if feed == "with_trailing_reply" else b""))
    assert parser.next_reply() == value
    assert parser.next_reply() == (7 if feed == "with_trailing_reply" else resp.NEED_DATA)


BAD_REPLIES = [
    ("unknown_type", b"?x\r\n", "unknown reply type"),
    ("empty_line", b"\r\n", "empty reply line"),
    ("bad_integer", b":abc\r\n", "expected an integer"),
    ("bulk_too_big", b"$99999999\r\n", "bulk string of 99999999 bytes"),
    ("bulk_without_crlf", b"$2\r\nabcd", "not followed by CRLF"),
    ("array_too_big", b"*99999999\r\n", "array of 99999999 items"),
    ("too_deep", b"*1\r\n" * 20 + b":1\r\n", "nested deeper than 8"),
    ("endless_line", b"+" + b"x" * 70000, "longer than 65536"),
    ("array_past_the_page_limit", b"*100001\r\n", "array of 100001 items (limit 100000)"),
    ("reply_past_the_value_limit", b"*3\r\n" + (b"*90000\r\n" + b":1\r\n" * 90000) * 3, "more than 200000 values"),
]


@pytest.mark.parametrize("data,message", [(d, m) for _, d, m in BAD_REPLIES], ids=[n for n, _, _ in BAD_REPLIES])
def test_resp_protocol_errors(data, message):
    with pytest.raises(resp.RespError) as info:
        resp.RespParser().receive_data(data)
    assert message in str(info.value)


def test_resp_a_reply_cut_into_reads_is_parsed_once():
    """Each byte is looked at once however the reply is cut (re-parsing from the start on each
    read made a 4 MB reply cost minutes): a 60k-item array fed 7 bytes at a time."""
    data = b"*60000\r\n" + b"$3\r\nkey\r\n" * 60000 + b":7\r\n"
    parser = resp.RespParser()
    for i in range(0, len(data), 7):
        parser.receive_data(data[i : i + 7])
    assert parser.replies() == [[b"key"] * 60000, 7]


def test_resp_truncated_reply_waits():
    parser = resp.RespParser()
    parser.receive_data(b"*2\r\n$3\r\nfo")
    assert parser.next_reply() is resp.NEED_DATA
    parser.receive_data(b"o\r\n:1\r\n")
    assert parser.next_reply() == [b"foo", 1]


def test_resp_encode_pipeline():
    assert resp.encode("SET", "k", 5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"
    assert (
        resp.encode_pipeline([("PING",), ("GET", b"\x00")]) == b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\n\x00\r\n"
    )


# -- ZMTP -------------------------------------------------------------------------------------
def peer_bytes(socket_type=b"PUB", minor=1, mechanism=b"NULL"):
    greeting = zmtp.SIGNATURE + bytes((3, minor)) + mechanism.ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    return greeting + zmtp.encode_command("READY", zmtp.encode_properties({"Socket-Type": socket_type}))


def multipart(*frames):
    return b"".join(zmtp.encode_frame(f, more=i < len(frames) - 1) for i, f in enumerate(frames))


def feed(client, data, how):
    if how == "whole":
        client.receive_data(data)
    else:
        for i in range(len(data)):
            client.receive_data(data[i : i + 1])
    return client.events()


STREAMS = [
    ("handshake", peer_bytes(), ["Ready"]),
    ("handshake_3_0", peer_bytes(minor=0), ["Ready"]),
    ("message", peer_bytes() + multipart(b"kv-events", b"\x00" * 8, b"payload"), ["Ready", "Message"]),
    ("long_frame", peer_bytes() + multipart(b"t", b"\x00" * 8, b"p" * 1000), ["Ready", "Message"]),
    (
        "oversize_dropped",
        peer_bytes() + multipart(b"t", b"p" * 5000) + multipart(b"next"),
        ["Ready", "Dropped", "Message"],
    ),
    ("too_many_frames", peer_bytes() + multipart(*[b"f"] * 9) + multipart(b"ok"), ["Ready", "Dropped", "Message"]),
    ("ping_answered", peer_bytes() + zmtp.encode_command("PING", b"\x00\x0actx"), ["Ready"]),
    ("peer_error", peer_bytes() + zmtp.encode_command("ERROR", b"\x04nope"), ["Ready", "PeerError"]),
    ("unknown_command", peer_bytes() + zmtp.encode_command("FUTURE", b"x"), ["Ready"]),
]


@pytest.mark.parametrize("data,kinds", [(d, k) for _, d, k in STREAMS], ids=[n for n, _, _ in STREAMS])
@pytest.mark.parametrize("how", ["whole", "byte_by_byte"])
def test_zmtp_streams(data, kinds, how):
    client = zmtp.ZmtpClient("SUB", max_frame_bytes=4096)
    assert client.data_to_send() == zmtp.greeting(1)
    events = feed(client, data, how)
    assert [type(e).__name__ for e in events] == kinds
    out = client.data_to_send()
    assert out.startswith(zmtp.encode_command("READY", zmtp.encode_properties({"Socket-Type": b"SUB"})))
    if "PING" in repr(data[64:]):
        assert out.endswith(zmtp.encode_command("PONG", b"ctx"))
    messages = [e for e in events if isinstance(e, zmtp.Message)]
    if messages and len(messages[0].frames) == 3:
        assert messages[0].frames[0] in (b"kv-events", b"t")


BAD_STREAMS = [
    ("http_server", b"HTTP/1.1 400 Bad Request\r\n", "not a ZeroMQ peer"),
    ("zmtp_2", zmtp.SIGNATURE + b"\x01\x00", "ZMTP 1.x"),
    ("curve", peer_bytes(mechanism=b"CURVE"), "mechanism CURVE"),
    ("wrong_socket_type", peer_bytes(socket_type=b"REP"), "a SUB cannot talk to a REP"),
    ("reserved_flags", peer_bytes() + b"\x80\x00", "reserved frame flag bits"),
    ("command_with_more", peer_bytes() + b"\x05\x00", "command frame with the MORE flag"),
    ("second_ready", peer_bytes() + peer_bytes()[64:], "a second READY"),
    ("message_before_ready", peer_bytes()[:64] + multipart(b"x"), "before the READY"),
]


@pytest.mark.parametrize("data,message", [(d, m) for _, d, m in BAD_STREAMS], ids=[n for n, _, _ in BAD_STREAMS])
@pytest.mark.parametrize("how", ["whole", "byte_by_byte"])
def test_zmtp_protocol_errors(data, message, how):
    with pytest.raises(zmtp.ZmtpError) as info:
        feed(zmtp.ZmtpClient("SUB"), data, how)
    assert message in str(info.value)


def test_zmtp_subscribe_is_a_command_on_3_1_and_a_message_on_3_0():
    for minor, expected in ((1, zmtp.encode_command("SUBSCRIBE", b"kv")), (0, zmtp.encode_frame(b"\x01kv"))):
        client = zmtp.ZmtpClient("SUB")
        client.receive_data(peer_bytes(minor=minor))
        assert client.version == (3, minor) and client.subscribe(b"kv") == expected


def _raw_session(sock_type, subscribe=None, request=None):
    """What a real libzmq peer sends to our client, captured from a plain TCP socket."""
    ctx = zmq.Context()
    peer = ctx.socket(sock_type)
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    client = zmtp.ZmtpClient("SUB" if sock_type == zmq.PUB else "DEALER")
    captured = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(client.data_to_send())
            while not client.ready:
                data = raw.recv(4096)
                captured += data
                client.receive_data(data)
                raw.sendall(client.data_to_send())
            if subscribe is not None:
                raw.sendall(client.subscribe(subscribe))
                time.sleep(0.2)  # the PUB applies the subscription asynchronously
                for seq in range(3):
                    peer.send_multipart([b"kv-events", seq.to_bytes(8, "big"), FIXTURE])
                peer.send_multipart([b"other-topic", b"x", b"y"])
            if request is not None:
                raw.sendall(client.message([b"", request]))
                ident, _, body = peer.recv_multipart()
                peer.send_multipart([ident, b"", b"kv-events", body, FIXTURE])
            deadline = time.monotonic() + 5
            want = 3 if subscribe is not None else 1
            seen = 0
            while seen < want and time.monotonic() < deadline:
                raw.settimeout(0.5)
                try:
                    data = raw.recv(65536)
                except socket.timeout:
                    continue
                captured += data
                client.receive_data(data)
                seen += sum(isinstance(e, zmtp.Message) for e in client.events())
    finally:
        peer.close(0)
        ctx.term()
    return bytes(captured)


@pytest.mark.parametrize("how", ["whole", "byte_by_byte"])
def test_zmtp_against_a_real_libzmq_pub(how):
    captured = _raw_session(zmq.PUB, subscribe=b"kv-events")
    events = feed(zmtp.ZmtpClient("SUB"), captured, how)
    assert isinstance(events[0], zmtp.Ready) and events[0].properties["socket-type"] == b"PUB"
    messages = [e.frames for e in events if isinstance(e, zmtp.Message)]
    # The subscription (a 3.1 command) filtered the other topic at the publisher.
    assert messages == [[b"kv-events", seq.to_bytes(8, "big"), FIXTURE] for seq in range(3)]


@pytest.mark.parametrize("how", ["whole", "byte_by_byte"])
def test_zmtp_against_a_real_libzmq_router(how):
    captured = _raw_session(zmq.ROUTER, request=(7).to_bytes(8, "big"))
    events = feed(zmtp.ZmtpClient("DEALER"), captured, how)
    assert events[0].properties["socket-type"] == b"ROUTER"
    assert events[1].frames == [b"", b"kv-events", (7).to_bytes(8, "big"), FIXTURE]


# -- settings (Kthena's names: python/kthena/runtime/{redis_client,vllm_config,sglang_config}.py) --
KTHENA = {"REDIS_HOST": "redis-server", "POD_NAME": "vllm-0.ns", "MODEL_NAME": "llama"}
SETTINGS = [
    ("off_by_default", [], {}, {"enabled": False, "reason": "not configured: REDIS_HOST, --pod, --model unset"}),
    (
        "off_without_model",
        ["-I", "p"],
        {"REDIS_HOST": "r"},
        {"enabled": False, "reason": "not configured: --model unset"},
    ),
    (
        "kthena_vllm_defaults",
        ["-E", "vllm"],
        KTHENA,
        {
            "enabled": True,
            "pod": "vllm-0.ns",
            "model": "llama",
            "redis_host": "redis-server",
            "redis_port": 6379,
            "redis_db": 0,
            "endpoint": "tcp://localhost:5557",
            "replay_endpoint": None,
            "topic": "kv-events",
        },
    ),
    ("flags_as_kthena", ["-E", "vllm", "-I", "a", "-N", "m"], {"REDIS_HOST": "h"}, {"pod": "a", "model": "m"}),
    (
        "vllm_env",
        ["-E", "vllm"],
        {
            **KTHENA,
            "REDIS_PORT": "6380",
            "REDIS_DB": "2",
            "REDIS_PASSWORD": "pw",
            "VLLM_ZMQ_ENDPOINT": "tcp://127.0.0.1:6000",
            "VLLM_ZMQ_REPLAY_ENDPOINT": "tcp://127.0.0.1:6001",
            "VLLM_ZMQ_TOPIC_FILTER": "",
            "SGLANG_ZMQ_ENDPOINT": "tcp://ignored:1",
        },
        {
            "redis_port": 6380,
            "redis_db": 2,
            "redis_password": "pw",
            "endpoint": "tcp://127.0.0.1:6000",
            "replay_endpoint": "tcp://127.0.0.1:6001",
            "topic": "",
        },
    ),
    (
        "sglang_env",
        ["-E", "sglang"],
        {**KTHENA, "SGLANG_ZMQ_ENDPOINT": "ipc:///tmp/kv", "VLLM_ZMQ_ENDPOINT": "tcp://ignored:1"},
        {"engine": "sglang", "endpoint": "ipc:///tmp/kv", "topic": ""},
    ),
    (
        "flags_win",
        ["-E", "vllm", "--redis-host", "f", "--redis-port", "7000", "--kv-events-endpoint", "tcp://*:5557"],
        {**KTHENA, "REDIS_PORT": "6380"},
        {"redis_host": "f", "redis_port": 7000, "endpoint": "tcp://*:5557"},
    ),
    ("switched_off", ["-E", "vllm"], {**KTHENA, "PATIO_KV_EVENTS": "false"}, {"enabled": False}),
]


@pytest.mark.parametrize("argv,env,expected", [(a, e, x) for _, a, e, x in SETTINGS], ids=[n for n, *_ in SETTINGS])
def test_kvevents_settings(argv, env, expected):
    settings = make_settings(argv, env).kvevents
    assert {key: getattr(settings, key) for key in expected} == expected
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    "env,setting",
    [
        ({"VLLM_ZMQ_ENDPOINT": "http://x:1"}, "VLLM_ZMQ_ENDPOINT"),
        ({"VLLM_ZMQ_ENDPOINT": "tcp://nohost"}, "VLLM_ZMQ_ENDPOINT"),
        ({"VLLM_ZMQ_REPLAY_ENDPOINT": "tcp://h:99999"}, "VLLM_ZMQ_REPLAY_ENDPOINT"),
        ({"REDIS_PORT": "0"}, "REDIS_PORT"),
        ({"REDIS_DB": "-1"}, "REDIS_DB"),
        ({"PATIO_KV_EVENTS_BACKLOG": "0"}, "PATIO_KV_EVENTS_BACKLOG"),
        ({"PATIO_KV_EVENTS": "maybe"}, "PATIO_KV_EVENTS"),
    ],
    ids=["not_zmq", "no_port", "port_range", "redis_port", "redis_db", "backlog", "switch"],
)
def test_kvevents_bad_settings_name_the_setting(env, setting):
    with pytest.raises(ConfigError) as info:
        make_settings(["-E", "vllm"], {**KTHENA, **env})
    assert info.value.setting == setting


# -- what is held: reduced batches, the backlog -------------------------------------------------------------
def test_a_realistic_batch_is_held_in_a_few_kilobytes():
    hashes = list(range(1, 257))
    payload = msgspec.msgpack.encode(
        [1.0, [{"type": "BlockStored", "block_hashes": hashes, "token_ids": [300 + t for t in range(256 * 32)]}], 0]
    )
    item = compact.reduce(0, ev.decode_batch(payload), True, compact.fingerprint(payload), compact.GroupKinds())
    assert item.nbytes < 5 * 1024 and item.applied == (1, 0, 0) and item.fingerprint == compact.fingerprint(payload)


def test_int64_engine_hashes_round_trip():
    """SGLang's hashes are signed (hash_str_to_int64): the mapping key names the same number."""
    batch = ev.Batch(1.0, [ev.BlockStored((-5, 2**63 - 1), [1, 2]), ev.BlockRemoved((-5,))])
    item = compact.reduce(0, batch, True, 0, compact.GroupKinds())
    (_, _, words), (_, _, removed_words) = compact.operations(item)
    assert [item.engine_hash(w) for w in words[::2]] == [-5, 2**63 - 1]
    assert [item.engine_hash(w) for w in removed_words] == [-5]


def held(seq, nbytes):
    item = compact.reduce(seq, ev.Batch(1.0, []), True, 0, compact.GroupKinds())
    item.nbytes = nbytes
    return item


BACKLOG = [
    ("fits", 1000, 10, [100, 100, 100], 3, 0),
    ("bytes_full_drops_all_held", 250, 10, [100, 100, 100], 1, 2),
    ("count_full_drops_all_held", 1000, 2, [100, 100, 100], 1, 2),
    ("one_larger_than_the_bound", 250, 10, [100, 300], 0, 2),
]


@pytest.mark.parametrize(
    "max_bytes,max_batches,sizes,held_after,dropped",
    [case[1:] for case in BACKLOG],
    ids=[case[0] for case in BACKLOG],
)
def test_backlog_bounds(max_bytes, max_batches, sizes, held_after, dropped):
    backlog = Backlog(max_bytes, max_batches)
    total = sum(backlog.add(held(i, n)) for i, n in enumerate(sizes))
    assert (len(backlog), total) == (held_after, dropped)
    assert backlog.nbytes == sum(item.nbytes for item in backlog) <= max_bytes


GROUPS = [
    ("no_group_no_kind", [(None, None)], True),
    ("full_attention", [(0, "full_attention")], True),
    ("mla_is_full", [(0, "mla_attention")], True),
    ("sliding_window", [(1, "sliding_window")], False),
    ("removal_in_a_learned_sliding_group", [(1, "sliding_window"), (1, None)], False),
    ("removal_in_an_unknown_group", [(7, None)], True),
]


@pytest.mark.parametrize("events,holds", [c[1:] for c in GROUPS], ids=[c[0] for c in GROUPS])
def test_group_kinds(events, holds):
    groups = compact.GroupKinds()
    answers = [groups.holds_prefixes(group, kind) for group, kind in events]
    assert answers[-1] is holds


# -- rate-limited logging -------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_limited_log_per_cause(caplog):
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("patio.test.ratelog"), interval=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="patio.test.ratelog"):
        for i in range(1000):
            limited.log("malformed", f"message {i}: bad")
        limited.log("redis", "redis down")  # another cause is not hidden by the flood
        clock.now = 61.0
        limited.flush()
        limited.log("malformed", "message 2000: bad")  # quiet for an interval: in full again
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "message 0: bad",
        "redis down",
        "999 more like this (malformed) in the last 61s; the last: message 999: bad",
        "message 2000: bad",
    ]
