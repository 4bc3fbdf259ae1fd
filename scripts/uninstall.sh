#!/usr/bin/env bash
# Remove what scripts/install.sh installed. Stopping the service runs its ExecStopPost, which
# drives the relay pin to its locked level; after that the pin is released.
#
#     sudo bash scripts/uninstall.sh            # keeps /etc/livegate and /var/lib/livegate
#     sudo bash scripts/uninstall.sh --purge    # also config, secrets, event journal, audit log,
#                                               # enrolled people, and the user livegate
#
# apt packages stay (other software may use them). Options, as for install.sh:
#   --no-systemctl (or LIVEGATE_SKIP_SYSTEMCTL=1), --destdir DIR (or DESTDIR=DIR)
set -euo pipefail

PREFIX=/opt/livegate
CONF_DIR=/etc/livegate
STATE_DIR=/var/lib/livegate
UNIT=/etc/systemd/system/livegate.service
SYSUSERS=/etc/sysusers.d/livegate.conf
CLI=/usr/local/bin/livegate
SERVICE_USER=livegate

purge=no
skip_systemctl=${LIVEGATE_SKIP_SYSTEMCTL:-0}
destdir=${DESTDIR:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) purge=yes; shift ;;
    --no-systemctl) skip_systemctl=1; shift ;;
    --destdir) destdir="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
ROOT=${destdir%/}
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "uninstall.sh: run it as root: sudo bash scripts/uninstall.sh" >&2
  exit 1
fi

removed() { printf 'removed  %s\n' "$1"; }
remove() {  # path...
  local path
  for path in "$@"; do
    if [ -e "$ROOT$path" ] || [ -L "$ROOT$path" ]; then
      rm -rf -- "$ROOT$path"
      removed "$path"
    fi
  done
}

if [ "$skip_systemctl" != 1 ]; then
  if systemctl cat livegate.service >/dev/null 2>&1; then
    # --now stops it: ExecStopPost locks the door before the unit goes away.
    systemctl disable --now livegate.service
    echo "stopped and disabled livegate.service (relay driven locked)"
  fi
fi

remove "$UNIT" "$CLI" "$PREFIX"

if [ "$skip_systemctl" != 1 ]; then
  systemctl daemon-reload
  systemctl reset-failed livegate.service 2>/dev/null || true
fi

if [ "$purge" = yes ]; then
  # Drop-ins from `systemctl edit livegate` are local configuration too.
  remove "$CONF_DIR" "$STATE_DIR" "$UNIT.d"
  if [ -z "$ROOT" ]; then
    if id "$SERVICE_USER" >/dev/null 2>&1; then
      userdel "$SERVICE_USER"
      removed "user $SERVICE_USER"
    fi
    # userdel keeps the user's own group where login.defs says USERGROUPS_ENAB no.
    if getent group "$SERVICE_USER" >/dev/null; then
      groupdel "$SERVICE_USER"
      removed "group $SERVICE_USER"
    fi
  elif [ "$(id -u)" = 0 ]; then
    if grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd" 2>/dev/null; then
      userdel --root "$ROOT" "$SERVICE_USER"
      removed "user $SERVICE_USER (under $ROOT)"
    fi
    if grep -q "^$SERVICE_USER:" "$ROOT/etc/group" 2>/dev/null; then
      groupdel --root "$ROOT" "$SERVICE_USER"
      removed "group $SERVICE_USER (under $ROOT)"
    fi
  else
    echo "not root: user $SERVICE_USER under $ROOT left in place"
  fi
  remove "$SYSUSERS"
  echo "purged. The groups gpio and video and the apt packages stay."
else
  echo "kept     $CONF_DIR (config, secrets), $STATE_DIR (journal, audit log, enrolled people)"
  [ ! -d "$ROOT$UNIT.d" ] || echo "kept     $UNIT.d (local unit overrides)"
  echo "kept     user $SERVICE_USER; remove all of it with: sudo bash scripts/uninstall.sh --purge"
fi
