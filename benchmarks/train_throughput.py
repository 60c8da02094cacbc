"""Tokens/s of caramba's trainer vs a plain PyTorch loop on the same model and data.

Both train the model built from the same manifest (default: the demo preset) on the same
real-text batches, in one process, alternating A B A B so machine noise hits both alike.
The plain loop is the minimal nanoGPT-style step (forward, cross-entropy, backward, clip,
AdamW, cosine lr). Target: caramba ≥ 0.95× the plain loop.

    python benchmarks/train_throughput.py [--steps 40] [--rounds 2] [override ...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from caramba.compiler.lower import compile_manifest
from caramba.models.definition import ModelDefinition
from caramba.registry import DATASETS, SYSTEMS
from caramba.training.data_order import batch_generator
from caramba.training.objectives import NextTokenCrossEntropy
from caramba.training.schedule import lr_at
from caramba.training.standard import StandardTrainer, TrainerContext

RESULTS = Path(__file__).parent / "results"


def build(target, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    definition = ModelDefinition(target.embedder, target.topology,
                                 target.spec.system.config.model.tie_embeddings)
    return SYSTEMS.get(target.spec.system.ref).build(definition)


def plain_loop(model: torch.nn.Module, data, run, steps: int) -> float:
    """The reference: what a researcher would write by hand. Returns tokens/s."""
    cfg = run.train
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.betas)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr=cfg.lr, total_steps=steps, warmup_steps=cfg.warmup_steps,
                                min_lr_ratio=cfg.min_lr_ratio)
        x, y = data.train.batch(cfg.batch_size, cfg.block_size, batch_generator(run.seed, step, 0))
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    loss.item()
    return steps * cfg.batch_size * cfg.block_size / (time.perf_counter() - start)


def caramba_loop(model, data, target, run, steps: int, workdir: Path) -> float:
    runtime = target.spec.runtime.model_copy(update={"eval_every": 0, "eval_batches": 1,
                                                     "save_every": 0})
    ctx = TrainerContext(model=model, objective=NextTokenCrossEntropy(), data=data,
                         runtime=runtime, run_dir=workdir, plan_hash="bench", instrument="none")
    result = StandardTrainer(ctx).run(run.model_copy(update={"steps": steps}))
    return result.tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="preset:standard_transformer")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    resolved, plan = compile_manifest(args.manifest, args.overrides)
    target = next(t for t in plan.targets if t.kind == "experiment")
    run = target.runs[0].spec
    data = DATASETS.get(target.spec.data.ref).open(target.data_config, resolved.file.parent)
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            plain.append(plain_loop(build(target, run.seed), data, run, args.steps))
            ours.append(caramba_loop(build(target, run.seed), data, target, run, args.steps,
                                     Path(tmp) / f"round{i}"))
            print(f"round {i}: plain {plain[-1]:,.0f} tok/s · caramba {ours[-1]:,.0f} tok/s")
    best_plain, best_ours = max(plain), max(ours)
    ratio = best_ours / best_plain
    params = sum(p.numel() for p in build(target, 0).parameters())
    print(f"\nmodel {params / 1e6:.2f}M params, batch {run.train.batch_size}×"
          f"{run.train.block_size}, {args.steps} steps × {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"plain PyTorch loop: {best_plain:,.0f} tokens/s (best of {args.rounds})")
    print(f"caramba trainer:    {best_ours:,.0f} tokens/s (best of {args.rounds})")
    verdict = "met" if ratio >= 0.95 else "MISSED"
    print(f"ratio caramba/plain: {ratio:.3f}  (target ≥ 0.95: {verdict})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps({
        "manifest": args.manifest, "overrides": args.overrides, "params": params,
        "steps": args.steps, "rounds": args.rounds, "plain_tokens_per_s": plain,
        "caramba_tokens_per_s": ours, "ratio_best": ratio, "torch": torch.__version__,
        "machine": platform.machine(), "threads": torch.get_num_threads(),
        "finite": math.isfinite(ratio)}, indent=2))


if __name__ == "__main__":
    main()
