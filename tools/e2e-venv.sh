#!/usr/bin/env bash
# Creates (once) the Python venv the pytest suites use: the real `openai` and `ollama` clients,
# httpx, pytest and requests at the versions pinned in Tests/e2e/requirements.txt. Prints the
# venv's python. Cached: a second run is instant while requirements.txt is unchanged (its sha256
# is stored in the venv once the install succeeded; without it the venv is rebuilt from scratch).
#   PY="$(tools/e2e-venv.sh)" && "$PY" -m pytest Tests/e2e
# Env: MESHD_CACHE (default ~/.cache/meshd), PYTHON (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/Tests/e2e/requirements.txt"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
VENV="$CACHE/venv-e2e"
STAMP="$VENV/.meshd-requirements.sha256"
PY="$VENV/bin/python"
[ -f "$REQ" ] || { echo "e2e-venv: $REQ not found" >&2; exit 1; }
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "$PY"; exit 0
fi
mkdir -p "$CACHE"
# Start clean: a stale or half-installed venv is never patched up.
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV" >&2
"$PY" -m pip install -q --disable-pip-version-check -r "$REQ" >&2 || {
  echo "e2e-venv: pip install -r $REQ failed" >&2; exit 1; }
"$PY" -c 'import openai, ollama, httpx, pytest, requests' >&2 || {
  echo "e2e-venv: the installed packages do not import" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "$PY"
