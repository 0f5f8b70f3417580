#!/usr/bin/env bash
# Build dist/patio.pyz: the patio package as one compressed zipapp, reproducibly.
#
# 1. stage the runtime package (no tests, no caches) and the incumbents' entry-point packages
#    (deploy/entrypoints: `python -m aibrix.downloader`) with bytecode for the building
#    interpreter (3.11, as in the distroless image) next to each source, in the `x.pyc`
#    layout zipimport reads: that interpreter starts without compiling; the .pyc are
#    hash-based and unchecked (PEP 552) so they do not depend on mtimes; other Python
#    versions see a foreign magic number and compile the .py beside them;
# 2. `python3 -m zipapp` (compressed; the entry __main__.py installs patio.zipstart, then runs
#    patio.cli:run; shebang /usr/bin/python3: the image's interpreter, which has no
#    /usr/bin/env; the image links `aibrix_runtime` and `aibrix_download` on its PATH to the
#    pyz and the kernel runs them through the shebang);
# 3. normalise: zipapp adds files in directory order with their checkout mtimes, so its
#    bytes differ between two clones of one commit; entries are rewritten in sorted order
#    with a fixed timestamp.  Same sources -> same bytes.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
out="dist/patio.pyz"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p dist "$stage/app"
find patio -name '*.py' -print | LC_ALL=C sort | while read -r f; do
  mkdir -p "$stage/app/$(dirname "$f")"
  cp "$f" "$stage/app/$f"
done
(cd deploy/entrypoints && find . -name '*.py' -print | LC_ALL=C sort) | while read -r f; do
  mkdir -p "$stage/app/$(dirname "$f")"
  cp "deploy/entrypoints/$f" "$stage/app/$f"
done
"$PYTHON" - "$stage/app" <<'PY'
import os, py_compile, sys
src = sys.argv[1]
for root, _dirs, names in os.walk(src):
    for name in names:
        if name.endswith(".py"):
            path = os.path.join(root, name)
            py_compile.compile(path, cfile=path + "c", dfile=os.path.relpath(path, src), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
PY
# The zipapp's entry (source only, it is four lines): modules read once (patio/zipstart.py), then
# the command line.
cat >"$stage/app/__main__.py" <<'PY'
# -*- coding: utf-8 -*-
import patio.zipstart

patio.zipstart.install()

import patio.cli

patio.cli.run()
PY
"$PYTHON" -m zipapp "$stage/app" --compress --python "/usr/bin/python3" --output "$stage/raw.pyz"
"$PYTHON" - "$stage/raw.pyz" "$out.tmp" <<'PY'
import sys, zipfile
raw, dest = sys.argv[1], sys.argv[2]
with open(raw, "rb") as handle:
    data = handle.read()
shebang = data[: data.index(b"\n") + 1]
with zipfile.ZipFile(raw) as source, open(dest, "wb") as out:
    out.write(shebang)
    with zipfile.ZipFile(out, "w") as target:
        for name in sorted(source.namelist()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            target.writestr(info, source.read(name), compresslevel=9)
PY
chmod 0755 "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c < "$out") bytes)"
