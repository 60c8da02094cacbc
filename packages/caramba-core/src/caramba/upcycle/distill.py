"""`phase: global`: next-token cross-entropy on the whole student, optionally plus logit
distillation from the teacher, through the standard trainer's loop and checkpoints.

    loss = CE(student, next tokens) + distill_weight * T^2 * KL(softmax(t/T) || softmax(s/T))

T^2 keeps the distillation gradient's size independent of the temperature (Hinton et al.,
2015). The teacher runs in eval mode without gradients on the same micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from caramba.manifest.schema import RunSpec
from caramba.training.standard import RunResult, StandardTrainer, TrainerContext, TrainLoop
from caramba.upcycle.surgery import attention_layers


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over positions of KL(teacher || student) at temperature T, in float32.

    With p = softmax(t/T) and z = s/T: KL = sum p log p - sum p z + logsumexp(z), whose
    gradient in s is (softmax(z) - p) / T. Written out (`_SoftTargetKL`) it makes a few
    passes over the (positions x vocabulary) float32 logits instead of autograd's dozen; at
    SmolLM2's 49,152-token vocabulary those passes, not the matmuls, were a quarter of a
    global-phase step on a CPU.
    """
    vocab = student_logits.shape[-1]
    with torch.no_grad():
        t_logp = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, dim=-1)
        p = t_logp.exp()
        neg_entropy = torch.linalg.vecdot(p, t_logp)  # sum p log p, per position
    kl = _SoftTargetKL.apply(student_logits.reshape(-1, vocab), p, neg_entropy, temperature)
    return kl * temperature**2


class _SoftTargetKL(torch.autograd.Function):
    """mean over rows of KL(p || softmax(s / T)) for float32 targets p (rows, vocab)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, p: torch.Tensor, neg_entropy: torch.Tensor,
                temperature: float) -> torch.Tensor:
        z = logits.to(torch.float32, copy=True).mul_(1.0 / temperature)
        lse = torch.logsumexp(z, dim=-1)
        kl = (neg_entropy - torch.linalg.vecdot(p, z) + lse).mean()
        ctx.save_for_backward(z, lse, p)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        z, lse, p = ctx.saved_tensors
        # (softmax(z) - p) / (T * rows), in place in the saved z (used once).
        z.sub_(lse[:, None]).exp_().sub_(p).mul_(grad / (ctx.temperature * z.shape[0]))
        return z.to(ctx.dtype), None, None, None


class DistillLoop(TrainLoop):
    """The standard loop with the teacher's logits as a second target."""

    teacher: nn.Module
    weight: float
    temperature: float

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.forward(x)
        ce = self.ctx.objective(logits, y)
        if self.weight == 0:
            return ce
        with torch.no_grad():
            target = self.teacher(x)
        return ce + self.weight * distillation_kl(logits, target, self.temperature)


class GlobalPhase(StandardTrainer):
    """StandardTrainer for `phase: global`: distillation loss, optionally attention only."""

    phase = "global"

    def __init__(self, ctx: TrainerContext, teacher: nn.Module,
                 init_student: Callable[[nn.Module, RunSpec, torch.device], None] | None
                 ) -> None:
        super().__init__(ctx)
        self.teacher, self.init_student = teacher, init_student

    def run(self, run: RunSpec) -> RunResult:
        frozen = []
        if run.train.trainable == "attention":
            keep = {id(p) for _, layer in attention_layers(self.ctx.model)
                    for p in layer.parameters()}
            frozen = [p for p in self.ctx.model.parameters()
                      if p.requires_grad and id(p) not in keep]
        for p in frozen:
            p.requires_grad_(False)
        try:
            return super().run(run)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def prepare_fresh(self, model: nn.Module, run: RunSpec, device: torch.device) -> None:
        if self.init_student is not None:
            self.init_student(model, run, device)

    def make_loop(self, run: RunSpec, *args: object) -> TrainLoop:
        loop = DistillLoop(self.ctx, run, *args)  # type: ignore[arg-type]
        loop.teacher = self.teacher.to(loop.device).eval()
        loop.weight = run.train.distill_weight
        loop.temperature = run.train.distill_temperature
        return loop
