"""Loaded by every Python process of the vLLM under test (PYTHONPATH): record the files it opens.

With PATIO_E2E_OPEN_LOG and PATIO_E2E_OPEN_WATCH set, an audit hook (PEP 578) appends one line,
``PID PATH``, to the log for every ``open`` of a path containing the watched text: how the e2e
tier sees whether vLLM reads an adapter's files again (vLLM #33791) without strace.  vLLM reads an
adapter's adapter_config.json with Python's open() each time it loads the adapter
(vllm/lora/peft_helper.py from_local_dir).  Nothing happens when the variables are unset.
"""

import os
import sys


def _install() -> None:
    log, watch = os.environ.get("PATIO_E2E_OPEN_LOG"), os.environ.get("PATIO_E2E_OPEN_WATCH")
    if not log or not watch:
        return
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def hook(event, args):
        if event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        if isinstance(path, str) and watch in path:
            os.write(fd, f"{os.getpid()} {path}\n".encode("utf-8", "replace"))

    sys.addaudithook(hook)


_install()
