"""Running the build tools (cmake, ctest, compiled tests) from the kernel tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: int = 900) -> str:  # fmt: skip
    """stdout of `cmd`; a failure fails the test with the command and both streams' tails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def generator() -> list[str]:
    """Ninja where it is installed (faster), else CMake's default generator."""
    return ["-G", "Ninja"] if shutil.which("ninja") else []
