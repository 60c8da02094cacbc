"""keep_freed_memory: on Linux/glibc the process keeps freed memory in its heap (large
tensors stop page-faulting anew each step); it is idempotent and CARAMBA_KEEP_HEAP=0 skips
it. Checked in a fresh interpreter, since the setting is process-wide."""

import subprocess
import sys

import pytest

SNIPPET = """
import resource, torch
from caramba.devices import keep_freed_memory
def faults(n=6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        x = torch.ones(64, 1 << 20)  # 256 MB: above glibc's mmap threshold
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
cold = faults()
kept = keep_freed_memory()
assert keep_freed_memory() == kept  # idempotent
for _ in range(3):
    faults()  # the heap grows to hold them (glibc takes a round or two)
warm = faults()
print(kept, cold, warm)
"""


def run(env_value: str | None) -> tuple[bool, int, int]:
    import os

    env = dict(os.environ)
    env.pop("CARAMBA_KEEP_HEAP", None)
    if env_value is not None:
        env["CARAMBA_KEEP_HEAP"] = env_value
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_kept_heap_stops_page_faults_on_large_tensors():
    kept, cold, warm = run(None)
    assert kept
    # Each 256 MB tensor faults in ~65k pages when mmapped afresh; from the kept heap, ~none.
    assert cold > 6 * 50_000
    assert warm < cold / 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_the_environment_switch_turns_it_off():
    kept, cold, warm = run("0")
    assert not kept
    assert warm > cold / 2
