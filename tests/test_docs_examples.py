"""Every example in README.md and docs/*.md runs, and shows what Patio really answers.

The fenced blocks of each page are read in order (``blocks``) and each one is, by its
language and the HTML comment on the line above it:

- ``console``: ``$ COMMAND`` lines, each followed by the output it shows.  The commands run in
  one shell per page, as a reader types them; each output is compared with what the command
  really printed (stdout and stderr together, as a terminal shows them), after the
  normalizations of ``NORMALIZE`` (only what genuinely varies from run to run).
- ``sh`` / ``bash``: every line is a command that must exit 0 (no output is shown, none compared).
- ``json`` / ``yaml`` with ``<!-- check: NAME -->``: a body or a file a user writes, validated
  by the check ``NAME`` of ``CHECKS`` against what Patio accepts.
- ``text``: a drawing or an excerpt, never an example: it must hold no command.
- any block with ``<!-- not run: REASON -->``: not run; ``NOT_RUN`` lists each (page and
  reason), so the exceptions stay few and deliberate.
Any other block fails the test: a new example is run, checked, or marked.

One shell per page, as on a fresh machine: ``bash`` as root in a network namespace of its own
(only loopback: the examples' fixed ports 8000, 9091, 6379, ... meet nothing else on this
machine, and nothing leaves it) and a mount namespace whose ``/tmp`` is an empty tmpfs (Patio's
default directories under ``/tmp/patio``, the state directory, the files examples write; gone
with the shell).  The working directory is the checkout under an overlay whose writable layer
is in that tmpfs (``/tmp/checkout``): scripts see the real tree (``bash build_pyz.sh`` builds
``dist/patio.pyz`` from it), and a file an example writes never lands in the checkout.  The environment
is a fresh login's: ``PATH``, ``HOME=/tmp/home``, ``LANG``; nothing of the test's own.

What the test adds to what a reader types, each because a reader does it without typing it:

- a command ending in ``&`` starts a server: its output goes to the page's log (shown when the
  test fails) instead of the terminal, and the next command runs once every port the line
  names (a number of 4 or 5 digits) accepts a connection, as a reader's next line comes a
  moment later;
- ``python3`` is the interpreter ``python3`` names on this machine, found before the private
  ``HOME`` hides pyenv's shims;
- the suite's peers are on ``PATH`` where a reader installs them (``PEER_PATHS``: smg 1.13.0
  from ``.venv-peers/``, as ``pip install smg`` puts it), and a page's stores are set up as a
  reader's would already be (``STORES``: an S3-compatible store, moto, at 10.0.0.1:9000 in a
  network namespace of its own joined to the page's, holding the objects the examples fetch);
- at the end every job the shell started is stopped (its process group, then anything left
  in the namespace).
"""

import os
import re
import select
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import yaml
from support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[A-Za-z0-9_-]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*(?P<kind>not run|check):\s*(?P<what>.*?)\s*-->\s*$")
# Set to print every command's real output instead of comparing it (to write an example:
# ``PATIO_DOCS_PRINT=1 .venv/bin/python -m pytest -s tests/test_docs_examples.py -k lora``).
PRINT = os.environ.get("PATIO_DOCS_PRINT") == "1"
# One command's longest run; a foreground command that serves forever fails here.
COMMAND_TIMEOUT = 60.0
# How long the servers a page started have after SIGTERM before SIGKILL.
STOP_GRACE = 2.0
# How long a server started with ``&`` has to listen on the ports its line names.
LISTEN_TIMEOUT = 20.0


@dataclass(frozen=True)
class Block:
    page: str  # relative to the checkout: README.md, docs/lora.md
    line: int  # the opening fence's line number
    lang: str
    text: str
    mark: Tuple[str, str]  # ("not run" | "check" | "", what the comment says)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> List[Block]:
    """The fenced blocks of one page, with the marker comment on the line above each."""
    lines = path.read_text(encoding="utf-8").split("\n")
    page = str(path.relative_to(ROOT))
    found: List[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent = opening.group("indent")
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != indent + "```":
            end += 1
        assert end < len(lines), f"{page}:{index + 1}: a fence that never closes"
        above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marked = MARK.match(above)
        mark = (marked.group("kind"), marked.group("what")) if marked else ("", "")
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[index + 1 : end])
        found.append(Block(page, index + 1, opening.group("lang"), body, mark))
        index = end + 1
    return found


ALL = [block for path in PAGES for block in blocks(path)]


# --- commands and their shown output ---------------------------------------------------


@dataclass(frozen=True)
class Step:
    command: str
    shown: Optional[str]  # None: the block shows no output (sh), so none is compared
    line: int

    @property
    def background(self) -> bool:
        return self.command.rstrip().endswith("&") and not self.command.rstrip().endswith("&&")


_HEREDOC = re.compile(r"<<-?\s*'?\"?([A-Za-z_]+)'?\"?")


def _take_command(lines: List[str], start: int, first: str) -> Tuple[str, int]:
    """One command from ``lines[start]`` on (its text already stripped of any prompt as
    ``first``): continued over lines ending in a backslash, and over a heredoc's body."""
    parts = [first]
    index = start + 1
    while parts[-1].endswith("\\") and index < len(lines):
        parts.append(lines[index])
        index += 1
    heredoc = _HEREDOC.search(" ".join(parts))
    if heredoc:
        while index < len(lines):
            parts.append(lines[index])
            index += 1
            if parts[-1].strip() == heredoc.group(1):
                break
    return "\n".join(parts), index


def console_steps(block: Block) -> List[Step]:
    lines = block.text.split("\n")
    steps: List[Step] = []
    index = 0
    assert lines and lines[0].startswith("$ "), f"{block.where}: a console block starts with a '$ ' command"
    while index < len(lines):
        command, index = _take_command(lines, index, lines[index][2:])
        line = block.line + 1 + index
        output: List[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        steps.append(Step(command, "\n".join(output).strip("\n"), line))
    return steps


def script_steps(block: Block) -> List[Step]:
    lines = block.text.split("\n")
    steps: List[Step] = []
    index = 0
    while index < len(lines):
        text = lines[index].strip()
        if not text or text.startswith("#"):
            index += 1
            continue
        command, next_index = _take_command(lines, index, lines[index])
        steps.append(Step(command, None, block.line + 1 + index))
        index = next_index
    return steps


# What genuinely varies between runs, replaced in the shown and in the real output alike.
# Each: (what it is, pattern, replacement).
NORMALIZE: Sequence[Tuple[str, "re.Pattern[str]", str]] = (
    (
        "numbers in JSON answers under a key naming a time or a duration (..._at, ..._time, ..._in, ..._ts,"
        " ..._second(s), ..._for)",
        re.compile(r'("[a-z_]*(?:_at|_time|_in|_ts|_second|_seconds|_for|last_transition)": ?)-?[0-9.e+-]+'),
        r"\1<number>",
    ),
    (
        "UUIDs (router worker ids, job ids)",
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
        "<uuid>",
    ),
    ("download job ids", re.compile(r"\bdl-\d+-[0-9a-f]{12}\b"), "dl-<id>"),
    ("the size of a built file (each change to patio/ changes the pyz)", re.compile(r"\(\d+ bytes\)"), "(<n> bytes)"),
    ("durations in log lines", re.compile(r"\bin \d+(?:\.\d+)?s\b"), "in <n>s"),
    ("ISO 8601 times in JSON answers", re.compile(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"'), '"<time>"'),
    (
        "the shell's job notices (a reader's terminal shows its own)",
        # bash prints one before its next prompt: after an answer with no final newline, mid-line.
        re.compile(r"\[\d+\][+-]? +(?:Done|Terminated|Killed|Exit \d+) .*(?:\n|$)"),
        "",
    ),
    ("HTTP Date headers", re.compile(r"^Date: .*$", re.M), "Date: <date>"),
    ("log timestamps", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M), "<time> "),
)


def normalized(text: str) -> str:
    for _what, pattern, replacement in NORMALIZE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


# --- one shell per page -----------------------------------------------------------------


def _python_dir() -> str:
    """Where the machine's ``python3`` really lives (pyenv's shims need the real HOME)."""
    found = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, check=True
    )
    return str(Path(found.stdout.strip()).parent)


# Peers a reader installs with pip, on PATH where pip would put them.
PEER_PATHS = (ROOT / ".venv-peers" / "smg-1.13.0" / "bin",)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Shell:
    """bash in network and mount namespaces of its own; ``run`` one command at a time."""

    def __init__(self, name: str) -> None:
        self.netns = f"patio-docs-{os.getpid()}-{name}"
        self.peer_netns: List[str] = []
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.log = tempfile.TemporaryFile()
        # A checkout under /tmp is moved back over the fresh /tmp (CI may clone there).
        keep = f"mount --bind '{ROOT}' /mnt && " if str(ROOT).startswith("/tmp/") else ""
        back = f"mkdir -p '{ROOT}' && mount --move /mnt '{ROOT}' && " if keep else ""
        start = (
            f"{keep}mount -t tmpfs -o size=512m,mode=1777 tmpfs /tmp && {back}"
            "mkdir -p /tmp/home /tmp/checkout /tmp/.checkout/upper /tmp/.checkout/work && "
            f"mount -t overlay overlay -o 'lowerdir={ROOT},upperdir=/tmp/.checkout/upper,workdir=/tmp/.checkout/work' "
            "/tmp/checkout && cd /tmp/checkout && exec bash --noprofile --norc"
        )
        path = ":".join([_python_dir(), *(str(p) for p in PEER_PATHS), SYSTEM_PATH])
        env = {"PATH": path, "HOME": "/tmp/home", "LANG": "C.UTF-8", "TERM": "dumb"}
        argv = [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            start,
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self._buffer = b""
        # Jobs get process groups of their own (stopped whole at the end); fd 3 is the log.
        self._send("set -m; exec 3>/proc/self/fd/2; cd /tmp/checkout\n")
        self.run("true")

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def _read_until(self, mark: bytes, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while mark not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(
                    f"no end within {timeout:.0f} s; printed so far:\n{self._buffer.decode(errors='replace')}"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk and self.proc.poll() is not None:
                    continue
                self._buffer += chunk
        out, _, rest = self._buffer.partition(mark)
        self._buffer = rest
        return out

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Tuple[str, int]:
        """Run one command as typed; its output (stdout and stderr) and exit status."""
        mark = uuid.uuid4().hex
        self._send(f"{{ {command}\n}} 2>&1; __s=$?; printf '\\n{mark} %s\\n' \"$__s\"; (exit $__s)\n")
        raw = self._read_until(f"\n{mark} ".encode(), timeout)
        status = self._read_until(b"\n", 5.0)
        return raw.decode("utf-8", "replace"), int(status)

    def start(self, command: str) -> None:
        """A command ending in ``&``: a server, its output to the log; wait for its ports."""
        body = command.rstrip()[:-1].rstrip()
        mark = uuid.uuid4().hex
        # A simple command runs as the job itself (``kill %N`` reaches it, ``wait %N`` waits
        # for it); anything else is grouped.
        simple = not re.search(r"[|;&<>(){}]|\n", body)
        job = f"{body} >&3 2>&3 &" if simple else f"{{ {body}\n}} >&3 2>&3 &"
        self._send(f"{job}\nprintf '{mark}\\n'\n")
        self._read_until(f"{mark}\n".encode(), 5.0)
        for port in sorted(
            {int(p) for p in re.findall(r"(?<![\w.])(\d{4,5})(?![\w.])", body) if 1024 <= int(p) < 65536}
        ):
            wait = (
                f"for i in $(seq {int(LISTEN_TIMEOUT * 20)}); do (: </dev/tcp/127.0.0.1/{port}) 2>/dev/null && "
                "exit 0; sleep 0.05; done; exit 1"
            )
            _, status = self.run(f"( {wait} )", timeout=LISTEN_TIMEOUT + 5)
            assert status == 0, (
                f"`{body}` did not listen on port {port} within {LISTEN_TIMEOUT:.0f} s\n{self.log_text()}"
            )

    def log_text(self) -> str:
        self.log.seek(0)
        return "the page's log (servers and the shell):\n" + self.log.read().decode("utf-8", "replace")[-6000:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                # SIGTERM to every job's process group; the shell leaves at once.
                self._send("for j in $(jobs -p); do kill -TERM -- -$j 2>/dev/null; done; exit 0\n")
                self.proc.wait(5)
        finally:
            # Whatever is left in the namespaces was started by this page: given STOP_GRACE to
            # finish (Patio's shutdown, a router's drain), then stopped by its id.
            deadline = time.monotonic() + STOP_GRACE
            for netns in [self.netns, *self.peer_netns]:
                while True:
                    pids = [
                        int(p)
                        for p in subprocess.run(
                            ["ip", "netns", "pids", netns], capture_output=True, text=True
                        ).stdout.split()
                    ]
                    if not pids or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                for pid in pids:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
                subprocess.run(["ip", "netns", "del", netns], check=False)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            self.log.close()


# --- the stores a page's examples fetch from, as a reader's would already exist ----------


def s3_store(shell: Shell) -> None:
    """moto at 10.0.0.1:9000, in a namespace of its own joined to the page's by a veth pair
    (an address of the page's own would be refused by the egress policy, rightly), holding
    s3://models/tiny-llama/ (config.json, tokenizer.json, model.safetensors)."""
    store = shell.netns + "-s3"
    subprocess.run(["ip", "netns", "add", store], check=True)
    shell.peer_netns.append(store)
    for argv in (
        ["ip", "-n", store, "link", "set", "lo", "up"],
        [
            "ip",
            "link",
            "add",
            "docs-s3",
            "netns",
            store,
            "type",
            "veth",
            "peer",
            "name",
            "docs-pod",
            "netns",
            shell.netns,
        ],
        ["ip", "-n", store, "addr", "add", "10.0.0.1/24", "dev", "docs-s3"],
        ["ip", "-n", shell.netns, "addr", "add", "10.0.0.2/24", "dev", "docs-pod"],
        ["ip", "-n", store, "link", "set", "docs-s3", "up"],
        ["ip", "-n", shell.netns, "link", "set", "docs-pod", "up"],
    ):
        subprocess.run(argv, check=True)
    moto = Path(sys.executable).parent / "moto_server"
    subprocess.Popen(
        ["ip", "netns", "exec", store, str(moto), "-H", "10.0.0.1", "-p", "9000"],
        stdout=shell.log,
        stderr=shell.log,
        env={"PATH": SYSTEM_PATH, "HOME": tempfile.gettempdir()},
    )
    script = """
import time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen("http://10.0.0.1:9000/", timeout=1)
        break
    except OSError:
        time.sleep(0.05)
def put(path, data):
    headers = {"Content-Type": "application/octet-stream"}  # not a form: moto would parse it
    request = urllib.request.Request("http://10.0.0.1:9000/" + path, data=data, method="PUT", headers=headers)
    urllib.request.urlopen(request, timeout=60).read()
put("models", b"")
put("models/tiny-llama/config.json", b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}\\n')
put("models/tiny-llama/tokenizer.json", b'{"version": "1.0", "model": {"type": "BPE"}}\\n')
put("models/tiny-llama/model.safetensors", bytes(range(256)) * 4096)
"""
    subprocess.run(["ip", "netns", "exec", store, sys.executable, "-c", script], check=True, timeout=120)


def rootfs_cache(shell: Shell) -> None:
    """The image's root as ``deploy/rootfs/assemble.sh`` caches it: assembled here as
    tests/test_rootfs.py does (it downloads Debian packages the first time, which the page's
    namespace cannot), then found where the page's ``HOME`` keeps it."""
    done = subprocess.run(
        ["bash", str(ROOT / "deploy/rootfs/assemble.sh")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"assemble.sh failed:\n{done.stderr}"
    cache = Path(done.stdout.strip()).parent.parent
    _, status = shell.run(f"mkdir -p /tmp/home/.cache && ln -s '{cache}' /tmp/home/.cache/patio-rootfs")
    assert status == 0


STORES: Dict[str, Callable[[Shell], None]] = {"docs/downloads.md": s3_store, "docs/operations.md": rootfs_cache}


# --- checks of the files and bodies a user writes -----------------------------------------


def check_adapters_file(block: Block, _arg: str) -> None:
    from patio.lora.desired import load_desired

    suffix = ".json" if block.lang == "json" else ".yaml"
    state = load_desired(block.text.encode(), "adapters" + suffix, max_adapters=256)
    assert state.adapters or state.absent, f"{block.where}: an adapters file that names no adapter"
    assert not state.conflicts and not state.refused, f"{block.where}: {state}"


def _within(part: Any, whole: Any) -> bool:
    """``part`` is ``whole`` with things left out: a mapping's keys, a list's items (in their
    order), never a value changed; a string of YAML (a ConfigMap's file) is read as such."""
    if isinstance(whole, str) and isinstance(part, (dict, list)):
        try:
            whole = yaml.safe_load(whole)
        except yaml.YAMLError:
            return False
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _within(v, whole[k]) for k, v in part.items())
    if isinstance(part, list):
        if not isinstance(whole, list):
            return False
        items = iter(whole)
        return all(any(_within(p, w) for w in items) for p in part)
    return type(part) is type(whole) and part == whole


def _nodes(tree: Any) -> Iterator[Any]:
    yield tree
    if isinstance(tree, str) and "\n" in tree:
        try:
            tree = yaml.safe_load(tree)
        except yaml.YAMLError:
            return
        if isinstance(tree, (dict, list)):
            yield from _nodes(tree)
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def check_excerpt(block: Block, path: str) -> None:
    """A manifest shown in part: each of its documents is a part of one node of ``path``'s
    documents (the file tests/test_deploy_*.py validate), so the page cannot drift from it."""
    assert (ROOT / path).is_file(), f"{block.where}: no file {path}"
    whole = [d for d in yaml.safe_load_all((ROOT / path).read_text(encoding="utf-8")) if d is not None]
    for part in (d for d in yaml.safe_load_all(block.text) if d is not None):
        assert any(_within(part, node) for doc in whole for node in _nodes(doc)), (
            f"{block.where}: not a part of {path} (a key, an item or a value the file does not have):\n"
            f"{yaml.safe_dump(part, sort_keys=False)}"
        )


def _setting_variables() -> Dict[str, str]:
    """Every variable a setting reads, with the section and row it belongs to."""
    from patio import config

    names: Dict[str, str] = {}
    for table in config.tables():
        for row in table.rows:
            for name in row.env.split():
                keys = [key for key in table.forms if "{" + key + "}" in name]
                forms = table.forms[keys[0]] if keys else ("",)
                for form in forms:
                    names[name.format_map({keys[0]: form}) if keys else name] = f"{table.name}.{row.name}"
    return names


def check_container_env(block: Block, _arg: str) -> None:
    """A container's ``env`` for Patio: every variable is one Patio reads, and the values start it."""
    from patio.config import load_settings

    env = [
        item
        for doc in yaml.safe_load_all(block.text)
        for node in _nodes(doc)
        if isinstance(node, dict)
        for item in node.get("env", [])
    ]
    assert env, f"{block.where}: no env list"
    known = _setting_variables()
    unknown = [item["name"] for item in env if item["name"] not in known]
    assert not unknown, f"{block.where}: variables Patio does not read: {unknown}"
    load_settings([], {item["name"]: str(item["value"]) for item in env if "value" in item})


def check_download_usage(block: Block, _arg: str) -> None:
    """The download command's synopsis names only options its parser has, and each option
    (under one of its names: ``-s`` for ``--model-uri``) at least once."""
    from patio.artifacts.cli import build_parser

    shown = set(re.findall(r"(?<![\w-])(-{1,2}[a-z][a-z-]*)", block.text))
    actions = [a.option_strings for a in build_parser()._actions if "--help" not in a.option_strings]
    unknown = shown - {name for names in actions for name in names}
    missing = [names[0] for names in actions if not shown & set(names)]
    assert not unknown and not missing, (
        f"{block.where}: options the parser lacks {sorted(unknown)}, not shown {missing}"
    )


CHECKS: Dict[str, Callable[[Block, str], None]] = {
    "adapters file": check_adapters_file,
    "excerpt of": check_excerpt,
    "patio container env": check_container_env,
    "download usage": check_download_usage,
}


def check_of(block: Block) -> Tuple[str, str]:
    """The check a block names and its argument: ``excerpt of deploy/x.yaml`` is ("excerpt of", "deploy/x.yaml")."""
    what = block.mark[1]
    name = next((n for n in CHECKS if what == n or what.startswith(n + " ")), what)
    return name, what[len(name) :].strip()


# Blocks not run, each with its reason: the test fails when one is added or goes away, so
# every exception is a decision (and the list stays short).
NOT_RUN: Dict[Tuple[str, str], int] = {
    ("README.md", "serves until stopped; the walk-through below runs it in the background"): 1,
    ("README.md", "the whole suite, which runs this test"): 1,
}


# --- the tests ------------------------------------------------------------------------------


def runnable(page: str) -> List[Block]:
    return [b for b in ALL if b.page == page and b.lang in ("console", "sh", "bash") and not b.mark[0]]


RUN_PAGES = sorted({b.page for b in ALL if b in runnable(b.page)}, key=lambda p: (p != "README.md", p))


def test_every_block_is_run_checked_or_marked() -> None:
    unknown = []
    for block in ALL:
        kind, what = block.mark
        if kind == "not run":
            continue
        if kind == "check":
            if check_of(block)[0] not in CHECKS:
                unknown.append(f"{block.where}: no check named {what!r} (CHECKS has {sorted(CHECKS)})")
            continue
        if block.lang in ("console", "sh", "bash"):
            continue
        if block.lang == "text":
            commands = [
                line for line in block.text.split("\n") if re.match(r"\s*(\$ |curl |python3? |bash |kubectl )", line)
            ]
            if commands:
                unknown.append(f"{block.where}: a text block holds commands ({commands[0].strip()!r}): run or mark it")
            continue
        unknown.append(f"{block.where}: a ```{block.lang} block the test does not know: run it, check it or mark it")
    assert not unknown, "\n".join(unknown)


def test_the_blocks_not_run_are_the_listed_ones() -> None:
    found: Dict[Tuple[str, str], int] = {}
    for block in ALL:
        if block.mark[0] == "not run":
            key = (block.page, block.mark[1])
            found[key] = found.get(key, 0) + 1
    assert found == NOT_RUN


@pytest.mark.parametrize("block", [b for b in ALL if b.mark[0] == "check"], ids=lambda b: b.where)
def test_a_file_or_body_a_user_writes_is_what_patio_accepts(block: Block) -> None:
    name, arg = check_of(block)
    CHECKS[name](block, arg)


@pytest.mark.parametrize("page", RUN_PAGES)
def test_the_examples_of_a_page_run_and_answer_what_they_show(page: str) -> None:
    shell = Shell(re.sub(r"[^a-z]", "", Path(page).stem)[:8])
    try:
        if page in STORES:
            STORES[page](shell)
        for block in runnable(page):
            steps = console_steps(block) if block.lang == "console" else script_steps(block)
            for step in steps:
                where = f"{page}:{step.line}: `{step.command}`"
                if step.background:
                    shell.start(step.command)
                    continue
                try:
                    out, status = shell.run(step.command)
                except TimeoutError as exc:
                    pytest.fail(f"{where}: {exc}\n{shell.log_text()}")
                if PRINT:
                    print(f"--- {where} (exit {status})\n{out}")
                if step.shown is None:
                    assert status == 0, f"{where} exited {status}:\n{out}\n{shell.log_text()}"
                    continue
                got, shown = normalized(out), normalized(step.shown)
                if PRINT:
                    continue
                assert got == shown, f"{where} answers\n{out}\nbut the page shows\n{step.shown}\n{shell.log_text()}"
    finally:
        shell.close()


# --- claims the pages make about the code -----------------------------------------------

# Files the pages name that live in other projects' repositories (each cited with its project).
FOREIGN_FILES = frozenset(
    [
        *"adapter_config.json envs.py extractor.go filesystem_resolver.py kvcache_aware.go loraspec.go router.go "
        "spec.go docs/proposals/003-model-server-protocol".split(),
        # h11's modules (docs/architecture.md's style choices).
        "_connection.py",
        "_events.py",
        # A capture of ../shared/fixtures that the benchmarks read (not in this repository).
        "vllm-0.33-multiproc.txt",
    ]
)
_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """A page without its fenced blocks (examples are run instead)."""
    return re.sub(r"^ *```[A-Za-z0-9_-]*\n.*?^ *```$", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def anchors(path: Path) -> set:
    """GitHub's anchors for a page's headings."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def tracked_names() -> set:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return {Path(f).name for f in files} | set(files)


def module_problem(dotted: str) -> str:
    """What is wrong with a dotted name a page gives (``patio.metrics.write.render_chunks``):
    its longest prefix that is a module of patio/ must exist, and what follows be defined in
    it (a function, a class, a name assigned at its top level); "" when nothing is."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for source in (base.with_suffix(".py"), base / "__init__.py"):
            if source.is_file():
                rest = parts[cut:]
                if not rest:
                    return ""
                if len(rest) > 1:
                    return f"{'.'.join(rest)} is not one name of {'.'.join(parts[:cut])}"
                text = source.read_text(encoding="utf-8")
                if re.search(rf"^(?:async def|def|class) {rest[0]}\b|^{rest[0]}\b[^=\n]*=", text, re.M):
                    return ""
                return f"{'.'.join(parts[:cut])} defines no {rest[0]}"
    return "no such module under patio/"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_modules_and_links_a_page_names_exist(path: Path) -> None:
    names = tracked_names()
    wrong = []
    for token in _CODE.findall(prose(path)):
        for word in token.split():
            word = word.strip("(),;:")
            if re.fullmatch(r"(patio|tests|bench|deploy|docs)/[\w./-]+", word):
                if not (ROOT / word.rstrip("/")).exists() and word not in FOREIGN_FILES:
                    wrong.append(f"{word}: no such file in the checkout")
            elif re.fullmatch(r"patio(\.\w+)+", word) and word not in ("patio.py", "patio.pyz"):
                problem = module_problem(word)
                if problem:
                    wrong.append(f"{word}: {problem}")
            elif re.fullmatch(r"[\w.-]+\.(py|go|rs|yaml|yml|json|sh|txt)", word):
                if word not in names and word not in FOREIGN_FILES:
                    wrong.append(f"{word}: no file of that name in the checkout")
            elif re.fullmatch(r"test_\w+", word):
                if not (ROOT / "tests" / f"{word}.py").exists() and not any(
                    f"def {word}(" in t.read_text(encoding="utf-8") for t in (ROOT / "tests").rglob("test_*.py")
                ):
                    wrong.append(f"{word}: no such test")
    for target in _LINK.findall(prose(path)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            wrong.append(f"link {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            wrong.append(f"link {target}: no such heading in {linked.name}")
    assert not wrong, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(wrong)


def _metric_names() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "patio").rglob("*.py"))


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_metric_families_a_page_names_exist(path: Path) -> None:
    source = _metric_names()
    text = prose(path)
    wrong = sorted(
        {n for n in re.findall(r"\bpatio_[a-z0-9_]+\b", text) if f'"{n}"' not in source}
        | {
            n
            for n in re.findall(r"\bpatio:[a-z0-9_]+\b", text)
            if n != "patio:latest" and n[len("patio:") :] not in source
        }
    )
    assert not wrong, f"{path.relative_to(ROOT)} names metric families Patio does not have: {wrong}"
