#!/usr/bin/env bash
# Idempotent set-up for `make demo` / `make test` on a fresh Debian/Ubuntu machine:
# 1. Debian packages (installed when root, otherwise one message naming them);
# 2. a virtual environment in .venv;
# 3. torch==2.13.0 first (the CPU wheel where there is no CUDA), so nothing pulls CUDA packages;
# 4. the project itself with its dev extra.
# A stamp file records the pyproject.toml it installed, so a second run costs a second.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES="libusb-1.0-0 libportaudio2 libegl1 libegl-mesa0 libgl1-mesa-dri"
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

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

$PIP install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "bootstrap: installing torch==2.13.0"
  $PIP install -q "torch==2.13.0"
fi
echo "bootstrap: installing mmface4d-stream and its dependencies"
$PIP install -q -e ".[dev]"
echo "$want" > "$STAMP"
