"""The sans-IO response parser behind Patio's engine and router calls.

Every well-formed answer is also fed to ``http.client`` (the stdlib's parser, which
Patio no longer loads) as an oracle: same status, same body.  Each case is fed
whole, byte by byte, and in two halves.
"""

import http.client
import io
from typing import List, NamedTuple, Optional

import pytest

from patio.http.response_parser import (
    MAX_CHUNK_LINE_BYTES,
    MAX_INTERIM_RESPONSES,
    MAX_RESPONSE_HEAD_BYTES,
    MalformedResponse,
    ResponseParser,
    ResponseTooLarge,
    TruncatedResponse,
)


class Good(NamedTuple):
    name: str
    raw: bytes
    status: int
    body: bytes
    keep_alive: bool
    method: str = "GET"
    needs_eof: bool = False  # the body runs until the peer closes


GOOD: List[Good] = [
    Good("content_length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello", True),
    Good("empty_body", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b"", True),
    Good("no_reason_phrase", b"HTTP/1.1 202\r\nContent-Length: 2\r\n\r\n{}", 202, b"{}", True),
    Good(
        "chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        200,
        b"hello world",
        True,
    ),
    Good(
        "chunked_with_extensions_and_trailers",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a;name=value\r\n0123456789\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
        200,
        b"0123456789",
        True,
    ),
    Good(
        "chunked_upper_hex",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nB\r\nhello world\r\n0\r\n\r\n",
        200,
        b"hello world",
        True,
    ),
    Good(
        "close_delimited",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        200,
        b"until the end",
        False,
        needs_eof=True,
    ),
    Good(
        "connection_close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        False,
    ),
    Good("http10_default_close", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
    Good(
        "http10_keep_alive",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        True,
    ),
    Good(
        "head_has_no_body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        200,
        b"",
        True,
        method="HEAD",
    ),
    Good("no_content", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    Good("not_modified", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", 304, b"", True),
    Good(
        "interim_continue_skipped",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        True,
    ),
    Good(
        "repeated_equal_content_length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        True,
    ),
    Good(
        "error_status_is_an_answer",
        b'HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{"err":"x"}',
        404,
        b'{"err":"x"}',
        True,
    ),
    Good(
        "header_whitespace_trimmed",
        b"HTTP/1.1 200 OK\r\nContent-Length:   3 \t\r\n\r\nabc",
        200,
        b"abc",
        True,
    ),
]


def _feed(parser: ResponseParser, raw: bytes, how: str, eof: bool) -> None:
    if how == "whole":
        parser.feed(raw)
    elif how == "bytewise":
        for i in range(len(raw)):
            parser.feed(raw[i : i + 1])
    else:
        half = len(raw) // 2
        parser.feed(raw[:half])
        parser.feed(raw[half:])
    if eof:
        parser.feed_eof()


def _oracle(raw: bytes, method: str) -> "tuple[int, bytes]":
    class Sock:
        def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
            return io.BytesIO(raw)

    response = http.client.HTTPResponse(Sock(), method=method)  # type: ignore[arg-type]
    response.begin()
    return response.status, response.read()


@pytest.mark.parametrize("how", ["whole", "bytewise", "halves"])
@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_good_answers(case: Good, how: str) -> None:
    parser = ResponseParser(case.method, max_body_bytes=1 << 20)
    _feed(parser, case.raw, how, eof=case.needs_eof)
    assert parser.complete
    assert parser.head is not None
    assert (parser.head.status, parser.body()) == (case.status, case.body)
    assert parser.keep_alive is case.keep_alive
    assert (parser.head.status, parser.body()) == _oracle(case.raw, case.method)


def test_complete_before_eof_for_framed_bodies() -> None:
    parser = ResponseParser("GET", 100)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parser.complete  # no need to wait for the peer to close


def test_header_lookup_joins_repeats() -> None:
    parser = ResponseParser("GET", 100)
    parser.feed(b"HTTP/1.1 200 OK\r\nVary: a\r\nVARY: b\r\nContent-Length: 0\r\n\r\n")
    assert parser.head is not None
    assert parser.head.get("vary") == "a, b"
    assert parser.head.get("missing") is None


def test_bytes_after_a_complete_answer_forbid_reuse() -> None:
    parser = ResponseParser("GET", 100)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert parser.complete and parser.body() == b"ok"
    assert not parser.keep_alive


def test_content_length_with_chunked_is_not_reused() -> None:
    parser = ResponseParser("GET", 100)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert parser.body() == b"ok"
    assert not parser.keep_alive  # a possible smuggling attempt: the connection is dropped


class Bad(NamedTuple):
    name: str
    raw: bytes
    error: type
    eof: bool = False
    max_body: int = 1 << 20
    method: str = "GET"
    match: Optional[str] = None


BAD: List[Bad] = [
    Bad("not_http", b"<html>hello</html>\r\n\r\n", MalformedResponse, match="bad status line"),
    Bad("http2_status", b"HTTP/2.0 200 OK\r\n\r\n", MalformedResponse, match="unsupported HTTP version"),
    Bad("status_not_three_digits", b"HTTP/1.1 20 OK\r\n\r\n", MalformedResponse, match="bad status line"),
    Bad("header_without_colon", b"HTTP/1.1 200 OK\r\nBroken header\r\n\r\n", MalformedResponse),
    Bad("header_name_with_space", b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", MalformedResponse),
    Bad(
        "conflicting_content_length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        MalformedResponse,
        match="conflicting",
    ),
    Bad("negative_content_length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", MalformedResponse),
    Bad("junk_content_length", b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n", MalformedResponse),
    Bad("absurd_content_length", b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n", MalformedResponse),
    Bad(
        "bad_chunk_size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        MalformedResponse,
        match="bad chunk size",
    ),
    Bad(
        "chunk_without_crlf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        MalformedResponse,
        match="CRLF",
    ),
    Bad(
        "endless_chunk_size_line",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * (MAX_CHUNK_LINE_BYTES + 10),
        MalformedResponse,
        match="chunk size line",
    ),
    Bad(
        "endless_head",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * MAX_RESPONSE_HEAD_BYTES,
        MalformedResponse,
        match="head is larger",
    ),
    Bad(
        "too_many_interim_answers",
        b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM_RESPONSES + 1),
        MalformedResponse,
        match="interim",
    ),
    Bad("switching_protocols", b"HTTP/1.1 101 Switching Protocols\r\n\r\n", MalformedResponse),
    Bad("closed_without_answer", b"", TruncatedResponse, eof=True, match="without an answer"),
    Bad("closed_inside_head", b"HTTP/1.1 200 OK\r\nContent-Le", TruncatedResponse, eof=True, match="head"),
    Bad(
        "closed_inside_body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        TruncatedResponse,
        eof=True,
        match="3 of 10",
    ),
    Bad(
        "closed_inside_chunked_body",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        TruncatedResponse,
        eof=True,
    ),
    Bad(
        "closed_before_last_chunk",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        TruncatedResponse,
        eof=True,
    ),
    Bad(
        "declared_length_over_limit",
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
        ResponseTooLarge,
        max_body=10,
    ),
    Bad(
        "chunked_over_limit",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n",
        ResponseTooLarge,
        max_body=10,
    ),
    Bad(
        "close_delimited_over_limit",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11,
        ResponseTooLarge,
        max_body=10,
    ),
]


@pytest.mark.parametrize("how", ["whole", "bytewise"])
@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_answers(case: Bad, how: str) -> None:
    parser = ResponseParser(case.method, max_body_bytes=case.max_body)
    with pytest.raises(case.error, match=case.match):
        _feed(parser, case.raw, how, eof=case.eof)
    assert not parser.complete


def test_received_counts_bytes_so_a_silent_close_is_told_apart() -> None:
    silent = ResponseParser("GET", 10)
    with pytest.raises(TruncatedResponse):
        silent.feed_eof()
    assert silent.received == 0
    partial = ResponseParser("GET", 10)
    partial.feed(b"HTTP/1.1 2")
    assert partial.received == 10
