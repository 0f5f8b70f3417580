"""The zipapp reads each of its modules once at start (patio/zipstart.py).

``zipimport`` loads a module's code for ``get_filename`` and again for ``get_code``; counted here
at ``zipimport._get_module_code``, wrapped before anything of Patio is imported, in a process
that imports what a default start imports, from the built pyz, with each interpreter the suite
has that can run it.
"""

import json
import subprocess

import pytest
from support import build_pyz
from test_packaging import VERSIONS, interpreter

PROBE = """
import collections, json, sys, zipimport
sys.path.insert(0, sys.argv[1])
reads = collections.Counter()
load = zipimport._get_module_code

def counted(importer, fullname):
    reads[fullname] += 1
    return load(importer, fullname)

zipimport._get_module_code = counted
if sys.argv[2] == "installed":
    import patio.zipstart
    assert patio.zipstart.install() is True
    assert patio.zipstart.install() is False  # once is enough
import patio.cli, patio.lifecycle, patio.app, patio.config
print(json.dumps({name: n for name, n in reads.items() if name.startswith("patio")}))
"""


def reads(python: str, mode: str) -> dict:
    done = subprocess.run(
        [python, "-I", "-S", "-c", PROBE, str(build_pyz()), mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "mode,expected",
    [("plain", 2), ("installed", 1)],
    ids=["zipimport_alone_reads_each_module_twice", "installed_each_module_is_read_once"],
)
def test_each_module_of_the_pyz_is_read_this_often(mode: str, expected: int, version: str) -> None:
    counts = reads(interpreter(version), mode)
    assert len(counts) > 50, counts  # the start's modules came from the pyz
    # The package and the hand-over itself load before it is installed.
    before = {"patio", "patio.zipstart"} if mode == "installed" else set()
    assert {name: n for name, n in counts.items() if name not in before and n != expected} == {}


def test_the_pyz_entry_installs_it_before_anything_else() -> None:
    import zipfile

    with zipfile.ZipFile(build_pyz()) as pyz:
        entry = pyz.read("__main__.py").decode("utf-8")
    lines = [line for line in entry.splitlines() if line.strip() and not line.startswith("#")]
    assert lines == ["import patio.zipstart", "patio.zipstart.install()", "import patio.cli", "patio.cli.run()"]
