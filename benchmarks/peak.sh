#!/usr/bin/env bash
# Peak int8 (VNNI) and fp32 (FMA) multiply-accumulate rates of one core: the ceiling for intrs bench's ratios.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp)
cc -O2 peak_int8_vs_fp32.c -o "$out"
"$out"
rm -f "$out"
