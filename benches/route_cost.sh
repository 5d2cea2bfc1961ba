#!/usr/bin/env bash
# Cost of one cache-aware routing decision with 10,000 cached blocks per engine (issue 14 target:
# ≤ 20 µs). Compiles MeshCore's sources (pure Swift, no dependencies) with benches/route_cost.swift
# at -O and runs it; writes benches/route-cost.json and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/meshd-route-cost"
mkdir -p "$out"
swiftc -O -wmo -parse-as-library -module-name MeshCore -emit-module -emit-module-path "$out/MeshCore.swiftmodule" \
    -emit-library -static -o "$out/libMeshCore.a" $(find Sources/MeshCore -name '*.swift' | sort)
swiftc -O -I "$out" -L "$out" -lMeshCore -o "$out/route_cost" benches/route_cost.swift
"$out/route_cost" | tee benches/route-cost.json
