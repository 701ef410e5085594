#!/usr/bin/env bash
# Idempotent set-up for `make demo` / `make test` on a fresh Debian/Ubuntu machine:
# 1. Debian packages (installed when root, otherwise one message naming them);
# 2. a virtual environment in .venv;
# 3. torch==2.13.0 first (the CPU wheel where there is no CUDA), so nothing pulls CUDA packages;
# 4. the project itself with its dev extra;
# 5. the live preview's three.js assets (npm registry, vendored by tools/build_preview_assets.sh).
# A stamp file records the pyproject.toml it installed, so a second run costs a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# Open3D needs libusb; sounddevice libportaudio2; offscreen OpenGL the EGL/Mesa trio; the preview
# npm (to vendor three.js once) and Chromium + its driver (browser tests).
DEB_PACKAGES="libusb-1.0-0 libportaudio2 libegl1 libegl-mesa0 libgl1-mesa-dri chromium chromium-driver"
# npm often comes with a nodejs build that conflicts with Debian's npm package: ask only when absent.
command -v npm >/dev/null 2>&1 || DEB_PACKAGES="$DEB_PACKAGES npm"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.mmface4d-installed"

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "bootstrap: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
  else
    echo "bootstrap: missing Debian packages:$missing -- run: sudo apt-get install$missing" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
LOG="$VENV/bootstrap-pip.log"
# pip's own output goes to a log; on failure its tail is shown.
pip_install() {
  if ! $PIP install "$@" >>"$LOG" 2>&1; then
    echo "bootstrap: pip install $* failed; the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  tools/build_preview_assets.sh
  exit 0
fi

pip_install --upgrade pip
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "bootstrap: installing torch==2.13.0"
  pip_install "torch==2.13.0"
fi
echo "bootstrap: installing mmface4d-stream and its dependencies"
pip_install -e ".[dev]"
echo "$want" > "$STAMP"
tools/build_preview_assets.sh
