"""`caramba run` of the upcycle presets end to end: the quick SmolLM2 -> DBA preset through
every stage (surgery, blockwise, global, verification, benchmarks, artifacts), and the
Llama-3.2-1B preset's dry run and its clear error without the weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QUICK = "preset:smollm2_135m_dba_quick"


def run_caramba(*args: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "caramba_cli.main", *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def test_quick_upcycle_writes_every_artifact(tmp_path: Path) -> None:
    result = run_caramba("run", QUICK, "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "smollm2_135m_dba_quick" / "upcycle"
    for name in ("report.json", "perplexity.csv", "latency.csv", "memory.csv", "accuracy.csv",
                 "generation.csv", "generation.md", "summary.png", "latency_vs_context.png",
                 "memory_scaling.png", "tables.tex", "loss.png", "metrics.jsonl",
                 "checkpoints/blockwise/latest.json", "checkpoints/global/latest.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    upcycle = report["upcycle"]
    assert upcycle["kv_bytes_per_token_fp16"] == {"teacher": 23_040, "student": 4_320}
    assert upcycle["surgery"]["dba_layers"] == 30 and upcycle["surgery"]["whitened"]
    assert [(v["run"], v["type"]) for v in report["verification"]] == [
        ("blockwise", "compare"), ("global", "fidelity"), ("global", "eval")]
    benchmarks = report["benchmarks"]
    assert set(benchmarks) == {"perplexity", "latency", "memory", "accuracy", "generation"}
    for name in ("perplexity", "latency", "memory", "accuracy"):
        assert {"teacher", "student", "student_vs_teacher"} <= set(benchmarks[name]), name
    teacher_ppl = benchmarks["perplexity"]["teacher"]["perplexity"]
    assert 5 < teacher_ppl < 60  # SmolLM2 on held-out KJV/Shakespeare windows
    assert benchmarks["memory"]["student_vs_teacher"]["kv_reduction"] > 5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("kind") for r in records} >= {"blockwise", "eval", None}


def test_llama32_preset_compiles_and_names_the_missing_weights(tmp_path: Path) -> None:
    dry = run_caramba("run", "preset:llama32_1b_dba", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1.10B parameters" in dry.stdout and "trainer.upcycle" in dry.stdout
    missing = run_caramba("run", "preset:llama32_1b_dba", "--runs-dir", str(tmp_path),
                          env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert missing.returncode == 2
    assert "hf://meta-llama/Llama-3.2-1B: not in the local Hugging Face cache" in missing.stderr
    assert "hf download meta-llama/Llama-3.2-1B" in missing.stderr
