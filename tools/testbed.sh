#!/usr/bin/env bash
# Multi-host LAN test bed on this one machine (needs root). Hosts h1..hN are network namespaces
# PREFIX-h1.. whose veth `eth0` (198.18.0.11, .12, ...; /24) is patched into a bridge that lives in a
# namespace of its own (PREFIX-br), so nothing is added to, or routed through, the machine's real
# interfaces or the root namespace. Each host also has a private mount and UTS namespace (tmpfs
# /run, host name hN) with its own `dbus-daemon --system` and an avahi-daemon that only speaks on
# eth0, so mDNS works between hosts and never reaches the real network.
#
# Persistence: each host has a keeper process (`sleep infinity`, started through `ip netns exec` +
# `unshare --mount --uts --propagation private`) that holds its mount and UTS namespaces; every
# command for the host enters the keeper's namespaces with `nsenter -t KEEPER -m -u -n`. The keeper
# outlives `kill` (a crashed host keeps its "hardware": netns, /run tmpfs) and dies with `down`.
#
# Per-run files live in /tmp/PREFIX/ (readable from the root namespace, which shares /tmp):
#   hN/avahi-daemon.conf  hN/keeper.pid  hN/procs/NN-NAME.argv (what `revive` restarts)
#   hN/NAME.log  hN/NAME.pid   (processes started with `spawn` / `start-meshd`)
# Every process the bed starts carries MTB_BED=PREFIX in its environment; `down` also kills
# stragglers found that way.
#
#   tools/testbed.sh [--prefix P] up N             bridge + N hosts with dbus and avahi (N <= 40)
#   tools/testbed.sh [--prefix P] exec HOST CMD...  run CMD on HOST (its net, mount and UTS namespaces)
#   tools/testbed.sh [--prefix P] spawn HOST NAME CMD...   start CMD detached on HOST (log: hN/NAME.log);
#                                                   `revive` starts it again
#   tools/testbed.sh [--prefix P] stop HOST NAME    stop a spawned process (TERM, KILL after 5 s), forget it
#   tools/testbed.sh [--prefix P] start-meshd HOST CONFIG   spawn meshd ($MESHD_BIN or .build/debug/meshd)
#   tools/testbed.sh [--prefix P] stop-meshd HOST
#   tools/testbed.sh [--prefix P] kill HOST         kill -9 everything running on HOST (meshd, engines,
#                                                   avahi, dbus), as a crash would; the keeper and the
#                                                   link stay (peers get TCP resets; `cut` is silent)
#   tools/testbed.sh [--prefix P] revive HOST       dbus, avahi and every spawned process again
#   tools/testbed.sh [--prefix P] cut HOST | heal HOST   take HOST's bridge port down / up
#   tools/testbed.sh [--prefix P] restart-avahi HOST
#   tools/testbed.sh [--prefix P] status
#   tools/testbed.sh [--prefix P] check             avahi self-check: h1 browses a service h2 publishes
#   tools/testbed.sh [--prefix P] down              tear everything of PREFIX down (idempotent)
#   tools/testbed.sh down-all                       tear down every bed (any mtb* prefix)
# PREFIX: --prefix or $MTB_PREFIX, default `mtb`; it must match mtb[a-z0-9]{0,10}. Exit status: 0 ok,
# 1 failure, 2 usage (or not root). `up` tears down what it built when it fails or is interrupted.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/tools/testbed.sh"

PREFIX="${MTB_PREFIX:-mtb}"
if [ "${1:-}" = --prefix ]; then PREFIX="${2:-}"; shift 2 || true; fi
VERB="${1:-}"; shift || true

die() { echo "testbed: $*" >&2; exit 1; }
usage() { sed -n '/^#   tools/,/^# 1 failure/p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ -n "$VERB" ] || usage
[[ "$PREFIX" =~ ^mtb[a-z0-9]{0,10}$ ]] || { echo "testbed: bad prefix '$PREFIX' (mtb[a-z0-9]{0,10})" >&2; exit 2; }
if [ "$(id -u)" -ne 0 ]; then
  echo "testbed: needs root (network, mount and UTS namespaces, veth, bridge); run it as root" >&2
  exit 2
fi

RUN="/tmp/$PREFIX"
BR="$PREFIX-br"
MARK=".mtb-bed"
export MTB_BED="$PREFIX"
# Hosts talk to their own buses only (/run/dbus/system_bus_socket of the host's private /run).
unset DBUS_SYSTEM_BUS_ADDRESS DBUS_SESSION_BUS_ADDRESS
ROOT_NETNS="$(readlink /proc/self/ns/net)"

ns_of() { echo "$PREFIX-$1"; }
hdir() { echo "$RUN/$1"; }
host_ok() { [[ "$1" =~ ^h([1-9][0-9]?)$ ]] && [ -d "$(hdir "$1")" ] || die "no host '$1' in bed $PREFIX (status lists them)"; }
host_ip() { echo "198.18.0.$((10 + ${1#h}))"; }
hosts() { local d; for d in "$RUN"/h*/; do [ -d "$d" ] && basename "$d"; done | sort -V; }

keeper_pid() {
  local f; f="$(hdir "$1")/keeper.pid"
  [ -s "$f" ] || return 1
  local pid; pid="$(cat "$f")"
  [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/ns/net")" != "$ROOT_NETNS" ] || return 1
  echo "$pid"
}

# Runs "$@" inside HOST's namespaces. Refuses when the keeper is gone or sits in the root netns.
in_host() {
  local h="$1"; shift
  local k; k="$(keeper_pid "$h")" || die "$h is not up (no keeper)"
  nsenter -t "$k" -m -u -n -- "$@"
}

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 0.1 s.
wait_for() {
  local secs="$1" what="$2"; shift 2
  local end=$(( $(date +%s%N) / 1000000 + secs * 1000 ))
  until "$@" >/dev/null 2>&1; do
    [ $(( $(date +%s%N) / 1000000 )) -lt "$end" ] || { echo "testbed: timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.1
  done
}

pid_alive() { [ -n "${1:-}" ] && [ -d "/proc/$1" ] && ! grep -q '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
pid_gone() { ! pid_alive "$1"; }

# Pids of every process in HOST's network namespace but the keeper.
host_pids() {
  local h="$1" k; k="$(keeper_pid "$h" || echo -1)"
  timeout 10 ip netns pids "$(ns_of "$h")" 2>/dev/null | grep -vx "$k" || true
}

host_runs() { local p; for p in $(host_pids "$1"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] && return 0; done; return 1; }
host_quiet() { [ -z "$(host_pids "$1")" ]; }

avahi_conf() {
  cat <<EOF
[server]
host-name=$1
use-ipv4=yes
use-ipv6=no
allow-interfaces=eth0
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-addresses=yes
# IPv4 only: no AAAA records (of the veth's link-local address) on the IPv4 network either, so a
# resolve never returns an address meshd does not dial.
publish-aaaa-on-ipv4=no
publish-hinfo=no
publish-workstation=no
publish-domain=yes

[reflector]
enable-reflector=no
EOF
}

start_daemons() {
  local h="$1" d; d="$(hdir "$h")"
  local k; k="$(keeper_pid "$h")" || die "$h is not up (no keeper)"
  # Never on the machine's own network: the keeper must sit in the host's namespace.
  [ "$(stat -L -c %i "/run/netns/$(ns_of "$h")" 2>/dev/null)" = "$(stat -L -c %i "/proc/$k/ns/net")" ] ||
    die "$h: keeper $k is not in netns $(ns_of "$h"); refusing to start daemons"
  # Stale pid files and sockets of a killed host (the /run tmpfs survives in the keeper).
  rm -rf "/proc/$k/root/run/dbus" "/proc/$k/root/run/avahi-daemon"
  mkdir -p "/proc/$k/root/run/dbus" "/proc/$k/root/run/avahi-daemon"
  in_host "$h" timeout 10 dbus-daemon --system --fork >>"$d/dbus.log" 2>&1 || die "$h: dbus-daemon did not start (see $d/dbus.log)"
  wait_for 10 "$h dbus socket" test -S "/proc/$k/root/run/dbus/system_bus_socket" || die "$h: no dbus socket"
  start_avahi "$h"
}

start_avahi() {
  local h="$1" d; d="$(hdir "$h")"
  local k; k="$(keeper_pid "$h")" || die "$h is not up (no keeper)"
  rm -f "/proc/$k/root/run/avahi-daemon/pid" "/proc/$k/root/run/avahi-daemon/socket"
  in_host "$h" timeout 10 avahi-daemon -D -f "$d/avahi-daemon.conf" --no-chroot --no-drop-root >>"$d/avahi.log" 2>&1 ||
    die "$h: avahi-daemon did not start (see $d/avahi.log)"
  wait_for 10 "$h avahi-daemon socket" test -S "/proc/$k/root/run/avahi-daemon/socket" || die "$h: avahi-daemon has no socket"
}

# The host's spawned processes (recorded argv files, in start order).
spawned() { ls "$(hdir "$1")/procs/" 2>/dev/null | grep '\.argv$' | sort; }

launch() {
  local h="$1" name="$2"; shift 2
  local d; d="$(hdir "$h")"
  local k; k="$(keeper_pid "$h")" || die "$h is not up (no keeper)"
  local unset=() v
  for v in $(compgen -e); do case "$v" in MESHD_*|NOTIFY_SOCKET|WATCHDOG_*|http_proxy|https_proxy|HTTP_PROXY|HTTPS_PROXY|all_proxy|ALL_PROXY) unset+=(-u "$v");; esac; done
  echo "--- $(date -u +%FT%T.%3NZ) start: $*" >>"$d/$name.log"
  setsid nsenter -t "$k" -m -u -n -- env "${unset[@]}" MTB_HOST="$h" "$@" </dev/null >>"$d/$name.log" 2>&1 &
  echo $! >"$d/$name.pid"
}

do_spawn() {
  local h="$1" name="$2"; shift 2
  host_ok "$h"
  [[ "$name" =~ ^[a-z][a-z0-9_-]*$ ]] || die "bad process name '$name'"
  [ $# -gt 0 ] || die "spawn $h $name: no command"
  local d; d="$(hdir "$h")"
  mkdir -p "$d/procs"
  pid_alive "$(cat "$d/$name.pid" 2>/dev/null)" && die "$h: $name is already running"
  rm -f "$d/procs/"*"-$name.argv"
  local n; n=$(( $(spawned "$h" | wc -l) + 1 ))
  printf '%s\0' "$@" >"$d/procs/$(printf %02d "$n")-$name.argv"
  launch "$h" "$name" "$@"
  sleep 0.2
  pid_alive "$(cat "$d/$name.pid")" || die "$h: $name exited at once; log $d/$name.log: $(tail -5 "$d/$name.log")"
  echo "$h: $name pid $(cat "$d/$name.pid"), log $d/$name.log"
}

do_stop() {
  local h="$1" name="$2"
  host_ok "$h"
  local d; d="$(hdir "$h")"
  rm -f "$d/procs/"*"-$name.argv"
  local pid; pid="$(cat "$d/$name.pid" 2>/dev/null || true)"
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    wait_for 5 "$h $name to exit" pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$d/$name.pid"
}

do_kill() {
  local h="$1"; host_ok "$h"
  local pids; pids="$(host_pids "$h")"
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  wait_for 5 "$h processes to die" host_quiet "$h" ||
    die "$h: processes survived kill -9: $(host_pids "$h" | tr '\n' ' ')"
  echo "$h: killed $(echo "$pids" | grep -c . || true) processes"
}

do_revive() {
  local h="$1"; host_ok "$h"
  [ -z "$(host_pids "$h")" ] || die "$h is still running ($(host_pids "$h" | tr '\n' ' ')); kill it first"
  start_daemons "$h"
  local f name args
  for f in $(spawned "$h"); do
    name="${f#*-}"; name="${name%.argv}"
    mapfile -d '' args <"$(hdir "$h")/procs/$f"
    launch "$h" "$name" "${args[@]}"
  done
  echo "$h: revived"
}

link() { timeout 10 ip -n "$BR" link set "veth-$1" "$2" || die "ip link set veth-$1 $2 in $BR failed"; }

do_restart_avahi() {
  local h="$1"; host_ok "$h"
  local k; k="$(keeper_pid "$h")" || die "$h is not up"
  local pid; pid="$(cat "/proc/$k/root/run/avahi-daemon/pid" 2>/dev/null || true)"
  in_host "$h" timeout 5 avahi-daemon -k >/dev/null 2>&1 || true
  if pid_alive "$pid"; then
    wait_for 5 "$h avahi-daemon to exit" pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null
  fi
  start_avahi "$h"
  echo "$h: avahi-daemon restarted"
}

# Removes one bed: every process in its namespaces and every one marked with its MTB_BED, the
# namespaces, the run dir.
teardown() {
  local p="$1" ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$p-(br|h[0-9]+)$"); do
    # shellcheck disable=SC2046
    kill -KILL $(timeout 10 ip netns pids "$ns" 2>/dev/null) 2>/dev/null || true
  done
  for pid in $(grep -lsxa "MTB_BED=$p" --null-data /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    [ "$pid" != "$$" ] && [ "$pid" != "$PPID" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$p-(br|h[0-9]+)$"); do
    timeout 10 ip netns del "$ns" 2>/dev/null || echo "testbed: could not delete netns $ns" >&2
  done
  [ -f "/tmp/$p/$MARK" ] && rm -rf "/tmp/$p"
  return 0
}

do_up() {
  local n="${1:-}"
  [[ "$n" =~ ^[1-9][0-9]?$ ]] && [ "$n" -le 40 ] || { echo "testbed: up N (1..40)" >&2; exit 2; }
  for t in ip nsenter unshare dbus-daemon avahi-daemon; do
    command -v "$t" >/dev/null || die "$t not found (apt-get install iproute2 util-linux dbus avahi-daemon avahi-utils)"
  done
  if ip netns list | awk '{print $1}' | grep -qE "^$PREFIX-(br|h[0-9]+)$" || [ -e "$RUN" ]; then
    die "bed $PREFIX exists already (tools/testbed.sh --prefix $PREFIX down)"
  fi
  trap 'echo "testbed: up interrupted, tearing down" >&2; teardown "$PREFIX"; exit 130' INT TERM
  trap 'teardown "$PREFIX"' EXIT
  mkdir -p "$RUN" && touch "$RUN/$MARK"
  ip netns add "$BR" || die "ip netns add $BR"
  ip -n "$BR" link set lo up
  ip -n "$BR" link add br0 type bridge || die "bridge in $BR"
  ip -n "$BR" link set br0 up
  local i h ns d k
  for i in $(seq 1 "$n"); do
    h="h$i"; ns="$(ns_of "$h")"; d="$(hdir "$h")"
    mkdir -p "$d/procs" "$d/avahi-services"
    avahi_conf "$h" >"$d/avahi-daemon.conf"
    ip netns add "$ns" || die "ip netns add $ns"
    # The pair is made inside the host's namespace and its far end goes straight to the bridge's.
    ip -n "$ns" link add eth0 type veth peer name "veth-$h" netns "$BR" || die "veth for $h"
    ip -n "$BR" link set "veth-$h" master br0 up || die "bridge port for $h"
    ip -n "$ns" addr add "$(host_ip "$h")/24" dev eth0 || die "address of $h"
    ip -n "$ns" link set lo up && ip -n "$ns" link set eth0 up || die "links of $h"
    setsid ip netns exec "$ns" unshare --mount --uts --propagation private -- bash -c '
      set -e
      hostname "$1"
      mount -t tmpfs -o mode=0755,size=16m mtb-run /run
      mkdir -p /run/dbus /run/avahi-daemon
      [ -d /etc/avahi/services ] && mount --bind "$2/avahi-services" /etc/avahi/services
      echo $$ >"$2/keeper.pid.tmp" && mv "$2/keeper.pid.tmp" "$2/keeper.pid"
      exec sleep infinity' keeper "$h" "$d" </dev/null >>"$d/keeper.log" 2>&1 &
  done
  for i in $(seq 1 "$n"); do
    h="h$i"
    wait_for 10 "$h keeper" keeper_pid "$h" || die "$h: keeper did not start: $(cat "$(hdir "$h")/keeper.log")"
  done
  for i in $(seq 1 "$n"); do start_daemons "h$i"; done
  trap - INT TERM EXIT
  echo "testbed $PREFIX: $n host(s) up (h1..h$n = $(host_ip h1)..$(host_ip "h$n")), files in $RUN"
}

do_status() {
  [ -d "$RUN" ] || { echo "testbed $PREFIX: down"; return 0; }
  local h k st f name
  for h in $(hosts); do
    k="$(keeper_pid "$h" || echo -)"
    st="$(ip -n "$BR" -br link show "veth-$h" 2>/dev/null | awk '{print $2}')"
    printf '%-4s %-14s keeper %-7s link %-5s' "$h" "$(host_ip "$h")" "$k" "${st:-?}"
    for name in dbus-daemon avahi-daemon; do
      if host_runs "$h" "$name"; then printf ' %s' "$name"; else printf ' (no %s)' "$name"; fi
    done
    for f in $(spawned "$h"); do
      name="${f#*-}"; name="${name%.argv}"
      if pid_alive "$(cat "$(hdir "$h")/$name.pid" 2>/dev/null)"; then printf ' %s' "$name"; else printf ' (%s dead)' "$name"; fi
    done
    echo
  done
}

do_check() {
  host_ok h1; host_ok h2
  local pub out
  local k2; k2="$(keeper_pid h2)" || die "h2 is not up"
  nsenter -t "$k2" -m -u -n -- timeout 15 avahi-publish -s "mtb-check-$$" _meshd._tcp 11436 "id=check" "proto=1" >/dev/null 2>&1 &
  pub=$!
  local end=$(( $(date +%s) + 10 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    out="$(in_host h1 timeout 5 avahi-browse -r -t -p _meshd._tcp 2>/dev/null | grep "^=;eth0;IPv4;mtb-check-$$;" || true)"
    if [ -n "$out" ]; then
      kill "$pub" 2>/dev/null; wait "$pub" 2>/dev/null
      echo "testbed $PREFIX: h1 sees h2's service: $out"
      return 0
    fi
    sleep 0.2
  done
  kill "$pub" 2>/dev/null; wait "$pub" 2>/dev/null
  die "h1 did not see the service h2 published within 10 s"
}

case "$VERB" in
  up) do_up "$@" ;;
  exec)
    [ $# -ge 2 ] || usage; host_ok "$1"
    k="$(keeper_pid "$1")" || die "$1 is not up (no keeper)"
    shift; exec nsenter -t "$k" -m -u -n -- "$@" ;;
  spawn) [ $# -ge 3 ] || usage; do_spawn "$@" ;;
  stop) [ $# -eq 2 ] || usage; do_stop "$@" ;;
  start-meshd)
    [ $# -eq 2 ] || usage
    meshd="${MESHD_BIN:-$ROOT/.build/debug/meshd}"
    [ -x "$meshd" ] || die "meshd not found at $meshd (swift build, or set MESHD_BIN)"
    [ -f "$2" ] || die "no config file $2"
    do_spawn "$1" meshd "$meshd" --config "$(realpath "$2")" ;;
  stop-meshd) [ $# -eq 1 ] || usage; do_stop "$1" meshd ;;
  kill) [ $# -eq 1 ] || usage; do_kill "$1" ;;
  revive) [ $# -eq 1 ] || usage; do_revive "$1" ;;
  cut) [ $# -eq 1 ] || usage; host_ok "$1"; link "$1" down; echo "$1: link cut" ;;
  heal) [ $# -eq 1 ] || usage; host_ok "$1"; link "$1" up; echo "$1: link healed" ;;
  restart-avahi) [ $# -eq 1 ] || usage; do_restart_avahi "$1" ;;
  status) do_status ;;
  check) do_check ;;
  down) teardown "$PREFIX"; echo "testbed $PREFIX: down" ;;
  down-all)
    unset MTB_BED  # the scan below must not find its own processes
    for p in $( (ip netns list 2>/dev/null | awk '{print $1}' | sed -nE 's/^(mtb[a-z0-9]{0,10})-(br|h[0-9]+)$/\1/p'
                 for d in /tmp/mtb*/.mtb-bed; do [ -f "$d" ] && basename "$(dirname "$d")"; done
                 grep -hsoa --null-data '^MTB_BED=mtb[a-z0-9]*$' /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | cut -d= -f2) | sort -u); do
      teardown "$p"; echo "testbed $p: down"
    done ;;
  -h|--help|help) usage ;;
  *) echo "testbed: unknown verb '$VERB'" >&2; usage ;;
esac
