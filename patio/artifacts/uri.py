"""Artifact URIs -> ``SourceSpec``: which store, which bucket/repo/path.  Pure parsing.

Accepted forms (the incumbents' spellings):

    s3://bucket/prefix   tos://bucket/prefix   obs://bucket/prefix   gs:// (or gcs://) bucket/prefix
    hf://org/name  huggingface://org/name  hf://datasets/org/name@rev/sub/dir  org/name[@rev]
    ms:// (or modelscope://) org/name[@rev][/sub/dir]   (ModelScope, as Kthena names it)
    http(s)://host/path/file
    pvc://path/under/the/mount   /absolute/local/path   file:///absolute/local/path

Nothing here touches the network or the disk; ``display`` forms never carry
userinfo or query strings (presigned URLs put their signature there).

Credentials in a URI (``s3://KEY:SECRET@bucket``, ``https://user:pw@host``) are
refused, never silently dropped, and no message quotes them (they would reach logs,
answers and the state file): they go in the request's ``credentials`` or the environment.  A bare
``org/name`` is a HuggingFace repo id only where the field cannot be a local
path (``bare_hub=True``: the download API's ``model_uri`` and the CLI, as in
AIBrix's downloader); LoRA sources name the Hub explicitly (``hf://``) and a
relative path there is refused (it would name the engine's working directory).
"""

import re
import urllib.parse
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from patio.errors import BadRequest
from patio.validate import check_source

# The one scheme table: spelling -> (kind, label).  ``kind`` picks the parser and the store
# (``gcs`` is AIBrix's downloader's other name for ``gs``, ``modelscope`` Kthena's for ``ms``);
# ``label`` is what metrics show (``patio_lora_adapter_info{source_scheme}``).  Every other
# list of schemes (the LoRA manager's, the adapters seam's, the metrics') is derived from it.
SCHEMES: Mapping[str, Tuple[str, str]] = {
    "s3": ("s3", "s3"),
    "tos": ("tos", "tos"),
    "obs": ("obs", "obs"),
    "gs": ("gs", "gs"),
    "gcs": ("gs", "gs"),
    "hf": ("hf", "hf"),
    "huggingface": ("hf", "hf"),
    "ms": ("ms", "ms"),
    "modelscope": ("ms", "ms"),
    "http": ("http", "http"),
    "https": ("http", "https"),
    "pvc": ("pvc", "pvc"),
    "file": ("file", "file"),
}
BUCKET_SCHEMES = {s: kind for s, (kind, _label) in SCHEMES.items() if kind in ("s3", "tos", "obs", "gs")}
HF_SCHEMES = tuple(s for s, (kind, _label) in SCHEMES.items() if kind == "hf")
MS_SCHEMES = tuple(s for s, (kind, _label) in SCHEMES.items() if kind == "ms")
# Spellings whose sources Patio materializes before an engine reads them: remote stores, and
# pvc:// (resolved under --pvc-root).  file:// and plain paths are the engine's to read.
MATERIALIZED_SCHEMES = frozenset(s for s, (kind, _label) in SCHEMES.items() if kind != "file")
REMOTE_KINDS = frozenset(("s3", "tos", "obs", "gs", "hf", "ms", "http"))
HF_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}

# One segment of a HuggingFace repo id (org or name); the Hub allows these characters.
_HF_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HF_BARE = re.compile(rf"^(?P<repo>{_HF_SEGMENT}/{_HF_SEGMENT})(?:@(?P<rev>[^/@\s]+))?$")
_HF_SEGMENT_RE = re.compile(rf"^{_HF_SEGMENT}$")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,221}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Longest URI accepted; a request field, not a file name.
MAX_URI_LENGTH = 4096


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # s3, tos, obs, gs, hf, ms, http, local
    uri: str
    bucket: str = ""
    prefix: str = ""
    repo_id: str = ""
    repo_type: str = "model"
    revision: Optional[str] = None
    subpath: str = ""
    url: str = ""
    path: str = ""
    pvc: bool = False

    @property
    def remote(self) -> bool:
        return self.kind in REMOTE_KINDS

    @property
    def display(self) -> str:
        return display_uri(self.uri)

    @property
    def default_name(self) -> str:
        """A directory name for this artifact (AIBrix: the last path component)."""
        if self.kind in ("hf", "ms"):
            base = self.repo_id.split("/")[-1]
        elif self.kind == "http":
            base = urllib.parse.urlsplit(self.url).path.rstrip("/").split("/")[-1]
        elif self.kind == "local":
            base = self.path.rstrip("/").split("/")[-1]
        else:
            base = self.prefix.rstrip("/").split("/")[-1] or self.bucket
        return base or "model"


def scheme_of(source: str) -> Optional[str]:
    """The table's spelling ``source`` starts with (lower-cased), or None (a path, or an unknown scheme)."""
    match = _SCHEME_RE.match(source.strip()) if isinstance(source, str) else None
    if match is None:
        return None
    scheme = match.group(1).lower()
    return scheme if scheme in SCHEMES else None


def is_materialized(source: str) -> bool:
    """True when ``source`` names something Patio fetches or resolves first (a store, or pvc://)."""
    return scheme_of(source) in MATERIALIZED_SCHEMES


def scheme_label(source: str) -> str:
    """The metrics label of a source: the table's label, ``hf`` for a bare ``org/name``, ``local``
    for a path, ``other`` for a scheme Patio does not know."""
    scheme = scheme_of(source)
    if scheme is not None:
        return SCHEMES[scheme][1]
    if "://" in source:
        return "other"
    return "hf" if source and not source.startswith("/") and source.count("/") == 1 else "local"


def display_uri(uri: str) -> str:
    """The URI without userinfo and query: safe for logs and status answers."""
    if "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    suffix = "?…" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + suffix


def _quoted(text: str) -> str:
    """``text`` quoted for a message, unless it could hold a secret (userinfo, a query, a token)."""
    return "(not shown)" if any(ch in text for ch in "?#@:=") or len(text) > 256 else repr(text)


def parse_uri(raw: str, *, param: str = "model_uri", bare_hub: bool = True) -> SourceSpec:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest(f"{param} must be a non-empty string", param=param)
    uri = raw.strip()
    if len(uri) > MAX_URI_LENGTH:
        raise BadRequest(f"{param} is longer than {MAX_URI_LENGTH} characters", param=param)
    check_source(uri, param)  # no control characters, lone surrogates or userinfo
    match = _SCHEME_RE.match(uri)
    if match is None:
        return _parse_schemeless(uri, param, bare_hub)
    scheme = match.group(1).lower()
    rest = uri[match.end() :]
    if scheme in BUCKET_SCHEMES:
        return _parse_bucket(BUCKET_SCHEMES[scheme], uri, rest, param)
    if scheme in HF_SCHEMES:
        return _parse_hf(uri, rest, param)
    if scheme in MS_SCHEMES:
        spec = _parse_hf(uri, rest, param, types=False)
        if "/" not in spec.repo_id:
            raise BadRequest(f"{param} must name a ModelScope repo as ms://org/name", param=param)
        return SourceSpec(kind="ms", uri=uri, repo_id=spec.repo_id, revision=spec.revision, subpath=spec.subpath)
    if scheme in ("http", "https"):
        parts = urllib.parse.urlsplit(uri)
        if not parts.hostname:
            raise BadRequest(f"{param} has no host: {display_uri(uri)}", param=param)
        if not parts.path.strip("/"):
            raise BadRequest(f"{param} must name a file, got {display_uri(uri)}", param=param)
        return SourceSpec(kind="http", uri=uri, url=uri)
    if scheme == "pvc":
        path = rest.strip("/")
        if not path:
            raise BadRequest(f"{param} pvc:// needs a path", param=param)
        return SourceSpec(kind="local", uri=uri, path=path, pvc=True)
    if scheme == "file":
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise BadRequest(f"{param} file:// must be local, got host {parts.netloc!r}", param=param)
        return SourceSpec(kind="local", uri=uri, path=urllib.parse.unquote(parts.path))
    shown = repr(scheme) if len(scheme) <= 32 else "given"
    raise BadRequest(f"{param} scheme {shown} is not supported ({', '.join(SCHEMES)})", param=param)


def _parse_schemeless(uri: str, param: str, bare_hub: bool) -> SourceSpec:
    if uri.startswith("/"):
        return SourceSpec(kind="local", uri=uri, path=uri)
    bare = _HF_BARE.match(uri) if bare_hub else None
    if bare is not None:
        return SourceSpec(kind="hf", uri=uri, repo_id=bare.group("repo"), revision=bare.group("rev"))
    # The value is not quoted: a mistyped URI may hold a secret.
    if bare_hub:
        raise BadRequest(
            f"{param} is neither a URI, an absolute path, nor a HuggingFace repo id (org/name)", param=param
        )
    raise BadRequest(
        f"{param} must be an absolute path or a URI; relative paths are refused "
        "(name a HuggingFace repo as hf://org/name)",
        param=param,
    )


def _parse_bucket(kind: str, uri: str, rest: str, param: str) -> SourceSpec:
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise BadRequest(f"{param} has an invalid bucket name {_quoted(bucket)}", param=param)
    if "?" in prefix or "#" in prefix:
        # Keys may hold '?', but a URI with one is far more often a pasted presigned URL.
        raise BadRequest(f"{param} must not carry a query or fragment", param=param)
    return SourceSpec(kind=kind, uri=uri, bucket=bucket, prefix=prefix.lstrip("/"))


def _parse_hf(uri: str, rest: str, param: str, types: bool = True) -> SourceSpec:
    segments = [s for s in rest.split("/") if s != ""]
    repo_type = "model"
    if types and segments and segments[0] in HF_REPO_TYPES:
        repo_type = HF_REPO_TYPES[segments.pop(0)]
    if not segments:
        raise BadRequest(f"{param} names no HuggingFace repo", param=param)
    # org/name@rev/sub/dir, or a legacy single-segment id (gpt2@rev/...).
    revision: Optional[str] = None
    repo_parts = []
    for index, segment in enumerate(segments[:2]):
        name, at, rev = segment.partition("@")
        repo_parts.append(name)
        if at:
            revision = urllib.parse.unquote(rev)
            segments = segments[index + 1 :]
            break
    else:
        segments = segments[len(repo_parts) :]
    for part in repo_parts:
        if not _HF_SEGMENT_RE.match(part):
            raise BadRequest(f"{param} has an invalid HuggingFace repo id segment {_quoted(part)}", param=param)
    if revision is not None and not revision:
        raise BadRequest(f"{param} has an empty revision after '@'", param=param)
    subpath = "/".join(segments)
    if any(s in (".", "..") for s in segments):
        raise BadRequest(f"{param} sub-path must not contain '.' or '..'", param=param)
    return SourceSpec(
        kind="hf", uri=uri, repo_id="/".join(repo_parts), repo_type=repo_type, revision=revision, subpath=subpath
    )
