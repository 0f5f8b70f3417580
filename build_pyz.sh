#!/usr/bin/env bash
# Build dist/patio.pyz: the patio package as one compressed, reproducible zipapp.
# Same sources -> same bytes.  `python3 -m zipapp` adds files in directory order
# with their checkout mtimes, so its output differs between two clones of the same
# commit; this writes the same zipapp layout (shebang, __main__.py, the package)
# with files in sorted order and a fixed timestamp, deflated.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
out="dist/patio.pyz"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p dist "$stage/app"
# Only the runtime package: no tests, no caches.
(cd . && find patio -name '*.py' -print) | LC_ALL=C sort | while read -r f; do
  mkdir -p "$stage/app/$(dirname "$f")"
  cp "$f" "$stage/app/$f"
done
printf 'from patio.cli import run\n\nrun()\n' > "$stage/app/__main__.py"
"$PYTHON" - "$stage/app" "$out.tmp" <<'PY'
import os, py_compile, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
stamp = (1980, 1, 1, 0, 0, 0)
# Bytecode for the building interpreter (3.11, as in the distroless image) sits next to each
# source in the legacy `x.pyc` layout zipimport reads, so that interpreter starts without
# compiling; hash-based and unchecked (PEP 552) so the bytes do not depend on mtimes.  Other
# Python versions see a foreign magic number and compile the .py beside it.
for root, dirs, names in os.walk(src):
    for name in names:
        if name.endswith(".py") and name != "__main__.py":
            path = os.path.join(root, name)
            py_compile.compile(path, cfile=path + "c", dfile=os.path.relpath(path, src), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
with open(dest, "wb") as raw:
    raw.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        files = []
        for root, dirs, names in os.walk(src):
            dirs.sort()
            for name in names:
                files.append(os.path.relpath(os.path.join(root, name), src))
        for rel in sorted(files):
            info = zipfile.ZipInfo(rel.replace(os.sep, "/"), date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(os.path.join(src, rel), "rb") as fh:
                zf.writestr(info, fh.read(), compresslevel=9)
PY
chmod 0755 "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c < "$out") bytes)"
