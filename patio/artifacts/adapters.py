"""The LoRA delegation seam: remote adapter URI -> a local directory the engine can load.

Handed to the LoRA component by ``build_app``.  A LoRA load crosses it twice, each time
once: the API checks the download half of the request (``plan``, before anything
starts), and the manager fetches (``materialize``, with that plan).

    is_remote(source) -> bool                         needs materialize()? (remote stores and pvc://)
    await plan(lora_name, ...) -> FetchPlan           credentials (mounted secret, request, AIBrix's
                                                      additional_config, Kthena's config) and a named
                                                      target, checked before anything is downloaded
    await materialize(lora_name, source, credentials, current=, in_use=, reuse_only=, plan=) -> local path
    await discard(lora_name, path)                    delete one directory materialize made
    await cleanup(lora_name, path=None)               delete what materialize downloaded for the name
    forget(lora_name)                                 drop the download status of a name
    status(lora_name) -> Optional[dict]               download state for GET /v1/lora_adapters
    is_secret_name(name) -> bool                      a credentials_secret name plan() would read
    KTHENA_MAX_WORKERS                                Kthena's parallel transfers when it names none

Downloads land in ``adapter_dir/NAME``, or, when the engine serves the name from
that directory now (``in_use``: an in-place reload), in a fresh sibling
``adapter_dir/NAME~TOKEN`` (``~`` is not allowed in names, so no adapter owns
it), which the LoRA manager makes the adapter's directory once the engine has
confirmed it; the directory in use is never written or deleted here (a failed
reload must leave the loaded adapter intact).  The name must be a plain directory name, the resolved path must stay
inside the adapter dir, and an existing symlink there is refused rather than
written (or deleted) through.  Concurrent materialize calls for one name share
one download.  ``pvc://`` resolves in place (no copy) and is never deleted.
A directory the caller named (Kthena's ``output_dir``, AIBrix's ``local_dir``)
must lie inside the adapter dir or the models root; it is never emptied, and it
is deleted on unload only when asked and only while it holds Patio's marker.
All disk work runs in worker threads.
"""

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from patio.artifacts.auth.credentials import RequestCredentials, merge_credentials, parse_config, parse_credentials
from patio.artifacts.auth.secrets import SECRET_NAME, read_secret
from patio.artifacts.errors import DownloadCancelled
from patio.artifacts.fetch.manifest import Layout, atomic_write, within, write_error
from patio.artifacts.jobs import Downloads
from patio.artifacts.settings import KTHENA_MAX_WORKERS as KTHENA_MAX_WORKERS  # part of the seam
from patio.artifacts.settings import ArtifactSettings
from patio.artifacts.stores.local import resolve_local
from patio.artifacts.targets import confine
from patio.artifacts.uri import MAX_URI_LENGTH, SourceSpec, is_materialized, parse_uri
from patio.component import AppContext
from patio.errors import BadRequest, Conflict, NotFound, PatioError
from patio.validate import check_name as _check_name
from patio.validate import is_clean

# Name of the file in DIR/.patio/ that records which URI the directory holds.
SOURCE_MARKER = "source"
# Name of the file in DIR/.patio/ that says Patio created DIR (a named target): only then may it delete it.
CREATED_MARKER = "created-by-patio"
# Seconds cleanup waits for a cancelled download to stop before deleting.
CANCEL_WAIT = 30.0
# Separates a name from the token of a replacement download's directory; never in a name.
VERSION_MARK = "~"


@dataclass(frozen=True)
class FetchPlan:
    """How to fetch one adapter, checked before any download starts.  ``repr`` shows no secret."""

    credentials: RequestCredentials = field(default_factory=RequestCredentials)
    target: Optional[str] = None  # a directory already confined to a root; None: adapter_dir/NAME
    num_threads: Optional[int] = None


def check_name(lora_name: Any) -> str:
    """AIBrix's adapter name rule (``patio.validate``): one plain directory below adapter_dir."""
    return _check_name(lora_name, "lora_name")


def is_secret_name(value: str) -> bool:
    """A name ``read_secret`` would accept (it checks again, and confines the path, when it reads)."""
    return is_clean(value) and bool(SECRET_NAME.match(value)) and ".." not in value


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
            return isinstance(source, str) and is_materialized(source)
        return spec.remote or spec.pvc

    async def plan(
        self,
        lora_name: str,
        *,
        credentials: Optional[Mapping[str, Any]] = None,
        credentials_secret: Optional[str] = None,
        additional_config: Optional[Mapping[str, Any]] = None,
        config: Any = None,
        output_dir: Optional[str] = None,
        local_dir: Optional[str] = None,
        num_threads: Optional[int] = None,
    ) -> FetchPlan:
        """Everything a load needs before its download starts, or the caller's error now.

        Credentials layer as AIBrix's runtime does (``artifact_service.py``): the mounted
        secret, then the request's ``credentials`` (which win over it), then
        ``additional_config`` on top.  Kthena's ``config`` is one more request layer; its
        environment fall-backs are the sources' own (HF_AUTH_TOKEN, MS_TOKEN, ACCESS_KEY, ...).
        """
        check_name(lora_name)
        layers: List[Tuple[str, Any, bool]] = []
        if credentials_secret is not None:
            secret = await self.context.run_blocking(read_secret, self.settings.credentials_dir, credentials_secret)
            layers.append(("credentials_secret", secret, False))
        layers.append(("config", parse_config(config), True))
        layers.append(("credentials", credentials, True))
        # additional_config also carries the engine's api-key and controller settings: known keys only.
        layers.append(("additional_config", dict(additional_config or {}), False))
        creds = merge_credentials(layers)
        target: Optional[str] = None
        if output_dir is not None:
            roots = (self.settings.adapter_dir, self.settings.models_root)
            target = await self.context.run_blocking(confine, output_dir, roots, "output_dir", roots[0])
        elif local_dir is not None:
            # AIBrix's local_dir is where adapters go below: Patio's adapter dir, or a directory inside it.
            root = os.path.realpath(self.settings.adapter_dir)
            given = os.path.realpath(local_dir) if isinstance(local_dir, str) and local_dir.strip() else ""
            if given != root:
                given = await self.context.run_blocking(
                    confine, local_dir, (self.settings.adapter_dir,), "local_dir", root
                )
            target = None if given == root else os.path.join(given, lora_name)
        return FetchPlan(creds, target, num_threads)

    async def materialize(
        self,
        lora_name: str,
        source: str,
        credentials: Optional[Dict[str, Any]] = None,
        *,
        current: Optional[str] = None,
        in_use: bool = False,
        reuse_only: bool = False,
        plan: Optional[FetchPlan] = None,
    ) -> str:
        """A local directory holding ``source`` for ``lora_name``.

        ``current``: the adapter's directory now; reused when it holds a complete copy of the
        same source.  ``in_use``: the engine serves from ``current``, so it is never written:
        a download goes to a fresh sibling.  ``reuse_only``: no download at all (the source
        was read back without its secrets); 404 when no complete copy is on disk.  ``plan``:
        credentials and a named target from ``plan()`` (then ``credentials`` is not used).
        """
        name = check_name(lora_name)
        spec = parse_uri(source, param="lora_path", bare_hub=False)
        creds = plan.credentials if plan is not None else parse_credentials(credentials)
        explicit = plan.target if plan is not None else None
        if spec.kind == "local" and explicit is None:
            # pvc:// and absolute paths are read in place by the engine: resolve, never copy.
            return await self.context.run_blocking(resolve_local, spec, self.settings.pvc_root, "lora_path")
        where = (current, in_use, reuse_only, explicit)
        threads = plan.num_threads if plan is not None else None
        running = self._inflight.get(name)
        if running is not None:
            shown, shared, _job = running
            if shown != spec.display:
                raise Conflict(f"adapter {name} is being downloaded from {shown}; unload it or wait", param="lora_name")
            return await asyncio.shield(shared)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[name] = (spec.display, future, None)
        try:
            path = await self._download(name, spec, creds, where, threads)
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

    async def _download(
        self,
        name: str,
        spec: SourceSpec,
        creds: Any,
        where: Tuple[Optional[str], bool, bool, Optional[str]],
        threads: Optional[int],
    ) -> str:
        target, complete = await self.context.run_download(self._prepare, name, spec, *where)
        if complete:
            self._state[name] = {"state": "ready", "source": spec.display, "local_path": target, "reused": True}
            return target
        self._state[name] = {
            "state": "downloading",
            "source": spec.display,
            "local_path": target,
            "started_at": time.time(),
        }
        options = self.settings.fetch_options(num_threads=threads, allow_suffixes=(), force=False)
        job, _created = self.downloads.submit(spec, target, creds, options)
        entry = self._inflight.get(name)
        if entry is not None:
            self._inflight[name] = (entry[0], entry[1], job)
        self._state[name]["job"] = job
        assert job.future is not None
        await asyncio.shield(job.future)
        if job.exception is not None:
            self._state[name].update(state="failed", error=job.error)
            current, in_use, _reuse_only, _explicit = where
            if in_use and target != current:
                # A replacement that failed: its directory is nobody's (the one in use is untouched).
                await self.context.run_download(self._delete_path, name, target)
            raise job.exception
        self._state[name].update(state="ready", finished_at=time.time())
        return target

    def _prepare(
        self,
        name: str,
        spec: SourceSpec,
        current: Optional[str],
        in_use: bool,
        reuse_only: bool,
        explicit: Optional[str] = None,
    ) -> Tuple[str, bool]:
        """Blocking: create adapter_dir, check containment, start clean if the name held another source.

        Returns (target, complete): a complete copy of the same URI is reused as it is (a reload
        after an engine restart must not depend on the store, or on credentials it no longer has).
        """
        try:
            os.makedirs(self.settings.adapter_dir, exist_ok=True)
        except OSError as exc:
            raise write_error(self.settings.adapter_dir, exc) from None
        if explicit is not None:
            return self._prepare_named(spec, explicit, current if in_use else None)
        primary = contained_target(self.settings.adapter_dir, name)
        mine = current if current and owned_by(self.settings.adapter_dir, name, current) else None
        if mine is None and current and self._named(current) and _holds(current, spec):
            return current, True  # a named directory (output_dir) an earlier load completed
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

    def _named(self, path: str) -> bool:
        """``path`` lies inside the adapter dir or the models root (a target a caller named)."""
        try:
            confine(path, (self.settings.adapter_dir, self.settings.models_root), "path", "/")
        except BadRequest:
            return False
        return True

    def _prepare_named(self, spec: SourceSpec, target: str, serving: Optional[str]) -> Tuple[str, bool]:
        """A directory the caller named: reused when complete, never emptied, never the one in use."""
        if _holds(target, spec):
            return target, True
        if serving is not None and os.path.realpath(serving) == os.path.realpath(target):
            raise Conflict(f"{target} is the directory the engine serves now; name another", param="output_dir")
        layout = Layout(target)
        marker = os.path.join(layout.meta, SOURCE_MARKER)
        held = _read_marker(marker)
        if held is not None and held != spec.display:
            raise Conflict(f"{target} holds a download of {held}; name another directory", param="output_dir")
        existed = os.path.lexists(target)
        try:
            layout.ensure()
            if not existed:
                atomic_write(os.path.join(layout.meta, CREATED_MARKER), b"")
            atomic_write(marker, spec.display.encode("utf-8"))
        except OSError as exc:
            raise write_error(target, exc) from None
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
        elif self._named(path) and not os.path.islink(path) and os.path.isfile(_created_marker_of(path)):
            # A named target Patio created for its download (its marker says so); a directory the
            # caller had before, and anything else, is never deleted.
            try:
                import shutil

                shutil.rmtree(path)
            except OSError as exc:
                raise write_error(path, exc) from None

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
            result["threads"] = job.threads
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


def _created_marker_of(path: str) -> str:
    return os.path.join(Layout(path).meta, CREATED_MARKER)


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
