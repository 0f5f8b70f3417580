"""The sans-IO request parser: tables of good and malformed requests, fed whole,
byte by byte, and pipelined."""

import pytest

from patio.errors import PatioError
from patio.http.request_parser import HeadCache, RequestParser

HEADER_LIMIT, BODY_LIMIT = 1024, 64


def feed_all(data: bytes, chunk: int = 0):
    parser = RequestParser(HEADER_LIMIT, BODY_LIMIT)
    requests = []
    pieces = [data] if chunk == 0 else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        parser.feed(piece)
        while True:
            request = parser.next_request()
            if request is None:
                break
            requests.append(request)
    return requests, parser


GOOD = [
    ("get", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/health", b"", True)),
    ("post_body", b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", ("POST", "/a", b"hello", True)),
    ("connection_close", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", ("GET", "/", b"", False)),
    ("http10_default_close", b"GET / HTTP/1.0\r\n\r\n", ("GET", "/", b"", False)),
    ("http10_keep_alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", ("GET", "/", b"", True)),
    ("bare_lf", b"GET /q?x=1 HTTP/1.1\nHost: x\n\n", ("GET", "/q?x=1", b"", True)),
    ("leading_empty_lines", b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/", b"", True)),
    ("header_whitespace", b"GET / HTTP/1.1\r\nHost:   x  \r\nX-A:\tb\r\n\r\n", ("GET", "/", b"", True)),
    ("zero_length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", ("POST", "/", b"", True)),
    (
        "body_at_limit",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n" + b"x" * 64,
        ("POST", "/", b"x" * 64, True),
    ),
    ("latin1_header_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n", ("GET", "/", b"", True)),
]


@pytest.mark.parametrize("feed", ["whole", "byte_by_byte", "pipelined_with_trailing"])
@pytest.mark.parametrize("data,expected", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_requests(data, expected, feed):
    if feed == "pipelined_with_trailing":
        requests, parser = feed_all(data + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\nGET /partial HT")
        assert [r.target for r in requests] == [expected[1], "/next"]
        assert parser.in_progress
    else:
        requests, parser = feed_all(data, chunk=1 if feed == "byte_by_byte" else 0)
        assert len(requests) == 1 and not parser.in_progress
    first = requests[0]
    assert (first.method, first.target, first.body, first.keep_alive) == expected
    assert all(name == name.lower() for name, _ in first.headers)


BAD = [
    ("bad_request_line", b"GARBAGE\r\n\r\n", 400),
    ("too_many_parts", b"GET / x HTTP/1.1\r\n\r\n", 400),
    ("bad_method_chars", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("space_in_target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("bad_version", b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400),
    ("http2_version", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("missing_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("header_without_colon", b"GET / HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n", 400),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("control_char_in_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    ("non_ascii_junk", b"\xff\xfe\x00GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate_content_length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", 400),
    ("negative_length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("non_numeric_length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", 400),
    ("huge_length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
    ("body_over_limit", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n", 413),
    ("chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    ("te_and_cl", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("unknown_te", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("headers_over_limit", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", 431),
    ("endless_headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 300, 431),
    ("too_many_empty_lines", b"\r\n" * 20 + b"GET / HTTP/1.1\r\n\r\n", 400),
]


@pytest.mark.parametrize("feed", ["whole", "byte_by_byte", "after_good_request"])
@pytest.mark.parametrize("data,status", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_requests(data, status, feed):
    prefix = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n" if feed == "after_good_request" else b""
    with pytest.raises(PatioError) as info:
        feed_all(prefix + data, chunk=1 if feed == "byte_by_byte" else 0)
    assert info.value.status == status
    assert info.value.to_dict()["code"] == status


def test_error_is_sticky():
    parser = RequestParser(HEADER_LIMIT, BODY_LIMIT)
    parser.feed(b"BAD\r\n\r\n")
    for _ in range(2):
        with pytest.raises(PatioError):
            parser.next_request()


def test_truncated_body_waits_for_more():
    requests, parser = feed_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert requests == [] and parser.in_progress and parser.head is not None
    parser.feed(b"defghij")
    assert parser.next_request().body == b"abcdefghij"


def test_expect_continue_is_reported_on_the_head():
    _, parser = feed_all(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert parser.head is not None and parser.head.expect_continue


def _all_requests(data: bytes, cache: HeadCache) -> list:
    parser = RequestParser(HEADER_LIMIT, BODY_LIMIT, cache)
    parser.feed(data)
    found = []
    while True:
        request = parser.next_request()
        if request is None:
            return found
        found.append(request)


@pytest.mark.parametrize("data", [c[1] for c in GOOD], ids=[c[0] for c in GOOD])
def test_a_remembered_head_parses_as_a_fresh_one(data):
    """The head cache changes the cost, never the result: the same request parsed cold, then
    warm by another parser sharing the cache, then with a body and a pipelined follower."""
    cache = HeadCache()
    fresh = feed_all(data)[0]
    assert _all_requests(data, cache) == fresh  # cold: parsed, remembered
    assert len(cache) >= 1
    assert _all_requests(data, cache) == fresh  # warm: remembered
    assert _all_requests(data + data, cache) == fresh + fresh


@pytest.mark.parametrize("data,status", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_head_that_failed_is_never_remembered(data, status):
    cache = HeadCache()
    for _ in range(2):
        with pytest.raises(PatioError) as info:
            _all_requests(data, cache)
        assert info.value.status == status
    assert len(cache) == 0


def test_the_head_cache_is_bounded_in_entries_and_in_head_size():
    cache = HeadCache(entries=4, max_head_bytes=64)
    for i in range(10):
        _all_requests(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i, cache)
    assert len(cache) == 4
    assert [head.target for head in cache.heads.values()] == ["/6", "/7", "/8", "/9"]  # oldest dropped first
    _all_requests(b"GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 64 + b"\r\n\r\n", cache)
    assert "/big" not in [head.target for head in cache.heads.values()]
