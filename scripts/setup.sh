#!/usr/bin/env bash
# Set up a fresh machine for LiveGate's demo and tests: system packages (when root), Python
# packages, and the third-party model files (sha256-checked). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for tool in mosquitto shellcheck systemd-analyze; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing $tool"
  done
  if [ -n "$missing" ]; then
    echo "setup: installing system packages for:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mosquitto shellcheck systemd >/dev/null
  fi
fi

python3 -m pip install -q -r requirements-dev.txt
python3 scripts/fetch_assets.py
