#!/usr/bin/env bash
# Peak int8 and fp32 multiply-accumulate rates of one core, for each instruction set this CPU has (those it
# lacks are reported, never run): the ceiling for intrs bench's ratios (docs/speed.md). The loops live in
# src/intrs/peak/peak.c, which intrs bench runs too (shorter).
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp)
cc -O2 -std=gnu11 -Wall -DINTRS_PEAK_MAIN ../src/intrs/peak/peak.c -o "$out"
"$out"
rm -f "$out"
