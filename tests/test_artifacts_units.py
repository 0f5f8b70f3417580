"""Pure parts of the artifacts package, as tables: URIs, credentials, settings, addressing,
redaction, suffix filters, the STS answer, and the CLI's usage errors."""

import argparse
import io
from typing import Any, Dict, Optional

import pytest

from patio.artifacts import cli
from patio.artifacts.auth.aws import WebIdentityProvider, parse_assume_role_response, resolve_provider
from patio.artifacts.auth.credentials import RequestCredentials, SourceEnv, parse_credentials
from patio.artifacts.fetch.listing import suffix_allowed
from patio.artifacts.fetch.net import HttpClient, redact
from patio.artifacts.fetch.retry import DownloadRetry, NetConfig, parse_retry_after
from patio.artifacts.settings import from_sources, parse_size
from patio.artifacts.sources import tos_s3_endpoint
from patio.artifacts.stores.s3 import S3Client, S3Endpoint, parse_list_page
from patio.artifacts.uri import display_uri, is_materialized, parse_uri, scheme_label
from patio.errors import BadRequest, ConfigError

URI_CASES = [
    ("s3://bucket/a/b", {"kind": "s3", "bucket": "bucket", "prefix": "a/b"}),
    ("s3://bucket", {"kind": "s3", "bucket": "bucket", "prefix": ""}),
    ("s3://bucket//x", {"kind": "s3", "prefix": "x"}),
    ("tos://models/llama/", {"kind": "tos", "bucket": "models", "prefix": "llama/"}),
    ("obs://b-1/p", {"kind": "obs", "bucket": "b-1"}),
    ("gs://bucket/p", {"kind": "gs"}),
    ("gcs://bucket/p", {"kind": "gs"}),
    ("hf://org/name", {"kind": "hf", "repo_id": "org/name", "revision": None, "subpath": ""}),
    ("huggingface://org/name@v1.0", {"kind": "hf", "repo_id": "org/name", "revision": "v1.0"}),
    ("hf://org/name@refs%2Fpr%2F1/sub/dir", {"revision": "refs/pr/1", "subpath": "sub/dir"}),
    ("hf://datasets/org/set", {"kind": "hf", "repo_type": "dataset", "repo_id": "org/set"}),
    ("hf://gpt2", {"kind": "hf", "repo_id": "gpt2"}),
    ("org/name", {"kind": "hf", "repo_id": "org/name"}),
    ("Qwen/Qwen2.5-0.5B@main", {"kind": "hf", "repo_id": "Qwen/Qwen2.5-0.5B", "revision": "main"}),
    ("https://h.example/a/model.bin?sig=1", {"kind": "http", "url": "https://h.example/a/model.bin?sig=1"}),
    ("pvc://loras/a", {"kind": "local", "pvc": True, "path": "loras/a"}),
    ("/data/loras/a", {"kind": "local", "pvc": False, "path": "/data/loras/a"}),
    ("file:///data/x%20y", {"kind": "local", "path": "/data/x y"}),
    ("  s3://bucket/p  ", {"kind": "s3", "prefix": "p"}),
]


@pytest.mark.parametrize("uri,expected", URI_CASES, ids=[c[0].strip() for c in URI_CASES])
def test_parse_uri(uri: str, expected: Dict[str, Any]) -> None:
    spec = parse_uri(uri)
    for key, value in expected.items():
        assert getattr(spec, key) == value, key


BAD_URIS = [
    ("", "non-empty"),
    ("ftp://x/y", "not supported"),
    ("git://org/name", "not supported"),
    ("s3:///prefix", "invalid bucket"),
    ("s3://bucket/p?versionId=1", "query"),
    ("relative/dir/x", "neither a URI"),
    ("hf://", "names no HuggingFace repo"),
    ("hf://org/na me", "invalid HuggingFace"),
    ("hf://org/name@", "empty revision"),
    ("hf://org/name/../x", "'.' or '..'"),
    ("https://host", "must name a file"),
    ("pvc://", "needs a path"),
    ("file://other-host/x", "must be local"),
    ("s3://bucket/a\nb", "control characters"),
    ("s3://bucket/" + "x" * 5000, "longer than"),
]


@pytest.mark.parametrize("uri,message", BAD_URIS, ids=[m for _u, m in BAD_URIS])
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_uri(uri)
    assert message in caught.value.message and caught.value.param == "model_uri"


@pytest.mark.parametrize(
    "uri,shown",
    [
        ("https://user:pw@host/x.bin?X-Amz-Signature=abc", "https://host/x.bin?…"),
        ("s3://bucket/p", "s3://bucket/p"),
        ("org/name", "org/name"),
    ],
)
def test_display_drops_secrets(uri: str, shown: str) -> None:
    assert display_uri(uri) == shown
    assert redact("http://a:b@h:1/p?q=1") == "http://h:1/p?…"


CREDENTIAL_CASES = [
    ({"aws_access_key_id": "AK", "aws_secret_access_key": "SK"}, {"access_key_id": "AK", "secret_access_key": "SK"}),
    ({"AK": "a", "SK": "b", "Region": "r"}, {"access_key_id": "a", "secret_access_key": "b", "region": "r"}),
    ({"hf_token": "t", "hf_endpoint": "http://x"}, {"token": "t", "endpoint": "http://x"}),
    ({"service_account": {"type": "service_account"}}, {"service_account_json": '{"type": "service_account"}'}),
    ({"headers": {"Authorization": "Bearer x"}}, {"headers": (("Authorization", "Bearer x"),)}),
    (None, {"access_key_id": None}),
]


@pytest.mark.parametrize(
    "raw,expected", CREDENTIAL_CASES, ids=["aws", "aibrix-short", "hf", "gcs-object", "headers", "none"]
)
def test_credentials(raw: Any, expected: Dict[str, Any]) -> None:
    creds = parse_credentials(raw)
    for key, value in expected.items():
        assert getattr(creds, key) == value
    text = repr(creds)
    for secret in ("SK", "Bearer x", '"type"'):
        assert secret not in text


@pytest.mark.parametrize(
    "raw,message",
    [
        ("x", "must be a JSON object"),
        ({"password": "x"}, "unknown key"),
        ({"access_key_id": "a"}, "both"),
        ({"token": ""}, "non-empty"),
        ({"headers": {"Host": "x"}}, "must not set Host"),
        ({"headers": {"X": "a\r\nb"}}, "invalid header"),
        ({"addressing_style": "sideways"}, "auto, path or virtual"),
    ],
    ids=["not-object", "unknown", "half-keys", "empty", "host-header", "crlf", "style"],
)
def test_bad_credentials(raw: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_credentials(raw)


SETTINGS_ERRORS = [
    ({"DOWNLOADER_NUM_THREADS": "0"}, "DOWNLOADER_NUM_THREADS"),
    ({"DOWNLOADER_PART_SIZE": "1k"}, "DOWNLOADER_PART_SIZE"),
    ({"DOWNLOADER_PART_SIZE": "lots"}, "DOWNLOADER_PART_SIZE"),
    ({"DOWNLOADER_FORCE_DOWNLOAD": "maybe"}, "DOWNLOADER_FORCE_DOWNLOAD"),
    ({"PATIO_ADAPTER_DIR": "relative"}, "PATIO_ADAPTER_DIR"),
    ({"HF_ENDPOINT": "ftp://x"}, "HF_ENDPOINT"),
    ({"PATIO_S3_ADDRESSING_STYLE": "odd"}, "PATIO_S3_ADDRESSING_STYLE"),
    ({"PATIO_EGRESS_ALLOW": "10.0.0.0/33"}, "PATIO_EGRESS_ALLOW"),
    ({"PATIO_EGRESS_ALLOW": "a..b"}, "PATIO_EGRESS_ALLOW"),
    ({"PATIO_EGRESS_PRIVATE": "maybe"}, "PATIO_EGRESS_PRIVATE"),
]


@pytest.mark.parametrize("env,setting", SETTINGS_ERRORS, ids=[s for _e, s in SETTINGS_ERRORS])
def test_settings_errors_name_the_setting(env: Dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_sources(argparse.Namespace(), env, None)
    assert caught.value.setting == setting


def test_settings_values_and_repr() -> None:
    env = {
        "DOWNLOADER_NUM_THREADS": "8",
        "DOWNLOADER_PART_SIZE": "64MiB",
        "DOWNLOADER_ALLOW_FILE_SUFFIX": "json, .safetensors",
        "DOWNLOADER_FORCE_DOWNLOAD": "true",
        "HF_AUTH_TOKEN": "hf_secret",
        "AWS_SECRET_ACCESS_KEY": "aws_secret",
        "HTTPS_PROXY": "http://proxy:3128",
        "UNRELATED": "x",
    }
    settings = from_sources(argparse.Namespace(), env, None)
    assert (settings.num_threads, settings.part_size, settings.force_download) == (8, 64 * 1024 * 1024, True)
    assert settings.allow_suffixes == ("json", "safetensors")
    assert settings.hf_token == "hf_secret" and settings.proxies == {"https": "http://proxy:3128"}
    assert "UNRELATED" not in settings.env.values
    text = repr(settings)
    assert "hf_secret" not in text and "aws_secret" not in text
    defaults = from_sources(argparse.Namespace(), {"HF_HOME": "/nonexistent"}, None)
    assert (defaults.adapter_dir, defaults.num_threads, defaults.hf_token) == ("/tmp/patio/adapters", 16, None)
    assert parse_size("x", "16M") == parse_size("x", "16MiB") == 16 * 1024 * 1024


@pytest.mark.parametrize(
    "path,suffixes,allowed",
    [
        ("a/model.safetensors", ("safetensors",), True),
        ("config.json", ("json", "safetensors"), True),
        ("notjson", ("json",), False),
        ("x.bin", (), True),
        ("tokenizer.model", (".model",), True),
    ],
)
def test_suffix_filter(path: str, suffixes: tuple, allowed: bool) -> None:
    assert suffix_allowed(path, suffixes) is allowed


@pytest.mark.parametrize(
    "endpoint,style,aws,bucket,netloc,path",
    [
        ("https://s3.us-east-1.amazonaws.com", "auto", True, "my-bucket", "my-bucket.s3.us-east-1.amazonaws.com", "/k"),
        ("https://s3.us-east-1.amazonaws.com", "auto", True, "my.bucket", "s3.us-east-1.amazonaws.com", "/my.bucket/k"),
        ("https://s3.us-east-1.amazonaws.com", "auto", True, "Upper", "s3.us-east-1.amazonaws.com", "/Upper/k"),
        ("http://minio:9000", "auto", False, "models", "minio:9000", "/models/k"),
        ("http://minio:9000", "virtual", False, "models", "models.minio:9000", "/k"),
        ("http://10.0.0.1:9000", "virtual", False, "models", "10.0.0.1:9000", "/models/k"),
        ("https://tos-s3-cn-beijing.volces.com", "virtual", False, "m", "m.tos-s3-cn-beijing.volces.com", "/k"),
        ("https://proxy.example/s3", "path", False, "b", "proxy.example", "/s3/b/k"),
    ],
)
def test_s3_addressing(endpoint: str, style: str, aws: bool, bucket: str, netloc: str, path: str) -> None:
    client = S3Client(None, S3Endpoint.parse(endpoint, style, aws=aws), "us-east-1", None, None)  # type: ignore[arg-type]
    assert client._address(bucket, "k") == (netloc, path)


@pytest.mark.parametrize(
    "given,expected",
    [
        ("https://tos-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("tos-ap-southeast-1.ivolces.com", "https://tos-s3-ap-southeast-1.ivolces.com"),
        ("https://tos-s3-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_tos_native_endpoints_become_s3_endpoints(given: str, expected: str) -> None:
    assert tos_s3_endpoint(given) == expected


def test_list_page_decodes_url_encoded_keys() -> None:
    body = (
        b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        b"<Contents><Key>a/b+c%2Bd%C3%A9.bin</Key><Size>3</Size><ETag>&quot;e&quot;</ETag></Contents>"
        b"<NextContinuationToken>tok/+=</NextContinuationToken></ListBucketResult>"
    )
    items, token = parse_list_page(body, "s3://b/a")
    assert items == [{"key": "a/b c+dé.bin", "size": "3", "etag": '"e"'}] and token == "tok/+="


def test_sts_answer() -> None:
    body = (
        b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAX</AccessKeyId>"
        b"<SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>"
        b"<Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>"
        b"</AssumeRoleWithWebIdentityResponse>"
    )
    creds, expires = parse_assume_role_response(body, "sts")
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("ASIAX", "s", "t")
    assert expires == 1893456000.0


# The AWS SDKs' service-specific endpoints: AWS_ENDPOINT_URL_<SERVICE> before AWS_ENDPOINT_URL
# ("Service-specific endpoints", AWS SDKs and Tools Reference Guide; botocore 1.31.7+), else
# the regional STS.
STS_ENDPOINTS = [
    (
        "the_sts_variable_wins",
        {"AWS_ENDPOINT_URL_STS": "http://sts.local:1", "AWS_ENDPOINT_URL": "http://all.local:2"},
        "http://sts.local:1/",
    ),
    ("then_the_global_variable", {"AWS_ENDPOINT_URL": "http://all.local:2"}, "http://all.local:2/"),
    (
        "a_blank_sts_variable_is_unset",
        {"AWS_ENDPOINT_URL_STS": " ", "AWS_ENDPOINT_URL": "http://all.local:2"},
        "http://all.local:2/",
    ),
    ("else_the_regional_sts", {}, "https://sts.eu-west-1.amazonaws.com/"),
]


@pytest.mark.parametrize("env,endpoint", [c[1:] for c in STS_ENDPOINTS], ids=[c[0] for c in STS_ENDPOINTS])
def test_web_identity_asks_the_sts_endpoint_the_sdks_would(env: Dict[str, str], endpoint: str) -> None:
    identity = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}
    provider = resolve_provider(
        "s3",
        RequestCredentials(),
        SourceEnv({**identity, **env}),
        HttpClient(NetConfig()),
        "eu-west-1",
        DownloadRetry(),
    )
    assert isinstance(provider, WebIdentityProvider) and provider.endpoint == endpoint


@pytest.mark.parametrize("value,seconds", [("5", 5.0), ("", None), (None, None), ("soon", None)])
def test_retry_after(value: Optional[str], seconds: Optional[float]) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "--model-uri"),
        (["--model-uri", "ftp://x/y", "--local-dir", "/tmp/x"], "not supported"),
        (["--model-uri", "org/name", "--num-threads", "0"], "--num-threads"),
        (["--model-uri", "org/name", "--part-size", "1"], "--part-size"),
        (["--model-uri", "org/name", "--download-extra-config", "{"], "--download-extra-config"),
        (["--model-uri", "org/name", "--download-extra-config", '{"nope": 1}'], "unknown key"),
        (["--model-uri", "org/name", "--model-name", "a/b"], "--model-name"),
    ],
    ids=["missing-uri", "scheme", "threads", "part-size", "extra-json", "extra-key", "model-name"],
)
def test_cli_usage_errors_exit_2(argv: list, message: str, capsys: Any) -> None:
    err = io.StringIO()
    assert cli.main(argv, stderr=err) == 2
    assert message in err.getvalue() + capsys.readouterr().err


def test_cli_help_exits_0(capsys: Any) -> None:
    assert cli.main(["--help"]) == 0
    assert "--allow-file-suffix" in capsys.readouterr().out


# The one scheme table (patio.artifacts.uri.SCHEMES): every spelling, what the LoRA manager and
# the adapters seam make of it (materialized first or read in place), and its metrics label.
SCHEME_CASES = [
    ("s3://b/p", True, "s3"),
    ("tos://b/p", True, "tos"),
    ("obs://b/p", True, "obs"),
    ("gs://b/p", True, "gs"),
    ("gcs://b/p", True, "gs"),
    ("GCS://b/p", True, "gs"),
    ("hf://org/name", True, "hf"),
    ("huggingface://org/name", True, "hf"),
    ("ms://org/name", True, "ms"),
    ("modelscope://org/name", True, "ms"),
    ("http://host/f", True, "http"),
    ("https://host/f", True, "https"),
    ("pvc://loras/a", True, "pvc"),
    ("file:///models/a", False, "file"),
    ("/models/a", False, "local"),
    ("org/name", False, "hf"),
    ("ftp://host/f", False, "other"),
]


@pytest.mark.parametrize("source,materialized,label", SCHEME_CASES, ids=[c[0] for c in SCHEME_CASES])
def test_one_scheme_table(source: str, materialized: bool, label: str) -> None:
    from patio.lora.request import LoadRequest

    assert is_materialized(source) is materialized
    assert scheme_label(source) == label
    if source.startswith("/") or "://" in source:  # a LoRA source (a bare org/name is refused there)
        assert LoadRequest("a", source).remote is materialized
