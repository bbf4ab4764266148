#!/usr/bin/env bash
# The peer, TRL, lives in its own venv so it never changes what alignd runs with. Same torch,
# transformers, accelerate and peft versions as alignd (pinned in pyproject.toml), latest TRL.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-trl
if [ ! -f "$VENV/.installed" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.13.0 transformers==5.24.0 accelerate==1.15.0 peft==0.21.2 \
    trl==1.16.0 datasets psutil
  touch "$VENV/.installed"
fi
echo "$VENV"
