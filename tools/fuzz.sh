#!/usr/bin/env bash
# Fuzzes meshd's parsers of hostile input with libFuzzer (targets: Tests/Fuzz/README.md): builds
# Tests/Fuzz/meshd-fuzz with -sanitize=fuzzer,address in its own scratch path (.build/fuzz, so the
# ordinary build is left alone), then runs each target for N seconds from the committed corpus.
# A crash, a trap, an input that runs longer than 10 s or a process over 2 GiB (or one allocation
# over 256 MiB) fails the run; the input is saved under .build/fuzz/artifacts/TARGET/.
#   tools/fuzz.sh                          # every target, 60 s each
#   tools/fuzz.sh --seconds 300 wire txt   # some targets, 5 minutes each
#   tools/fuzz.sh --merge api              # also merge the new inputs that add coverage into Tests/Fuzz/corpus
#   tools/fuzz.sh --release                # fuzz a release (-O) build: faster runs, slower build
# New inputs are written to a temporary directory (removed afterwards) unless --merge is given.
# Reproduce a crash: .build/fuzz/debug/meshd-fuzz TARGET FILE (or an ordinary build's
# meshd-fuzz TARGET FILE, without the sanitizer).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
seconds=60; conf=debug; merge=0; targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --release) conf=release; shift ;;
    --merge) merge=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(http api wire txt config stream)

SCRATCH=.build/fuzz
flags=(-c "$conf" --scratch-path "$SCRATCH" -Xswiftc -sanitize=fuzzer,address -Xswiftc -DMESHD_FUZZING)
start=$(date +%s)
# gold warns once per ASan symbol it cannot export: noise.
swift build "${flags[@]}" --product meshd-fuzz 2>&1 | grep -vE 'Cannot export local symbol|^warning: prohibited flag'
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz build failed" >&2; exit 1; }
BIN="$(swift build "${flags[@]}" --show-bin-path)/meshd-fuzz"
echo "fuzz build ($conf): $(( $(date +%s) - start )) s"

# Crash reports come from ASan and libFuzzer, not Swift's backtracer (which would stall the run).
export SWIFT_BACKTRACE=enable=no
# Leaks are not findings here: the Swift runtime and NIO keep allocations for the process's life.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0}"

status=0
summary=()
for t in "${targets[@]}"; do
  corpus="$ROOT/Tests/Fuzz/corpus/$t"
  [ -d "$corpus" ] || { echo "no corpus for target '$t' ($corpus)" >&2; status=1; continue; }
  artifacts="$ROOT/$SCRATCH/artifacts/$t"; mkdir -p "$artifacts"
  work="$(mktemp -d)"
  log="$work.log"
  echo "=== fuzz $t: ${seconds} s"
  # -max_len comes from the program (per target); -timeout: seconds per input; -rss_limit_mb and
  # -malloc_limit_mb: unbounded allocation is a finding.
  "$BIN" "$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work" "$corpus" >"$log" 2>&1
  rc=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1)"
  if [ $rc -ne 0 ]; then
    status=1
    tail -60 "$log"
    summary+=("$t: FAILED (exit $rc) after ${runs:-?} runs; input in $artifacts/")
  else
    summary+=("$t: ${runs:-?} runs, $cov, $(find "$work" -type f | wc -l) new inputs")
    if [ $merge -eq 1 ] && [ -n "$(ls -A "$work")" ]; then
      "$BIN" "$t" -merge=1 -rss_limit_mb=2048 "$corpus" "$work" >>"$log" 2>&1 || echo "merge into $corpus failed" >&2
    fi
  fi
  rm -rf "$work" "$log"
done
printf '%s\n' "${summary[@]}"
echo "fuzz total: $(( $(date +%s) - start )) s"
exit $status
