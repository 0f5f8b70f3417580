"""The held set on disk: the adapters Patio holds as loaded (``patio.lora.manager``), as a
snapshot written whole (``patio.files.atomic_write``) plus, for large sets, a journal of the
changes since.  (What the adapters file asks for is the *desired* set: ``patio.lora.desired``.)

The files hold what a reload needs and no more (issue 13 row 15): name, the
path the engine loads, the source *without* userinfo or query string (a
presigned URL's signature is a credential), engine options, and whether the
downloaded copy is Patio's to delete.  Request ``credentials`` are never
written.  An adapter whose source lost its query is reloaded from its local
copy only.  Mode 0600.  Blocking: call from worker threads.

Why a journal: rewriting the whole set on every load made each load cost the
size of the set (with ``--max-adapters 10000``, 16 ms per load at 3,000 adapters
and growing).  A set of at most ``WHOLE_WRITE_MAX`` adapters is still written
whole every time (a few KB); above that a change appends one fsync'd line to
``lora-adapters.journal``, and the snapshot is rewritten (the journal removed)
once the journal holds as many lines as the set has adapters, so each change
costs O(1) amortized.  The snapshot and the journal carry a generation: a
journal left by a crash between a new snapshot and the removal of the old
journal has an older generation and is ignored; a torn last line (a crash mid-
append) is skipped.  Removing an adapter that carried an engine key rewrites
the snapshot at once, so no key outlives its adapter on disk.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from patio import jsontext
from patio.files import atomic_write

STATE_FILE = "lora-adapters.json"
JOURNAL_FILE = "lora-adapters.journal"
STATE_VERSION = 1
# The state files list adapters (at most --max-adapters, 100,000); a larger file is not ours.
MAX_STATE_BYTES = 64 * 1024 * 1024
# Sets up to this size are written whole on every change; larger ones journal.
WHOLE_WRITE_MAX = 128
# Written into the file, so whoever opens it knows what it holds and what it leaves out.
NOTE = (
    "The LoRA adapters Patio holds as loaded, reloaded when the engine loses them. Sources are stored without "
    "userinfo or query strings (signatures); download credentials are never stored; a source stored "
    "that way is reloaded from its local copy at path. engine_key (mode 0600 file) is the engine's own API "
    "key a caller gave for an adapter (AIBrix's additional_config api-key), for reloads after an engine restart. "
    "credentials_secret is the NAME of a mounted secret (never its values), read again when a reload downloads. "
    "Changes since this snapshot may be in lora-adapters.journal (same generation), one JSON object a line."
)
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class HeldSetFile:
    """The snapshot and journal of one state directory.  Not thread-safe: callers serialise."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.snapshot_path = os.path.join(state_dir, STATE_FILE)
        self.journal_path = os.path.join(state_dir, JOURNAL_FILE)
        self.generation = 0
        self.journal_lines = 0
        self._journal_open = False  # the journal on disk has this generation's header
        self._known = False  # generation read (or written) by this process
        self._torn = False  # the journal ends mid-line: the next change rewrites the snapshot

    # -- reading ----------------------------------------------------------------------
    def read(self) -> List[Dict[str, Any]]:
        """The saved set (snapshot + journal); an absent snapshot is an empty set; a corrupt one
        raises ValueError."""
        data = _read_json(self.snapshot_path)
        if data is None:
            self.generation, self.journal_lines, self._journal_open, self._known = 0, 0, False, True
            return []
        if (
            not isinstance(data, dict)
            or data.get("version") != STATE_VERSION
            or not isinstance(data.get("adapters"), list)
        ):
            raise ValueError(f"{self.snapshot_path} is not a Patio adapter state file")
        generation = data.get("generation", 0)
        self.generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
        adapters: Dict[str, Dict[str, Any]] = {}
        for item in data["adapters"]:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                adapters[item["name"]] = item
        self.journal_lines, self._journal_open = self._replay(adapters)
        self._known = True
        return list(adapters.values())

    def _replay(self, adapters: Dict[str, Dict[str, Any]]) -> Tuple[int, bool]:
        """Apply the journal's changes to ``adapters``: (lines it held, whether it belongs to this
        snapshot).  A journal of another generation (a crash after a new snapshot) changes nothing."""
        lines, self._torn = _journal_lines(self.journal_path)
        if not lines or _header_generation(lines[0]) != self.generation:
            return 0, False
        applied = 0
        for line in lines[1:]:
            try:
                change = jsontext.loads(line)
            except ValueError:
                continue  # a torn last line (a crash mid-append), or damage: the rest still counts
            if not isinstance(change, dict):
                continue
            put, gone = change.get("put"), change.get("del")
            if isinstance(put, dict) and isinstance(put.get("name"), str):
                adapters[put["name"]] = put
            elif isinstance(gone, str):
                adapters.pop(gone, None)
            applied += 1
        return applied, True

    # -- writing ----------------------------------------------------------------------
    def needs_snapshot(self, set_size: int, scrub: bool = False) -> bool:
        """Whether the next change should rewrite the snapshot rather than append."""
        if scrub or self._torn or not self._known or set_size <= WHOLE_WRITE_MAX:
            return True
        return self.journal_lines >= set_size

    def write_snapshot(self, adapters: List[Dict[str, Any]]) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        generation = self.generation + 1
        document = {"version": STATE_VERSION, "generation": generation, "note": NOTE, "adapters": adapters}
        atomic_write(self.snapshot_path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"), mode=0o600)
        self.generation, self.journal_lines, self._journal_open, self._known = generation, 0, False, True
        self._torn = False
        try:
            os.unlink(self.journal_path)  # its changes are in the snapshot now
        except FileNotFoundError:
            pass

    def append(self, changes: Mapping[str, Optional[Dict[str, Any]]]) -> None:
        """One journal line per change: the adapter's saved form, or None for "removed"."""
        lines = [
            json.dumps({"put": saved} if saved is not None else {"del": name}, sort_keys=True) + "\n"
            for name, saved in changes.items()
        ]
        data = "".join(lines).encode("utf-8")
        if not self._journal_open:
            header = json.dumps({"version": STATE_VERSION, "generation": self.generation}) + "\n"
            atomic_write(self.journal_path, header.encode("utf-8") + data, mode=0o600)
            self._journal_open = True
        else:
            fd = os.open(self.journal_path, _APPEND_FLAGS)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        self.journal_lines += len(lines)


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_STATE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_STATE_BYTES} bytes")
    try:
        return jsontext.loads(raw)
    except jsontext.JsonTooDeep:
        raise ValueError(f"{path} is nested too deeply to be a Patio adapter state file") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _journal_lines(path: str) -> Tuple[List[bytes], bool]:
    """The journal's lines, and whether it ends mid-line (appending there would merge two lines)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return [], False
    raw = raw[:MAX_STATE_BYTES]
    return raw.splitlines(), bool(raw) and not raw.endswith(b"\n")


def _header_generation(line: bytes) -> Optional[int]:
    try:
        header = jsontext.loads(line)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("version") != STATE_VERSION:
        return None
    generation = header.get("generation")
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else None


def write_held_set(state_dir: str, adapters: List[Dict[str, Any]]) -> None:
    """Replace the saved set whole (a fresh snapshot; any journal is dropped)."""
    store = HeldSetFile(state_dir)
    try:
        store.read()
    except ValueError:
        pass  # an unreadable file is replaced
    store.write_snapshot(adapters)


def read_held_set(state_dir: str) -> List[Dict[str, Any]]:
    """The saved set; an absent file is an empty set; a corrupt one raises ValueError."""
    return HeldSetFile(state_dir).read()
