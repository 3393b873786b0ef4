#!/usr/bin/env bash
# Install everything the tests need on Debian / Raspberry Pi OS, then run lint, type
# check and the whole suite. Safe to run again; CI (.ci/run) runs exactly this.
#
# The whole suite runs under python3 (in .venv), then the tests not marked `slow` run again
# under each Python the boxes ship or pyproject promises, where this machine has it (each
# in its own .venv-3.X): 3.10 (requires-python), 3.13 (the trixie-based Raspberry Pi OS;
# bookworm has 3.11). The slow ones (real peers at length, power cuts, soaks) exercise the
# same code paths as the rest, and three full runs would not fit CI's time.
# Arguments go to pytest, in every run.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
for tool in /usr/bin/storescu /usr/bin/dcmqrscp; do [ -x "$tool" ] || need_apt+=(dcmtk); done
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -x /usr/bin/promtool ] || need_apt+=(prometheus)  # promtool checks /metrics and the alert rules
command -v curl >/dev/null || need_apt+=(curl)  # the README's metrics example
# DICOMweb destinations: Orthanc's DICOMweb plugin, nginx as the authenticating proxy
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# GDCM's network library as a client (tests/test_gdcm_client.py), in the system Python
/usr/bin/python3 -c 'import gdcm' 2>/dev/null || need_apt+=(python3-gdcm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# tests/lazyfs.py (the power-cut tests' file system) runs on libfuse2 through fusepy
/sbin/ldconfig -p | grep -q 'libfuse\.so\.2 ' || need_apt+=(libfuse2)
if [ ${#need_apt[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u)
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

EXTRA_PYTHONS=(3.10 3.13)

# is_python 3.10 PYTHON: true if PYTHON runs, is Python 3.10 and can make a venv
is_python() {
  "$2" -c "import sys, venv, ensurepip
sys.exit('%d.%d' % sys.version_info[:2] != '$1')" 2>/dev/null
}

# find_python 3.10: print the path of a Python 3.10 that can make a venv, or nothing
find_python() {
  local candidate
  for candidate in $(ls -d "$HOME"/.pyenv/versions/"$1".*/bin/python3 2>/dev/null | sort -Vr) \
                   "$(command -v "python$1" || true)"; do
    if [ -n "$candidate" ] && is_python "$1" "$candidate"; then echo "$candidate"; return; fi
  done
}

# venv_for 3.10 PYTHON: make (or keep) .venv-3.10 from PYTHON, with the test extras
venv_for() {
  is_python "$1" ".venv-$1/bin/python" || "$2" -m venv --clear ".venv-$1"
  ".venv-$1/bin/python" -m pip install -q --upgrade pip
  ".venv-$1/bin/python" -m pip install -q -e '.[test]'
}

echo "== ruff"
.venv/bin/ruff check agent tests scripts
echo "== mypy (as Python 3.11, then as 3.10 and 3.13: APIs one lacks, or has removed)"
.venv/bin/mypy
for version in "${EXTRA_PYTHONS[@]}"; do .venv/bin/mypy --python-version "$version"; done
echo "== pytest ($(.venv/bin/python -V))"
.venv/bin/python -m pytest "$@"

failed=()
for version in "${EXTRA_PYTHONS[@]}"; do
  python=$(find_python "$version")
  if [ -z "$python" ]; then
    echo "== pytest (Python $version): SKIPPED, this machine has no Python $version that can" \
         "make a venv (looked for \$HOME/.pyenv/versions/$version.*/bin/python3, python$version)"
    continue
  fi
  echo "== pytest -m 'not slow' (Python $version: $python, in .venv-$version)"
  start=$SECONDS
  venv_for "$version" "$python"
  ".venv-$version/bin/python" -m pytest -m "not slow" "$@" || failed+=("$version")
  echo "== pytest (Python $version): $((SECONDS - start)) s with the install"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "== FAILED under Python ${failed[*]}"
  exit 1
fi
