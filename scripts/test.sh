#!/usr/bin/env bash
# Install everything the tests need on Debian / Raspberry Pi OS, then run lint, type
# check and the whole suite. Safe to run again; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
for tool in /usr/bin/storescu /usr/bin/dcmqrscp; do [ -x "$tool" ] || need_apt+=(dcmtk); done
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u)
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check agent tests scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
