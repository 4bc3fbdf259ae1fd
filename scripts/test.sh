#!/usr/bin/env bash
# Everything the tests need on a fresh machine (scripts/setup.sh: the project venv .venv and its
# packages, the model files, mosquitto when root), then all the tests in that venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${LIVEGATE_VENV:-.venv}/bin/python" -m pytest -q "$@"
