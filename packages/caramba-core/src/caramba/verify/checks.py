"""The three verifications: compare (L1 of attention outputs and logits), fidelity (NLL and
perplexity ratio) and eval (prompted cases). Each returns a `Verification`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from caramba.training.evaluate import evaluate
from caramba.training.objectives import NextTokenCrossEntropy
from caramba.upcycle.activations import capture_attention
from caramba.verify.config import (
    CompareVerify,
    EvalCase,
    EvalVerify,
    FidelityVerify,
    L1Thresholds,
)
from caramba.verify.scoring import choice_logprobs, first_integer, greedy_text


@dataclass
class Verification:
    type: str
    run: str
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        out = {"type": self.type, "run": self.run, "passed": self.passed,
               "metrics": self.metrics, "failures": self.failures}
        if self.cases:
            out["cases"] = self.cases
        return out


def _limit(failures: list[str], what: str, value: float, limit: float | None,
           below: bool = False) -> None:
    if limit is None:
        return
    bad = value < limit if below else value > limit
    if bad:
        failures.append(f"{what} {value:.4g} is {'below' if below else 'above'} the limit "
                        f"{limit:g}")


def _l1(failures: list[str], what: str, mean: float, worst: float, t: L1Thresholds) -> None:
    _limit(failures, f"{what} mean L1", mean, t.max_mean_l1)
    _limit(failures, f"{what} max L1", worst, t.max_max_l1)


def _split(data: Any, name: str) -> Any:
    return data.train if name == "train" else data.val


@torch.no_grad()
def compare(spec: CompareVerify, run_id: str, teacher: torch.nn.Module,
            student: torch.nn.Module, data: Any, *, batch_size: int, block_size: int,
            device: torch.device) -> Verification:
    """Teacher and student on the same held-out windows; each model reads its own hidden
    states, so errors that compound through the layers show up here."""
    models = (teacher, student)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums = {"attention": 0.0, "logits": 0.0}
    worst = {"attention": 0.0, "logits": 0.0}
    counts = {"attention": 0, "logits": 0}
    per_layer: dict[str, list[float]] = {}
    try:
        for x, _ in _split(data, spec.split).iter_eval_batches(batch_size, block_size,
                                                               spec.batches):
            x = x.to(device)
            with capture_attention(teacher, inputs=False) as t_attn:
                t_logits = teacher(x)
            with capture_attention(student, inputs=False) as s_attn:
                s_logits = student(x)
            pairs = [("logits", t_logits, s_logits)]
            for (name, [(_, t_out)]), (_, [(_, s_out)]) in zip(t_attn.items(), s_attn.items(),
                                                               strict=True):
                pairs.append(("attention", t_out, s_out))
                diff = (t_out.float() - s_out.float()).abs()  # type: ignore[union-attr]
                per_layer.setdefault(name, []).append(float(diff.mean()))
            for kind, a, b in pairs:
                diff = (a.float() - b.float()).abs()  # type: ignore[union-attr]
                sums[kind] += float(diff.mean())
                worst[kind] = max(worst[kind], float(diff.max()))
                counts[kind] += 1
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    result = Verification("compare", run_id)
    for kind in ("attention", "logits"):
        mean = sums[kind] / max(counts[kind], 1)
        result.metrics[kind] = {"mean_l1": mean, "max_l1": worst[kind]}
        _l1(result.failures, kind, mean, worst[kind], getattr(spec, kind))
    result.metrics["attention_per_layer_mean_l1"] = {
        name: sum(v) / len(v) for name, v in per_layer.items()}
    result.metrics["tokens"] = counts["logits"] * batch_size * block_size
    return result


def fidelity(spec: FidelityVerify, run_id: str, teacher: torch.nn.Module,
             student: torch.nn.Module, data: Any, *, batch_size: int, block_size: int,
             device: torch.device) -> Verification:
    split = _split(data, "val" if spec.split == "auto" else spec.split)

    def nll(model: torch.nn.Module) -> float:
        return evaluate(model, NextTokenCrossEntropy(), split, batch_size=batch_size,
                        block_size=block_size, max_batches=spec.batches, device=device,
                        dtype=torch.float32)

    t_nll, s_nll = nll(teacher), nll(student)
    delta = s_nll - t_nll
    result = Verification("fidelity", run_id, {
        "teacher_nll": t_nll, "student_nll": s_nll, "delta_nll": delta,
        "teacher_ppl": math.exp(t_nll), "student_ppl": math.exp(s_nll),
        "ppl_ratio": math.exp(delta)})
    _limit(result.failures, "student - teacher NLL", delta, spec.max_delta_nll)
    _limit(result.failures, "perplexity ratio", math.exp(delta), spec.max_ppl_ratio)
    return result


def _answer(case: EvalCase, model: torch.nn.Module, tokenizer: Any, max_new_tokens: int,
            device: torch.device) -> tuple[bool, str]:
    if case.kind == "int_greedy":
        text = greedy_text(model, tokenizer, case.prompt, max_new_tokens, device)
        return first_integer(text) == int(case.answer), text
    assert case.choices is not None
    scores = choice_logprobs(model, tokenizer, case.prompt, case.choices, device)
    best = case.choices[max(range(len(scores)), key=scores.__getitem__)]
    return best == str(case.answer), best


def evaluate_cases(spec: EvalVerify, run_id: str, teacher: torch.nn.Module | None,
                   student: torch.nn.Module, tokenizer: Any, *,
                   device: torch.device) -> Verification:
    models = {"student": student} if teacher is None else {"teacher": teacher,
                                                            "student": student}
    result = Verification("eval", run_id)
    correct = dict.fromkeys(models, 0)
    for case in spec.cases:
        row: dict[str, Any] = {"id": case.id, "kind": case.kind, "answer": case.answer}
        for name, model in models.items():
            ok, said = _answer(case, model, tokenizer, spec.max_new_tokens, device)
            correct[name] += ok
            row[f"{name}_output"], row[f"{name}_correct"] = said, ok
        result.cases.append(row)
    n = len(spec.cases)
    for name in models:
        result.metrics[f"{name}_accuracy"] = correct[name] / n
    t = spec.thresholds
    _limit(result.failures, "student accuracy", result.metrics["student_accuracy"],
           t.min_student_accuracy, below=True)
    if teacher is not None:
        drop = result.metrics["teacher_accuracy"] - result.metrics["student_accuracy"]
        result.metrics["accuracy_drop"] = drop
        _limit(result.failures, "accuracy drop", drop, t.max_accuracy_drop)
    return result
