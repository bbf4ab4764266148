#!/usr/bin/env bash
# `make bench`: alignd vs TRL on the same model, data and machine, each benchmark in one run.
# Prints samples/s, peak RSS and the ratios; results also land in bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup-trl.sh >/dev/null
mkdir -p bench/out
for script in bench/dpo_vs_trl.py bench/grpo_vs_trl.py; do
  if [ -f "$script" ]; then
    echo "== $script"
    .venv/bin/python "$script" "$@"
  fi
done
