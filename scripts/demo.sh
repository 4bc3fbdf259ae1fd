#!/usr/bin/env bash
# The demo: the daemon on the sample clips (../shared/videos) with a mock relay, events printed as
# JSON lines. It enrols the person of one clip first (from the first part of that clip), so the
# default access policy (live AND enrolled) is what runs. Without the clips it uses camera 0, and
# stops at once, saying why, when there is no camera either.
#
# Python packages go into the project venv .venv (scripts/venv.sh), never into the system python3.
# LIVEGATE_DEMO_VIDEOS names another clip folder; LIVEGATE_PY runs with that python as it is
# (no venv, nothing installed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${LIVEGATE_PY:-}" ]; then
  py=$LIVEGATE_PY
else
  # shellcheck source=scripts/venv.sh
  source scripts/venv.sh
  ensure_venv requirements.txt >&2  # stdout carries the events only
  py=$VENV_PY
  "$py" scripts/fetch_assets.py --only res10 >&2
fi

videos="${LIVEGATE_DEMO_VIDEOS:-../shared/videos}"
state="var/demo"
config="$state/config.yaml"
mkdir -p "$state"
cat > "$config" <<YAML
# Demo config: written by scripts/demo.sh. MQTT is off: events are printed instead.
state_dir: .
liveness:
  model: ../../models/liveness.tflite
relay:
  mock: true
mqtt:
  enabled: false
YAML

shopt -s nullglob
real_clips=("$videos"/*_real.*)
if [ "${#real_clips[@]}" -gt 0 ]; then
  enrol_clip=${real_clips[0]}
  person=$(basename "$enrol_clip" | sed 's/_real\..*//')
  echo "demo: enrolling '$person' from the first 40% of $enrol_clip" >&2
  "$py" -m edge enroll remove "$person" --config "$config" >/dev/null 2>&1 || true
  "$py" -m edge enroll add "$person" --source "$enrol_clip" --end 0.4 --config "$config"
  for clip in "$videos"/*; do
    echo "demo: --- $(basename "$clip") (mock relay; events below) ---" >&2
    "$py" -m edge run --config "$config" --source "$clip" --relay mock --events-out -
  done
else
  # The daemon retries a camera that fails (right for a door); the demo checks once instead.
  if ! "$py" -c 'import sys, cv2; c = cv2.VideoCapture(0); ok = c.isOpened() and c.read()[0]
c.release(); sys.exit(0 if ok else 1)' 2>/dev/null; then
    echo "demo: no sample clips (no *_real.* in $videos) and no camera (index 0 does not open" \
         "or gives no frame): nothing to show. Put clips there, set LIVEGATE_DEMO_VIDEOS," \
         "or connect a camera." >&2
    exit 1
  fi
  echo "demo: $videos has no clips: using the first camera (index 0); nobody is enrolled, so" \
       "the door stays locked until you run: $py -m edge enroll add NAME --source 0 --config" \
       "$config" >&2
  "$py" -m edge run --config "$config" --source 0 --relay mock --events-out -
fi
