#!/usr/bin/env bash
# The demo: the daemon on the sample clips (../shared/videos) with a mock relay, events printed as
# JSON lines. It enrols the person of one clip first (from the first part of that clip), so the
# default access policy (live AND enrolled) is what runs. Without the clips it uses camera 0.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -r requirements.txt
python3 scripts/fetch_assets.py >/dev/null

videos="../shared/videos"
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

if [ -d "$videos" ] && ls "$videos"/*_real.* >/dev/null 2>&1; then
  enrol_clip=$(ls "$videos"/*_real.* | head -n 1)
  person=$(basename "$enrol_clip" | sed 's/_real\..*//')
  echo "demo: enrolling '$person' from the first 40% of $enrol_clip" >&2
  python3 -m edge enroll remove "$person" --config "$config" >/dev/null 2>&1 || true
  python3 -m edge enroll add "$person" --source "$enrol_clip" --end 0.4 --config "$config"
  for clip in "$videos"/*; do
    echo "demo: --- $(basename "$clip") (mock relay; events below) ---" >&2
    python3 -m edge run --config "$config" --source "$clip" --relay mock --events-out -
  done
else
  echo "demo: $videos not found: using the first camera (index 0); nobody is enrolled, so the" \
       "door stays locked until you run: python3 -m edge enroll add NAME --source 0 --config $config" >&2
  python3 -m edge run --config "$config" --source 0 --relay mock --events-out -
fi
