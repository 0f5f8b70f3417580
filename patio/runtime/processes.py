"""Engine processes: started in a session of their own, found again, stopped as a group.

Each engine starts with ``start_new_session=True``: its API server leads a process group
that its workers join, so one ``killpg`` reaches every process the engine made, even
after the leader died and left its workers running (AIBrix ``_terminate_stale_process_group``
names the same trap: vLLM's EngineCore outlives its parent holding accelerator memory).

Liveness reads ``/proc``: a PID is the same process only while its start time (field 22
of ``/proc/PID/stat``) is unchanged, and a zombie is not alive.  A group is alive while
any non-zombie process carries its id.  After Patio's own restart the engines it owned
are found by the markers in their environment (``patio.runtime.engines``), so an engine
whose PID never reached the registry is still found, never started twice.

Blocking: call from worker threads.
"""

import errno
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

PROC = "/proc"
# An environ larger than this is not an engine's (and is not read further).
MAX_ENVIRON_BYTES = 1024 * 1024
# After SIGKILL a group takes this long at most to disappear (the kernel reaps at once;
# this covers a process stuck in uninterruptible I/O a little while).
KILL_WAIT = 5.0


@dataclass(frozen=True)
class Stat:
    pid: int
    state: str
    ppid: int
    pgid: int
    start_time: str


def read_stat(pid: int, proc: str = PROC) -> Optional[Stat]:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw.rpartition(")")[2].split()
    if len(fields) < 20:
        return None
    try:
        return Stat(pid=pid, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]), start_time=fields[19])
    except ValueError:
        return None


def start_time(pid: int, proc: str = PROC) -> Optional[str]:
    stat = read_stat(pid, proc)
    return None if stat is None else stat.start_time


def _pids(proc: str) -> Iterator[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def is_alive(pid: Optional[int], expected_start: Optional[str], proc: str = PROC) -> bool:
    """The process ``pid`` runs, is no zombie, and is the one that started at ``expected_start``."""
    if not pid or pid <= 0:
        return False
    stat = read_stat(pid, proc)
    if stat is None:
        return False
    if stat.state in ("Z", "X"):
        return False
    return expected_start is None or stat.start_time == expected_start


def group_members(pgid: Optional[int], proc: str = PROC) -> List[int]:
    """Processes of group ``pgid`` that are not zombies."""
    if not pgid or pgid <= 1:
        return []
    members = []
    for pid in _pids(proc):
        stat = read_stat(pid, proc)
        if stat is not None and stat.pgid == pgid and stat.state not in ("Z", "X"):
            members.append(pid)
    return members


def read_environ(pid: int, proc: str = PROC) -> Optional[Dict[str, str]]:
    try:
        with open(f"{proc}/{pid}/environ", "rb") as handle:
            raw = handle.read(MAX_ENVIRON_BYTES + 1)
    except OSError:  # gone, or another user's process
        return None
    if len(raw) > MAX_ENVIRON_BYTES:
        return None
    env: Dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


@dataclass(frozen=True)
class Marked:
    pid: int
    pgid: int
    start_time: str
    model: str
    launch: str


def find_marked(owner_key: str, owner: str, model_key: str, launch_key: str, proc: str = PROC) -> List[Marked]:
    """Every live process whose environment says ``owner_key=owner`` (an engine of this Patio)."""
    found = []
    needle = f"{owner_key}={owner}".encode()
    for pid in _pids(proc):
        if pid == os.getpid():
            continue
        try:
            with open(f"{proc}/{pid}/environ", "rb") as handle:
                raw = handle.read(MAX_ENVIRON_BYTES + 1)
        except OSError:
            continue
        if needle not in raw:  # cheap test before parsing
            continue
        env = read_environ(pid, proc)
        stat = read_stat(pid, proc)
        if env is None or stat is None or stat.state in ("Z", "X") or env.get(owner_key) != owner:
            continue
        found.append(Marked(pid, stat.pgid, stat.start_time, env.get(model_key, ""), env.get(launch_key, "")))
    return found


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: str) -> "subprocess.Popen[bytes]":
    """Start ``argv`` (no shell) in a new session, stdout and stderr appended to ``log_path``.

    The engine writes its log file itself, never through Patio: an engine must outlive a
    Patio that is killed (a pipe to a dead reader would kill it at its next log line).
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to group ``pgid``; False when the group no longer exists."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EngineProcess:
    """The leader of one engine's process group: launched by this Patio (``popen``) or adopted."""

    def __init__(self, pid: int, start: Optional[str], popen: "Optional[subprocess.Popen[bytes]]" = None) -> None:
        self.pid = pid
        self.start_time = start
        self.popen = popen

    @property
    def pgid(self) -> int:
        return self.pid  # start_new_session: the leader's PID is the group's id

    def alive(self, proc: str = PROC) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None  # also reaps: a dead child is no zombie here
        return is_alive(self.pid, self.start_time, proc)

    def returncode(self) -> Optional[int]:
        return None if self.popen is None else self.popen.returncode

    def reap(self) -> None:
        if self.popen is not None:
            self.popen.poll()


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "the engine process exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the engine process was killed by {name}"
    return f"the engine process exited with status {code}"


def port_free(host: str, port: int) -> bool:
    """Whether an engine could bind ``host:port`` now (with SO_REUSEADDR, as uvicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
