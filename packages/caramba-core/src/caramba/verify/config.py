"""The `verify:` blocks of a run (pydantic only: the manifest schema imports this, no torch).

A run's `verify` is one block or a list of them; `type` selects compare, fidelity or eval.
Thresholds left unset are measured and reported but never fail.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class L1Thresholds(_Strict):
    max_mean_l1: PositiveFloat | None = Field(
        None, description="fail when the mean absolute difference exceeds this")
    max_max_l1: PositiveFloat | None = Field(
        None, description="fail when the largest absolute difference exceeds this")


class _Batches(_Strict):
    batches: PositiveInt = Field(2, le=10_000, description="real batches compared")
    batch_size: PositiveInt | None = Field(
        None, le=4096, description="sequences per batch; the run's train.batch_size if unset")
    block_size: PositiveInt | None = Field(
        None, le=1 << 20, description="tokens per sequence; the run's train.block_size if unset")
    fail_fast: bool = Field(
        False, description="stop the pipeline when a threshold fails (otherwise report it "
        "and go on, so benchmarks still run)")


class CompareVerify(_Batches):
    """Teacher and student on the same held-out batches: attention outputs and logits."""

    type: Literal["compare"] = Field("compare", description="selects this block")
    split: Literal["val", "train"] = Field("val", description="which split the batches come from")
    attention: L1Thresholds = Field(
        L1Thresholds(), description="thresholds on per-layer attention outputs (B, T, D)")
    logits: L1Thresholds = Field(L1Thresholds(), description="thresholds on logits (B, T, V)")


class FidelityVerify(_Batches):
    """Next-token NLL of student and teacher on the same batches."""

    type: Literal["fidelity"] = Field("fidelity", description="selects this block")
    batches: PositiveInt = Field(5, le=10_000, description="real batches scored")
    split: Literal["auto", "val", "train"] = Field(
        "auto", description="which split; auto = val")
    max_delta_nll: float | None = Field(
        None, description="fail when student NLL - teacher NLL (nats/token) exceeds this")
    max_ppl_ratio: PositiveFloat | None = Field(
        None, description="fail when student perplexity / teacher perplexity exceeds this")


class EvalCase(_Strict):
    id: str = Field(min_length=1, max_length=128, description="name in the report")
    prompt: str = Field(min_length=1, description="text the model continues")
    kind: Literal["int_greedy", "choice_logprob"] = Field(
        description="int_greedy: decode greedily, the first integer must equal answer; "
        "choice_logprob: the choice with the highest log-probability after the prompt must "
        "be answer")
    answer: int | str = Field(description="the expected integer or choice")
    choices: list[str] | None = Field(
        None, description="choice_logprob: the candidates (joined to the prompt with a space "
        "unless the prompt ends in whitespace)")

    @model_validator(mode="after")
    def _check(self) -> EvalCase:
        if self.kind == "choice_logprob":
            if not self.choices or len(self.choices) < 2:
                raise ValueError("choice_logprob needs `choices` with at least two entries")
            if str(self.answer) not in self.choices:
                raise ValueError(f"answer {self.answer!r} is not one of the choices "
                                 f"{self.choices}")
        elif isinstance(self.answer, str) and not _is_int(self.answer):
            raise ValueError(f"int_greedy needs an integer answer, got {self.answer!r}")
        elif self.choices is not None:
            raise ValueError("`choices` only applies to kind choice_logprob")
        return self


def _is_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


class EvalThresholds(_Strict):
    min_student_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="fail when the student's accuracy is below this")
    max_accuracy_drop: float | None = Field(
        None, ge=0.0, le=1.0, description="fail when teacher accuracy - student accuracy "
        "exceeds this")


class EvalVerify(_Strict):
    """Behaviour on hand-written cases, student and (when there is one) teacher."""

    type: Literal["eval"] = Field("eval", description="selects this block")
    cases: list[EvalCase] = Field(min_length=1, max_length=10_000, description="the cases")
    max_new_tokens: PositiveInt = Field(
        16, le=4096, description="int_greedy: tokens decoded before looking for the integer")
    thresholds: EvalThresholds = Field(EvalThresholds(), description="pass/fail limits")
    fail_fast: bool = Field(False, description="stop the pipeline when a threshold fails")

    @model_validator(mode="after")
    def _unique(self) -> EvalVerify:
        ids = [c.id for c in self.cases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"case ids must be unique; repeated: {dupes}")
        return self


VerifySpec = Annotated[CompareVerify | FidelityVerify | EvalVerify, Field(discriminator="type")]
NEEDS_TEACHER = ("compare", "fidelity")
