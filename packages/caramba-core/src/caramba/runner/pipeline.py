"""Run a compiled plan: for each experiment target build the data and model, run the
trainer for every run (then that run's verify blocks), sample, benchmark (teacher and
student when the trainer has a teacher) and write the report, CSVs, plots and tables."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.text import Text

from caramba.benchmarks.artifacts import write_benchmark_artifacts
from caramba.benchmarks.runner import run_benchmarks
from caramba.compiler.plan import Plan, TargetPlan
from caramba.errors import InputError
from caramba.manifest.load import ResolvedManifest
from caramba.manifest.schema import ExperimentTarget, RunSpec
from caramba.models.definition import ModelDefinition
from caramba.registry import DATASETS, OBJECTIVES, SYSTEMS, TRAINERS
from caramba.runner.artifacts import TargetArtifacts
from caramba.runner.plots import loss_curve_png
from caramba.runner.sampling import sample_texts

if TYPE_CHECKING:
    from caramba.verify.checks import Verification


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
        instrument=spec.logging.instrument, base_dir=resolved.file.parent,
    ))
    results, verifications = [], []
    for run in target.runs:
        results.append(trainer.run(run.spec))
        verifications += _verify(run.spec, trainer, model, data, console)
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

    teacher = getattr(trainer, "teacher", None)
    models = {"model": model} if teacher is None else {"teacher": teacher, "student": model}
    bench_results = run_benchmarks(list(spec.benchmarks), models, data, device, artifacts.root)
    for bench in bench_results:
        console.print(f"benchmark {bench.id}: " + "; ".join(
            f"{name} " + ", ".join(f"{k} {v:,.2f}" for k, v in values.items()
                                   if isinstance(v, (int, float)))
            for name, values in bench.summary.items()))
    figures = write_benchmark_artifacts(bench_results, artifacts.root,
                                        f"{plan.manifest_name} / {target.name}")

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
        "verification": [v.to_json() for v in verifications],
        "samples": [{"prompt": s.prompt, "completion": s.completion} for s in samples],
        "benchmarks": {b.id: b.summary for b in bench_results},
        "artifacts": {"metrics": artifacts.metrics.name, "loss_curve": artifacts.loss_curve.name,
                      "plan": artifacts.plan.name, "manifest": artifacts.resolved_manifest.name,
                      **{f"{b.id}_csv": f"{b.id}.csv" for b in bench_results if b.rows},
                      **{path.stem: path.name for path in figures}},
    }
    if teacher is not None:
        from caramba.upcycle.summary import upcycle_summary

        report["upcycle"] = upcycle_summary(trainer, model)
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


def _verify(run: RunSpec, trainer: Any, model: torch.nn.Module, data: Any,
            console: Console) -> list[Verification]:
    """The run's verify blocks against the trainer's teacher (if it has one)."""
    if not run.verify:
        return []
    from caramba.verify.run import verify_run

    results = verify_run(run, student=model, teacher=getattr(trainer, "teacher", None),
                         data=data, tokenizer=data.tokenizer,
                         device=next(model.parameters()).device)
    for result in results:
        status = "[green]passed[/]" if result.passed else "[yellow]failed[/]"
        console.print(f"verify {run.id}/{result.type}: {status} " + ", ".join(
            f"{k} {v:.4g}" for k, v in _flat(result.metrics).items()))
        for failure in result.failures:
            console.print(f"  [yellow]{failure}[/]")
    return results


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and not key.endswith("per_layer_mean_l1"):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out
