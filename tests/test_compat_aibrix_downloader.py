"""AIBrix's downloader command, with AIBrix's layout.

AIBrix's docs (docs/source/features/runtime.rst, "Download From S3"):

    python -m aibrix.downloader \\
        --model-uri s3://aibrix-model-artifacts/deepseek-coder-6.7b-instruct/ \\
        --local-dir /tmp/aibrix/models_s3/

write the files into ``/tmp/aibrix/models_s3/deepseek-coder-6.7b-instruct/``: vllm-project/aibrix
python/aibrix/aibrix/downloader (at b36d2a46) joins ``local_dir`` and the model name, which is
``--model-name``, else ``infer_model_name(uri)`` = ``uri.strip().strip("/").split("/")[-1]`` for
S3 and TOS, else the repo id itself for HuggingFace (``deepseek-ai/deepseek-coder-6.7b-instruct``:
two levels).  Before, Patio wrote the files into ``--local-dir`` itself.  Patio's own
``patio download`` keeps its layout (the directory named).
"""

import os
import subprocess
import sys
from typing import Any, Dict, Iterator

import pytest
from artifacts_fakes import MotoServer
from compat_fakes import tree
from support import PEERS_ALLOWED, build_pyz

from patio.artifacts.cli import aibrix_model_dir
from patio.artifacts.uri import parse_uri
from patio.errors import ConfigError

LAYOUT = [
    # (id, --model-uri, the sub-directory of --local-dir)
    ("s3_trailing_slash", "s3://aibrix-model-artifacts/deepseek-coder-6.7b-instruct/", "deepseek-coder-6.7b-instruct"),
    ("s3_no_slash", "s3://aibrix-model-artifacts/deepseek-coder-6.7b-instruct", "deepseek-coder-6.7b-instruct"),
    ("s3_nested_prefix", "s3://bucket/team/models/llama-3/", "llama-3"),
    ("s3_bucket_only", "s3://bucket", "bucket"),
    ("tos", "tos://aibrix-model-artifacts/deepseek-coder-6.7b-instruct/", "deepseek-coder-6.7b-instruct"),
    ("hf_id", "deepseek-ai/deepseek-coder-6.7b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct"),
    ("hf_scheme", "hf://deepseek-ai/deepseek-coder-6.7b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct"),
    ("gcs_like_s3", "gcs://bucket/models/qwen/", "qwen"),
]


@pytest.mark.parametrize("uri,expected", [r[1:] for r in LAYOUT], ids=[r[0] for r in LAYOUT])
def test_model_directory_is_aibrixs(uri, expected):
    assert aibrix_model_dir(parse_uri(uri, param="--model-uri"), uri) == expected


def test_a_uri_that_names_no_directory_is_refused():
    with pytest.raises(ConfigError):
        aibrix_model_dir(parse_uri("s3://bucket/..", param="--model-uri"), "s3://bucket/..")


FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(300_000)}


@pytest.fixture(scope="module")
def s3() -> Iterator[Dict[str, Any]]:
    server = MotoServer()
    try:
        key, secret = server.iam_user()
        client = server.client("s3")
        client.create_bucket(Bucket="aibrix-model-artifacts")
        for name, data in FILES.items():
            client.put_object(Bucket="aibrix-model-artifacts", Key=f"deepseek-coder-6.7b-instruct/{name}", Body=data)
        client.put_object(Bucket="aibrix-model-artifacts", Key="deepseek-coder-6.7b-instruct/README.md", Body=b"x")
        server.enable_auth()
        yield {"server": server, "key": key, "secret": secret}
    finally:
        server.stop()


def _aibrix_docs_env(s3: Dict[str, Any]) -> Dict[str, str]:
    # AIBrix's docs, verbatim names: DOWNLOADER_ALLOW_FILE_SUFFIX, DOWNLOADER_NUM_THREADS, AWS_*.
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(build_pyz()),  # as the image sets it
        "DOWNLOADER_ALLOW_FILE_SUFFIX": "json, safetensors",
        "DOWNLOADER_NUM_THREADS": "16",
        "AWS_ACCESS_KEY_ID": s3["key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "AWS_ENDPOINT_URL": s3["server"].endpoint,
        "AWS_REGION": "us-west-2",
        **PEERS_ALLOWED,  # moto listens on loopback, which the egress policy refuses by default
    }


@pytest.mark.parametrize("local_dir", ["{tmp}/models_s3/", "{tmp}/models_s3"], ids=["slash", "no_slash"])
def test_aibrix_docs_s3_command(s3, tmp_path, local_dir):
    local = local_dir.format(tmp=tmp_path)
    argv = ["--model-uri", "s3://aibrix-model-artifacts/deepseek-coder-6.7b-instruct/", "--local-dir", local]
    done = subprocess.run(
        [sys.executable, "-m", "aibrix.downloader", *argv],
        env=_aibrix_docs_env(s3),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    model_dir = tmp_path / "models_s3" / "deepseek-coder-6.7b-instruct"
    assert tree(model_dir) == FILES  # README.md left out by the suffix filter, as AIBrix does
    assert done.stdout.strip() == str(model_dir)  # AIBrix's __main__ prints the model path
    assert s3["secret"] not in done.stderr + done.stdout


def test_patio_download_keeps_its_own_layout(s3, tmp_path):
    pyz = build_pyz()
    argv = ["download", "--model-uri", "s3://aibrix-model-artifacts/deepseek-coder-6.7b-instruct/"]
    argv += ["--local-dir", str(tmp_path / "m")]
    done = subprocess.run(
        [sys.executable, str(pyz), *argv], env=_aibrix_docs_env(s3), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "m") == FILES
