#!/usr/bin/env bash
# Build (or re-use) the project's virtual environment. Used by scripts/main.sh and
# scripts/test.sh; safe to run by hand. Re-running when nothing changed takes seconds.
#
#   bash scripts/setup_env.sh            # builds ./.venv
#   PANOPTIC_VENV=/path/to/venv bash scripts/setup_env.sh
#   PYTHON=python3.11 bash scripts/setup_env.sh
#   PANOPTIC_EXTRAS=export bash scripts/setup_env.sh   # also optional extras (comma-separated)
#
# Optional extras, each pinned in requirements/<name>.txt:
#   export   onnx + onnxruntime: ONNX export and running exported ONNX models
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PANOPTIC_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.panoptic_curriculum-setup"
KNOWN_EXTRAS=(export)
declare -A EXTRA_IMPORTS=([export]="onnx onnxruntime")
# Debian packages: libusb for `import open3d`; Vulkan loader + Mesa's software driver for
# Open3D's headless renderer.
APT_PACKAGES=(libusb-1.0-0 libvulkan1 mesa-vulkan-drivers libgl1 libgomp1)

log() { printf '[setup] %s\n' "$*" >&2; }
pip_quiet() {
  # pip prints one warning per package for the local mirror folders it skips; hide those.
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}

inputs_hash() {
  cat "$ROOT/requirements/base.txt" "$ROOT/requirements/nodeps.txt" "$ROOT/setup.py" \
      "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/build_detectron2.py" | sha256sum | cut -d' ' -f1
}

# The extras asked for in PANOPTIC_EXTRAS (commas or spaces), checked against KNOWN_EXTRAS.
EXTRAS_LIST="${PANOPTIC_EXTRAS:-}"
read -r -a EXTRAS <<< "${EXTRAS_LIST//,/ }"
for e in "${EXTRAS[@]}"; do
  if [[ " ${KNOWN_EXTRAS[*]} " != *" $e "* ]]; then
    log "ERROR: unknown extra '$e' in PANOPTIC_EXTRAS; known extras: ${KNOWN_EXTRAS[*]}"
    exit 1
  fi
done

install_extras() {
  local e stamp want_e
  for e in "${EXTRAS[@]}"; do
    stamp="$VENV/.panoptic_curriculum-extra-$e"
    want_e="$(sha256sum "$ROOT/requirements/$e.txt" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_e" ]; then
      continue
    fi
    log "installing the '$e' extra (requirements/$e.txt)"
    pip_quiet install -q -r "$ROOT/requirements/$e.txt"
    "$VENV/bin/python" -c "import ${EXTRA_IMPORTS[$e]// /, }"
    echo "$want_e" > "$stamp"
  done
}

ensure_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "ERROR: missing system packages: ${missing[*]}"
    log "install them as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
}

want="$(inputs_hash)"
ensure_apt_packages
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c "import panoptic_curriculum" 2>/dev/null; then
  install_extras
  log "environment up to date: $VENV${PANOPTIC_EXTRAS:+ (extras: $PANOPTIC_EXTRAS)}"
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
log "installing pinned dependencies (requirements/base.txt)"
pip_quiet install -q -r "$ROOT/requirements/base.txt"
log "installing packages with stale declared pins (requirements/nodeps.txt)"
pip_quiet install -q --no-deps -r "$ROOT/requirements/nodeps.txt"
if ! "$VENV/bin/python" -c "import detectron2, detectron2.projects.deeplab" 2>/dev/null; then
  log "building detectron2 v0.6 (no compiled extension)"
  "$VENV/bin/python" "$ROOT/scripts/build_detectron2.py" 2> >(grep -v "^WARNING: Location 'file://" >&2)
fi
log "installing panoptic_curriculum (editable)"
pip_quiet install -q --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -c "import panoptic_curriculum"
echo "$want" > "$STAMP"
install_extras
log "environment ready in $(( $(date +%s) - start )) s: $VENV"
