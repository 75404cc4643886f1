#!/usr/bin/env bash
# Sets up intrs on a fresh machine, idempotently: Fashion-MNIST, qemu-user and an aarch64 cross compiler from
# Debian (where apt exists), a virtual environment in .venv with torch 2.13.0 (CPU build) and intrs installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -e "$fmnist/t10k-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
    || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to a Fashion-MNIST folder" >&2
fi

# the kernels' and the C export's tests: qemu-user runs their probe on emulated CPUs (x86 without AVX-512 or AVX2, aarch64 with and
# without the dot-product instructions), gcc-aarch64-linux-gnu cross-compiles the NEON kernels
tools=()
command -v qemu-x86_64 >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1 || tools+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || tools+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
# the C export's tests: a Cortex-M4 build (newlib, semihosting) run on QEMU's MPS2 board
command -v arm-none-eabi-gcc >/dev/null 2>&1 || tools+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null 2>&1 || tools+=(qemu-system-arm)
if [ ${#tools[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${tools[*]} (Debian packages) for the kernels' emulated-CPU tests" >&2
  $sudo apt-get install -y -q "${tools[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${tools[@]}" >/dev/null; } \
    || echo "setup: could not install ${tools[*]}; the emulated-CPU tests will be skipped" >&2
fi

python=$(command -v python3.11 || command -v python3)
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: intrs needs Python >= 3.11, found $("$python" --version)" >&2; exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

# Reinstall only when the package's requirements or its compiled kernels changed.
stamp=.venv/.intrs-installed
want=$(cat pyproject.toml setup.py src/intrs/csrc/* | sha256sum | cut -d' ' -f1)
compiler=$(command -v cc || command -v gcc || true)
built=$(ls src/intrs/_kernels*.so 2> /dev/null || true)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || { [ -n "$compiler" ] && [ -z "$built" ]; }; then
  echo "setup: installing intrs and its dependencies into .venv" >&2
  # a kernels library left by an earlier build would hide a failed one (the extension is optional); no stamp
  # until this install succeeds, so that a failed one is tried again
  rm -f "$stamp" src/intrs/_kernels*.so
  # torch pinned here, to the CPU build on this disk (the package itself accepts a range)
  if ! { .venv/bin/python -m pip install --disable-pip-version-check torch==2.13.0 \
         && .venv/bin/python -m pip install -v --disable-pip-version-check -e '.[test,report,export]'; } \
       > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2; echo "setup: pip install failed (log above)" >&2; exit 1
  fi
  .venv/bin/python -c 'import intrs, torch, scipy, pytest'
  if [ -n "$compiler" ]; then
    if ! .venv/bin/python -c 'import sys; from intrs import kernels; sys.exit(kernels.library() is None)'; then
      grep -B2 -A8 "error" .venv/pip.log >&2 || true
      echo "setup: a C compiler is here but the compiled kernels did not build (.venv/pip.log)" >&2; exit 1
    fi
  fi
  echo "$want" > "$stamp"
fi
