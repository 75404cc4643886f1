#!/usr/bin/env bash
# Compiles the kernels into objects in DIR, each instruction-set file with its own flags from targets.txt
# (as setup.py builds the Python library), and prints the objects' paths: for the C programs that link the
# kernels (the tests' probe, benchmarks/). Usage: build.sh DIR [compiler flags...]; CC and MACHINE (default
# uname -m) choose the compiler and the target.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
shift
cc=${CC:-cc}
machine=${MACHINE:-$(uname -m)}
if [ "$machine" = arm64 ]; then machine=aarch64; fi # macOS's name for it; targets.txt says aarch64
mkdir -p "$out"
for source in "$here"/*.c; do
  name=$(basename "$source")
  flags=$(awk -v m="$machine" -v f="$name" '$1 == m && $2 == f { for (i = 3; i <= NF; i++) printf "%s ", $i }' \
    "$here/targets.txt")
  # shellcheck disable=SC2086
  $cc -O3 -std=c11 -Wall -pthread -fPIC "$@" $flags -c "$source" -o "$out/${name%.c}.o"
  echo "$out/${name%.c}.o"
done
