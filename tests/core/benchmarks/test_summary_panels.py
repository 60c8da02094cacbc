"""summary.png has one panel per benchmark present: no blank axes for a missing one."""

from __future__ import annotations

import struct
from pathlib import Path

from caramba.benchmarks.artifacts import summary_png
from caramba.benchmarks.base import BenchmarkResult


def _width(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def _results() -> list[BenchmarkResult]:
    return [
        BenchmarkResult("ppl", summary={"model": {"perplexity": 112.4}}, kind="perplexity"),
        BenchmarkResult("lat", summary={"model": {"long_context": 128,
                                                  "long_context_decode_tokens_per_s": 459.1}},
                        kind="latency"),
        BenchmarkResult("mem", summary={"model": {"kv_bytes_per_token_fp16": 4096}},
                        kind="memory"),
    ]


def test_panels_follow_the_benchmarks_present(tmp_path: Path) -> None:
    widths = []
    for n in (1, 2, 3):
        out = summary_png(_results()[:n], tmp_path / f"s{n}.png", "t")
        assert out is not None
        widths.append(_width(out))
    assert widths[0] < widths[1] < widths[2]
    assert summary_png([], tmp_path / "none.png", "t") is None
