"""Download throughput: Patio's fetch engine against the incumbents' clients, same servers, same run.

    .venv/bin/python bench/bench_downloads.py [--mib 160] [--threads 8] [--rounds 3] [--stores s3,hf,ms]

- S3: moto in server mode (a subprocess); Patio ``s3://`` vs boto3's transfer manager
  (``s3transfer``, every file submitted at once, ranged multipart GETs, same concurrency).
- HuggingFace: the local Hub + CDN from the tests (in a subprocess); Patio ``hf://`` vs
  ``huggingface_hub.snapshot_download`` (same worker count).  Patio also verifies every
  file's sha256 / git sha1; snapshot_download verifies sizes only.
- ModelScope: the local hub from the tests (``compat_fakes.FakeModelScope``, big files
  redirected to its CDN, in a subprocess); Patio ``ms://`` vs ``modelscope_hub``'s
  ``snapshot_download`` (what ``modelscope.snapshot_download`` runs; same worker count).

Each round runs the clients in alternating order into fresh directories; the median of
the rounds is reported as MiB/s, and the ratio Patio / incumbent (> 1: Patio is faster).
Timings vary with the machine; only the ratios of one run are meaningful.
"""

import argparse
import hashlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1024 * 1024


def dataset(total_mib: int) -> Dict[str, bytes]:
    """One big file (half the bytes), the rest as 1 MiB shards and a few small JSON files."""
    rng = hashlib.sha256(b"patio-bench")
    files: Dict[str, bytes] = {}

    def blob(size: int) -> bytes:
        chunk = rng.digest() * (MiB // 32)
        return (chunk * (size // len(chunk) + 1))[:size]

    files["model.safetensors"] = blob(total_mib // 2 * MiB)
    for i in range(total_mib - total_mib // 2):
        files[f"shards/shard-{i:04d}.bin"] = blob(MiB - i)  # distinct sizes, so the bytes differ
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        files[name] = b'{"bench": true}' * 100
    return files


def _serve_hub(total_mib: int, ready: Any, stop: Any) -> None:
    from artifacts_fakes import FakeCdn, FakeHub, HubRepo

    files = dataset(total_mib)
    cdn = FakeCdn()
    hub = FakeHub(cdn, page_size=1000)
    hub.add(HubRepo("bench/model", files, lfs=tuple(p for p in files if p.endswith((".safetensors", ".bin")))))
    ready.put(hub.url)
    stop.wait()
    hub.stop()
    cdn.stop()


def _serve_modelscope(total_mib: int, ready: Any, stop: Any) -> None:
    from artifacts_fakes import FakeCdn
    from compat_fakes import FakeModelScope

    files = dataset(total_mib)
    cdn = FakeCdn()
    hub = FakeModelScope(cdn)
    hub.add("bench/model", files, cdn=tuple(p for p in files if p.endswith((".safetensors", ".bin"))))
    ready.put(hub.url)
    stop.wait()
    hub.stop()
    cdn.stop()


def ms_snapshot(endpoint: str, threads: int) -> Callable[[Path], None]:
    os.environ["MODELSCOPE_ENDPOINT"] = endpoint
    from modelscope_hub.compat.snapshot_download import snapshot_download

    def run(target: Path) -> None:
        cache = target.parent / (target.name + "-cache")
        os.environ["MODELSCOPE_CACHE"] = str(cache)
        try:
            snapshot_download(model_id="bench/model", local_dir=str(target), max_workers=threads)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    return run


def _served(target: Callable[..., None], mib: int) -> Tuple[Any, Any, str]:
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=target, args=(mib, ready, stop), daemon=True)
    server.start()
    return server, stop, ready.get(timeout=60)


def timed(label: str, func: Callable[[Path], None], total: int) -> float:
    target = Path(tempfile.mkdtemp(prefix="patio-bench-"))
    try:
        started = time.perf_counter()
        func(target)
        seconds = time.perf_counter() - started
        got = sum(
            p.stat().st_size
            for p in target.rglob("*")
            if p.is_file() and ".patio" not in p.parts and ".cache" not in p.parts
        )
        if got != total:
            raise SystemExit(f"{label}: downloaded {got} bytes, expected {total}")
        return seconds
    finally:
        shutil.rmtree(target, ignore_errors=True)


def patio_fetch(uri: str, env: Dict[str, str], threads: int) -> Callable[[Path], None]:
    from patio.artifacts.fetch.run import fetch
    from patio.artifacts.settings import from_sources
    from patio.artifacts.sources import open_source
    from patio.artifacts.uri import parse_uri

    # The bench's stores listen on loopback, which the egress policy allows only when told to.
    allow = {"PATIO_EGRESS_ALLOW": "127.0.0.0/8,::1"}
    settings = from_sources(argparse.Namespace(), {**allow, **env, "DOWNLOADER_NUM_THREADS": str(threads)}, None)

    def run(target: Path) -> None:
        source = open_source(parse_uri(uri), settings)
        try:
            fetch(source, str(target), settings.fetch_options())
        finally:
            source.close()

    return run


def boto3_transfer(endpoint: str, threads: int, part: int) -> Callable[[Path], None]:
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIABENCH", aws_secret_access_key="x"
    )
    config = TransferConfig(max_concurrency=threads, multipart_chunksize=part, multipart_threshold=part)

    def run(target: Path) -> None:
        keys: List[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="data/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        with create_transfer_manager(client, config) as manager:
            futures = []
            for key in keys:
                path = target / key[len("data/") :]
                path.parent.mkdir(parents=True, exist_ok=True)
                futures.append(manager.download("bench", key, str(path)))
            for future in futures:
                future.result()

    return run


def hf_snapshot(endpoint: str, threads: int) -> Callable[[Path], None]:
    from huggingface_hub import snapshot_download

    def run(target: Path) -> None:
        cache = target.parent / (target.name + "-cache")
        try:
            snapshot_download(
                "bench/model", local_dir=str(target), cache_dir=str(cache), endpoint=endpoint, max_workers=threads
            )
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    return run


def compare(
    name: str, ours: Callable[[Path], None], theirs: Callable[[Path], None], total: int, rounds: int
) -> Tuple[float, float]:
    patio_s: List[float] = []
    other_s: List[float] = []
    for i in range(rounds):
        order = [("patio", ours, patio_s), ("incumbent", theirs, other_s)]
        if i % 2:
            order.reverse()
        for label, func, sink in order:
            sink.append(timed(f"{name} {label}", func, total))
    p, o = statistics.median(patio_s), statistics.median(other_s)
    mib = total / MiB
    print(f"{name}: patio {mib / p:7.1f} MiB/s   incumbent {mib / o:7.1f} MiB/s   ratio patio/incumbent = {o / p:.2f}")
    return p, o


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=160, help="dataset size in MiB (default 160)")
    parser.add_argument("--threads", type=int, default=8, help="concurrency for every client (default 8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=16, help="ranged part size for both S3 clients")
    parser.add_argument("--stores", default="s3,hf,ms", help="which comparisons to run (default s3,hf,ms)")
    args = parser.parse_args()
    stores = set(args.stores.split(","))
    files = dataset(args.mib)
    total = sum(len(d) for d in files.values())
    print(f"dataset: {len(files)} files, {total / MiB:.0f} MiB; {args.threads} threads; {args.rounds} rounds (median)")

    if "s3" in stores:
        _s3(args, files, total)
    if "hf" in stores:
        _hf(args, total)
    if "ms" in stores:
        server, stop, ms_url = _served(_serve_modelscope, args.mib)
        try:
            compare(
                "modelscope (local hub)",
                patio_fetch("ms://bench/model", {"MODELSCOPE_ENDPOINT": ms_url}, args.threads),
                ms_snapshot(ms_url, args.threads),
                total,
                args.rounds,
            )
        finally:
            stop.set()
            server.join(10)
            if server.is_alive():
                server.kill()


def _s3(args: Any, files: Dict[str, bytes], total: int) -> None:
    from artifacts_fakes import MotoServer

    moto = MotoServer()
    try:
        s3 = moto.client("s3", "AKIABENCH", "x")
        s3.create_bucket(Bucket="bench")
        for path, data in files.items():
            s3.put_object(Bucket="bench", Key=f"data/{path}", Body=data)
        env = {
            "AWS_ENDPOINT_URL": moto.endpoint,
            "AWS_ACCESS_KEY_ID": "AKIABENCH",
            "AWS_SECRET_ACCESS_KEY": "x",
            "DOWNLOADER_PART_SIZE": f"{args.part_mib}MiB",
        }
        compare(
            "s3 (moto)",
            patio_fetch("s3://bench/data", env, args.threads),
            boto3_transfer(moto.endpoint, args.threads, args.part_mib * MiB),
            total,
            args.rounds,
        )
    finally:
        moto.stop()


def _hf(args: Any, total: int) -> None:
    server, stop, hub_url = _served(_serve_hub, args.mib)
    try:
        env = {"HF_ENDPOINT": hub_url, "DOWNLOADER_PART_SIZE": f"{args.part_mib}MiB", "HF_HUB_DISABLE_TELEMETRY": "1"}
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        compare(
            "huggingface (local hub)",
            patio_fetch("hf://bench/model", env, args.threads),
            hf_snapshot(hub_url, args.threads),
            total,
            args.rounds,
        )
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()


if __name__ == "__main__":
    main()
