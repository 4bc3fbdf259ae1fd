# shellcheck shell=bash
# Sourced by scripts/setup.sh and scripts/demo.sh: the project venv (.venv) made from the system
# python3 and the Python packages installed into it. Debian 12 / Raspberry Pi OS mark their python3
# "externally managed" (PEP 668): pip refuses to install into it, so everything goes into .venv.
#
#   ensure_venv REQUIREMENTS_FILE   sets VENV_PY to the venv's python
#
# LIVEGATE_VENV names another venv folder. The packages are installed again only when a
# requirements file changed since the last install (a stamp in the venv), with pip's own progress:
# each package, its size and a progress bar.

ensure_venv() {
  local req=$1
  local venv=${LIVEGATE_VENV:-.venv}
  VENV_PY="$venv/bin/python"
  if ! "$VENV_PY" -m pip --version >/dev/null 2>&1; then
    local flags=()
    # picamera2 comes only from apt on Raspberry Pi OS (python3-picamera2): let the venv see it.
    if python3 -c 'import picamera2' >/dev/null 2>&1; then
      flags+=(--system-site-packages)
    fi
    echo "setup: creating the project venv $venv from $(command -v python3) ($(python3 -V 2>&1))"
    if ! python3 -m venv --clear "${flags[@]}" "$venv"; then
      echo "setup: python3 cannot create a venv: install python3-venv (sudo apt-get install" \
           "python3-venv) and run this again" >&2
      return 1
    fi
  fi
  local stamp want done_req
  stamp="$venv/.livegate-$(basename "$req").sha256"
  want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  # requirements-dev.txt includes every other set: after it, nothing else needs installing.
  for done_req in "$req" requirements-dev.txt; do
    if [ "$(cat "$venv/.livegate-$done_req.sha256" 2>/dev/null)" = "$want" ]; then
      echo "setup: $venv already has the packages of $req"
      return 0
    fi
  done
  echo "setup: installing the packages of $req into $venv: pip lists each one with its size," \
       "then unpacks them all (the first time a few minutes, a minute of it without output)"
  "$VENV_PY" -m pip install --progress-bar on -r "$req"
  echo "$want" > "$stamp"
}
