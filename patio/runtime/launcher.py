"""Start, watch and stop engine processes for the runtime: the blocking half of the supervisor.

What "the engine of model M" means here: every live process whose environment carries
this Patio's owner marker and ``M`` (``patio.runtime.engines``).  Workers inherit the
markers, so a stop reaches every process the engine made, in its process group or not,
and a launch first removes whatever an earlier launch of M left: one engine per model,
hence one per port.  A group is signalled only while one of its members is marked as
M's (a process group id is reused once its last member is gone).

Blocking: run every method in a worker thread.
"""

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from patio.errors import InternalError
from patio.runtime import enginelog, engines, processes
from patio.runtime.processes import EngineProcess, Marked
from patio.runtime.records import ModelRecord
from patio.runtime.settings import RuntimeSettings

log = logging.getLogger("patio.runtime")

# Asks the engine's own Python whether vLLM can sleep on this platform: the function vLLM
# checks before it accepts --enable-sleep-mode (vllm/platforms/interface.py
# is_sleep_mode_available: CUDA, ROCm and XPU; not CPU).
SLEEP_PROBE = (
    "from vllm.platforms import current_platform as p\n"
    "print('patio-sleep-mode=%d' % bool(p.is_sleep_mode_available()))\n"
)
SLEEP_PROBE_MARK = "patio-sleep-mode="
# Importing vLLM takes seconds (and imports torch); on a loaded node, minutes.
SLEEP_PROBE_TIMEOUT = 300.0
MAX_PROBE_OUTPUT = 64 * 1024
WATCH_POLL = 0.05
STOP_POLL = 0.1


class LaunchFailed(InternalError):
    """The engine could not be started, or exited at once (AIBrix answers 500)."""

    error_type = "engine_start_failed"


class Launcher:
    def __init__(self, settings: RuntimeSettings, environ: Mapping[str, str], proc: str = processes.PROC) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.proc = proc
        self.owner = engines.owner_id(os.path.realpath(settings.registry_path))
        self._probed: Dict[str, bool] = {}
        self._probe_lock = threading.Lock()

    # -- finding the engines ----------------------------------------------------------------
    def marked(self) -> List[Marked]:
        return processes.find_marked(engines.OWNER_ENV, self.owner, engines.MODEL_ENV, engines.LAUNCH_ENV, self.proc)

    def marked_for(self, model_name: str) -> List[Marked]:
        return [m for m in self.marked() if m.model == model_name]

    # -- what the platform can do -------------------------------------------------------------
    def sleep_mode_available(self, engine: str) -> Tuple[bool, str]:
        """Whether engines of this kind start able to sleep, and why not (probed once per Python)."""
        mode = self.settings.sleep_mode
        if mode == "off":
            return False, "sleep mode is off (PATIO_RUNTIME_SLEEP_MODE=off)"
        if mode == "on" or engine != "vllm":
            # SGLang: --enable-memory-saver, as AIBrix's launcher always passes it.
            return True, ""
        with self._probe_lock:
            python = self.settings.python
            if python not in self._probed:
                self._probed[python] = self._probe(python)
            available = self._probed[python]
        if available:
            return True, ""
        return False, "vLLM has no sleep mode on this platform (is_sleep_mode_available() is false: CPU)"

    def _probe(self, python: str) -> bool:
        env = engines.environment(
            self.environ,
            kind=engines.VLLM,
            owner="",
            model_name="",
            launch_id="probe",
            ipc_name="probe",
            kvcached=False,
            credentials=(),
        )
        try:
            done = subprocess.run(
                [python, "-c", SLEEP_PROBE],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=SLEEP_PROBE_TIMEOUT,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise LaunchFailed(f"{python} did not import vLLM within {SLEEP_PROBE_TIMEOUT:g}s") from None
        except OSError as exc:
            raise LaunchFailed(f"cannot run the engine's Python {python}: {exc.strerror or exc}") from None
        for line in done.stdout[:MAX_PROBE_OUTPUT].decode("utf-8", "replace").splitlines():
            if line.startswith(SLEEP_PROBE_MARK):
                return line[len(SLEEP_PROBE_MARK) :].strip() == "1"
        tail = [
            line for line in done.stderr[-MAX_PROBE_OUTPUT:].decode("utf-8", "replace").splitlines() if line.strip()
        ]
        why = tail[-1][: enginelog.MAX_EXCERPT] if tail else f"exit status {done.returncode}"
        raise LaunchFailed(f"{python} cannot import vLLM: {why} (set PATIO_RUNTIME_PYTHON to the engine's Python)")

    # -- launch ----------------------------------------------------------------------------
    def launch(self, record: ModelRecord, credentials: Sequence[Tuple[str, str]]) -> EngineProcess:
        """Start the engine of ``record`` (after removing any remains of an earlier launch)."""
        self.stop_model(record.model_name, grace=0.0)
        kind = engines.KINDS[record.engine]
        argv = engines.argv(
            kind,
            self.settings.python,
            record.model_path,
            record.model_name,
            self.settings.engine_host,
            record.port,
            record.sleep_capable,
            record.args,
        )
        env = engines.environment(
            self.environ,
            kind=kind,
            owner=self.owner,
            model_name=record.model_name,
            launch_id=record.launch_id,
            ipc_name=record.ipc_name,
            kvcached=self.settings.kvcached,
            credentials=credentials,
        )
        if not record.log_path:
            record.log_path = enginelog.prepare(self.settings.log_dir, record.model_name)
        else:
            os.makedirs(os.path.dirname(record.log_path), mode=0o700, exist_ok=True)
        try:
            popen = processes.spawn(argv, env, record.log_path)
        except OSError as exc:
            raise LaunchFailed(f"cannot start the engine ({argv[0]}): {exc.strerror or exc}") from None
        # argv holds no secret (API keys are refused as flags; credentials go in the environment).
        log.info(
            "launched %s for %s on port %d (pid %d): %s",
            record.engine,
            record.model_name,
            record.port,
            popen.pid,
            " ".join(argv),
        )
        return EngineProcess(popen.pid, processes.start_time(popen.pid, self.proc), popen)

    def watch_start(self, process: EngineProcess, seconds: float) -> Optional[int]:
        """The exit status if the process exits within ``seconds``, else ``None``."""
        deadline = time.monotonic() + seconds
        while True:
            if not process.alive(self.proc):
                code = process.returncode()
                return code if code is not None else -1
            if time.monotonic() >= deadline:
                return None
            time.sleep(WATCH_POLL)

    def exit_reason(self, record: ModelRecord, code: Optional[int]) -> str:
        reason = processes.describe_exit(code)
        tail = enginelog.last_line(record.log_path) if record.log_path else ""
        return f"{reason}; last log line: {tail}" if tail else reason

    # -- stop ------------------------------------------------------------------------------
    def stop_model(self, model_name: str, grace: float, leader: Optional[EngineProcess] = None) -> bool:
        """SIGTERM every process of the model's engine, SIGKILL what is left after ``grace``.

        True when none is left.  ``leader`` is the launched process (reaped here, so it
        leaves no zombie behind)."""
        deadline = time.monotonic() + grace
        sent: Set[int] = set()
        killed = False
        while True:
            if leader is not None:
                leader.reap()
            left = self.marked_for(model_name)
            if leader is not None and leader.popen is not None and leader.alive(self.proc):
                left.append(Marked(leader.pid, leader.pgid, leader.start_time or "", model_name, ""))
            if not left:
                return True
            now = time.monotonic()
            if now >= deadline and not killed:
                self.signal_marked(left, signal.SIGKILL)
                killed = True
                deadline = now + processes.KILL_WAIT
            elif now >= deadline:
                log.error("the engine of %s did not exit after SIGKILL (pids %s)", model_name, [m.pid for m in left])
                return False
            else:
                fresh = [m for m in left if m.pgid not in sent]
                self.signal_marked(fresh, signal.SIGTERM)
                sent |= {m.pgid for m in fresh}
            time.sleep(STOP_POLL)

    def signal_marked(self, marked: Sequence[Marked], signum: int) -> None:
        for pgid in sorted({m.pgid for m in marked}):
            processes.signal_group(pgid, signum)
        for m in marked:  # a process that left its group (setsid) still carries the marker
            try:
                os.kill(m.pid, signum)
            except OSError:
                pass

    def signal_all(self, signum: int) -> int:
        """Signal every engine of this Patio (shutdown); the number of groups signalled."""
        marked = self.marked()
        self.signal_marked(marked, signum)
        return len({m.pgid for m in marked})

    def stop_all(self, term_deadline: float, final_deadline: float, leaders: Sequence[EngineProcess]) -> List[str]:
        """Wait for every engine of this Patio to exit (SIGTERM was sent), SIGKILL what is left at
        ``term_deadline`` (monotonic); the models still running at ``final_deadline``."""
        killed = False
        while True:
            for leader in leaders:
                leader.reap()
            left = self.marked()
            if not left:
                return []
            now = time.monotonic()
            if now >= term_deadline and not killed:
                self.signal_marked(left, signal.SIGKILL)
                killed = True
            elif now >= final_deadline:
                return sorted({m.model for m in left})
            time.sleep(STOP_POLL)

    def trim_log(self, record: ModelRecord) -> None:
        if record.log_path:
            try:
                enginelog.trim(record.log_path, self.settings.log_max_bytes)
            except OSError as exc:
                log.warning("cannot trim the engine log %s: %s", record.log_path, exc.strerror or exc)
