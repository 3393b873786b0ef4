#!/usr/bin/env bash
# Install edge-agent as a service on Raspberry Pi OS / Debian, from this checkout.
#
#   sudo scripts/install.sh               install (or upgrade) and start the service
#   sudo scripts/install.sh --uninstall   remove all but the data, the config and the user
#   scripts/install.sh --prefix DIR       install into a staging root instead (no root
#                                         needed; creates no user, starts nothing)
#
# It creates the user edge-agent (groups gpio and dialout), a virtual environment in
# /opt/edge-agent/venv, the config /etc/edge-agent/agent.toml (never overwriting one
# that exists), the data directory /var/lib/edge-agent and the systemd unit; then it
# enables and starts the unit. Running it again upgrades the code and keeps the rest.
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=""
UNINSTALL=0
START=1
# the system's Python: Debian's python3-lgpio lives there, and a Python under a
# user's home (pyenv) is not readable by the service user
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3 || echo python3)}
USER_NAME=edge-agent
UNIT=edge-agent.service

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
say() { printf 'edge-agent install: %s\n' "$*"; }
die() { printf 'edge-agent install: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#--prefix=}; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

if [ -n "$PREFIX" ]; then
  mkdir -p "$PREFIX"
  PREFIX=$(cd "$PREFIX" && pwd)
  [ "$PREFIX" != / ] || PREFIX=""
fi
STAGED=0; [ -n "$PREFIX" ] && STAGED=1
OPT=$PREFIX/opt/edge-agent
ETC=$PREFIX/etc/edge-agent
STATE=$PREFIX/var/lib/edge-agent
UNIT_DIR=$PREFIX/etc/systemd/system

[ $STAGED -eq 1 ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or with --prefix DIR"
have_systemd() { [ $STAGED -eq 0 ] && [ -d /run/systemd/system ]; }

uninstall() {
  if have_systemd; then
    systemctl disable --now "$UNIT" 2>/dev/null || true
  fi
  rm -f "$UNIT_DIR/$UNIT"
  rm -rf "$OPT"
  if have_systemd; then systemctl daemon-reload; fi
  say "removed the service and $OPT"
  say "kept the config $ETC, the data $STATE and the user $USER_NAME (it owns the data)"
}

create_user() {
  if [ $STAGED -eq 1 ]; then
    say "staged: not creating the user $USER_NAME"
    return
  fi
  for group in gpio dialout; do  # gpio exists on Raspberry Pi OS; elsewhere it does no harm
    getent group "$group" >/dev/null || groupadd --system "$group"
  done
  if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --home-dir /var/lib/edge-agent --no-create-home \
      --shell /usr/sbin/nologin --user-group "$USER_NAME"
    say "created the user $USER_NAME"
  fi
  usermod -a -G gpio,dialout "$USER_NAME"
}

system_packages() {
  [ $STAGED -eq 0 ] && command -v apt-get >/dev/null || return 0
  local wanted=()
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || wanted+=(python3-venv)
  # gpiozero's pin factory on current Pis; from Debian, seen through --system-site-packages
  if apt-cache show python3-lgpio >/dev/null 2>&1 && ! "$PYTHON" -c 'import lgpio' 2>/dev/null; then
    wanted+=(python3-lgpio)
  fi
  if [ ${#wanted[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}"
  fi
}

install_code() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$PYTHON is older than Python 3.10"
  [ -x "$OPT/venv/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$OPT/venv"
  # build from a copy: pip's in-tree build would leave build/ and egg-info in the checkout
  local build
  build=$(mktemp -d)
  trap 'rm -rf "$build"' RETURN
  cp -r "$SOURCE/agent" "$SOURCE/pyproject.toml" "$SOURCE/README.md" "$build/"
  "$OPT/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$build"
  mkdir -p "$OPT/share"
  cp -r "$SOURCE/README.md" "$SOURCE/docs" "$SOURCE/hardware" "$OPT/share/"
  ln -sf share/README.md "$OPT/README.md"
  say "installed $("$OPT/venv/bin/edge-agent" --version 2>/dev/null || echo edge-agent) in $OPT/venv"
}

install_config() {
  mkdir -p "$ETC" "$STATE"
  if [ -e "$ETC/agent.toml" ]; then
    say "kept the existing $ETC/agent.toml"
    cp "$SOURCE/systemd/agent.toml" "$ETC/agent.toml.dist"
  else
    cp "$SOURCE/systemd/agent.toml" "$ETC/agent.toml"
    say "wrote $ETC/agent.toml: list the modality and the PACS there"
  fi
  if [ $STAGED -eq 0 ]; then
    # root owns it; the agent's group may rewrite it (the console's 'config apply')
    chown root:"$USER_NAME" "$ETC" "$ETC/agent.toml"
    chmod 0770 "$ETC"
    chmod 0660 "$ETC/agent.toml"
    chown "$USER_NAME:$USER_NAME" "$STATE"
    chmod 0750 "$STATE"
  fi
  "$OPT/venv/bin/edge-agent" check-config --config "$ETC/agent.toml" >/dev/null ||
    say "WARNING: $ETC/agent.toml is not valid (see above); the service will not start"
}

install_unit() {
  mkdir -p "$UNIT_DIR"
  install -m 0644 "$SOURCE/systemd/$UNIT" "$UNIT_DIR/$UNIT"
  if ! have_systemd; then
    say "unit in $UNIT_DIR; not starting it (no systemd here, or staged)"
  elif [ $START -eq 0 ]; then
    systemctl daemon-reload
    systemctl enable "$UNIT"
    say "enabled $UNIT; start it with: systemctl start edge-agent"
  else
    systemctl daemon-reload
    systemctl enable "$UNIT"
    systemctl restart "$UNIT"  # restart, not start: an upgrade must run the new code
    say "started $UNIT: systemctl status edge-agent, journalctl -u edge-agent"
  fi
}

if [ $UNINSTALL -eq 1 ]; then
  uninstall
  exit 0
fi
system_packages
create_user
install_code
install_config
install_unit
