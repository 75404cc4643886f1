#!/usr/bin/env bash
# One-core multiply-accumulate rate of the kernels' 3x3 convolutions at ResNet-20's shapes (16, 32 and 64
# channels at 28x28 and 32x32 inputs), for each instruction set this CPU has: compare with benchmarks/peak.sh
# (docs/speed.md). Usage: layer_rate.sh [ISA ...] (default: avx512-vnni avx-vnni avx2).
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
objects=$(bash ../src/intrs/csrc/build.sh "$work")
# shellcheck disable=SC2086
cc -O3 -std=gnu11 -I../src/intrs/csrc layer_rate.c $objects -pthread -o "$work/layer_rate"
isas=("$@")
[ ${#isas[@]} -gt 0 ] || isas=(avx512-vnni avx-vnni avx2)
for isa in "${isas[@]}"; do
  for shape in "16 28" "32 14" "64 7" "16 32" "32 16" "64 8"; do "$work/layer_rate" $isa $shape; done
done
