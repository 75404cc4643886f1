#!/usr/bin/env bash
# One-core multiply-accumulate rate of the VNNI kernels' 3x3 convolutions at ResNet-20's shapes (16, 32 and
# 64 channels at 28x28 and 32x32 inputs): compare with benchmarks/peak.sh (docs/speed.md).
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp)
cc -O3 -std=gnu11 layer_rate.c -o "$out"
for shape in "16 28" "32 14" "64 7" "16 32" "32 16" "64 8"; do "$out" $shape; done
rm -f "$out"
