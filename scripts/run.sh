#!/usr/bin/env bash
# Quick start: install edge-agent into ./.venv and run it on its built-in default
# (AE EDGE, port 11112, data in ./edge-data, echo and store open to any AE).
# Arguments go to `edge-agent run`: scripts/run.sh --config edge.toml
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv

# Install only when pyproject.toml (dependencies, entry points) changed since the last
# install: the package is editable, so code changes need none, and pip takes seconds.
stamp=.venv/edge-agent-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/edge-agent ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -e .
  echo "$want" > "$stamp"
fi
exec .venv/bin/edge-agent run "$@"
