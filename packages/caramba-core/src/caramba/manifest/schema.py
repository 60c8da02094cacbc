"""Manifest v2 schema (pydantic v2).

Only the structure lives here. Model nodes (`embedder`, `topology`) and `data.config` are
validated against the registries by `caramba.manifest.nodes`, because their schemas come from
whichever packages are installed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=128)]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(Strict):
    """How one run trains. Every knob has a default except the ones that define the run."""

    phase: str = Field("standard", description="standard | blockwise | global (upcycle)")
    batch_size: PositiveInt = Field(8, le=1 << 16)
    block_size: PositiveInt = Field(128, le=1 << 20)
    lr: PositiveFloat = Field(1e-3, le=10.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0.0, description="max global grad norm; 0 disables")
    grad_accum: PositiveInt = Field(1, le=4096)
    device: str = Field("cpu", description="cpu | cuda | cuda:N | mps | auto")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    compile: bool = Field(False, description="wrap the model in torch.compile")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(
                f"device {self.device!r} is not one of cpu, cuda, cuda:N, mps, auto"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must both be in [0, 1)")
        return self


class RunSpec(Strict):
    id: Identifier
    mode: Literal["train"] = "train"
    exp: str | None = None
    seed: int = Field(1337, ge=0, le=2**32 - 1)
    steps: PositiveInt = Field(..., le=10**9)
    train: TrainConfig = TrainConfig()
    verify: dict[str, Any] | None = None


class DataSpec(Strict):
    ref: str = "dataset.tokens"
    config: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(Strict):
    type: Literal["TransformerModel", "LanguageModel"] = "TransformerModel"
    embedder: dict[str, Any]
    topology: dict[str, Any]
    tie_embeddings: bool = False


class SystemConfig(Strict):
    model: ModelSpec


class SystemSpec(Strict):
    ref: str = "system.language_model"
    config: SystemConfig


class BenchmarkSpec(Strict):
    id: Identifier
    config: dict[str, Any]
    models: list[str] = Field(default_factory=list)
    repeats: PositiveInt = 1


class RuntimeConfig(Strict):
    """Target-wide runtime settings (checkpointing, evaluation, sampling)."""

    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    eval_every: int = Field(0, ge=0, description="validation loss every N steps; 0 = only at the end")
    eval_batches: PositiveInt = Field(20, le=100000)
    log_every: PositiveInt = 10
    sample_prompts: list[str] = Field(default_factory=list)
    sample_tokens: int = Field(48, ge=0, le=100000)
    sample_temperature: float = Field(0.8, ge=0.0, le=10.0)
    sample_top_k: int = Field(40, ge=0)


class LoggingConfig(Strict):
    instrument: Literal["rich", "plain", "none"] = "rich"
    wandb: bool = False


class ExperimentTarget(Strict):
    type: Literal["experiment"]
    name: Identifier
    description: str = ""
    backend: Literal["torch"] = "torch"
    task: Literal["task.language_modeling"] = "task.language_modeling"
    data: DataSpec
    system: SystemSpec
    objective: str = "objective.next_token_ce"
    trainer: str = "trainer.standard"
    runs: list[RunSpec] = Field(..., min_length=1)
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    runtime: RuntimeConfig = RuntimeConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _unique_run_ids(self) -> ExperimentTarget:
        ids = [r.id for r in self.runs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"run ids must be unique within a target; repeated: {dupes}")
        return self


class ProcessTarget(Strict):
    """An agent workflow. Parsed and validated here; caramba-agents executes it."""

    type: Literal["process"]
    name: Identifier
    description: str = ""
    team: dict[str, Any] = Field(default_factory=dict)
    process: dict[str, Any]


Target = Annotated[ExperimentTarget | ProcessTarget, Field(discriminator="type")]


class Defaults(Strict):
    """Merged into every target; the target's own values win."""

    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    runtime: dict[str, Any] = Field(default_factory=dict)
    logging: dict[str, Any] = Field(default_factory=dict)


class Manifest(Strict):
    version: Literal[2]
    name: Identifier
    notes: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)
    defaults: Defaults = Defaults()
    targets: list[Target] = Field(..., min_length=1)
    entrypoints: dict[str, str] = Field(default_factory=dict)

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
