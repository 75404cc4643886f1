#!/usr/bin/env bash
# Peak int8 and fp32 multiply-accumulate rates of one core, for each instruction set this CPU has (those it
# lacks are reported, never run): the ceiling for intrs bench's ratios (docs/speed.md).
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp)
cc -O2 -std=gnu11 -Wall peak_int8_vs_fp32.c -o "$out"
"$out"
rm -f "$out"
