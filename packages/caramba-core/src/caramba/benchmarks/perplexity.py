"""Held-out perplexity over deterministic validation windows (teacher and student on the
very same windows, with their ratio, after an upcycle)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from caramba.benchmarks.base import BenchmarkConfig, BenchmarkResult
from caramba.training.evaluate import evaluate, perplexity
from caramba.training.objectives import NextTokenCrossEntropy


class PerplexityConfig(BenchmarkConfig):
    type: Literal["perplexity"] = "perplexity"
    block_size: int = Field(128, ge=2, le=1 << 20, description="tokens per window")
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    num_batches: int = Field(16, ge=1, description="batches evaluated (spread over the split)")
    split: Literal["val", "train"] = Field("val", description="which split to score")


class PerplexityBenchmark:
    """exp(mean next-token cross-entropy) on the held-out split, per model."""

    Config = PerplexityConfig

    def run(self, bench_id: str, config: PerplexityConfig, models: dict[str, Any], data: Any,
            device: torch.device) -> BenchmarkResult:
        split = data.val if config.split == "val" else data.train
        result = BenchmarkResult(bench_id)
        for name, model in models.items():
            loss = evaluate(model, NextTokenCrossEntropy(), split, batch_size=config.batch_size,
                            block_size=config.block_size, max_batches=config.num_batches,
                            device=device, dtype=torch.float32)
            tokens = _tokens(split, config)
            result.rows.append({"model": name, "split": config.split,
                                "block_size": config.block_size, "tokens": tokens,
                                "loss": loss, "perplexity": perplexity(loss)})
            result.summary[name] = {"loss": loss, "perplexity": perplexity(loss),
                                    "tokens": tokens}
        result.compare(perplexity_ratio=("perplexity", "ratio"), delta_nll=("loss", "delta"))
        return result


def _tokens(split: Any, config: PerplexityConfig) -> int:
    """How many next-token predictions the evaluation scored."""
    return sum(y.numel() for _, y in split.iter_eval_batches(
        config.batch_size, config.block_size, config.num_batches))
