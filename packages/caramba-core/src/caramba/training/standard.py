"""The standard trainer: AdamW, warmup + cosine, clipping, accumulation, exact resume.

Batches: `train.batch_size` is the micro-batch; each optimizer step accumulates
`train.grad_accum` micro-batches, so the effective batch is batch_size x grad_accum sequences
(tokens per step = batch_size x block_size x grad_accum). Each micro-batch loss is divided
by grad_accum so the gradient is the mean over the effective batch, as one large batch
would give.

Exact resume: everything a step depends on is either in the checkpoint (weights, AdamW
moments, RNG states, step, tokens seen) or a pure function of the step (learning rate,
data order). On CPU a run resumed after SIGKILL ends bit-identical to an uninterrupted one.

Hot loop: losses stay on the device until a logging, eval or save step reads them back in
one sync; no `.item()` per step.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from caramba.devices import (
    autocast,
    grad_scaler,
    keep_freed_memory,
    resolve_device,
    resolve_dtype,
)
from caramba.errors import CarambaError, CheckpointError, InputError, TrainingError
from caramba.manifest.schema import RunSpec, RuntimeConfig
from caramba.training.checkpoint import (
    RESET_HINT,
    CheckpointManager,
    TrainingState,
    load_checkpoint,
    read_state,
)
from caramba.training.data_order import batch_generator
from caramba.training.evaluate import evaluate, perplexity
from caramba.training.metrics import MetricsWriter
from caramba.training.optim import build_adamw
from caramba.training.pending_losses import PendingLosses
from caramba.training.progress import ProgressDisplay, make_progress
from caramba.training.rng import capture_rng_state, restore_rng_state, seed_everything
from caramba.training.schedule import lr_at

RECENT_LOSSES = 10  # final_train_loss is the mean of this many last steps (fewer if shorter)


@dataclass
class TrainerContext:
    """What a trainer needs besides the run spec; built by the runner from the plan."""

    model: torch.nn.Module  # forward(tokens (B, T) long) -> logits (B, T, V)
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: Any  # caramba.data.tokens.TokenData: .train/.val splits, check_block_size()
    runtime: RuntimeConfig
    run_dir: Path  # checkpoints/<run_id>/ and metrics.jsonl go here
    plan_hash: str
    resume: bool = False
    instrument: str = "rich"  # rich | plain | none
    keep_checkpoints: int = 2
    base_dir: Path | None = None  # the manifest's folder: relative paths in a run resolve here


@dataclass(frozen=True)
class RunResult:
    run_id: str
    steps: int
    final_train_loss: float  # mean loss of the last RECENT_LOSSES steps
    last_train_loss: float  # loss of the very last step
    final_val_loss: float
    val_ppl: float
    tokens_seen: int
    tokens_per_s: float  # training throughput, eval and checkpoint time excluded
    wall_s: float  # wall time of the whole run, summed over resumed sessions
    checkpoint: Path  # the final checkpoint directory
    resumed_from_step: int | None  # None when the run started from scratch

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "checkpoint": str(self.checkpoint)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{**data, "checkpoint": Path(data["checkpoint"])})


class StandardTrainer:
    """Trains `ctx.model` for one run at a time: `StandardTrainer(ctx).run(run_spec)`.

    Subclasses change what a step optimizes through `phase`, `build_optimizer` and
    `make_loop` (the upcycle trainer's global phase does), and keep everything else.
    """

    phase = "standard"

    def __init__(self, ctx: TrainerContext) -> None:
        self.ctx = ctx

    def run(self, run: RunSpec) -> RunResult:
        cfg = run.train
        if cfg.phase != self.phase:
            raise InputError(
                f"run {run.id!r}: train.phase is {cfg.phase!r}, which trainer.standard does "
                "not handle.", hint="set train.phase: standard or choose the matching trainer.")
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        if device.type == "cpu":
            keep_freed_memory()  # large tensors reuse the heap instead of page-faulting anew
        self.ctx.data.check_block_size(cfg.block_size)
        seed_everything(run.seed)

        model = self.ctx.model.to(device)
        model.train()
        optimizer = self.build_optimizer(model, run, device)
        scaler = grad_scaler(device, dtype)
        manager = CheckpointManager(
            self.ctx.run_dir / "checkpoints" / run.id, keep=self.ctx.keep_checkpoints)
        metrics = MetricsWriter(self.ctx.run_dir / "metrics.jsonl", run.id)

        latest = manager.latest() if self.ctx.resume else None
        if latest is None:
            manager.clear()  # a fresh start must not leave an older timeline's checkpoints
            metrics.truncate_after(0)
            self.prepare_fresh(model, run, device)
            state = TrainingState(0, 0, 0.0, run.id, self.ctx.plan_hash)
        else:
            finished = finished_result(latest, run, model, self.ctx.plan_hash)
            if finished is not None:
                return finished
            state = load_checkpoint(latest, model, optimizer, plan_hash=self.ctx.plan_hash)
            restore_rng(latest, state)
            if scaler is not None and "grad_scaler" in state.extra:
                scaler.load_state_dict(state.extra["grad_scaler"])
            metrics.truncate_after(state.step)

        progress = make_progress(self.ctx.instrument)
        progress.start(run.id, run.steps, state.step, state.elapsed_s)
        if latest is not None:
            progress.message(f"resumed from {latest} (step {state.step})")
        try:
            loop = self.make_loop(run, model, optimizer, scaler, device, dtype,
                                  manager, metrics, progress, state)
            result = loop.train()
        finally:
            progress.close()
            metrics.close()
        return result

    def build_optimizer(self, model: torch.nn.Module, run: RunSpec,
                        device: torch.device) -> torch.optim.Optimizer:
        return build_adamw(model, run.train, device)

    def prepare_fresh(self, model: torch.nn.Module, run: RunSpec, device: torch.device) -> None:
        """Called when a run starts from scratch (not resumed), before its first step."""

    def make_loop(self, run: RunSpec, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None, device: torch.device,
                  dtype: torch.dtype, manager: CheckpointManager, metrics: MetricsWriter,
                  progress: ProgressDisplay, state: TrainingState) -> TrainLoop:
        return TrainLoop(self.ctx, run, model, optimizer, scaler, device, dtype,
                         manager, metrics, progress, state)


def finished_result(latest: Path, run: RunSpec, model: torch.nn.Module,
                    plan_hash: str) -> RunResult | None:
    """If the latest checkpoint is this run's end, load its weights and its result.

    A trainer whose run length is not `run.steps` records its own in extra["total_steps"].
    """
    document = read_state(latest)
    if document["run_id"] != run.id:
        raise CheckpointError(
            f"{latest} belongs to run {document['run_id']!r}, not {run.id!r}.",
            hint=RESET_HINT)
    step = document["step"]
    total = (document.get("extra") or {}).get("total_steps", run.steps)
    if step > total:
        raise CheckpointError(
            f"{latest} is at step {step}, beyond this run's {total} steps.",
            hint=RESET_HINT)
    result = (document.get("extra") or {}).get("result")
    if step < total or result is None:
        return None
    load_checkpoint(latest, model, plan_hash=plan_hash)
    try:
        done = RunResult.from_json(result)
    except TypeError as exc:
        raise CheckpointError(f"{latest}/state.json has a malformed result: {exc}.",
                              hint=RESET_HINT) from exc
    return RunResult(**{**asdict(done), "checkpoint": latest, "resumed_from_step": step})


def restore_rng(latest: Path, state: TrainingState) -> None:
    try:
        restore_rng_state(state.rng)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{latest}/state.json has a malformed RNG state: {exc}.",
                              hint=RESET_HINT) from exc


class TrainLoop:
    """One training session of one run: the step loop and its bookkeeping.

    `loss(x, y)` is what a step minimizes and `extra_state()` what a checkpoint keeps
    beyond the standard fields; subclasses override them.
    """

    def __init__(self, ctx: TrainerContext, run: RunSpec, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 device: torch.device, dtype: torch.dtype, manager: CheckpointManager,
                 metrics: MetricsWriter, progress: ProgressDisplay, state: TrainingState) -> None:
        self.ctx, self.run, self.cfg = ctx, run, run.train
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.device, self.dtype = device, dtype
        self.manager, self.metrics, self.progress = manager, metrics, progress
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.resumed_from = state.step if state.step > 0 else None

        self.step = state.step
        self.tokens = state.tokens_seen
        self.prior_elapsed = state.elapsed_s
        self.prior_train_s = float(state.extra.get("train_s", state.elapsed_s))
        self.recent: deque[float] = deque(state.extra.get("recent_losses", []),
                                          maxlen=RECENT_LOSSES)
        self.last_val: float | None = state.extra.get("last_val_loss")
        self.pending = PendingLosses(device)  # step losses not yet read back from the device
        self.result: RunResult | None = None  # set by the final save
        self.forward = model
        if self.cfg.compile:
            self.forward = torch.compile(model)

    # --------------------------------------------------------------------- the loop

    def train(self) -> RunResult:
        cfg, runtime, total = self.cfg, self.ctx.runtime, self.run.steps
        train_split = self.ctx.data.train
        self.session_start = time.perf_counter()
        self.overhead_s = 0.0  # eval + checkpoint time this session
        self.mark_time, self.mark_tokens = self.session_start, self.tokens
        tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
        first = True
        while self.step < total:
            lr = lr_at(self.step, lr=cfg.lr, total_steps=total, warmup_steps=cfg.warmup_steps,
                       min_lr_ratio=cfg.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            done = self.step + 1
            log_now = done % runtime.log_every == 0 or done == total
            if first and cfg.compile:
                grad_norm = self._first_compiled_step(train_split, log_now)
            else:
                grad_norm = self._optimizer_step(train_split, log_now)
            first = False
            self.step = done
            self.tokens += tokens_per_step
            self.progress.advance(done)

            eval_now = done == total or (runtime.eval_every > 0 and done % runtime.eval_every == 0)
            save_now = done == total or (runtime.save_every > 0 and done % runtime.save_every == 0)
            if log_now or eval_now or save_now:
                self._read_back_losses()
            if log_now:
                self._log(lr, grad_norm)
            if eval_now:
                self._eval()
            if save_now:
                self._save(final=done == total)
        assert self.result is not None
        return self.result

    def _optimizer_step(self, split: Any, want_norm: bool) -> torch.Tensor | None:
        cfg = self.cfg
        accum = cfg.grad_accum
        loss_sum: torch.Tensor | None = None
        for micro in range(accum):
            x, y = split.batch(cfg.batch_size, cfg.block_size,
                               generator=batch_generator(self.run.seed, self.step, micro))
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with autocast(self.device, self.dtype):
                loss = self.loss(x, y)
            scaled = loss / accum if accum > 1 else loss
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
            loss = loss.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
        assert loss_sum is not None
        self.pending.append(loss_sum / accum if accum > 1 else loss_sum)

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and report the true gradient
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        elif want_norm:
            grad_norm = _grad_norm(self.params)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The scalar a step minimizes for one micro-batch (runs under autocast)."""
        return self.ctx.objective(self.forward(x), y)

    def extra_state(self) -> dict[str, Any]:
        """Trainer-specific entries of the checkpoint's `extra` (JSON values)."""
        return {}

    def _first_compiled_step(self, split: Any, want_norm: bool) -> torch.Tensor | None:
        """torch.compile compiles lazily, in the first forward: turn its failure into advice."""
        try:
            return self._optimizer_step(split, want_norm)
        except CarambaError:
            raise
        except Exception as exc:
            raise TrainingError(
                f"run {self.run.id!r}: the first step with train.compile failed "
                f"({type(exc).__name__}: {exc}).",
                hint="set train.compile: false (torch.compile may not support this model, "
                     "device or torch version).",
            ) from exc

    # --------------------------------------------------------------------- bookkeeping

    def _read_back_losses(self) -> None:
        """One device sync for all steps since the last read; NaN/inf stops the run here."""
        if not self.pending:
            return
        values = self.pending.take()
        first_step = self.step - len(values) + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise TrainingError(
                    f"run {self.run.id!r}: the training loss became {value} at step "
                    f"{first_step + offset}.",
                    hint=f"lower train.lr (now {self.cfg.lr:g}), add train.warmup_steps, keep "
                         "train.grad_clip > 0, or use bfloat16 instead of float16.",
                )
        self.recent.extend(values)

    def _log(self, lr: float, grad_norm: torch.Tensor | None) -> None:
        now = time.perf_counter()
        interval = max(now - self.mark_time, 1e-9)
        tokens_per_s = (self.tokens - self.mark_tokens) / interval
        self.mark_time, self.mark_tokens = now, self.tokens
        loss = self.recent[-1]
        self.metrics.log_train(
            step=self.step, loss=loss, lr=lr,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens_per_s=tokens_per_s, tokens=self.tokens, elapsed_s=self._elapsed())
        self.progress.update(step=self.step, loss=loss, lr=lr, tokens_per_s=tokens_per_s)

    def _eval(self) -> None:
        started = time.perf_counter()
        cfg = self.cfg
        self.last_val = evaluate(
            self.model, self.ctx.objective, self.ctx.data.val, batch_size=cfg.batch_size,
            block_size=cfg.block_size, max_batches=self.ctx.runtime.eval_batches,
            device=self.device, dtype=self.dtype)
        ppl = perplexity(self.last_val)
        self.metrics.log_eval(step=self.step, val_loss=self.last_val, val_ppl=ppl)
        self.progress.message(f"step {self.step}: val_loss {self.last_val:.4f} ppl {ppl:.2f}")
        self._exclude_from_throughput(started)

    def _save(self, final: bool) -> None:
        started = time.perf_counter()
        extra: dict[str, Any] = {
            "recent_losses": list(self.recent),
            "last_val_loss": self.last_val,
            "train_s": self._train_s(),
            **self.extra_state(),
        }
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        if final:
            self.result = self._result()
            extra["result"] = self.result.to_json()
        state = TrainingState(self.step, self.tokens, self._elapsed(), self.run.id,
                              self.ctx.plan_hash, capture_rng_state(), extra)
        self.manager.save(self.model, self.optimizer, state)
        self._exclude_from_throughput(started)

    def _result(self) -> RunResult:
        assert self.last_val is not None and self.recent
        train_s = self._train_s()
        return RunResult(
            run_id=self.run.id,
            steps=self.step,
            final_train_loss=sum(self.recent) / len(self.recent),
            last_train_loss=self.recent[-1],
            final_val_loss=self.last_val,
            val_ppl=perplexity(self.last_val),
            tokens_seen=self.tokens,
            tokens_per_s=self.tokens / train_s if train_s > 0 else 0.0,
            wall_s=self._elapsed(),
            checkpoint=self.manager.step_dir(self.step),
            resumed_from_step=self.resumed_from,
        )

    def _exclude_from_throughput(self, started: float) -> None:
        spent = time.perf_counter() - started
        self.overhead_s += spent
        self.mark_time += spent

    def _elapsed(self) -> float:
        return self.prior_elapsed + time.perf_counter() - self.session_start

    def _train_s(self) -> float:
        return self.prior_train_s + time.perf_counter() - self.session_start - self.overhead_s


def _grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients, without touching them (grad_clip: 0 logging)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params
             if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))


__all__ = ["RECENT_LOSSES", "RunResult", "StandardTrainer", "TrainLoop", "TrainerContext",
           "finished_result", "restore_rng"]
