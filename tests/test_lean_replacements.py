"""Small replacements for stdlib helpers Patio no longer imports at start (to stay under
20 MB resident), each checked against the helper it replaces as an oracle."""

import email.utils
import gzip
import html
import os
import stat
import subprocess
import sys
from http import HTTPStatus

import pytest
from support import ROOT

from patio.api.openapi import escape
from patio.http.responses import REASONS, http_date
from patio.lora.held_set import STATE_FILE, read_held_set, write_held_set
from patio.metrics.exposition import gzip_compress
from patio.options import terminal_columns

INSTANTS = [0, 1, 951782400, 1700000000, 1767225599, 4102444800, 2147483647]


@pytest.mark.parametrize("seconds", INSTANTS)
def test_http_date_matches_email_utils(seconds: int) -> None:
    assert http_date(seconds) == email.utils.formatdate(seconds, usegmt=True)


@pytest.mark.parametrize("level", [1, 5, 9])
@pytest.mark.parametrize(
    "body", [b"", b"x", b"# HELP a b\n" * 5000, os.urandom(4096)], ids=["empty", "one", "metrics", "random"]
)
def test_gzip_compress_is_a_gzip_member(body: bytes, level: int) -> None:
    packed = gzip_compress(body, level=level)
    assert packed[:2] == b"\x1f\x8b"  # RFC 1952 magic
    assert gzip.decompress(packed) == body


@pytest.mark.parametrize(
    "text",
    ["plain", "<script>alert('x')</script>", 'a "quoted" & <b>', "ünïcode ✓", "&amp; already"],
    ids=["plain", "script", "quotes_amp", "unicode", "pre_escaped"],
)
def test_escape_matches_html_escape(text: str) -> None:
    assert escape(text) == html.escape(text, quote=True)


def test_reason_phrases_cover_http_status() -> None:
    for status in HTTPStatus:
        expected = "Request Header Fields Too Large" if status.value == 431 else status.phrase
        assert REASONS[status.value] == expected


@pytest.mark.parametrize(
    "environ,expected",
    [({"COLUMNS": "132"}, 132), ({"COLUMNS": "0"}, None), ({"COLUMNS": "wide"}, None), ({}, None)],
    ids=["columns", "zero_ignored", "junk_ignored", "unset"],
)
def test_terminal_columns(environ: dict, expected: object) -> None:
    width = terminal_columns(environ)
    if expected is None:
        assert width > 0  # the terminal's width, or 80 when stderr is not a terminal
    else:
        assert width == expected


def test_state_file_is_private_and_leaves_no_temp_files(tmp_path) -> None:
    adapters = [{"name": "a", "source": "/models/a"}]
    write_held_set(str(tmp_path), adapters)
    write_held_set(str(tmp_path), adapters)
    assert os.listdir(tmp_path) == [STATE_FILE]
    assert stat.S_IMODE(os.stat(tmp_path / STATE_FILE).st_mode) == 0o600
    assert read_held_set(str(tmp_path)) == adapters


def test_asyncio_loads_without_ssl_and_ssl_stays_importable() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from patio.cli import load_asyncio\n"
        "asyncio = load_asyncio()\n"
        "assert 'ssl' not in sys.modules, 'asyncio loaded OpenSSL'\n"
        "async def serve_once():\n"
        "    server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)\n"
        "    server.close(); await server.wait_closed()\n"
        "asyncio.run(serve_once())\n"
        "import ssl; ssl.create_default_context()\n"  # an https download still works later
        "assert load_asyncio() is asyncio\n"
        "print('ok')\n"
    )
    argv = [sys.executable, "-I", "-S", "-c", code, str(ROOT)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
