"""The llama32_1b_dba preset runs once its teacher is in the local Hugging Face cache.

Llama-3.2-1B itself (2.5 GB, gated) is not available here, so a tiny Llama with the same
config.json format, including Llama 3's rope_scaling, stands in as
hf://meta-llama/Llama-3.2-1B, and overrides shrink the student's widths to match it.
Everything else (hf:// resolution, rope_scaling, surgery, both phases, verification) is
the preset's own path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loader_fixtures import hub_cache, set_config, tiny_hf_weights, tiny_vocab, write_tiny_gguf

from caramba.loaders import load_gguf, save_hf_folder

LLAMA3_SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
SHRINK = [  # the tiny teacher: d_model 64, 4 heads of 16, 2 KV heads, 2 layers, vocab 264
    "vars.d_model=64", "vars.n_heads=4", "vars.n_kv_heads=2", "vars.n_layers=2",
    "vars.d_ff=96", "vars.vocab_size=264", "vars.sem_dim=16", "vars.geo_dim=32",
    "vars.attn_dim=64", "vars.block_size=32",
    # Geometric pairs of 8 dims per head = the teacher's pairs 0, 2, 4, 6 (stride 2).
    "vars.geo_rope_base=500000.0",
    "runs.0.steps=2", "runs.1.steps=2", "runs.0.train.blockwise_batches=2",
    "runtime.eval_batches=1", "defaults.train.device=cpu", "defaults.train.dtype=float32",
    "benchmarks=[]",
]


def test_llama32_preset_runs_with_a_llama3_teacher_from_the_hub_cache(tmp_path: Path) -> None:
    teacher = save_hf_folder(load_gguf(write_tiny_gguf(
        tmp_path / "tiny.gguf", tiny_hf_weights(len(tiny_vocab())))), tmp_path / "tiny-hf")
    set_config(teacher, rope_theta=500000.0, max_position_embeddings=131072,
               rope_scaling={"rope_type": "llama3", **LLAMA3_SCALING})
    cache = hub_cache(teacher, tmp_path / "hub", "meta-llama/Llama-3.2-1B", "f" * 40)
    result = subprocess.run(
        [sys.executable, "-m", "caramba_cli.main", "run", "preset:llama32_1b_dba",
         "--runs-dir", str(tmp_path / "runs"), *SHRINK],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "llama32_1b_dba" / "upcycle"
    report = json.loads((out / "report.json").read_text())
    assert report["upcycle"]["teacher"] == "hf://meta-llama/Llama-3.2-1B"
    for layer in report["upcycle"]["surgery"]["layers"]:
        # Pairs 4 and 6 are in the blended and divided bands of the Llama 3 rule: the
        # student's own rope_scaling keeps them at the teacher's scaled frequencies.
        assert layer["geo_pairs"] == [0, 2, 4, 6] and layer["geo_frequency_error"] == 0.0
    assert [(v["run"], v["type"]) for v in report["verification"]] == [
        ("blockwise", "compare"), ("global", "fidelity"), ("global", "eval")]
    scalings = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "AttentionLayer" and "mode" in node:  # configs, not summaries
                scalings.append(node["rope_scaling"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(json.loads((out / "plan.json").read_text()))
    assert scalings and all(s == {"type": "llama3", **LLAMA3_SCALING} for s in scalings)
