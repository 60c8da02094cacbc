"""`trainer.upcycle`: turn a pretrained teacher into a DBA student, run by run.

    runs:
      - {id: blockwise, steps: 200, train: {phase: blockwise, teacher: pkg:...}}
      - {id: global,    steps: 100, train: {phase: global, teacher: pkg:..., distill_weight: 0.5}}

The teacher is loaded once (`train.teacher`). The first run of a target, when it starts
from scratch, performs the surgery (`caramba.upcycle.surgery`): shared tensors copied, DBA
projections initialised from the teacher's by whitened truncated SVD, calibrated on teacher
activations of the training split. A resumed run takes its weights from its checkpoint
instead, and later runs continue from the model the earlier ones left.

Phases: `blockwise` (`caramba.upcycle.blockwise`: each DBA layer regresses the teacher's
attention output, L1, on cached teacher activations) and `global` (`caramba.upcycle.distill`:
next-token CE, optionally plus KL to the teacher's logits, through the standard loop).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from caramba.atomic import atomic_write_json
from caramba.devices import resolve_device
from caramba.errors import InputError
from caramba.manifest.schema import UPCYCLE_PHASES, RunSpec
from caramba.models.language_model import LanguageModel
from caramba.training.standard import RunResult, TrainerContext
from caramba.upcycle.activations import SecondMoments, capture_attention
from caramba.upcycle.blockwise import BlockwisePhase
from caramba.upcycle.distill import GlobalPhase
from caramba.upcycle.surgery import SurgeryReport, upcycle_weights
from caramba.upcycle.teacher import check_data, load_teacher

SURGERY_FILE = "surgery.json"  # in the target's run folder


class UpcycleTrainer:
    """Runs phases blockwise and global against the teacher named by `train.teacher`."""

    def __init__(self, ctx: TrainerContext) -> None:
        self.ctx = ctx
        self.teacher: LanguageModel | None = None
        self.teacher_ref: str | None = None
        self.pretrained: Any = None  # caramba.loaders.Pretrained of the teacher
        self.surgery: SurgeryReport | None = None
        self._first_run = True

    def run(self, run: RunSpec) -> RunResult:
        cfg = run.train
        if cfg.phase not in UPCYCLE_PHASES:
            raise InputError(
                f"run {run.id!r}: train.phase is {cfg.phase!r}; trainer.upcycle runs phases "
                f"{' and '.join(UPCYCLE_PHASES)}.",
                hint="use trainer.standard for phase standard.")
        assert cfg.teacher is not None  # the schema requires it for these phases
        teacher = self._load(cfg.teacher)
        self.ctx.data.check_block_size(cfg.block_size)
        first, self._first_run = self._first_run, False
        if cfg.phase == "blockwise":
            init = self._surgery if first else None
            return BlockwisePhase(self.ctx, teacher, init).run(run)
        calibrate = self._calibrated_surgery if first else None
        return GlobalPhase(self.ctx, teacher, calibrate).run(run)

    def _load(self, ref: str) -> LanguageModel:
        if self.teacher is None or ref != self.teacher_ref:
            pretrained = load_teacher(ref, self.ctx.base_dir)
            check_data(pretrained, self.ctx.data, ref)
            self.pretrained, self.teacher, self.teacher_ref = pretrained, pretrained.model, ref
        assert self.teacher is not None
        return self.teacher

    def _surgery(self, covariances: dict[str, torch.Tensor]) -> None:
        assert self.teacher is not None
        self.surgery = upcycle_weights(self.teacher, self.ctx.model, covariances=covariances,
                                       teacher_name=f"the teacher {self.teacher_ref}")
        atomic_write_json(self.ctx.run_dir / SURGERY_FILE, self.surgery.to_json())

    def surgery_json(self) -> dict[str, Any] | None:
        """What the surgery did, also when it happened in an earlier (resumed) session."""
        if self.surgery is not None:
            return self.surgery.to_json()
        path = self.ctx.run_dir / SURGERY_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    @torch.no_grad()
    def _calibrated_surgery(self, model: nn.Module, run: RunSpec, device: torch.device) -> None:
        """Surgery before a global phase that no blockwise phase preceded."""
        from caramba.training.data_order import batch_generator

        assert self.teacher is not None
        cfg = run.train
        teacher = self.teacher.to(resolve_device(cfg.device))
        moments = SecondMoments()
        for i in range(cfg.blockwise_batches):
            x, _ = self.ctx.data.train.batch(cfg.batch_size, cfg.block_size,
                                             generator=batch_generator(run.seed, -1 - i, 0))
            with capture_attention(teacher, outputs=False) as captured:
                teacher(x.to(device))
            for name, [(inp, _)] in captured.items():
                assert inp is not None
                moments.add(name, inp)
        self._surgery(moments.result())
