#!/usr/bin/env bash
# Set up a fresh machine for LiveGate's demo and tests: system packages (when root), the project
# venv .venv with the Python packages (see scripts/venv.sh), and the third-party model files
# (sha256-checked). Safe to run again. The venv's python is the one the tests run with.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for tool in mosquitto shellcheck systemd-analyze; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing $tool"
  done
  packages="mosquitto shellcheck systemd"
  # Debian's python3 makes a venv only with python3-venv (ensurepip) installed.
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing="$missing python3-venv"
    packages="$packages python3-venv"
  fi
  if [ -n "$missing" ]; then
    echo "setup: installing system packages for:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $packages >/dev/null
  fi
fi

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements-dev.txt
"$VENV_PY" scripts/fetch_assets.py
