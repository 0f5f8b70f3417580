"""``patio download``: fetch one model or adapter into a directory, then exit.

    python3 patio.pyz download --model-uri s3://bucket/llama --local-dir /models/llama \
        [--allow-file-suffix json,safetensors] [--num-threads 16] [--force]

    python3 patio.pyz download -s ms://org/name -o /models/name -w 8 -c '{"ms_token": "..."}'

The flags are the AIBrix downloader's (plus ``--force``), and Kthena's downloader's
(``-s/--source``, ``-o/--output-dir``, ``-w/--max-workers``, ``-c/--config``) so
both projects' init containers can run Patio unchanged.  ``patio download`` (and Kthena's
flags) write the files into the named directory itself; started as AIBrix's downloader
(``python -m aibrix.downloader``, ``aibrix_download``) the layout is AIBrix's: a
sub-directory of ``--local-dir`` named after the model (``aibrix_model_dir``), default
``--local-dir`` ``DOWNLOADER_LOCAL_DIR`` or ``/tmp/aibrix/models/``, and the model's
directory printed on stdout as AIBrix's ``__main__`` prints it.  Exit status: 0 only
when every file is on disk, verified, and the manifest is written; 1 when the
download failed (the message names the object and the cause); 2 for bad usage;
130/143 when interrupted (what was written stays resumable).
"""

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, TextIO

from patio.artifacts.auth.credentials import merge_credentials, parse_config
from patio.artifacts.errors import DownloadCancelled
from patio.artifacts.fetch.progress import Progress, human_bytes
from patio.artifacts.fetch.run import fetch
from patio.artifacts.settings import from_sources, parse_size, parse_suffixes
from patio.artifacts.sources import open_source
from patio.artifacts.uri import BUCKET_SCHEMES, SourceSpec, parse_uri
from patio.core_settings import LOG_LEVELS
from patio.errors import ConfigError, PatioError
from patio.logs import configure
from patio.options import parse_int

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
log = logging.getLogger("patio.artifacts")
LAYOUTS = ("patio", "aibrix")
# AIBrix's default --local-dir (python/aibrix/aibrix/envs.py DOWNLOADER_LOCAL_DIR).
AIBRIX_LOCAL_DIR = "/tmp/aibrix/models/"


def aibrix_model_dir(spec: SourceSpec, raw: str) -> str:
    """The sub-directory of ``--local-dir`` AIBrix's downloader writes a model into.

    vllm-project/aibrix python/aibrix/aibrix/downloader (at b36d2a46): ``download_model``
    writes into ``Path(local_dir).joinpath(model_name)``; without ``--model-name`` the S3 and
    TOS downloaders take ``infer_model_name(uri)`` = ``uri.strip().strip("/").split("/")[-1]``
    (so a trailing slash changes nothing), and the HuggingFace downloader the repo id itself
    (``org/name``: two levels).  Other stores, which AIBrix's CLI does not have, take their
    last path component the same way.
    """
    if spec.kind == "hf":
        return spec.repo_id
    if spec.kind in BUCKET_SCHEMES.values():
        name = raw.strip().strip("/").split("/")[-1]
    else:
        name = spec.default_name
    if name in ("", ".", "..") or name.endswith(":"):
        raise ConfigError("--model-uri", f"names no model directory in {spec.display}; pass --model-name")
    return name


class ProgressBar:
    """One self-overwriting line on a terminal; redrawn at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase == "listing" or (p.phase != "complete" and now - self._last < self.interval):
            return
        self._last = now
        width = shutil.get_terminal_size((100, 20)).columns
        fraction = p.bytes_done / p.bytes_total if p.bytes_total else (1.0 if p.phase == "complete" else 0.0)
        eta = "" if p.eta is None else f" ETA {p.eta:.0f}s"
        text = (
            f" {fraction * 100:5.1f}% {p.files_done}/{p.files_total} files "
            f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)} {human_bytes(p.rate)}/s{eta}"
        )
        bar_width = max(10, min(40, width - len(text) - 3))
        filled = int(bar_width * min(1.0, fraction))
        line = f"[{'#' * filled}{'-' * (bar_width - filled)}]{text}"
        self.stream.write("\r" + line[: width - 1])
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Wipe the bar so a log line starts at column 0; the next update redraws it."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def filter(self, record: logging.LogRecord) -> bool:  # a logging.Filter: clear before each line
        self.clear()
        return True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patio download",
        description="Download a model or adapter (s3, tos, obs, gs, hf, http(s), pvc) into a local directory.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add(
        "--model-uri",
        "-s",
        "--source",
        dest="model_uri",
        required=True,
        help="s3://, tos://, obs://, gs://, hf://, org/name, ms://org/name, http(s)://, pvc://",
    )
    add(
        "--local-dir",
        "-o",
        "--output-dir",
        dest="local_dir",
        help="target directory (env DOWNLOADER_LOCAL_DIR / PATIO_MODELS_ROOT; ~ is expanded)",
    )
    add("--model-name", help="sub-directory of --local-dir to download into (AIBrix)")
    add(
        "--allow-file-suffix",
        action="extend",
        nargs="+",
        help="only files with these suffixes: json safetensors, or json,safetensors (env DOWNLOADER_ALLOW_FILE_SUFFIX)",
    )
    add(
        "--num-threads",
        "-w",
        "--max-workers",
        dest="num_threads",
        help="parallel transfers (env DOWNLOADER_NUM_THREADS; default 16)",
    )
    add("--part-size", help="ranged part size for big files, e.g. 16MiB (env DOWNLOADER_PART_SIZE)")
    add("--force", action="store_true", help="download again even files that are complete")
    add("--enable-progress-bar", action="store_true", help="draw a progress bar even when stderr is not a terminal")
    add("--no-progress-bar", action="store_true", help="never draw a progress bar")
    add(
        "--download-extra-config",
        help="JSON object of credentials (access_key_id, secret_access_key, region, endpoint, token, ...)",
    )
    add(
        "-c",
        "--config",
        help="Kthena's JSON config: hf_token, hf_endpoint, hf_revision, ms_token, ms_revision, access_key, "
        "secret_key, endpoint (environment fall-backs: HF_AUTH_TOKEN, HF_ENDPOINT, HF_REVISION, MS_TOKEN, "
        "MS_REVISION, ACCESS_KEY, SECRET_KEY, ENDPOINT)",
    )
    add("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser


def main(argv: Optional[List[str]] = None, stderr: Optional[TextIO] = None, layout: str = "patio") -> int:
    """``layout``: ``"patio"`` writes into the directory named; ``"aibrix"`` as AIBrix's downloader."""
    err = stderr or sys.stderr
    assert layout in LAYOUTS, layout
    parser = build_parser()
    if layout == "aibrix":
        parser.prog = "python -m aibrix.downloader"
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    try:
        level = args.log_level.strip().upper()
        if level not in LOG_LEVELS:
            raise ConfigError("--log-level", f"must be one of {', '.join(LOG_LEVELS)}")
        settings = from_sources(argparse.Namespace(), os.environ, None)
        if args.num_threads is not None:
            settings = dataclasses.replace(
                settings, num_threads=parse_int("--num-threads", args.num_threads, minimum=1, maximum=256)
            )
        if args.part_size is not None:
            settings = dataclasses.replace(settings, part_size=parse_size("--part-size", args.part_size))
        if args.allow_file_suffix:
            suffixes = parse_suffixes("--allow-file-suffix", ",".join(args.allow_file_suffix))
            settings = dataclasses.replace(settings, allow_suffixes=suffixes)
        if args.force:
            settings = dataclasses.replace(settings, force_download=True)
        extra: Any = None
        if args.download_extra_config:
            try:
                extra = json.loads(args.download_extra_config)
            except ValueError as exc:
                raise ConfigError("--download-extra-config", f"is not valid JSON: {exc}") from None
        config: Any = None
        if args.config:
            try:
                config = parse_config(args.config, param="--config")
            except PatioError as exc:
                raise ConfigError("--config", exc.message) from None
        default_dir = settings.models_root
        if layout == "aibrix":
            default_dir = os.environ.get("DOWNLOADER_LOCAL_DIR") or AIBRIX_LOCAL_DIR
        local_dir = os.path.abspath(os.path.expanduser(args.local_dir or default_dir))
        spec = parse_uri(args.model_uri, param="--model-uri")
        if args.model_name:
            if "/" in args.model_name or args.model_name in (".", ".."):
                raise ConfigError("--model-name", "must be a single directory name")
            local_dir = os.path.join(local_dir, args.model_name)
        elif layout == "aibrix":
            local_dir = os.path.join(local_dir, *aibrix_model_dir(spec, args.model_uri).split("/"))
        creds = merge_credentials([("--config", config, True), ("--download-extra-config", extra, True)])
    except ConfigError as exc:
        print(f"patio download: {exc}", file=err)
        return EXIT_USAGE
    except PatioError as exc:  # a malformed URI or credentials object
        print(f"patio download: {exc.message}", file=err)
        return EXIT_USAGE
    configure(level, "text")

    cancel = threading.Event()
    received: List[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        cancel.set()  # only set a flag: the fetch loop notices and stops cleanly

    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    bar: Optional[ProgressBar] = None
    if not args.no_progress_bar and (args.enable_progress_bar or err.isatty()):
        bar = ProgressBar(err)
        for handler in logging.getLogger().handlers:
            handler.addFilter(bar)
    source = None
    try:
        source = open_source(spec, settings, creds, cancel)
        result = fetch(source, local_dir, settings.fetch_options(), cancel=cancel, on_progress=bar)
    except DownloadCancelled as exc:
        if bar:
            bar.finish()
        log.error("%s (partial files are kept and resume on the next run)", exc.message)
        return 128 + (received[0] if received else int(signal.SIGTERM))
    except PatioError as exc:
        if bar:
            bar.finish()
        log.error("download failed: %s", exc.message)
        print(f"patio download: failed: {exc.message}", file=err)
        return EXIT_FAILED
    finally:
        if source is not None:
            source.close()
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)
    if bar:
        bar.finish()
    print(
        f"patio download: complete: {len(result.files)} files, {human_bytes(result.bytes_total)} in {result.local_dir} "
        f"({result.downloaded} downloaded, {result.skipped} already complete, "
        f"{result.bytes_downloaded} bytes fetched in {result.seconds:.1f}s)",
        file=err,
    )
    if layout == "aibrix":
        print(result.local_dir)  # AIBrix's __main__ prints the model path "for easier scripting"
    return EXIT_OK


def aibrix_main() -> int:
    """``python -m aibrix.downloader`` in the image (its shim in deploy/entrypoints/aibrix)."""
    return main(layout="aibrix")
