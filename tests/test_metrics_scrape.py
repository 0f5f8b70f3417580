"""/metrics end to end: Patio in front of a fake engine serving the real fixtures,
checked with promtool and prometheus_client; engine faults never break /metrics."""

import gzip
import random
import subprocess
import threading
import time

import pytest
from fakes.engine import FakeEngine
from prometheus_client.parser import text_string_to_metric_families
from support import RunningPatio, http_call, make_settings, shared_path

FIXTURES = ["vllm-0.33-single.txt", "vllm-0.33-multiproc.txt", "sglang-0.5.23.txt"]


def promtool_rc(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


def assert_valid(text: str) -> None:
    """promtool never reports a parse error (exit 1; 3 = lint only), prometheus_client parses it."""
    result = promtool_rc(text)
    assert result.returncode in (0, 3), result.stderr[-2000:]
    assert "parsing error" not in result.stderr
    list(text_string_to_metric_families(text))
    assert text.endswith("\n") and "\r" not in text and "\n\n" not in text
    seen = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            key = line[:7] + line[7:].split(" ", 1)[0]
            assert key not in seen, f"repeated {key}"
            seen.add(key)


def scrape(patio, headers=None):
    status, response_headers, body = http_call("GET", patio.url + "/metrics", headers=headers, timeout=10)
    assert status == 200
    if response_headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return body.decode("utf-8")


def engine_for(fixture):
    engine = FakeEngine("sglang" if fixture.startswith("sglang") else "vllm")
    engine.metrics_body = shared_path("fixtures", "metrics", fixture).read_bytes()
    return engine


def patio_for(engine, *args, env=None):
    full = {"INFERENCE_ENGINE": engine.kind, "INFERENCE_ENGINE_ENDPOINT": engine.url}
    full.update(env or {})
    return RunningPatio(make_settings(list(args), full))


@pytest.mark.parametrize("scheme", ["patio", "aibrix", "kthena"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_through_patio_is_valid(fixture, scheme):
    with engine_for(fixture) as engine, patio_for(engine, "--metrics-scheme", scheme) as patio:
        text = scrape(patio)
        assert_valid(text)
        assert "patio_engine_up 1\n" in text
        assert f"# TYPE {scheme}:" in text
        families = {f.name for f in text_string_to_metric_families(text)}
        assert "patio_build_info" in families and "patio_http_requests" in families


def test_counters_equal_raw_counters_in_same_scrape():
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine) as patio:
        text = scrape(patio)
    values = {}
    for line in text.splitlines():
        if line.startswith(
            (
                "patio:input_tokens_total",
                "vllm:prompt_tokens_total",
                "patio:output_tokens_total",
                "vllm:generation_tokens_total",
            )
        ):
            name = line.split("{", 1)[0]
            values[name] = float(line.rsplit(" ", 1)[1])
    assert values["patio:input_tokens_total"] == values["vllm:prompt_tokens_total"] == 812.0
    assert values["patio:output_tokens_total"] == values["vllm:generation_tokens_total"] == 256.0


@pytest.mark.parametrize(
    "mode_args,env,renamed,raw",
    [
        (["--metrics-mode", "standard"], {}, True, False),
        (["--metrics-mode", "raw"], {}, False, True),
        ([], {}, True, True),
        ([], {"METRICS_ENABLE_TRANSFORMATION": "0"}, False, True),
        ([], {"METRICS_RAW_PASSTHROUGH_MODE": "1"}, False, True),
        # AIBrix's switches also make aibrix: the default scheme (test_profiles.py); patio: is asked
        # for here so the rows test the mode alone.
        (
            ["--metrics-scheme", "patio"],
            {"METRICS_RAW_PASSTHROUGH_MODE": "0", "METRICS_ENABLE_TRANSFORMATION": "1"},
            True,
            True,
        ),
        (["--metrics-scheme", "patio"], {"METRICS_MODE": "standard", "METRICS_RAW_PASSTHROUGH_MODE": "1"}, True, False),
    ],
    ids=[
        "standard",
        "raw",
        "default_both",
        "aibrix_transformation_off",
        "aibrix_raw_passthrough",
        "aibrix_defaults",
        "explicit_mode_wins",
    ],
)
def test_output_modes(mode_args, env, renamed, raw):
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine, *mode_args, env=env) as patio:
        text = scrape(patio)
    assert_valid(text)
    assert ("patio:input_tokens_total{" in text) is renamed
    assert ("vllm:prompt_tokens_total{" in text) is raw


def test_gzip_when_asked():
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine) as patio:
        _, headers, body = http_call("GET", patio.url + "/metrics", headers={"Accept-Encoding": "gzip"})
        assert headers["content-encoding"] == "gzip"
        assert_valid(gzip.decompress(body).decode())
        _, headers, body = http_call("GET", patio.url + "/metrics")
        assert "content-encoding" not in headers


def test_engine_gzip_and_classic_text_requested():
    with engine_for("sglang-0.5.23.txt") as engine, patio_for(engine) as patio:
        engine.metrics_gzip = True
        text = scrape(patio)
        assert "sglang:num_queue_reqs{" in text and "patio_engine_up 1" in text
        call = engine.calls_to("/metrics", "GET")[-1]
        assert call.headers["accept"].startswith("text/plain;version=0.0.4")
        assert "gzip" in call.headers["accept-encoding"]


def _garbage_payload(seed: int) -> str:
    rng = random.Random(seed)
    lines = shared_path("fixtures", "metrics", "vllm-0.33-single.txt").read_text().splitlines()
    junk = [
        "g{a=b} 1",
        "x 0x1F",
        "{} 1",
        'y{a="\\xff"} 2',
        "# TYPE z bogus",
        "\x00\x01\x02",
        'h{le="x"} 1',
        "# TYPE vllm:num_requests_running counter",
        "1bad 2",
        'q{a="1",a="2"} 3',
        "v 1 2 3",
        "\\",
        "}{",
    ]
    for _ in range(40):
        lines.insert(rng.randrange(len(lines)), rng.choice(junk))
    # Random byte noise inside a few lines.
    for _ in range(10):
        i = rng.randrange(len(lines))
        pos = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:pos] + rng.choice(['"', "{", "}", ",", "=", " ", "\t", "\\"]) + lines[i][pos:]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(8))
def test_garbage_never_makes_output_invalid(seed):
    with FakeEngine("vllm") as engine, patio_for(engine) as patio:
        engine.metrics_body = _garbage_payload(seed).encode("utf-8", "surrogateescape")
        text = scrape(patio)
        assert_valid(text)
        assert "patio_engine_up 1" in text
        dropped = [line for line in text.splitlines() if line.startswith("patio_engine_metrics_dropped_lines_total")]
        assert dropped and float(dropped[0].split()[-1]) > 0
        # The rest of the payload survived.
        assert "vllm:kv_cache_usage_perc{" in text or "patio:gpu_cache_usage_perc{" in text


FAULTS = [
    ("engine_down", lambda e: e.stop(), "unreachable"),
    ("hangs_past_timeout", lambda e: setattr(e, "metrics_delay", 3.0), "timeout"),
    ("http_500", lambda e: setattr(e, "metrics_status", 500), "http_status"),
    ("truncated_body", lambda e: setattr(e, "metrics_truncate", True), "unreachable"),
    ("oversize_50mb", lambda e: setattr(e, "metrics_body", b"g 1\n" * (50 * 1024 * 1024 // 4)), "oversize"),
]


@pytest.mark.parametrize("fault,reason", [(f[1], f[2]) for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_engine_faults_still_answer_within_timeout(fault, reason):
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine, "--metrics-scrape-timeout", "1") as patio:
        fault(engine)
        started = time.monotonic()
        text = scrape(patio)
        assert time.monotonic() - started < 2.5
        assert_valid(text)
        assert "patio_engine_up 0\n" in text
        assert f'patio_engine_scrape_errors_total{{reason="{reason}"}} 1\n' in text
        assert "patio_build_info{" in text


def test_garbage_only_payload_keeps_engine_up():
    with FakeEngine("vllm") as engine, patio_for(engine) as patio:
        engine.metrics_body = b"\x00garbage\nnot metrics at all\n<html>\n"
        text = scrape(patio)
    assert_valid(text)
    assert "patio_engine_up 1" in text
    assert "patio_engine_metrics_dropped_lines_total 3\n" in text


def test_scraping_disabled_never_calls_engine():
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine, "--scrape-engine-metrics", "false") as patio:
        text = scrape(patio)
        assert engine.calls_to("/metrics", "GET") == []
    assert "vllm:" not in text and "patio_engine_up" not in text
    assert "patio:router_" not in text  # the router view reads the engine's metrics: off with them
    assert_valid(text)


def test_concurrent_scrapes_share_one_engine_fetch():
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine) as patio:
        engine.metrics_delay = 0.5
        results = []
        threads = [threading.Thread(target=lambda: results.append(scrape(patio))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 8
        assert len(engine.calls_to("/metrics", "GET")) == 1
        # Every answer sharing the cycle's engine share shows that cycle's router view.
        assert all("\npatio:router_num_requests_waiting 1\n" in text for text in results)


def test_cache_ttl_reuses_recent_scrape_with_its_router_view():
    with engine_for("vllm-0.33-single.txt") as engine, patio_for(engine, "--metrics-cache-ttl", "30") as patio:
        first, second = scrape(patio), scrape(patio)
        assert len(engine.calls_to("/metrics", "GET")) == 1
        for text in (first, second):
            assert "\npatio:router_kv_cache_utilization 0.0734\n" in text
            assert_valid(text)


def test_an_engine_writing_patios_router_families_loses_the_clash():
    """The router view is Patio's: an engine family of one of its names (a chained sidecar, a
    hostile engine) is dropped and counted; the output holds one family of each name."""
    body = shared_path("fixtures", "metrics", "vllm-0.33-single.txt").read_bytes()
    body += b"# TYPE patio:router_kv_cache_utilization gauge\npatio:router_kv_cache_utilization 0\n"
    body += b'patio:lora_requests_info{max_lora="99",running_lora_adapters="x"} 1\n'
    with FakeEngine("vllm") as engine, patio_for(engine) as patio:
        engine.metrics_body = body
        for _ in range(3):  # the full path, then the plan
            text = scrape(patio)
            assert_valid(text)
            assert text.count("\npatio:router_kv_cache_utilization ") == 1
            assert "\npatio:router_kv_cache_utilization 0.0734\n" in text and 'max_lora="99"' not in text
        assert "patio_metrics_family_clashes_total 0" not in text


@pytest.mark.parametrize(
    ("endpoint", "port", "expected"),
    [
        ("http://127.0.0.1:8000", None, "http://127.0.0.1:8000"),
        ("http://triton:8000", 8002, "http://triton:8002"),
        ("https://triton.ns.svc", 8002, "https://triton.ns.svc:8002"),
        ("http://[fd00::7]:8000", 9400, "http://[fd00::7]:9400"),
        ("http://gw:80/triton", 8002, "http://gw:8002/triton"),
    ],
    ids=["api-port", "triton-8002", "https-default-port", "ipv6", "path-prefix-kept"],
)
def test_the_engines_metrics_endpoint(endpoint, port, expected):
    from patio.metrics.scrape import metrics_endpoint

    assert metrics_endpoint(endpoint, port) == expected


@pytest.mark.parametrize(
    ("args", "env", "engine", "expected"),
    [
        ([], {}, "triton", "http://10.0.0.5:8002"),
        (["--metrics-engine-port", "9400"], {}, "triton", "http://10.0.0.5:9400"),
        ([], {"METRICS_ENGINE_PORT": "9401"}, "triton", "http://10.0.0.5:9401"),
        ([], {}, "tgi", "http://10.0.0.5:8000"),
        ([], {}, "vllm", "http://10.0.0.5:8000"),
    ],
    ids=["triton-default", "flag", "env", "tgi-api-port", "vllm-api-port"],
)
def test_where_each_engine_is_scraped(args, env, engine, expected):
    from patio.app import build_app

    settings = make_settings(
        args, {"INFERENCE_ENGINE": engine, "INFERENCE_ENGINE_ENDPOINT": "http://10.0.0.5:8000", **env}
    )
    app = build_app(settings)
    try:
        metrics = next(c for c in app.components if c.name == "metrics")
        assert metrics.path.endpoint == expected
    finally:
        app.context.pools.shutdown()


@pytest.mark.parametrize("raw", ["0", "65536", "port"], ids=["zero", "too-large", "word"])
def test_a_bad_metrics_engine_port_is_refused_at_start(raw):
    from patio.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make_settings(["--metrics-engine-port", raw], {"INFERENCE_ENGINE": "triton"})
    assert "--metrics-engine-port" in str(info.value)


def test_health_stays_responsive_while_large_payload_is_parsed():
    body = shared_path("fixtures", "metrics", "sglang-0.5.23.txt").read_text()
    big = "".join(body.replace('tp_rank="0"', f'tp_rank="0",dp_rank="{i}"') for i in range(16))
    with FakeEngine("sglang") as engine, patio_for(engine) as patio:
        engine.metrics_body = big.encode()
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                scrape(patio)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            for _ in range(20):
                status, _, _ = http_call("GET", patio.url + "/health", timeout=2)
                assert status == 200
        finally:
            stop.set()
            worker.join()


def test_scrapes_after_the_first_come_from_the_plan_and_show_the_new_values():
    """Only the values change between two scrapes: the second is the plan filled in, byte for byte
    what the full path writes (``test_metrics_plan``), here through the server."""
    body = shared_path("fixtures", "metrics", "vllm-0.33-multiproc.txt").read_bytes()
    with FakeEngine("vllm") as engine, patio_for(engine, "--metrics-mode", "both") as patio:
        engine.metrics_body = body
        first = scrape(patio)
        engine.metrics_body = body.replace(b"} 812.0\n", b"} 9999.5\n")
        second = scrape(patio)
        metrics = next(c for c in patio.app.components if c.name == "metrics")
        assert metrics.text.matched == 1
    assert_valid(second)
    assert 'patio:input_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 812.0' in first
    assert 'patio:input_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9999.5' in second
    assert 'vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9999.5' in second
