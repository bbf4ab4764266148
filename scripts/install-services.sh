#!/usr/bin/env bash
# Installs the servers the tests start (Postgres, Redis) and the browser the dashboard tests drive
# (headless Chromium) from Debian packages when absent.
# Tests start and stop their own instances on loopback (tests/services.py); nothing runs here.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
id postgres >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-services: need ${need[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  echo "install-services: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The packages would start system-wide servers; the tests start their own. A policy-rc.d that
  # denies every start keeps the maintainer scripts from starting them (Debian's documented switch;
  # one already there is left alone), which spares starting and then stopping them.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  service postgresql stop >/dev/null 2>&1 || true
  service redis-server stop >/dev/null 2>&1 || true
fi
