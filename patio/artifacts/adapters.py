"""The LoRA delegation seam: remote adapter URI -> a local directory the engine can load.

Handed to the LoRA manager by ``build_app``; the LoRA component calls

    is_remote(source) -> bool                         needs materialize()? (remote stores and pvc://)
    await materialize(lora_name, source, credentials, current=, in_use=, reuse_only=) -> local path
    await discard(lora_name, path)                    delete one directory materialize made
    await cleanup(lora_name, path=None)               delete what materialize downloaded for the name
    forget(lora_name)                                 drop the download status of a name
    status(lora_name) -> Optional[dict]               download state for GET /v1/lora_adapters

Downloads land in ``adapter_dir/NAME``, or, when the engine serves the name from
that directory now (``in_use``: an in-place reload), in a fresh sibling
``adapter_dir/NAME~TOKEN`` (``~`` is not allowed in names, so no adapter owns
it), which the LoRA manager makes the adapter's directory once the engine has
confirmed it; the directory in use is never written or deleted here (issue 13
row 7).  The name must be a plain directory name, the resolved path must stay
inside the adapter dir, and an existing symlink there is refused rather than
written (or deleted) through.  Concurrent materialize calls for one name share
one download.  ``pvc://`` resolves in place (no copy) and is never deleted.
All disk work runs in worker threads.
"""

import asyncio
import os
import time
from typing import Any, Dict, Optional, Tuple

from patio.app import AppContext
from patio.artifacts.auth.credentials import parse_credentials
from patio.artifacts.errors import DownloadCancelled
from patio.artifacts.fetch.manifest import Layout, atomic_write, within, write_error
from patio.artifacts.jobs import Downloads
from patio.artifacts.settings import ArtifactSettings
from patio.artifacts.stores.local import resolve_local
from patio.artifacts.uri import BUCKET_SCHEMES, HF_SCHEMES, MAX_URI_LENGTH, SourceSpec, parse_uri
from patio.errors import BadRequest, Conflict, NotFound, PatioError
from patio.validate import check_name as _check_name

REMOTE_SCHEMES = frozenset((*BUCKET_SCHEMES, *HF_SCHEMES, "http", "https", "pvc"))
# Name of the file in DIR/.patio/ that records which URI the directory holds.
SOURCE_MARKER = "source"
# Seconds cleanup waits for a cancelled download to stop before deleting.
CANCEL_WAIT = 30.0
# Separates a name from the token of a replacement download's directory; never in a name.
VERSION_MARK = "~"


def check_name(lora_name: Any) -> str:
    """AIBrix's adapter name rule (``patio.validate``): one plain directory below adapter_dir."""
    return _check_name(lora_name, "lora_name")


def owned_by(adapter_dir: str, lora_name: str, path: str) -> bool:
    """True when ``path`` is a directory materialize made for ``lora_name`` (NAME or NAME~TOKEN)."""
    root = os.path.realpath(adapter_dir)
    candidate = os.path.abspath(path)
    base = os.path.basename(candidate)
    return os.path.dirname(candidate) == root and (base == lora_name or base.startswith(lora_name + VERSION_MARK))


def contained_target(adapter_dir: str, lora_name: str) -> str:
    """``adapter_dir/NAME``, refusing anything that would leave the adapter dir."""
    root = os.path.realpath(adapter_dir)
    target = os.path.join(root, lora_name)
    if os.path.islink(target):
        raise Conflict(f"{target} is a symlink; refusing to download or delete through it", param="lora_name")
    if not within(root, os.path.realpath(target)) or os.path.dirname(target) != root:
        raise BadRequest(f"lora_name {lora_name!r} resolves outside {adapter_dir}", param="lora_name")
    return target


class AdapterArtifacts:
    def __init__(self, context: AppContext, settings: ArtifactSettings, downloads: Downloads) -> None:
        self.context = context
        self.settings = settings
        self.downloads = downloads
        self._inflight: Dict[str, Tuple[str, asyncio.Future[str], Any]] = {}
        self._state: Dict[str, Dict[str, Any]] = {}

    # --- the seam ---

    def is_remote(self, source: str) -> bool:
        try:
            spec = parse_uri(source, param="lora_path", bare_hub=False)
        except PatioError:
            # A malformed s3:// (or other remote) URI still belongs here: materialize() explains what is wrong.
            scheme = source.split("://", 1)[0].lower() if isinstance(source, str) and "://" in source else ""
            return scheme in REMOTE_SCHEMES
        return spec.remote or spec.pvc

    async def materialize(
        self,
        lora_name: str,
        source: str,
        credentials: Optional[Dict[str, Any]] = None,
        *,
        current: Optional[str] = None,
        in_use: bool = False,
        reuse_only: bool = False,
    ) -> str:
        """A local directory holding ``source`` for ``lora_name``.

        ``current``: the adapter's directory now; reused when it holds a complete copy of the
        same source.  ``in_use``: the engine serves from ``current``, so it is never written:
        a download goes to a fresh sibling.  ``reuse_only``: no download at all (the source
        was read back without its secrets); 404 when no complete copy is on disk.
        """
        name = check_name(lora_name)
        spec = parse_uri(source, param="lora_path", bare_hub=False)
        creds = parse_credentials(credentials)
        if spec.kind == "local":
            # pvc:// and absolute paths are read in place by the engine: resolve, never copy.
            return await self.context.run_blocking(resolve_local, spec, self.settings.pvc_root, "lora_path")
        plan = (current, in_use, reuse_only)
        running = self._inflight.get(name)
        if running is not None:
            shown, shared, _job = running
            if shown != spec.display:
                raise Conflict(f"adapter {name} is being downloaded from {shown}; unload it or wait", param="lora_name")
            return await asyncio.shield(shared)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[name] = (spec.display, future, None)
        try:
            path = await self._download(name, spec, creds, plan)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # joined callers re-raise it; asyncio must not report it as lost
            raise
        else:
            future.set_result(path)
            return path
        finally:
            self._inflight.pop(name, None)

    async def _download(self, name: str, spec: SourceSpec, creds: Any, plan: Tuple[Optional[str], bool, bool]) -> str:
        target, complete = await self.context.run_download(self._prepare, name, spec, *plan)
        if complete:
            self._state[name] = {"state": "ready", "source": spec.display, "local_path": target, "reused": True}
            return target
        self._state[name] = {
            "state": "downloading",
            "source": spec.display,
            "local_path": target,
            "started_at": time.time(),
        }
        options = self.settings.fetch_options(allow_suffixes=(), force=False)
        job, _created = self.downloads.submit(spec, target, creds, options)
        entry = self._inflight.get(name)
        if entry is not None:
            self._inflight[name] = (entry[0], entry[1], job)
        self._state[name]["job"] = job
        assert job.future is not None
        await asyncio.shield(job.future)
        if job.exception is not None:
            self._state[name].update(state="failed", error=job.error)
            current, in_use, _reuse_only = plan
            if in_use and target != current:
                # A replacement that failed: its directory is nobody's (the one in use is untouched).
                await self.context.run_download(self._delete_path, name, target)
            raise job.exception
        self._state[name].update(state="ready", finished_at=time.time())
        return target

    def _prepare(
        self, name: str, spec: SourceSpec, current: Optional[str], in_use: bool, reuse_only: bool
    ) -> Tuple[str, bool]:
        """Blocking: create adapter_dir, check containment, start clean if the name held another source.

        Returns (target, complete): a complete copy of the same URI is reused as it is (a reload
        after an engine restart must not depend on the store, or on credentials it no longer has).
        """
        try:
            os.makedirs(self.settings.adapter_dir, exist_ok=True)
        except OSError as exc:
            raise write_error(self.settings.adapter_dir, exc) from None
        primary = contained_target(self.settings.adapter_dir, name)
        mine = current if current and owned_by(self.settings.adapter_dir, name, current) else None
        for candidate in (mine, primary):
            if candidate and not os.path.islink(candidate) and _holds(candidate, spec):
                return candidate, True
        if reuse_only:
            raise NotFound(
                f"no complete local copy of {spec.display} for adapter {name}, and its source was stored "
                "without its credentials or signature; load it again",
                param="lora_path",
            )
        target = primary
        if in_use and mine is not None and mine == primary:
            target = f"{primary}{VERSION_MARK}{os.urandom(4).hex()}"
        elif not in_use and mine is not None:
            target = mine  # the adapter's own directory, free while the engine does not serve it
        if os.path.islink(target):
            raise Conflict(f"{target} is a symlink; refusing to download or delete through it", param="lora_name")
        layout = Layout(target)
        marker = os.path.join(layout.meta, SOURCE_MARKER)
        same_source = _read_marker(marker) == spec.display
        if os.path.isdir(target) and not same_source:
            # Another adapter (or another version's URI) used this name: its files must not mix in.
            try:
                import shutil  # worker thread; shutil pulls in bz2 and lzma

                shutil.rmtree(target)
            except OSError as exc:
                raise write_error(target, exc) from None
        layout.ensure()
        # Which source this directory belongs to, so a retry resumes only the same one.
        atomic_write(marker, spec.display.encode("utf-8"))
        return target, False

    async def discard(self, lora_name: str, path: str) -> None:
        """Delete ``path`` if it is a directory materialize made for this name; anything else stays."""
        name = check_name(lora_name)
        await self.context.run_download(self._delete_path, name, path)

    def forget(self, lora_name: str) -> None:
        self._state.pop(lora_name, None)

    async def cleanup(self, lora_name: str, path: Optional[str] = None) -> None:
        """Delete everything downloaded for the name: ``adapter_dir/NAME`` and ``path`` if it is ours."""
        name = check_name(lora_name)
        entry = self._inflight.get(name)
        if entry is not None:
            job = entry[2]
            if job is not None:
                job.cancel.set()
            try:
                await asyncio.wait_for(asyncio.shield(entry[1]), CANCEL_WAIT)
            except (PatioError, DownloadCancelled, asyncio.TimeoutError, asyncio.CancelledError):
                pass
        await self.context.run_download(self._delete, name)
        if path:
            await self.context.run_download(self._delete_path, name, path)
        self._state.pop(name, None)

    def _delete_path(self, name: str, path: str) -> None:
        if owned_by(self.settings.adapter_dir, name, path):
            self._delete(os.path.basename(os.path.abspath(path)))

    def _delete(self, name: str) -> None:
        root = os.path.realpath(self.settings.adapter_dir)
        target = os.path.join(root, name)
        if os.path.islink(target):
            os.unlink(target)  # remove the link itself; never what it points to
            return
        if not os.path.lexists(target):
            return
        if not within(root, os.path.realpath(target)) or os.path.dirname(target) != root:
            raise BadRequest(f"refusing to delete {target}: outside {root}", param="lora_name")
        try:
            if os.path.isdir(target):
                import shutil

                shutil.rmtree(target)  # does not follow symlinks inside the tree
            else:
                os.unlink(target)
        except OSError as exc:
            raise write_error(target, exc) from None

    def status(self, lora_name: str) -> Optional[Dict[str, Any]]:
        state = self._state.get(lora_name)
        if state is None:
            return None
        result = {k: v for k, v in state.items() if k != "job"}
        job = state.get("job")
        if job is not None:
            result["progress"] = job.progress.to_json()
            if job.error:
                result["error"] = job.error
        for key in ("started_at", "finished_at"):
            if isinstance(result.get(key), float):
                result[key] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result[key]))
        return result

    async def stop(self) -> None:
        for _shown, _future, job in list(self._inflight.values()):
            if job is not None:
                job.cancel.set()


def _read_marker(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(MAX_URI_LENGTH * 2)
    except OSError:
        return None


def _holds(path: str, spec: SourceSpec) -> bool:
    """``path`` holds a complete copy of ``spec``'s source."""
    layout = Layout(path)
    return _read_marker(os.path.join(layout.meta, SOURCE_MARKER)) == spec.display and _complete(layout)


def _complete(layout: Layout) -> bool:
    """A manifest is present and every file it lists is on disk with its size."""
    manifest = layout.read_manifest()
    if manifest is None:
        return False
    for entry in layout.manifest_entries().values():
        path = layout.target(entry.path)
        if not os.path.isfile(path) or os.path.getsize(path) != entry.size:
            return False
    return True
