#!/usr/bin/env bash
# Install or upgrade LiveGate on a Raspberry Pi (64-bit Raspberry Pi OS) as the systemd service
# `livegate`. Run it from a clone of the repository:
#
#     sudo bash scripts/install.sh
#
# Safe to run again (that is how to upgrade: git pull, then run it again). It installs the code in
# /opt/livegate/app, a venv in /opt/livegate/venv (with apt's picamera2 visible), the model files
# in /opt/livegate/assets (sha256-checked), the user `livegate` (groups gpio, video), the unit and
# the `livegate` command. It never overwrites /etc/livegate (config, secrets) or /var/lib/livegate
# (event journal, audit log, enrolled people).
#
# Options:
#   --camera SOURCE  camera of a new config: picamera2 (default), 0 (first USB camera), a URL
#   --no-start       enable the service but do not (re)start it now (e.g. relay not wired yet)
#   --no-apt         do not install system packages            (or LIVEGATE_SKIP_APT=1)
#   --no-pip         do not install Python packages in the venv (or LIVEGATE_SKIP_PIP=1)
#   --no-systemctl   do not call systemctl                      (or LIVEGATE_SKIP_SYSTEMCTL=1)
#   --destdir DIR    write every file under DIR instead of /    (or DESTDIR=DIR). For tests and
#                    staging: the venv built there is not relocatable; users go to DIR/etc only.
#   --assets-from D  copy already fetched model files from D first (default: the clone's assets/)
#   --python PY      the Python that builds the venv            (or LIVEGATE_PYTHON; python3)
set -euo pipefail
# A sudo user's umask of 077 would make the code unreadable to the service user.
umask 022

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/livegate            # fixed: systemd/livegate.service names these paths
APP=$PREFIX/app
VENV=$PREFIX/venv
ASSETS=$PREFIX/assets
CONF_DIR=/etc/livegate
CONFIG=$CONF_DIR/config.yaml
CRED_DIR=$CONF_DIR/credentials
UNIT=/etc/systemd/system/livegate.service
SYSUSERS=/etc/sysusers.d/livegate.conf
CLI=/usr/local/bin/livegate
SERVICE_USER=livegate
# Published only as a source archive (pure data): the one package pip may build.
SDIST_ONLY=face-recognition-models

camera=picamera2
start=yes
skip_apt=${LIVEGATE_SKIP_APT:-0}
skip_pip=${LIVEGATE_SKIP_PIP:-0}
skip_systemctl=${LIVEGATE_SKIP_SYSTEMCTL:-0}
destdir=${DESTDIR:-}
assets_from=$SRC/assets
python=${LIVEGATE_PYTHON:-python3}

while [ $# -gt 0 ]; do
  case "$1" in
    --camera) camera="$2"; shift 2 ;;
    --no-start) start=no; shift ;;
    --no-apt) skip_apt=1; shift ;;
    --no-pip) skip_pip=1; shift ;;
    --no-systemctl) skip_systemctl=1; shift ;;
    --destdir) destdir="$2"; shift 2 ;;
    --assets-from) assets_from="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT=${destdir%/}   # "" on the Pi itself
say() { printf '\n==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }  # one line, all arguments

# --- preflight ------------------------------------------------------------------------------------
for f in edge/__main__.py systemd/livegate.service systemd/livegate.sysusers requirements-pi.txt \
         scripts/fetch_assets.py config.yaml; do
  [ -e "$SRC/$f" ] || die "$SRC/$f is missing: run this script from a LiveGate clone"
done
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run it as root: sudo bash scripts/install.sh"
fi
case "$camera" in
  *\"*|*\\*|*$'\n'*|'') die "--camera: quotes, backslashes and newlines are not allowed" ;;
esac
if [ "$skip_pip" != 1 ] && [ "$(uname -m)" != aarch64 ]; then
  die "this is $(uname -m), not aarch64: LiveGate needs 64-bit Raspberry Pi OS" \
    "(requirements-pi.txt pins aarch64 wheels)"
fi

# --- system packages ------------------------------------------------------------------------------
if [ "$skip_apt" != 1 ]; then
  say "system packages (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  packages=(python3-venv python3-lgpio mosquitto-clients ca-certificates)
  # picamera2 only exists in Raspberry Pi OS's repository; without it only USB/RTSP cameras work.
  if apt-cache show python3-picamera2 >/dev/null 2>&1; then
    packages+=(python3-picamera2)
  else
    echo "python3-picamera2 is not available (not Raspberry Pi OS?): USB or RTSP cameras only"
  fi
  # No recommends: picamera2 would pull in Qt and OpenGL preview support a door never shows.
  apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

command -v "$python" >/dev/null 2>&1 || die "$python not found (apt-get install python3)"
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$py_version" in
  3.11|3.13) ;;
  3.[0-9]|3.10) die "Python $py_version is too old: LiveGate needs 3.11 (Bookworm) or 3.13 (Trixie)" ;;
  *) echo "warning: Python $py_version: requirements-pi.txt carries wheels for 3.11 and 3.13 only" ;;
esac

# --- service user ---------------------------------------------------------------------------------
say "service user $SERVICE_USER (groups gpio, video)"
install -D -m 0644 "$SRC/systemd/livegate.sysusers" "$ROOT$SYSUSERS"
if [ -n "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "not root: user creation skipped under $ROOT"
elif command -v systemd-sysusers >/dev/null 2>&1; then
  # Creates the user and the groups it lacks; changes nothing when they are there already.
  if [ -n "$ROOT" ]; then
    systemd-sysusers --root="$ROOT" "$ROOT$SYSUSERS"
  else
    systemd-sysusers "$SYSUSERS"
  fi
elif [ -z "$ROOT" ]; then
  for group in gpio video; do getent group "$group" >/dev/null || groupadd --system "$group"; done
  id "$SERVICE_USER" >/dev/null 2>&1 || useradd --system --user-group \
    --home-dir /var/lib/livegate --no-create-home --shell /usr/sbin/nologin \
    --comment "LiveGate door daemon" "$SERVICE_USER"
  usermod -a -G gpio,video "$SERVICE_USER"
else
  echo "systemd-sysusers not found: user creation skipped under $ROOT"
fi

# --- code (staged, swapped in once checked) -------------------------------------------------------
say "code -> $APP"
mkdir -p "$ROOT$PREFIX"
staged="$ROOT$APP.new"
rm -rf "$staged"
mkdir -p "$staged"
items=()
for item in edge models scripts systemd docs config.yaml requirements-pi.txt README.md \
            pyproject.toml LICENSE; do
  [ -e "$SRC/$item" ] && items+=("$item")
done
# The Pi runs the int8 .tflite models only: the float Keras model (bench) and v1 (the bench's
# comparison) stay in the clone.
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' --exclude='models/*.keras' \
  --exclude=models/v1 -cf - "${items[@]}" | tar -C "$staged" -xf -
# The model must be there: without it the daemon refuses to start (exit 2, door locked).
[ -f "$staged/models/liveness.tflite" ] \
  || echo "warning: models/liveness.tflite is missing from the clone: the service will refuse to start"

# --- venv + Python packages -----------------------------------------------------------------------
say "venv $VENV (--system-site-packages, for apt's picamera2 and lgpio)"
venv_py="$ROOT$VENV/bin/python"
venv_flags=(--clear --system-site-packages)
[ "$skip_pip" != 1 ] || venv_flags+=(--without-pip)  # nothing to install: skip ensurepip
if [ -x "$venv_py" ] \
   && [ "$("$venv_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
        = "$py_version" ] \
   && { [ "$skip_pip" = 1 ] || "$venv_py" -m pip --version >/dev/null 2>&1; }; then
  echo "kept (Python $py_version)"
else
  # Missing, broken, without pip, or built by another Python (an OS upgrade): build it again.
  "$python" -m venv "${venv_flags[@]}" "$ROOT$VENV"
fi
if [ "$skip_pip" != 1 ]; then
  say "Python packages (requirements-pi.txt: pinned, sha256-checked, prebuilt wheels)"
  "$venv_py" -m pip install --no-input --disable-pip-version-check --require-hashes \
    --only-binary=:all: --no-binary="$SDIST_ONLY" -r "$staged/requirements-pi.txt"
  # Every runtime import once, so a broken wheel shows here and not at the door. picamera2 with
  # the venv's numpy is the pair that breaks when their ABIs differ.
  imports="cv2, numpy, ai_edge_litert.interpreter, gpiozero, paho.mqtt.client, pydantic, yaml, dlib"
  if dpkg-query -W -f='${Status}' python3-picamera2 2>/dev/null | grep -q "ok installed"; then
    imports="$imports, picamera2"
  fi
  "$venv_py" -c "import $imports; print('imports OK: numpy', numpy.__version__, 'opencv', cv2.__version__)"
fi
"$venv_py" -m compileall -q "$staged/edge" >/dev/null

# --- model files ----------------------------------------------------------------------------------
say "model files -> $ASSETS (sha256-checked)"
mkdir -p "$ROOT$ASSETS"
if [ -d "$assets_from" ]; then
  # Reuse files the clone already fetched; fetch_assets.py checks every hash and fetches the rest.
  for name in $(cd "$staged" && "$venv_py" -c \
      'from edge.assets import MEDIAPIPE_ASSETS, RES10_ASSETS
for a in RES10_ASSETS + MEDIAPIPE_ASSETS: print(a.name)'); do
    if [ -f "$assets_from/$name" ] && [ ! -f "$ROOT$ASSETS/$name" ]; then
      cp "$assets_from/$name" "$ROOT$ASSETS/$name"
    fi
  done
fi
"$venv_py" "$staged/scripts/fetch_assets.py" --dest "$ROOT$ASSETS"

# --- configuration and secrets (never overwritten) ------------------------------------------------
say "configuration $CONFIG"
mkdir -p "$ROOT$CONF_DIR"
install -d -m 0700 "$ROOT$CRED_DIR"
chmod 0700 "$ROOT$CRED_DIR"
if [ -e "$ROOT$CONFIG" ]; then
  echo "kept (an upgrade never changes it; every key: $APP/config.yaml)"
else
  cat > "$ROOT$CONFIG.new" <<EOF
# LiveGate on this Raspberry Pi. Written once by scripts/install.sh and kept on upgrades.
# Every key with its default and meaning: $APP/config.yaml (copy what you want to change here).
# After a change:  sudo livegate check-config && sudo systemctl restart livegate
state_dir: /var/lib/livegate     # systemd's StateDirectory: event journal, audit log, enrolled people

camera:
  source: "$camera"              # picamera2 = Pi camera; "0" = first USB camera; or an rtsp:// URL

detector:
  assets_dir: $ASSETS

liveness:
  model: $APP/models/liveness.tflite

access:
  policy: enrolled               # live AND recognised; enrol people with: sudo livegate enroll ...

relay:
  pin: 17                        # BCM GPIO number of the relay board's input
  active_high: true              # true: the relay closes (door unlocks) when the pin is high
  pulse_s: 3.0                   # unlock time per grant (at most 10 s)

mqtt:
  enabled: true
  host: 127.0.0.1
  port: 1883
  username: null
  # Secrets never go here: put the password in $CRED_DIR/mqtt_password (root-only),
  # then point at systemd's copy of it:
  password_file: null            # /run/credentials/livegate.service/secret_mqtt_password
  device_id: door

homeassistant:
  discovery: true
  remote_unlock: false

logging:
  level: INFO
EOF
  mv "$ROOT$CONFIG.new" "$ROOT$CONFIG"
  echo "written (camera: $camera, relay: GPIO 17, active high)"
fi
chmod 0644 "$ROOT$CONFIG"
if [ -z "$ROOT" ]; then
  # What StateDirectory= makes at the first start, already now: enrolment may come first.
  install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/livegate
fi
# Validate with the new code before it replaces the old one: an upgrade whose code refuses the
# kept config would leave the door without its daemon.
# --no-files: the paths it names are those of the installed system, not all in place yet.
checker=""
if (cd "$staged" && "$venv_py" -c 'import pydantic, yaml' 2>/dev/null); then
  checker=$venv_py
elif (cd "$staged" && "$python" -c 'import pydantic, yaml' 2>/dev/null); then
  # --no-pip leaves the venv empty, and a venv built from another venv's Python does not see
  # that venv's packages: the Python that built it can still read the config.
  checker=$python
fi
if [ -n "$checker" ]; then
  if ! (cd "$staged" && "$checker" -m edge check-config --no-files --config "$ROOT$CONFIG"); then
    rm -rf "$staged"
    die "$CONFIG is not valid for this version (see above); the installed code is unchanged"
  fi
else
  echo "check-config skipped: pydantic/PyYAML are neither in the venv (--no-pip) nor in $python"
fi

rm -rf "$ROOT$APP.old"
[ ! -e "$ROOT$APP" ] || mv "$ROOT$APP" "$ROOT$APP.old"
mv "$staged" "$ROOT$APP"
rm -rf "$ROOT$APP.old"

# --- unit and command line ------------------------------------------------------------------------
say "systemd unit $UNIT and the command $CLI"
install -D -m 0644 "$SRC/systemd/livegate.service" "$ROOT$UNIT"
mkdir -p "$ROOT$(dirname "$CLI")"
cat > "$ROOT$CLI.new" <<EOF
#!/bin/sh
# LiveGate's command line as the service user, with the service's settings (written by install.sh):
#   sudo livegate check-config | enroll ... | calibrate | verify-audit | lock | unregister
set -eu
umask 077
# It runs in a private work folder (below): a relative path given to an option that takes one
# names a file where the command was typed, so it is made absolute first. A number (camera
# index), "-" (stdout), a URL and picamera2 are not paths.
here=\$(pwd)
absolute() {
  case "\$1" in
    /*|-|*://*|picamera2|'') printf '%s' "\$1" ;;
    *[!0-9]*) printf '%s/%s' "\$here" "\$1" ;;
    *) printf '%s' "\$1" ;;
  esac
}
prev=
for arg do
  shift
  case "\$prev" in
    --config|--source|--events-out|--out|--path) arg=\$(absolute "\$arg") ;;
  esac
  case "\$arg" in
    --config=*|--source=*|--events-out=*|--out=*|--path=*)
      arg="\${arg%%=*}=\$(absolute "\${arg#*=}")" ;;
  esac
  set -- "\$@" "\$arg"
  prev=\$arg
done
if [ "\$(id -u)" = 0 ]; then
  exec runuser -u $SERVICE_USER -- "\$0" "\$@"
fi
export PYTHONPATH=$APP LIVEGATE_ASSETS=$ASSETS PYTHONDONTWRITEBYTECODE=1 GPIOZERO_PIN_FACTORY=lgpio
# lgpio makes its notification pipe in the working directory: give it a private, writable one.
work=\$(mktemp -d "\${TMPDIR:-/tmp}/livegate.XXXXXX")
trap 'rm -rf "\$work"' EXIT
cd "\$work"
export LG_WD="\$work"
case "\${1:-} \$*" in
  *" --config"*) ;;
  run\ *|check-config\ *|lock\ *|verify-audit\ *|unregister\ *|enroll\ *|calibrate\ *)
    first=\$1; shift; set -- "\$first" --config $CONFIG "\$@" ;;
esac
$VENV/bin/python -P -m edge "\$@"
EOF
chmod 0755 "$ROOT$CLI.new"
mv "$ROOT$CLI.new" "$ROOT$CLI"

# --- enable, start, health check ------------------------------------------------------------------
if [ "$skip_systemctl" = 1 ]; then
  say "systemctl skipped: files are in place under ${ROOT:-/}"
else
  say "service"
  systemctl daemon-reload
  systemctl enable livegate.service
  if [ "$start" = yes ]; then
    # A unit stopped by its start limit refuses to start until the failure count is cleared.
    systemctl reset-failed livegate.service 2>/dev/null || true
    # Type=notify: restart returns once the daemon said READY=1 (camera, models, relay up) or
    # failed; a few seconds later it must still be the same process, not a restarted one.
    if systemctl restart livegate.service && sleep "${LIVEGATE_SETTLE_S:-5}" \
       && systemctl is-active --quiet livegate.service \
       && [ "$(systemctl show -p NRestarts --value livegate.service)" = 0 ]; then
      echo "livegate is running (PID $(systemctl show -p MainPID --value livegate.service))"
    else
      echo "livegate did not start. Its last log lines:" >&2
      journalctl -u livegate.service -n 40 --no-pager >&2 || true
      die "fix the cause above, then: sudo systemctl restart livegate (the door stays locked)"
    fi
  else
    echo "enabled, not started (--no-start): sudo systemctl start livegate"
  fi
fi

cat <<EOF

LiveGate is installed. Next:
  - follow it:         journalctl -u livegate -f
  - enrol people:      sudo systemctl stop livegate        (it holds the camera)
                       sudo livegate enroll add NAME --source VIDEO_FILE|PHOTO_FOLDER|0
                       sudo systemctl start livegate
  - change settings:   sudoedit $CONFIG
                       sudo livegate check-config && sudo systemctl restart livegate
  - MQTT password:     sudo install -m 600 /dev/stdin $CRED_DIR/mqtt_password   (type it, Ctrl-D)
                       then set mqtt.username and
                       mqtt.password_file: /run/credentials/livegate.service/secret_mqtt_password
  - upgrade:           git pull && sudo bash scripts/install.sh
  - remove:            sudo bash scripts/uninstall.sh   (--purge also deletes config and data)
EOF
