"""Post-training benchmarks: validated at compile time, measured on real held-out text."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from caramba.benchmarks.runner import run_benchmarks
from caramba.compiler.lower import compile_manifest
from caramba.data.tokens import TokenDatasetSource
from caramba.manifest.diagnostics import ManifestError
from caramba.manifest.schema import BenchmarkSpec
from caramba.models.definition import ModelDefinition
from caramba.registry import SYSTEMS

SMALL = ["vars.d_model=32", "vars.n_layers=1", "vars.d_ff=64", "vars.n_heads=2",
         "vars.n_kv_heads=2"]


def test_benchmark_config_errors_are_located() -> None:
    with pytest.raises(ManifestError, match=r"benchmarks\[0\]\.config\.num_batchs.*num_batches"):
        typo = "benchmarks.0.config.num_batchs=3"
        compile_manifest("preset:standard_transformer", SMALL + [typo])
    with pytest.raises(ManifestError, match="did you mean 'latency'"):
        compile_manifest("preset:standard_transformer", SMALL + ["benchmarks.1.config.type=latncy"])


def test_perplexity_and_latency_on_real_text(tmp_path: Path) -> None:
    _, plan = compile_manifest("preset:standard_transformer", SMALL)
    target = plan.targets[0]
    data = TokenDatasetSource.open(target.data_config, Path("."))
    torch.manual_seed(0)
    model = SYSTEMS.get("system.language_model").build(
        ModelDefinition(target.embedder, target.topology))
    specs = [BenchmarkSpec(id="ppl", config={"type": "perplexity", "block_size": 32,
                                             "num_batches": 2}),
             BenchmarkSpec(id="lat", config={"type": "latency", "prompt_lengths": [8],
                                             "generation_lengths": [4], "timed_runs": 1})]
    ppl, lat = run_benchmarks(specs, {"model": model}, data, torch.device("cpu"), tmp_path)
    # An untrained model is near-uniform over the vocabulary: perplexity close to 8192.
    assert 2000 < ppl.summary["model"]["perplexity"] < 40000
    assert lat.summary["model"]["decode_tokens_per_s"] > 0
    rows = list(csv.DictReader((tmp_path / "lat.csv").open()))
    assert rows[0]["prompt_len"] == "8" and float(rows[0]["decode_tokens_per_s"]) > 0
    assert (tmp_path / "ppl.csv").exists()
