#!/usr/bin/env bash
# A chaos run of meshd on the multi-host test bed (issue 17; needs root): five hosts under mixed
# load while a seeded driver kills, freezes, cuts and heals them, kills engines and restarts
# avahi-daemon; the invariants are printed as figures at the end (Tests/chaos/README.md).
#   tools/chaos.sh --seed 7 --duration 1800 [--json run.json]   # the long run (30 min)
# Uses $MESHD_BIN, $MESHCTL_BIN, $SIM_ENGINE_BIN when set, else the debug build; $PY when set, else
# the venv of tools/e2e-venv.sh. Exit status: 0 every invariant held, 1 one failed, 2 usage / not root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-$(tools/e2e-venv.sh)}"
if [ -z "${MESHD_BIN:-}" ]; then
  BIN="$(swift build --show-bin-path)"
  export MESHD_BIN="$BIN/meshd" MESHCTL_BIN="$BIN/meshctl" SIM_ENGINE_BIN="$BIN/meshd-sim-engine"
fi
exec "$PY" Tests/chaos/chaos.py "$@"
