"""Multiple-choice accuracy by log-probability on the offline cloze set (`cloze`)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from caramba.benchmarks.base import BenchmarkConfig, BenchmarkResult, require_tokenizer
from caramba.benchmarks.cloze import cloze_questions
from caramba.verify.scoring import choice_logprobs


class AccuracyConfig(BenchmarkConfig):
    type: Literal["accuracy"] = "accuracy"
    task: Literal["cloze"] = Field(
        "cloze", description="cloze: last word of held-out lines among distractor words")
    corpus: Literal["english", "kjv", "shakespeare"] = Field(
        "english", description="whose held-out documents the questions come from")
    questions: int = Field(64, ge=1, le=100_000, description="questions asked")
    choices: int = Field(4, ge=2, le=16, description="options per question (chance 1/choices)")
    seed: int = Field(0, ge=0, description="which questions and distractors")


class AccuracyBenchmark:
    """Accuracy (sum of log-probabilities) and length-normalised accuracy (per byte)."""

    Config = AccuracyConfig

    def run(self, bench_id: str, config: AccuracyConfig, models: dict[str, Any], data: Any,
            device: torch.device) -> BenchmarkResult:
        tokenizer = require_tokenizer(bench_id, "accuracy", data, " to write the questions")
        questions = cloze_questions(config.corpus, config.questions, config.choices,
                                    config.seed)
        result = BenchmarkResult(bench_id)
        for name, model in models.items():
            correct = normalised = 0
            for q in questions:
                scores = choice_logprobs(model, tokenizer, q.context, q.choices, device)
                per_byte = [s / len(c.encode()) for s, c in zip(scores, q.choices, strict=True)]
                best = q.choices[max(range(len(scores)), key=scores.__getitem__)]
                best_norm = q.choices[max(range(len(scores)), key=per_byte.__getitem__)]
                correct += best == q.answer
                normalised += best_norm == q.answer
                result.rows.append({"model": name, "question": q.id, "answer": q.answer,
                                    "chosen": best, "correct": best == q.answer,
                                    "choices": " | ".join(q.choices)})
            n = len(questions)
            result.summary[name] = {"accuracy": correct / n, "accuracy_norm": normalised / n,
                                    "questions": n, "chance": 1 / config.choices}
        result.compare(accuracy_delta=("accuracy", "delta"),
                       accuracy_norm_delta=("accuracy_norm", "delta"))
        return result
