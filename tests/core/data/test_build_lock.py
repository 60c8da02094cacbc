"""caramba.build_lock: a process that needs a cached artifact another process is building
waits for it instead of building it again (datasets, tiny models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from caramba import build_lock
from caramba.build_lock import building

HOLDER = """
import sys, time
from pathlib import Path
from caramba.build_lock import building
target = Path(sys.argv[1])
with building(target):
    print("locked", flush=True)
    time.sleep(0.5)
    target.write_text("built")
"""


@pytest.mark.skipif(build_lock.fcntl is None, reason="no fcntl here: builds are not serialized")
def test_a_second_builder_waits_until_the_first_has_written_the_artifact(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "artifact"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with building(target):  # blocks while the holder builds
            assert target.read_text() == "built"
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0


def test_the_lock_is_a_hidden_sibling_and_the_folder_is_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "model.safetensors"
    with building(target):
        assert target.parent.is_dir() and not target.exists()
    assert build_lock.lock_path(target) == target.parent / ".model.safetensors.lock"
