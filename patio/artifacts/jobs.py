"""Download jobs run by the server: one asyncio task each, the blocking fetch in a worker thread.

A job's state is written by its worker thread (progress) and read by handlers
on the event loop; each field is replaced whole, so readers see a consistent
snapshot without locks.  Jobs for one target directory never overlap: a second
request for the same source joins the running job, one for another source gets 409.
"""

import asyncio
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from patio.artifacts.auth.credentials import RequestCredentials
from patio.artifacts.errors import DownloadCancelled
from patio.artifacts.fetch.options import FetchOptions
from patio.artifacts.fetch.progress import Progress
from patio.artifacts.settings import ArtifactSettings
from patio.artifacts.uri import SourceSpec
from patio.component import AppContext
from patio.errors import Conflict, InternalError, PatioError

if TYPE_CHECKING:  # pragma: no cover
    from patio.artifacts.fetch.run import FetchResult

log = logging.getLogger("patio.artifacts")

# Finished jobs remembered for GET /v1/model/download/{id}; older ones are forgotten first.
MAX_FINISHED_JOBS = 256
# Jobs running or queued at once; more is almost certainly a client retrying in a loop.
MAX_ACTIVE_JOBS = 32
# Seconds shutdown waits for cancelled downloads to notice (they stop within one network read).
STOP_WAIT = 5.0
ACTIVE = ("queued", "running")
OUTCOMES = ("completed", "failed", "cancelled")
KINDS = ("s3", "tos", "obs", "gs", "hf", "ms", "http", "local")


@dataclass
class DownloadJob:
    id: str
    kind: str
    source: str  # display form: no credentials, no query
    local_dir: str
    threads: int = 1  # parallel transfers (the request's max_workers, else --download-threads)
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    progress: Progress = field(default_factory=lambda: Progress(phase="queued"))
    error: Optional[Dict[str, Any]] = None
    result: Optional["FetchResult"] = None
    exception: Optional[PatioError] = None  # what a waiting caller re-raises
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Optional["asyncio.Future[None]"] = None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "id": self.id,
            "object": "model.download",
            "status": self.status,
            "model_uri": self.source,
            "local_dir": self.local_dir,
            "threads": self.threads,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "progress": self.progress.to_json(),
            "error": self.error,
        }
        if self.result is not None:
            data["files"] = len(self.result.files)
            data["bytes"] = self.result.bytes_total
            data["downloaded_files"] = self.result.downloaded
            data["skipped_files"] = self.result.skipped
        return data


def _iso(value: Optional[float]) -> Optional[str]:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


class Downloads:
    """Runs fetches for the HTTP API and the LoRA seam; owns their metrics."""

    def __init__(self, context: AppContext, settings: ArtifactSettings) -> None:
        self.context = context
        self.settings = settings
        self.jobs: Dict[str, DownloadJob] = {}  # insertion-ordered: oldest first
        self._counter = itertools.count(1)
        registry = context.registry
        self._outcomes = registry.counter(
            "patio_downloads_total", "Finished artifact downloads, by store and outcome.", ("kind", "outcome")
        )
        self._bytes = registry.counter(
            "patio_download_bytes_total", "Bytes written by artifact downloads, by store.", ("kind",)
        )
        registry.gauge(
            "patio_downloads_in_progress",
            "Artifact downloads running now.",
            func=lambda: float(sum(1 for j in self.jobs.values() if j.status in ACTIVE)),
        )
        for kind in KINDS:
            self._bytes.inc(kind, amount=0.0)
            for outcome in OUTCOMES:
                self._outcomes.inc(kind, outcome, amount=0.0)

    def active_for(self, local_dir: str) -> Optional[DownloadJob]:
        for job in self.jobs.values():
            if job.local_dir == local_dir and job.status in ACTIVE:
                return job
        return None

    def get(self, job_id: str) -> Optional[DownloadJob]:
        return self.jobs.get(job_id)

    def submit(
        self,
        spec: SourceSpec,
        local_dir: str,
        creds: RequestCredentials,
        options: FetchOptions,
        on_done: Optional[Callable[[DownloadJob], None]] = None,
    ) -> Tuple[DownloadJob, bool]:
        """Start (or join) the download of ``spec`` into ``local_dir``.  (job, created)."""
        running = self.active_for(local_dir)
        if running is not None:
            if running.source == spec.display:
                return running, False
            raise Conflict(
                f"{local_dir} is being downloaded from {running.source} (job {running.id}); wait for it to finish",
                param="local_dir",
            )
        if sum(1 for j in self.jobs.values() if j.status in ACTIVE) >= MAX_ACTIVE_JOBS:
            raise Conflict(f"{MAX_ACTIVE_JOBS} downloads are already running; try again later")
        job = DownloadJob(
            id=f"dl-{next(self._counter)}-{os.urandom(6).hex()}",
            kind=spec.kind,
            source=spec.display,
            local_dir=local_dir,
            threads=options.num_threads,
        )
        self.jobs[job.id] = job
        self._forget_old()
        job.future = asyncio.ensure_future(self._run(job, spec, creds, options, on_done))
        return job, True

    def _forget_old(self) -> None:
        finished = [j.id for j in self.jobs.values() if j.status not in ACTIVE]
        for job_id in finished[: max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self.jobs[job_id]

    async def _run(
        self,
        job: DownloadJob,
        spec: SourceSpec,
        creds: RequestCredentials,
        options: FetchOptions,
        on_done: Optional[Callable[[DownloadJob], None]],
    ) -> None:
        """Never raises (nobody has to await an API job): the outcome lands on ``job``."""
        job.status = "running"
        job.started_at = time.time()
        try:
            result = await self.context.run_download(self._blocking, job, spec, creds, options)
        except asyncio.CancelledError:
            job.cancel.set()  # the worker thread stops at its next read
            self._finish(job, DownloadCancelled(f"download of {job.source} cancelled"), on_done)
            raise
        except PatioError as exc:
            self._finish(job, exc, on_done)
        except Exception as exc:  # a bug, not a download failure: keep its text for the status answer
            log.exception("download %s -> %s crashed", job.source, job.local_dir)
            self._finish(job, InternalError(f"download failed: {exc!r}"), on_done)
        else:
            job.result = result
            self._finish(job, None, on_done)

    def _finish(
        self, job: DownloadJob, error: Optional[PatioError], on_done: Optional[Callable[[DownloadJob], None]]
    ) -> None:
        job.finished_at = time.time()
        job.exception = error
        if error is None:
            assert job.result is not None
            job.status = "completed"
            self._bytes.inc(job.kind, amount=float(job.result.bytes_downloaded))
        else:
            job.status = "cancelled" if isinstance(error, DownloadCancelled) else "failed"
            job.error = {"type": error.error_type, "message": error.message, "code": error.status}
            self._bytes.inc(job.kind, amount=float(max(0, job.progress.bytes_this_run)))
            log.warning("download %s -> %s %s: %s", job.source, job.local_dir, job.status, error.message)
        self._outcomes.inc(job.kind, job.status)
        if on_done:
            on_done(job)

    def _blocking(
        self, job: DownloadJob, spec: SourceSpec, creds: RequestCredentials, options: FetchOptions
    ) -> "FetchResult":
        def on_progress(progress: Progress) -> None:
            job.progress = progress

        # Imported on first use, in this worker thread: the store clients (S3 signer, GCS RS256,
        # HF, XML parsing) are not needed to start serving, and keep start-up short.
        from patio.artifacts.fetch.run import fetch
        from patio.artifacts.sources import open_source

        source = open_source(spec, self.settings, creds, job.cancel)
        try:
            return fetch(source, job.local_dir, options, cancel=job.cancel, on_progress=on_progress)
        finally:
            source.close()

    async def stop(self) -> None:
        futures = []
        for job in self.jobs.values():
            if job.status in ACTIVE:
                job.cancel.set()
                if job.future is not None:
                    futures.append(job.future)
        if futures:
            await asyncio.wait(futures, timeout=STOP_WAIT)
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: the job already recorded it
