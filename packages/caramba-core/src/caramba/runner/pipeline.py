"""Run a compiled plan: for each experiment target build the data and model, run the
trainer for every run, then sample, evaluate and write the report and plots."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.text import Text

from caramba.benchmarks.runner import run_benchmarks
from caramba.compiler.plan import Plan, TargetPlan
from caramba.errors import InputError
from caramba.manifest.load import ResolvedManifest
from caramba.manifest.schema import ExperimentTarget
from caramba.models.definition import ModelDefinition
from caramba.registry import DATASETS, OBJECTIVES, SYSTEMS, TRAINERS
from caramba.runner.artifacts import TargetArtifacts
from caramba.runner.plots import loss_curve_png
from caramba.runner.sampling import sample_texts


@dataclass(frozen=True)
class RunOptions:
    runs_dir: Path = Path("runs")
    resume: bool = False


def run_plan(resolved: ResolvedManifest, plan: Plan, options: RunOptions,
             console: Console | None = None) -> list[dict[str, Any]]:
    """Run every target of `plan` in order; returns each target's report."""
    console = console or Console(stderr=True)
    reports = []
    for target in plan.targets:
        if target.kind != "experiment":
            raise InputError(
                f"target {target.name!r} is a process target (agent workflow); this release "
                "validates process targets but cannot execute them yet.",
                hint="run an experiment target with --target NAME, or list process targets "
                "with `caramba agents list MANIFEST`.",
            )
        reports.append(run_experiment(resolved, plan, target, options, console))
    return reports


def _open_data(resolved: ResolvedManifest, target: TargetPlan) -> Any:
    spec = target.spec
    assert isinstance(spec, ExperimentTarget)
    data = DATASETS.get(spec.data.ref).open(target.data_config, resolved.file.parent)
    vocab = getattr(target.embedder, "vocab_size", None)
    if vocab is not None and data.vocab_size is not None and data.vocab_size > vocab:
        raise InputError(
            f"{resolved.file}: the dataset's tokenizer has {data.vocab_size} tokens but the "
            f"model's embedder (targets.{spec.name}.system.config.model.embedder.vocab_size) "
            f"has only {vocab}.",
            hint=f"set the embedder's and the head's vocab size to at least {data.vocab_size}.",
        )
    data.check_block_size(max(r.spec.train.block_size for r in target.runs))
    return data


def run_experiment(resolved: ResolvedManifest, plan: Plan, target: TargetPlan,
                   options: RunOptions, console: Console) -> dict[str, Any]:
    from caramba.training.metrics import read_records
    from caramba.training.standard import TrainerContext

    spec = target.spec
    assert isinstance(spec, ExperimentTarget)
    artifacts = TargetArtifacts(options.runs_dir / plan.manifest_name / target.name)
    started = time.perf_counter()
    console.rule(f"[bold]{plan.manifest_name}[/] / {target.name}  [dim]plan {plan.hash}[/]")
    artifacts.write_inputs(resolved.data, plan.to_json())

    data = _open_data(resolved, target)
    console.print(f"data: {data.description}")
    definition = ModelDefinition(target.embedder, target.topology,
                                 spec.system.config.model.tie_embeddings)
    # Initial weights are a function of the first run's seed, like everything after them.
    torch.manual_seed(target.runs[0].spec.seed)
    model = SYSTEMS.get(spec.system.ref).build(definition)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"model: {params:,} parameters")
    objective = OBJECTIVES.get(spec.objective)()
    trainer = TRAINERS.get(spec.trainer)(TrainerContext(
        model=model, objective=objective, data=data, runtime=spec.runtime,
        run_dir=artifacts.root, plan_hash=plan.hash, resume=options.resume,
        instrument=spec.logging.instrument,
    ))
    results = [trainer.run(run.spec) for run in target.runs]
    final = results[-1]

    device = next(model.parameters()).device
    samples = sample_texts(
        model, data.tokenizer, list(spec.runtime.sample_prompts),
        max_new_tokens=spec.runtime.sample_tokens, temperature=spec.runtime.sample_temperature,
        top_k=spec.runtime.sample_top_k, seed=target.runs[-1].spec.seed, device=device)
    if samples:
        artifacts.samples.write_text(
            "\n\n".join(f"{s.prompt}{s.completion}" for s in samples) + "\n", encoding="utf-8")
        console.rule("samples")
        for s in samples:
            console.print(Text.assemble((s.prompt, "bold"), s.completion.rstrip()), "")

    bench_results = run_benchmarks(list(spec.benchmarks), {"model": model}, data, device,
                                   artifacts.root)
    for bench in bench_results:
        console.print(f"benchmark {bench.id}: " + "; ".join(
            f"{name} " + ", ".join(f"{k} {v:,.2f}" for k, v in values.items())
            for name, values in bench.summary.items()))

    records = read_records(artifacts.metrics)
    loss_curve_png(records, artifacts.loss_curve, f"{plan.manifest_name} / {target.name}")
    report = {
        "manifest": plan.manifest_name,
        "target": target.name,
        "plan_hash": plan.hash,
        "parameters": params,
        "data": data.description,
        "final_train_loss": final.final_train_loss,
        "final_val_loss": final.final_val_loss,
        "val_perplexity": final.val_ppl,
        "tokens_per_s": final.tokens_per_s,
        "tokens_seen": sum(r.tokens_seen for r in results),
        "wall_s": time.perf_counter() - started,
        "runs": [r.to_json() for r in results],
        "samples": [{"prompt": s.prompt, "completion": s.completion} for s in samples],
        "benchmarks": {b.id: b.summary for b in bench_results},
        "artifacts": {"metrics": artifacts.metrics.name, "loss_curve": artifacts.loss_curve.name,
                      "plan": artifacts.plan.name, "manifest": artifacts.resolved_manifest.name},
    }
    artifacts.write_report(report)
    console.rule("report")
    console.print(
        f"train loss {final.final_train_loss:.3f} · val loss {final.final_val_loss:.3f} · "
        f"val perplexity {final.val_ppl:.1f} · {final.tokens_per_s:,.0f} tokens/s · "
        f"{params / 1e6:.2f}M params")
    console.print(f"artifacts: {artifacts.root}/ (report.json, metrics.jsonl, loss.png, "
                  "plan.json, manifest.resolved.yml, checkpoints/)")
    if not math.isfinite(final.final_val_loss):
        console.print("[yellow]warning: validation loss is not finite[/]")
    return report
