"""Verification blocks: validated with located errors, measured on the real teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from smollm import REF, english, smollm, student, truncated_teacher

from caramba.compiler.lower import compile_manifest
from caramba.manifest.diagnostics import ManifestError
from caramba.manifest.schema import RunSpec, TrainConfig
from caramba.upcycle.surgery import upcycle_weights
from caramba.verify.config import CompareVerify, EvalVerify, FidelityVerify
from caramba.verify.run import VerificationError, verify_run

QUICK = "preset:smollm2_135m_dba_quick"
CPU = torch.device("cpu")


def _run(*blocks: dict, teacher: bool = True) -> RunSpec:
    train = {"phase": "global", "teacher": REF} if teacher else {}
    return RunSpec(id="r", steps=1, train=TrainConfig(batch_size=2, block_size=32, **train),
                   verify=list(blocks))


def test_a_single_block_or_a_list_is_accepted() -> None:
    one = _run({"type": "compare"})
    many = _run({"type": "fidelity", "max_ppl_ratio": 1.5}, {"type": "compare", "batches": 3})
    assert isinstance(one.verify[0], CompareVerify)
    assert [type(v) for v in many.verify] == [FidelityVerify, CompareVerify]
    assert RunSpec(id="r", steps=1, train=TrainConfig(batch_size=2)).verify == []


@pytest.mark.parametrize(("override", "message"), [
    ("targets.0.runs.0.verify.type=comparre", r"runs\[0\]\.verify.*did you mean 'compare'"),
    ("targets.0.runs.0.verify.attention.max_mean_l1=-1",
     r"runs\[0\]\.verify\.attention\.max_mean_l1.*greater than 0"),
    ("targets.0.runs.1.verify.1.cases.0.answer=Rome",
     r"runs\[1\]\.verify\[1\]\.cases\[0\].*'Rome' is not one of the choices"),
    ("targets.0.runs.1.verify.1.thresholds.min_student_acuracy=0.5",
     r"thresholds\.min_student_acuracy.*did you mean 'min_student_accuracy'"),
    ("targets.0.runs.0.train.phase=standard",
     r"train.teacher only applies to phases blockwise and global"),
])
def test_bad_verify_blocks_are_located(override: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        compile_manifest(QUICK, [override])


def test_compare_needs_a_teacher() -> None:
    with pytest.raises(ValueError, match="verify type 'compare' compares with the teacher"):
        _run({"type": "compare"}, teacher=False)


def test_compare_and_fidelity_of_the_teacher_with_itself_are_exact() -> None:
    teacher = truncated_teacher(2)
    twin = copy.deepcopy(teacher)
    run = _run({"type": "compare", "batches": 1, "attention": {"max_max_l1": 1e-6},
                "logits": {"max_max_l1": 1e-6}},
               {"type": "fidelity", "batches": 1, "max_delta_nll": 1e-6, "max_ppl_ratio": 1.0})
    compare, fidelity = verify_run(run, student=twin, teacher=teacher, data=english(),
                                   tokenizer=english().tokenizer, device=CPU)
    assert compare.passed and compare.metrics["logits"]["max_l1"] == 0.0
    assert compare.metrics["tokens"] == 2 * 32
    assert fidelity.passed and fidelity.metrics["ppl_ratio"] == 1.0


def test_failed_thresholds_are_reported_or_stop_the_pipeline_with_fail_fast() -> None:
    teacher = truncated_teacher(2)
    upcycled = student(2)
    upcycle_weights(teacher, upcycled)
    block = {"type": "compare", "batches": 1, "logits": {"max_mean_l1": 1e-3}}
    (result,) = verify_run(_run(block), student=upcycled, teacher=teacher, data=english(),
                           tokenizer=None, device=CPU)
    assert not result.passed and "logits mean L1" in result.failures[0]
    assert result.metrics["attention"]["mean_l1"] > 0
    assert len(result.metrics["attention_per_layer_mean_l1"]) == 2
    with pytest.raises(VerificationError, match="logits mean L1 .* above the limit 0.001"):
        verify_run(_run({**block, "fail_fast": True}), student=upcycled, teacher=teacher,
                   data=english(), tokenizer=None, device=CPU)


def test_eval_cases_on_the_real_teacher() -> None:
    teacher = smollm().model
    spec = EvalVerify(cases=[
        {"id": "paris", "prompt": "The capital of France is", "kind": "choice_logprob",
         "choices": ["Paris", "London", "Berlin"], "answer": "Paris"},
        {"id": "count", "prompt": "1, 2, 3, 4, 5,", "kind": "int_greedy", "answer": 6},
    ], max_new_tokens=3, thresholds={"min_student_accuracy": 1.0, "max_accuracy_drop": 0.0})
    run = RunSpec(id="r", steps=1, train=TrainConfig(phase="global", teacher=REF),
                  verify=[spec])
    (result,) = verify_run(run, student=teacher, teacher=teacher, data=english(),
                           tokenizer=english().tokenizer, device=CPU)
    assert result.passed, result.cases
    assert result.metrics == {"teacher_accuracy": 1.0, "student_accuracy": 1.0,
                              "accuracy_drop": 0.0}
    assert result.cases[0]["student_output"] == "Paris"
