#!/usr/bin/env bash
# Everything the tests need on a fresh machine, then all the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q "$@"
