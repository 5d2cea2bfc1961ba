# Sourced by bench scripts: WORK, a scratch directory removed on exit after every process whose
# pid was added to PIDS is stopped, and free_port. Needs the prefix of the directory's name in
# WORK_PREFIX (default meshd-bench).
WORK="$(mktemp -d "/tmp/${WORK_PREFIX:-meshd-bench}.XXXXXX")"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
