#!/usr/bin/env bash
# Creates (once) the Python venv with Open WebUI, which the e2e suite drives as a real front end
# (Tests/e2e/test_e2e_open_webui.py). Prints the venv's python. Cached like tools/e2e-venv.sh: a
# second run is instant while the pinned version below is unchanged. Open WebUI is large (its RAG
# stack pulls torch): a CPU-only torch is asked for first (about 3 GB instead of 7 GB), the default
# one when no CPU build can be found. The first run takes several minutes.
#   PY="$(tools/owui-venv.sh)" && "$PY" -m open_webui --help
# Env: MESHD_CACHE (default ~/.cache/meshd), PYTHON (default python3; Open WebUI needs 3.11 or 3.12).
set -euo pipefail
OWUI_VERSION="0.12.4"
TORCH_CPU="torch==2.13.0+cpu"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
VENV="$CACHE/venv-owui"
STAMP="$VENV/.meshd-open-webui"
PY="$VENV/bin/python"
want="open-webui==$OWUI_VERSION"
if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "$PY"; exit 0
fi
mkdir -p "$CACHE"
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV" >&2
pip() { "$PY" -m pip install -q --disable-pip-version-check "$@" >&2; }
if ! pip "$TORCH_CPU" "$want"; then
  echo "owui-venv: no $TORCH_CPU here; installing Open WebUI with its default torch" >&2
  pip "$want" || { echo "owui-venv: pip install $want failed" >&2; exit 1; }
fi
"$PY" -c 'import open_webui' >&2 || { echo "owui-venv: open_webui does not import" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "$PY"
