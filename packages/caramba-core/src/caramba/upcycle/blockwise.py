"""Blockwise distillation: each DBA attention layer learns, one after another, to give the
teacher's attention output for the teacher's attention input (L1 loss).

The teacher runs once per session over `blockwise_batches` batches of training text; its
attention inputs and outputs are cached (float16 on the CPU, float32 where float16 would
overflow) and every block's steps sample from that cache, so the teacher is never
recomputed. The cache is also the calibration data of the surgery (input second moments).

Run length: `steps` per block; with `blockwise_target_loss` a block stops as soon as the mean
L1 of its last 10 steps reaches the target (checked every 10 steps, so a resumed run makes
the same decisions). Each block gets a fresh AdamW and its own warmup + cosine schedule.
Checkpoints hold the whole student and the current block's optimizer; together with the
(block, step) position, the RNG state and data order as a pure function of (seed, step) a
resumed run ends identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from caramba.devices import autocast, keep_freed_memory, resolve_device, resolve_dtype
from caramba.errors import CheckpointError, InputError, TrainingError
from caramba.layers.attention import AttentionLayer
from caramba.manifest.schema import RunSpec
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
from caramba.training.progress import make_progress
from caramba.training.rng import capture_rng_state, seed_everything
from caramba.training.schedule import lr_at
from caramba.training.standard import RunResult, TrainerContext, finished_result, restore_rng
from caramba.upcycle.activations import SecondMoments, capture_attention
from caramba.upcycle.surgery import attention_layers

CONVERGENCE_WINDOW = 10  # steps averaged by the convergence test (and how often it runs)


class TeacherActivations:
    """Cached (input, output) of every teacher attention layer over fixed training windows."""

    def __init__(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor],
                 moments: dict[str, torch.Tensor]) -> None:
        self.inputs, self.outputs, self.moments = inputs, outputs, moments

    @property
    def sequences(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    @classmethod
    @torch.no_grad()
    def collect(cls, teacher: nn.Module, split: Any, *, batches: int, batch_size: int,
                block_size: int, seed: int, device: torch.device) -> TeacherActivations:
        """Teacher forward over `batches` training batches (drawn as step -1 - i of `seed`)."""
        moments = SecondMoments()
        chunks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        teacher.eval()
        for i in range(batches):
            x, _ = split.batch(batch_size, block_size, generator=batch_generator(seed, -1 - i, 0))
            with capture_attention(teacher) as captured:
                teacher(x.to(device))
            for name, [(inp, out)] in captured.items():
                assert inp is not None and out is not None
                moments.add(name, inp)
                chunks.setdefault(name, []).append((_store(inp), _store(out)))
        inputs = {n: torch.cat([c[0] for c in parts]) for n, parts in chunks.items()}
        outputs = {n: torch.cat([c[1] for c in parts]) for n, parts in chunks.items()}
        return cls(inputs, outputs, moments.result())

    def batch(self, name: str, batch_size: int, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, self.sequences, (batch_size,), generator=generator)
        return (self.inputs[name][rows].to(device, torch.float32),
                self.outputs[name][rows].to(device, torch.float32))


def _store(t: torch.Tensor) -> torch.Tensor:
    half = t.to("cpu", torch.float16)
    return half if torch.isfinite(half).all() else t.to("cpu", torch.float32)


@dataclass
class Position:
    """Where a blockwise run stands: block index, steps done in it, its recent losses."""

    block: int = 0
    block_step: int = 0
    recent: list[float] | None = None
    summary: list[dict[str, Any]] | None = None  # one entry per finished block

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "block_step": self.block_step,
                "block_recent": self.recent or [], "blocks": self.summary or []}

    @classmethod
    def from_json(cls, extra: dict[str, Any], where: str) -> Position:
        try:
            return cls(int(extra["block"]), int(extra["block_step"]),
                       [float(v) for v in extra["block_recent"]], list(extra["blocks"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}/state.json lacks the blockwise position ({exc}).",
                                  hint=RESET_HINT) from exc


class BlockwisePhase:
    """`phase: blockwise` of trainer.upcycle for one run."""

    def __init__(self, ctx: TrainerContext, teacher: nn.Module,
                 init_student: Callable[[dict[str, torch.Tensor]], None] | None) -> None:
        self.ctx, self.teacher, self.init_student = ctx, teacher, init_student

    def run(self, run: RunSpec) -> RunResult:
        cfg = run.train
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        if device.type == "cpu":
            keep_freed_memory()
        seed_everything(run.seed)
        student = self.ctx.model.to(device)
        blocks = [(n, m) for n, m in attention_layers(student) if m.mode == "dba"]
        if not blocks:
            raise InputError(
                f"run {run.id!r}: phase blockwise trains the student's DBA attention layers, "
                "but it has none.", hint="set mode: dba on the student's AttentionLayer.")
        manager = CheckpointManager(self.ctx.run_dir / "checkpoints" / run.id,
                                    keep=self.ctx.keep_checkpoints)
        metrics = MetricsWriter(self.ctx.run_dir / "metrics.jsonl", run.id)
        latest = manager.latest() if self.ctx.resume else None
        if latest is not None:
            finished = finished_result(latest, run, student, self.ctx.plan_hash)
            if finished is not None:
                return finished

        started = time.perf_counter()
        cache = TeacherActivations.collect(
            self.teacher.to(device), self.ctx.data.train, batches=cfg.blockwise_batches,
            batch_size=cfg.batch_size, block_size=cfg.block_size, seed=run.seed, device=device)
        cache_s = time.perf_counter() - started
        if latest is None:
            manager.clear()
            metrics.truncate_after(0)
            if self.init_student is not None:
                self.init_student(cache.moments)
            state = TrainingState(0, 0, 0.0, run.id, self.ctx.plan_hash)
            position = Position(recent=[], summary=[])
            optimizer = build_adamw(blocks[0][1], cfg, device)
        else:
            position = Position.from_json(read_state(latest).get("extra") or {}, str(latest))
            if not 0 <= position.block < len(blocks):
                raise CheckpointError(f"{latest} is at block {position.block}, but the student "
                                      f"has {len(blocks)} DBA layers.", hint=RESET_HINT)
            optimizer = build_adamw(blocks[position.block][1], cfg, device)
            state = load_checkpoint(latest, student, optimizer, plan_hash=self.ctx.plan_hash)
            restore_rng(latest, state)
            metrics.truncate_after(state.step)

        progress = make_progress(self.ctx.instrument)
        progress.start(run.id, run.steps * len(blocks), state.step, state.elapsed_s)
        progress.message(f"cached teacher attention over {cache.sequences} sequences of "
                         f"{cfg.block_size} tokens in {cache_s:.1f} s")
        try:
            loop = _BlockLoop(self.ctx, run, student, blocks, cache, optimizer, device, dtype,
                              manager, metrics, progress, state, position)
            return loop.train()
        finally:
            progress.close()
            metrics.close()


class _BlockLoop:
    def __init__(self, ctx: TrainerContext, run: RunSpec, student: nn.Module,
                 blocks: list[tuple[str, AttentionLayer]], cache: TeacherActivations,
                 optimizer: torch.optim.Optimizer, device: torch.device, dtype: torch.dtype,
                 manager: CheckpointManager, metrics: MetricsWriter, progress: Any,
                 state: TrainingState, position: Position) -> None:
        self.ctx, self.run, self.cfg = ctx, run, run.train
        self.student, self.blocks, self.cache = student, blocks, cache
        self.optimizer, self.device, self.dtype = optimizer, device, dtype
        self.manager, self.metrics, self.progress = manager, metrics, progress
        self.step, self.tokens = state.step, state.tokens_seen
        self.prior_elapsed = state.elapsed_s
        self.prior_train_s = float(state.extra.get("train_s", state.elapsed_s))
        self.resumed_from = state.step if state.step > 0 else None
        self.position = position
        self.pending = PendingLosses(device)
        self.last_val: float | None = None

    def train(self) -> RunResult:
        cfg, runtime = self.cfg, self.ctx.runtime
        self.session_start = time.perf_counter()
        self.overhead_s = 0.0
        tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
        pos = self.position
        assert pos.recent is not None and pos.summary is not None
        while pos.block < len(self.blocks):
            name, layer = self.blocks[pos.block]
            layer.train()
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            while not self._block_done():
                lr = lr_at(pos.block_step, lr=cfg.lr, total_steps=self.run.steps,
                           warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self._step(name, layer, params)
                self.step += 1
                pos.block_step += 1
                self.tokens += tokens_per_step
                self.progress.advance(self.step)
                check = pos.block_step % CONVERGENCE_WINDOW == 0
                log_now = self.step % runtime.log_every == 0
                save_now = runtime.save_every > 0 and self.step % runtime.save_every == 0
                if check or log_now or save_now or pos.block_step == self.run.steps:
                    self._read_back()
                if log_now:
                    self._log(name, lr)
                if save_now:
                    self._save(final=False)
            self._read_back()
            recent = pos.recent[-CONVERGENCE_WINDOW:]
            pos.summary.append({"block": name, "steps": pos.block_step,
                                "l1": sum(recent) / len(recent)})
            self.progress.message(f"block {pos.block + 1}/{len(self.blocks)} {name}: "
                                  f"L1 {pos.summary[-1]['l1']:.4f} after {pos.block_step} steps")
            layer.eval()
            pos.block, pos.block_step, pos.recent = pos.block + 1, 0, []
            if pos.block < len(self.blocks):
                self.optimizer = build_adamw(self.blocks[pos.block][1], cfg, self.device)
        self.progress.advance(self.run.steps * len(self.blocks))
        self._eval()
        return self._save(final=True)

    def _block_done(self) -> bool:
        pos, target = self.position, self.cfg.blockwise_target_loss
        assert pos.recent is not None
        if pos.block_step >= self.run.steps:
            return True
        if target is None or pos.block_step == 0 or pos.block_step % CONVERGENCE_WINDOW:
            return False
        return sum(pos.recent[-CONVERGENCE_WINDOW:]) / CONVERGENCE_WINDOW <= target

    def _step(self, name: str, layer: AttentionLayer, params: list[torch.Tensor]) -> None:
        cfg = self.cfg
        total: torch.Tensor | None = None
        for micro in range(cfg.grad_accum):
            x, target = self.cache.batch(name, cfg.batch_size,
                                         batch_generator(self.run.seed, self.step, micro),
                                         self.device)
            with autocast(self.device, self.dtype):
                out = layer(x)
            loss = (out.float() - target).abs().mean()
            (loss / cfg.grad_accum).backward()
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending.append(total / cfg.grad_accum)

    def _read_back(self) -> None:
        if not self.pending:
            return
        values = self.pending.take()
        for value in values:
            if not math.isfinite(value):
                raise TrainingError(
                    f"run {self.run.id!r}: the blockwise L1 loss of block "
                    f"{self.blocks[self.position.block][0]!r} became {value}.",
                    hint=f"lower train.lr (now {self.cfg.lr:g}) or keep train.grad_clip > 0.")
        assert self.position.recent is not None
        self.position.recent.extend(values)

    def _log(self, name: str, lr: float) -> None:
        assert self.position.recent
        loss = self.position.recent[-1]
        train_s = max(self._train_s(), 1e-9)
        self.metrics.log(kind="blockwise", step=self.step, block=name,
                         block_step=self.position.block_step, l1=loss, lr=lr,
                         tokens=self.tokens, elapsed_s=self._elapsed())
        self.progress.update(step=self.step, loss=loss, lr=lr,
                             tokens_per_s=self.tokens / train_s)

    def _eval(self) -> None:
        started = time.perf_counter()
        self.last_val = evaluate(
            self.student, self.ctx.objective, self.ctx.data.val, batch_size=self.cfg.batch_size,
            block_size=self.cfg.block_size, max_batches=self.ctx.runtime.eval_batches,
            device=self.device, dtype=self.dtype)
        ppl = perplexity(self.last_val)
        self.metrics.log_eval(step=self.step, val_loss=self.last_val, val_ppl=ppl)
        self.progress.message(f"after blockwise: val_loss {self.last_val:.4f} ppl {ppl:.2f}")
        self.overhead_s += time.perf_counter() - started

    def _save(self, final: bool) -> RunResult:
        started = time.perf_counter()
        # The most steps this run can take (convergence may end it sooner: then its length).
        extra: dict[str, Any] = {**self.position.to_json(), "train_s": self._train_s(),
                                 "total_steps": self.run.steps * len(self.blocks)}
        result = None
        if final:
            result = self._result()
            extra["result"] = result.to_json()
            extra["total_steps"] = self.step
        state = TrainingState(self.step, self.tokens, self._elapsed(), self.run.id,
                              self.ctx.plan_hash, capture_rng_state(), extra)
        self.manager.save(self.student, self.optimizer, state)
        self.overhead_s += time.perf_counter() - started
        return result  # type: ignore[return-value]

    def _result(self) -> RunResult:
        assert self.last_val is not None and self.position.summary
        train_s = self._train_s()
        final = [b["l1"] for b in self.position.summary]
        return RunResult(
            run_id=self.run.id, steps=self.step,
            final_train_loss=sum(final) / len(final), last_train_loss=final[-1],
            final_val_loss=self.last_val, val_ppl=perplexity(self.last_val),
            tokens_seen=self.tokens,
            tokens_per_s=self.tokens / train_s if train_s > 0 else 0.0,
            wall_s=self._elapsed(), checkpoint=self.manager.step_dir(self.step),
            resumed_from_step=self.resumed_from)

    def _elapsed(self) -> float:
        return self.prior_elapsed + time.perf_counter() - self.session_start

    def _train_s(self) -> float:
        return self.prior_train_s + time.perf_counter() - self.session_start - self.overhead_s
