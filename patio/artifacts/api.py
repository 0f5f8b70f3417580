"""HTTP API for model downloads: AIBrix's routes and Kthena's.

    POST /v1/model/download        {"model_uri", "local_dir"?, "model_name"?, "allow_file_suffix"?,
                                    "num_threads"?, "force"?, "credentials"?}  -> 202 + job
    GET  /v1/model/download/{id}   the job: status, progress, error
    GET  /v1/model/list            complete models under the models root, plus running jobs
    POST /v1/download_model        Kthena (python/kthena/runtime/app.py): {"source", "output_dir",
                                    "config"?, "max_workers"?, "async_download"?} -> 200 when done,
                                    or 202 + the same job when async
    POST /model/download           production-stack's download sidecar (scripts/huggingface_downloader.py,
                                    driven by operator/internal/controller/loraadapter_controller.go):
                                    {"model_id", "local_dir", "token"?} -> 200 {"message", "path"} when done

Targets are confined to the models root (Kthena's ``output_dir``: the models root or
the adapter dir): ``..`` and symlinks out are refused.  Local sources must be
``pvc://`` (a copy out of the mounted volume), never arbitrary paths.  The body
tables below drive both validation and the OpenAPI schemas.
"""

import asyncio
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from patio.artifacts.auth.credentials import parse_config, parse_credentials
from patio.artifacts.fetch.manifest import META_DIR, Layout, within, write_error
from patio.artifacts.jobs import ACTIVE, Downloads
from patio.artifacts.settings import KTHENA_MAX_WORKERS, MAX_THREADS, ArtifactSettings, parse_suffixes
from patio.artifacts.targets import confine
from patio.artifacts.uri import SourceSpec, parse_uri
from patio.component import AppContext
from patio.errors import BadRequest, ConfigError, NotFound
from patio.http.bodies import Body, Field
from patio.http.types import Request, Response, Route
from patio.validate import check_path, check_text, is_clean

DOWNLOAD_BODY = Body(
    (
        Field(
            "model_uri",
            "string",
            "s3://, tos://, obs://, gs://, hf://, org/name, ms://, https://, pvc://",
            required=True,
        ),
        Field("local_dir", "string", "below the models root (relative, or absolute inside it)", nullable=True),
        Field("model_name", "string", "sub-directory name; default: the URI's last component", nullable=True),
        Field("allow_file_suffix", "string_or_list", "only files with these suffixes", nullable=True),
        Field("num_threads", "integer", "parallel transfers", minimum=1, maximum=MAX_THREADS, nullable=True),
        Field("force", "boolean", "download again even complete files", nullable=True),
        Field("force_download", "boolean", "alias of force", nullable=True),
        Field("credentials", "object", "never logged or echoed", nullable=True),
        Field("download_extra_config", "object", "AIBrix's name for credentials", nullable=True),
    )
)
KTHENA_BODY = Body(
    (
        Field("source", "string", "s3://, obs://, pvc://, ms://org/name, hf://org/name or org/name", required=True),
        Field("output_dir", "string", "inside the models root or the adapter dir", required=True),
        Field(
            "config",
            "object_or_json",
            "hf_token, hf_endpoint, hf_revision, ms_token, ms_revision, access_key, secret_key, endpoint",
            nullable=True,
        ),
        Field(
            "max_workers", "integer", "parallel transfers (default 8)", minimum=1, maximum=MAX_THREADS, nullable=True
        ),
        Field("async_download", "boolean", "answer 202 at once with the job to poll", nullable=True),
    )
)
# production-stack's LoRA controller (operator/internal/controller/loraadapter_controller.go at
# a6c01db0, downloadHuggingFaceAdapter) posts map[string]string{"model_id": the adapter's
# HuggingFace repository, "token": the secret's value, "local_dir": the adapter name with "/" as
# "-"} to its sidecar on port 30090 and reads the answer into map[string]string, keeping "path".
# The sidecar (scripts/huggingface_downloader.py) is a pydantic model of exactly these fields and
# snapshot_download()s the repo into LORA_DOWNLOAD_BASE_DIR/local_dir before it answers.
PRODUCTION_STACK_BODY = Body(
    (
        Field("model_id", "string", "a HuggingFace repo id: org/name (or hf://org/name)", required=True),
        Field("local_dir", "string", "below the models root (the sidecar's LORA_DOWNLOAD_BASE_DIR)", required=True),
        Field("token", "string", "HuggingFace token (never logged, echoed or stored)", nullable=True),
    )
)
_PRODUCTION_STACK_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string"}, "path": {"type": "string"}},
}

# How deep /v1/model/list looks for manifests below the models root (org/name/revision).
LIST_DEPTH = 4
# Models listed at most; a models root is a handful of directories.
MAX_LISTED = 1000

_JOB_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"]},
        "model_uri": {"type": "string"},
        "local_dir": {"type": "string"},
        "progress": {"type": "object"},
        "error": {"type": ["object", "null"]},
    },
}
_LIST_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "properties": {"object": {"type": "string"}, "data": {"type": "array", "items": {"type": "object"}}},
}
_KTHENA_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["completed", "started"]},
        "message": {"type": "string"},
        "source": {"type": "string"},
        "output_dir": {"type": "string"},
        "job": _JOB_SCHEMA,
    },
}


def resolve_target(models_root: str, local_dir: Optional[str], model_name: Optional[str], spec: SourceSpec) -> str:
    """Blocking: the absolute download directory, inside the models root, or ``BadRequest``."""
    try:
        os.makedirs(models_root, exist_ok=True)
    except OSError as exc:
        raise write_error(models_root, exc) from None
    root = os.path.realpath(models_root)
    if local_dir is not None:
        if not isinstance(local_dir, str) or not local_dir.strip():
            raise BadRequest("local_dir must be a non-empty string", param="local_dir")
        if ".." in local_dir.replace("\\", "/").split("/"):
            raise BadRequest("local_dir must not contain '..'", param="local_dir")
        if os.path.isabs(local_dir):
            norm = os.path.normpath(local_dir)
            given_root = os.path.normpath(models_root)
            if within(given_root, norm):
                norm = os.path.join(root, os.path.relpath(norm, given_root))
            elif not within(root, norm):
                raise BadRequest(f"local_dir must be inside the models root {models_root}", param="local_dir")
            target = norm
        else:
            target = os.path.join(root, os.path.normpath(local_dir))
    else:
        target = os.path.join(root, _segment(spec.default_name, "model_uri"))
    if model_name is not None:
        target = os.path.join(target, _segment(model_name, "model_name"))
    target = os.path.normpath(target)
    if target == root:
        raise BadRequest("the download directory must be below the models root, not the root itself", param="local_dir")
    if META_DIR in target[len(root) :].split(os.sep):
        raise BadRequest(f"local_dir must not use the name {META_DIR}", param="local_dir")
    # Resolve what exists: a symlink on the way must not lead out of the root.
    probe = target
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not within(root, os.path.realpath(probe)):
        raise BadRequest(f"local_dir resolves outside the models root {models_root}", param="local_dir")
    if os.path.islink(target):
        raise BadRequest("local_dir is a symlink; refusing to write through it", param="local_dir")
    return target


def _segment(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\x00" in value:
        raise BadRequest(f"{param} must be a single directory name, got {value!r}", param=param)
    return value


def _clean_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and is_clean(value) else None


def _number_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def list_models(models_root: str) -> List[Dict[str, Any]]:
    """Blocking: every directory below the root holding a complete manifest."""
    root = os.path.realpath(models_root)
    found: List[Dict[str, Any]] = []
    if not os.path.isdir(root):
        return found
    for folder, dirs, _files in os.walk(root):
        depth = folder[len(root) :].count(os.sep)
        if META_DIR in dirs and is_clean(folder):  # a non-UTF-8 directory name cannot be listed in JSON
            manifest = Layout(folder).read_manifest()
            if manifest is not None:
                found.append(
                    {
                        "name": os.path.relpath(folder, root),
                        "local_dir": folder,
                        "status": "completed",
                        # A hand-edited manifest must not turn every listing into a 500.
                        "model_uri": _clean_or_none(manifest.get("source")),
                        "files": _number_or_none(manifest.get("file_count")),
                        "bytes": _number_or_none(manifest.get("bytes")),
                        "completed_at": _clean_or_none(manifest.get("completed_at")),
                    }
                )
                if len(found) >= MAX_LISTED:
                    break
        dirs[:] = sorted(d for d in dirs if d != META_DIR and not os.path.islink(os.path.join(folder, d)))
        if depth >= LIST_DEPTH:
            dirs[:] = []
    return found


def _download_source(uri: str, param: str) -> SourceSpec:
    """The source a download request names: remote, or ``pvc://``; never an arbitrary local path."""
    spec = parse_uri(uri, param=param)
    if spec.kind == "local" and not spec.pvc:
        raise BadRequest(f"{param}: local sources must be pvc:// paths", param=param)
    return spec


class DownloadApi:
    def __init__(self, context: AppContext, settings: ArtifactSettings, downloads: Downloads) -> None:
        self.context = context
        self.settings = settings
        self.downloads = downloads

    def routes(self) -> Sequence[Route]:
        return (
            Route(
                "POST",
                "/v1/model/download",
                self.start_download,
                summary="Download a model into the models root (202 + job id)",
                management=True,
                tag="downloads",
                request_schema=DOWNLOAD_BODY.schema(),
                response_schema=_JOB_SCHEMA,
                errors=(202, 400, 401, 409, 415),
            ),
            Route(
                "POST",
                "/v1/download_model",
                self.kthena_download,
                summary="Kthena: download a model (200 when complete; 202 + job with async_download)",
                management=True,
                tag="downloads",
                request_schema=KTHENA_BODY.schema(),
                response_schema=_KTHENA_SCHEMA,
                errors=(200, 202, 400, 401, 403, 404, 409, 415, 502, 503, 507),
            ),
            Route(
                "POST",
                "/model/download",
                self.production_stack_download,
                summary="production-stack's download sidecar: a HuggingFace repo into the models root (200 when done)",
                management=True,
                tag="downloads",
                request_schema=PRODUCTION_STACK_BODY.schema(),
                response_schema=_PRODUCTION_STACK_SCHEMA,
                errors=(400, 401, 403, 404, 409, 415, 502, 503, 507),
            ),
            Route(
                "GET",
                "/v1/model/download/{id}",
                self.get_download,
                summary="Status and progress of a download job",
                management=True,
                tag="downloads",
                response_schema=_JOB_SCHEMA,
                errors=(401, 404),
            ),
            Route(
                "GET",
                "/v1/model/list",
                self.list_models,
                summary="Models complete under the models root, and downloads in progress",
                management=True,
                tag="downloads",
                response_schema={
                    "type": "object",
                    "properties": {"object": {"type": "string"}, "data": {"type": "array"}},
                },
                errors=(401,),
            ),
        )

    def _options(self, body: Dict[str, Any]) -> Tuple[Optional[int], Optional[Tuple[str, ...]], Optional[bool]]:
        threads = body.get("num_threads")
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS
        ):
            raise BadRequest(f"num_threads must be an integer from 1 to {MAX_THREADS}", param="num_threads")
        suffixes = body.get("allow_file_suffix")
        parsed: Optional[Tuple[str, ...]] = None
        if suffixes is not None:
            if isinstance(suffixes, list) and all(isinstance(s, str) for s in suffixes):
                suffixes = ",".join(suffixes)
            if not isinstance(suffixes, str):
                raise BadRequest("allow_file_suffix must be a string or a list of strings", param="allow_file_suffix")
            try:
                parsed = parse_suffixes("allow_file_suffix", suffixes)
            except ConfigError as exc:
                raise BadRequest(str(exc), param="allow_file_suffix") from None
        force = body.get("force", body.get("force_download"))
        if force is not None and not isinstance(force, bool):
            raise BadRequest("force must be true or false", param="force")
        return threads, parsed, force

    async def start_download(self, request: Request) -> Response:
        body = DOWNLOAD_BODY.check(request.json_object())
        for field in ("local_dir", "model_name"):
            if body.get(field) is not None:
                check_path(body[field], field)  # no control characters, no path longer than the OS allows
        spec = _download_source(body.get("model_uri", ""), "model_uri")
        creds = parse_credentials(
            body.get("credentials", body.get("download_extra_config")),
            param="credentials" if "credentials" in body else "download_extra_config",
        )
        threads, suffixes, force = self._options(body)
        target = await self.context.run_blocking(
            resolve_target, self.settings.models_root, body.get("local_dir"), body.get("model_name"), spec
        )
        options = self.settings.fetch_options(num_threads=threads, allow_suffixes=suffixes, force=force)
        job, created = self.downloads.submit(spec, target, creds, options)
        location = f"/v1/model/download/{job.id}"
        data = job.to_json()
        data["status_url"] = location
        if not created:
            data["joined"] = True
        return Response.json(data, status=202, headers=[("Location", location)])

    async def kthena_download(self, request: Request) -> Response:
        body = KTHENA_BODY.check(request.json_object())
        check_path(body["output_dir"], "output_dir")  # "a\nb" would forge a log line; 5000 bytes never exists
        spec = _download_source(body["source"], "source")
        creds = parse_credentials(parse_config(body.get("config")), param="config")
        roots = (self.settings.models_root, self.settings.adapter_dir)
        target = await self.context.run_blocking(confine, body["output_dir"], roots, "output_dir", roots[0])
        options = self.settings.fetch_options(num_threads=body.get("max_workers") or KTHENA_MAX_WORKERS)
        job, _created = self.downloads.submit(spec, target, creds, options)
        location = f"/v1/model/download/{job.id}"
        answer: Dict[str, Any] = {"source": spec.display, "output_dir": target, "status_url": location}
        if body.get("async_download"):
            answer.update(status="started", message="Model download started in background", job=job.to_json())
            return Response.json(answer, status=202, headers=[("Location", location)])
        assert job.future is not None
        await asyncio.shield(job.future)  # a client that hangs up does not cancel the download
        if job.exception is not None:
            raise job.exception
        answer.update(status="completed", message="Model download completed successfully", job=job.to_json())
        return Response.json(answer)

    async def production_stack_download(self, request: Request) -> Response:
        """As production-stack's sidecar answers: the download done, ``{"message", "path"}`` (both
        strings: the controller reads them into a map of strings), or the error."""
        body = PRODUCTION_STACK_BODY.check(request.json_object())
        local_dir = check_path(body["local_dir"], "local_dir")
        model_id = check_text(body["model_id"], "model_id").strip()
        spec = parse_uri(model_id, param="model_id", bare_hub=True)
        if spec.kind != "hf":
            raise BadRequest(
                "model_id must be a HuggingFace repo id (org/name): production-stack's sidecar downloads "
                "with huggingface_hub.snapshot_download",
                param="model_id",
            )
        token = body.get("token")
        # An empty token is the controller's way of having none (its secret's value, whatever it holds).
        creds = parse_credentials({"token": token} if token else None, param="token")
        target = await self.context.run_blocking(resolve_target, self.settings.models_root, local_dir, None, spec)
        job, _created = self.downloads.submit(spec, target, creds, self.settings.fetch_options())
        assert job.future is not None
        await asyncio.shield(job.future)  # a controller that hangs up does not cancel the download
        if job.exception is not None:
            raise job.exception
        return Response.json({"message": f"Successfully downloaded {spec.display} to {target}", "path": target})

    async def get_download(self, request: Request) -> Response:
        job = self.downloads.get(request.path_params.get("id", ""))
        if job is None:
            raise NotFound(f"no download job {request.path_params.get('id')!r}", param="id")
        return Response.json(job.to_json())

    async def list_models(self, request: Request) -> Response:
        models = await self.context.run_blocking(list_models, self.settings.models_root)
        by_dir = {m["local_dir"]: m for m in models}
        root = os.path.realpath(self.settings.models_root)
        for job in self.downloads.jobs.values():  # oldest first: a newer job's state wins
            shown = by_dir.get(job.local_dir)
            if job.status in ACTIVE or (job.status != "completed" and (shown or {}).get("status") != "completed"):
                by_dir[job.local_dir] = {
                    "name": os.path.relpath(job.local_dir, root),
                    "local_dir": job.local_dir,
                    "status": job.status,
                    "model_uri": job.source,
                    "job_id": job.id,
                    "progress": job.progress.to_json(),
                    "error": job.error,
                }
        data = sorted(by_dir.values(), key=lambda m: str(m["name"]))
        return Response.json({"object": "list", "data": data})
