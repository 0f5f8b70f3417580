"""What each router generation's answers mean (patio.topology.answers, sans-IO).

Bodies are the ones the real routers gave on 127.0.0.1 (PyPI sglang-router 0.3.2, smg
1.13.0, vllm-router 0.1.17; see ../shared/reference/sglang-router.md) plus hostile ones.
"""

import json

import pytest

from patio.topology.answers import (
    Member,
    RouterAuthError,
    RouterError,
    interpret_listing,
    interpret_lookup,
    interpret_register,
    interpret_removal,
    interpret_replace,
)

URL = "http://127.0.0.1:18001"
SMG_ID = "01a22974-03a7-7191-b4cd-4d36c52b2981"
SGL_ID = "d68605b2-bb4f-405e-a020-e10688bffd44"


def j(value):
    return json.dumps(value).encode()


REGISTER = [
    (
        "sglang_router_202",
        "sglang",
        202,
        j({"status": "accepted", "worker_id": SGL_ID, "url": URL, "location": f"/workers/{SGL_ID}"}),
        (SGL_ID, False),
        "sglang-router",
    ),
    (
        "smg_202_uuid7",
        "sglang",
        202,
        j({"status": "accepted", "worker_id": SMG_ID, "url": URL}),
        (SMG_ID, False),
        "smg",
    ),
    (
        "smg_409_names_the_id",
        "sglang",
        409,
        j(
            {
                "error": f"Worker already exists at URL '{URL}' with ID {SMG_ID}. Use PUT /workers/{SMG_ID} to"
                f" replace or PATCH /workers/{SMG_ID} to update.",
                "code": "WORKER_ALREADY_EXISTS",
            }
        ),
        (SMG_ID, True),
        "smg",
    ),
    (
        "smg_409_without_id",
        "sglang",
        409,
        j({"error": "Worker already exists", "code": "WORKER_ALREADY_EXISTS"}),
        (None, True),
        "smg",
    ),
    (
        "vllm_200_no_id",
        "vllm",
        200,
        j({"success": True, "message": f"Successfully added worker: {URL}"}),
        (None, False),
        "vllm-router",
    ),
    (
        "vllm_400_already_exists",
        "vllm",
        400,
        j({"error": f"Worker {URL} already exists", "code": "ADD_WORKER_FAILED"}),
        (None, True),
        "vllm-router",
    ),
    (
        "vllm_igw_200_worker_object",
        "vllm",
        200,
        j({"success": True, "message": "added", "worker": {"id": SGL_ID, "url": URL, "worker_type": "prefill"}}),
        (SGL_ID, False),
        "vllm-router-igw",
    ),
]


@pytest.mark.parametrize(
    "family,status,body,expected,generation", [c[1:] for c in REGISTER], ids=[c[0] for c in REGISTER]
)
def test_register_answers(family, status, body, expected, generation):
    registered, detected = interpret_register(family, status, body)
    assert (registered.worker_id, registered.already) == expected
    assert detected is not None and detected.generation == generation


REGISTER_ERRORS = [
    ("html", 200, b"<html><body>Bad Gateway</body></html>", RouterError, "not JSON"),
    ("not_utf8", 202, b"\xff\xfe\x00", RouterError, "not JSON"),
    ("json_list", 202, j([1, 2]), RouterError, "router answered 202 to POST /workers with"),
    ("200_without_success_or_id", 200, j({"ok": 1}), RouterError, "without success or an id"),
    ("500", 500, j({"error": "boom"}), RouterError, "answered 500 to POST /workers: 'boom'"),
    ("422_smg_empty_body", 422, j({"error": "missing url", "code": "BAD_REQUEST"}), RouterError, "422"),
    ("401_plain", 401, b"", RouterAuthError, "SGL_ROUTER_API_KEY"),
    ("403_json", 403, j({"error": {"code": "invalid_api_key"}}), RouterAuthError, "403"),
    ("control_chars_quoted", 500, b"bad\x1b[31m\r\nInjected: yes", RouterError, "bad [31m  Injected: yes"),
]


@pytest.mark.parametrize(
    "status,body,exc,message", [c[1:] for c in REGISTER_ERRORS], ids=[c[0] for c in REGISTER_ERRORS]
)
def test_register_errors_are_clear(status, body, exc, message):
    with pytest.raises(exc) as info:
        interpret_register("sglang", status, body)
    assert message in info.value.message
    assert "\r" not in info.value.message and "\x1b" not in info.value.message


SMG_ENTRY = {
    "id": SMG_ID,
    "url": URL,
    "models": [{"id": "m"}],
    "worker_type": "prefill",
    "runtime_type": "generic",
    "bootstrap_port": 34000,
    "is_healthy": True,
    "status": "ready",
}
SGL_ENTRY = {"id": SGL_ID, "url": URL, "worker_type": "decode", "is_healthy": True, "disable_health_check": False}
VLLM_ENTRY = {"url": URL, "model_id": "unknown", "worker_type": "regular", "is_healthy": True}
VLLM_IGW_LOOKUP = {"id": "unknown", "url": URL, "worker_type": "prefill", "metadata": {}}
SGL_PENDING = {**SGL_ENTRY, "job_status": {"job_type": "AddWorker", "status": "processing"}}

LOOKUPS = [
    ("smg", "sglang", 200, j(SMG_ENTRY), Member(SMG_ID, "prefill", 34000), "smg"),
    ("sglang_router", "sglang", 200, j(SGL_ENTRY), Member(SGL_ID, "decode", None), "sglang-router"),
    ("sglang_pending", "sglang", 200, j(SGL_PENDING), Member(SGL_ID, "decode", None, pending=True), "sglang-router"),
    (
        "vllm_single",
        "vllm",
        200,
        j({"url": URL, "model_id": "unknown", "is_healthy": True}),
        Member(None, None, None),
        "vllm-router",
    ),
    ("vllm_igw_unknown_id", "vllm", 200, j(VLLM_IGW_LOOKUP), Member(None, "prefill", None), "vllm-router-igw"),
    (
        "smg_draining_after_delete",
        "sglang",
        200,
        j({**SMG_ENTRY, "status": "draining", "job_status": {"job_type": "RemoveWorker", "status": "processing"}}),
        Member(SMG_ID, "prefill", 34000, pending=True, leaving=True, draining=True),
        "smg",
    ),
    # A finished job stays on the entry for 5 minutes (observed on 0.3.2 after a repeated POST;
    # smg workflow/job_queue.rs STATUS_TTL): not pending, not leaving.
    (
        "sglang_failed_job_lingers",
        "sglang",
        200,
        j({**SGL_ENTRY, "job_status": {"job_type": "AddWorker", "status": "failed", "message": "already exists"}}),
        Member(SGL_ID, "decode", None),
        "sglang-router",
    ),
    (
        "sglang_finished_removal_lingers",
        "sglang",
        200,
        j({**SGL_ENTRY, "job_status": {"job_type": "RemoveWorker", "status": "failed"}}),
        Member(SGL_ID, "decode", None),
        "sglang-router",
    ),
    ("absent_404", "sglang", 404, j({"error": "Worker x not found", "code": "WORKER_NOT_FOUND"}), None, None),
    ("another_url", "sglang", 200, j({**SGL_ENTRY, "url": "http://10.0.0.1:1"}), None, None),
]


@pytest.mark.parametrize("family,status,body,member,generation", [c[1:] for c in LOOKUPS], ids=[c[0] for c in LOOKUPS])
def test_lookup_answers(family, status, body, member, generation):
    found, detected = interpret_lookup(family, status, body, URL)
    assert found == member
    assert (detected.generation if detected else None) == generation


def test_listing_matches_the_exact_url_only():
    others = [{**SGL_ENTRY, "url": URL + "/"}, {**SGL_ENTRY, "url": "http://localhost:18001"}]
    assert interpret_listing("sglang", 200, j({"workers": others}), URL)[0] is None
    found, detected = interpret_listing("sglang", 200, j({"workers": [*others, SMG_ENTRY]}), URL)
    assert found == Member(SMG_ID, "prefill", 34000) and detected.generation == "smg"
    found, detected = interpret_listing("vllm", 200, j({"workers": [VLLM_ENTRY]}), URL)
    assert found == Member(None, "regular", None) and detected.generation == "vllm-router"


@pytest.mark.parametrize(
    "status,body,message",
    [(200, b"<html/>", "not JSON"), (200, j({"workers": {}}), "no worker list"), (502, b"", "answered 502")],
    ids=["html", "not_a_list", "502"],
)
def test_listing_errors(status, body, message):
    with pytest.raises(RouterError) as info:
        interpret_listing("sglang", status, body, URL)
    assert message in info.value.message


REMOVALS = [
    ("sglang_202", 202, b"{}", None),
    ("sglang_second_delete_404", 404, j({"code": "WORKER_NOT_FOUND"}), None),
    ("vllm_200", 200, j({"success": True}), None),
    ("vllm_igw_400_not_found", 400, j({"error": "Worker with URL x not found", "code": "WORKER_NOT_FOUND"}), None),
    ("500", 500, b"oops", RouterError),
    ("401", 401, b"", RouterAuthError),
]


@pytest.mark.parametrize("status,body,exc", [c[1:] for c in REMOVALS], ids=[c[0] for c in REMOVALS])
def test_removal_answers(status, body, exc):
    if exc is None:
        interpret_removal(status, body)
    else:
        with pytest.raises(exc):
            interpret_removal(status, body)


def test_replace_answers():
    interpret_replace(202, j({"status": "accepted", "worker_id": SMG_ID}))
    with pytest.raises(RouterError, match="404"):
        interpret_replace(404, j({"code": "WORKER_NOT_FOUND"}))


LOCATIONS = [
    # smg 1.13 and sglang-router 0.3.2 answer 202 with the id in the body and in Location.
    ("body_and_location", j({"status": "accepted", "worker_id": SMG_ID}), f"/workers/{SMG_ID}", SMG_ID),
    ("location_only", j({"status": "accepted"}), f"/workers/{SMG_ID}", SMG_ID),
    ("absolute_location", j({"status": "accepted"}), f"http://r:1/workers/{SGL_ID}/", SGL_ID),
    ("body_wins", j({"status": "accepted", "worker_id": SGL_ID}), f"/workers/{SMG_ID}", SGL_ID),
    ("location_not_a_uuid", j({"status": "accepted"}), "/workers/http%3A%2F%2Fw%3A1", None),
    ("location_elsewhere", j({"status": "accepted"}), f"/jobs/{SMG_ID}", None),
    ("no_location", j({"status": "accepted"}), None, None),
]


@pytest.mark.parametrize("body,location,expected", [c[1:] for c in LOCATIONS], ids=[c[0] for c in LOCATIONS])
def test_the_id_is_the_one_the_router_gave(body, location, expected):
    registered, _ = interpret_register("sglang", 202, body, location)
    assert registered.worker_id == expected


LOOKUP_INVALID_ID = [
    # Both routers refuse an id that is not a UUID (observed on 127.0.0.1): an id from another
    # router generation at this address.  That router does not know it: absent.
    (
        "smg_1_13",
        j(
            {
                "error": "Invalid worker_id 'not-a-uuid' (expected UUID). Error: invalid character: found `n` at 0",
                "code": "BAD_REQUEST",
            }
        ),
    ),
    ("sglang_router_0_3_2", j({"error": "Invalid worker_id 'x' (expected UUID). Error: ...", "code": "BAD_REQUEST"})),
]


@pytest.mark.parametrize("body", [c[1] for c in LOOKUP_INVALID_ID], ids=[c[0] for c in LOOKUP_INVALID_ID])
def test_a_lookup_refused_as_an_invalid_id_is_absence(body):
    assert interpret_lookup("sglang", 400, body, URL) == (None, None)
    with pytest.raises(RouterError, match="400"):
        interpret_lookup("sglang", 400, j({"error": "something else"}), URL)


REMOVAL_KNOWN = [
    ("202_known", 202, b"{}", True),
    ("vllm_200_known", 200, j({"success": True}), True),
    ("404_unknown_id", 404, j({"error": "Worker x not found", "code": "WORKER_NOT_FOUND"}), False),
    ("vllm_igw_400_unknown", 400, j({"code": "WORKER_NOT_FOUND"}), False),
    ("invalid_id_unknown", 400, j({"error": "Invalid worker_id 'x' (expected UUID)", "code": "BAD_REQUEST"}), False),
]


@pytest.mark.parametrize("status,body,known", [c[1:] for c in REMOVAL_KNOWN], ids=[c[0] for c in REMOVAL_KNOWN])
def test_removal_says_whether_the_router_knew_the_id(status, body, known):
    """A 404 to the id Patio holds sends it to the listing: the router may know the URL by a new id."""
    assert interpret_removal(status, body) is known
