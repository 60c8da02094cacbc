"""ResolvedManifest → Plan: build each model on the meta device, check shapes, count
parameters and estimate memory, without allocating a single weight."""

from __future__ import annotations

from torch import nn

from caramba.compiler.plan import MemoryEstimate, ModuleSummary, Plan, RunPlan, TargetPlan
from caramba.compiler.shape_check import build_on_meta, failing_path, shape_pass
from caramba.errors import CarambaError
from caramba.manifest.diagnostics import Diagnostic, ManifestError, format_path
from caramba.manifest.load import ResolvedManifest, ResolvedTarget, load_manifest
from caramba.manifest.schema import ExperimentTarget
from caramba.models.definition import ModelDefinition

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}
MAX_SHAPE_PASS_TOKENS = 4096


def _named_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children with container lists flattened away (`layers.0` instead of `layers` → `0`)."""
    out = []
    for name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            out.extend((f"{name}.{i}", c) for i, c in _named_children(child))
        else:
            out.append((name, child))
    return out


def summarize(module: nn.Module, name: str, node_paths: dict[int, tuple]) -> ModuleSummary:
    config = module.__dict__.get("_caramba_config")
    path = node_paths.get(id(config)) if config is not None else None
    children = tuple(summarize(child, child_name, node_paths)
                     for child_name, child in _named_children(module))
    params = sum(p.numel() for p in module.parameters())
    type_name = config.type if config is not None else type(module).__name__
    return ModuleSummary(name, type_name, params, format_path(path) if path else "", children)


def _lower_experiment(resolved: ResolvedManifest, target: ResolvedTarget,
                      errors: list[Diagnostic]) -> TargetPlan | None:
    spec = target.spec
    assert isinstance(spec, ExperimentTarget)
    assert target.embedder is not None and target.topology is not None
    model_path = target.path + ("system", "config", "model")
    definition = ModelDefinition(target.embedder, target.topology,
                                 spec.system.config.model.tie_embeddings)
    try:
        model = build_on_meta(spec.system.ref, definition)
    except CarambaError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. sizes too large for torch: a manifest problem
        errors.append(resolved.diagnostic(
            model_path, f"cannot build the model: {type(exc).__name__}: {exc}"))
        return None
    seq_len = min(max(r.train.block_size for r in spec.runs), MAX_SHAPE_PASS_TOKENS)
    report = shape_pass(model, seq_len)
    if report.error is not None:
        where = failing_path(report, resolved.node_paths, model_path + ("topology",))
        errors.append(resolved.diagnostic(
            where, f"shape mismatch: this node fails on its input ({report.error}). Check "
            "that its width matches the output of the node before it."))
        return None
    vocab = getattr(target.embedder, "vocab_size", None)
    if vocab is not None and report.output_shape is not None and report.output_shape[-1] != vocab:
        errors.append(resolved.diagnostic(
            model_path + ("topology",),
            f"the model outputs width {report.output_shape[-1]} but the embedder's vocab_size "
            f"is {vocab}: next-token prediction needs logits over the vocabulary, so end the "
            f"topology with a LinearLayer of d_out {vocab}."))
        return None
    summary = summarize(model, "model", resolved.node_paths)
    params = summary.params
    per_token_act = report.activation_bytes / seq_len
    runs = []
    for run in spec.runs:
        act_bytes = DTYPE_BYTES[run.train.dtype]
        runs.append(RunPlan(run, MemoryEstimate(
            weights=params * 4, gradients=params * 4, optimizer=params * 8,
            activations=int(per_token_act * run.train.batch_size * run.train.block_size
                            * act_bytes / 4),
        )))
    return TargetPlan(spec, target.embedder, target.topology, target.data_config, summary,
                      tuple(runs))


def lower(resolved: ResolvedManifest, only: str | None = None) -> Plan:
    """Lower every target (or only the one named `only`) to a Plan."""
    errors: list[Diagnostic] = []
    plans = []
    for target in resolved.targets:
        if only is not None and target.spec.name != only:
            continue
        if isinstance(target.spec, ExperimentTarget):
            plan = _lower_experiment(resolved, target, errors)
            if plan is not None:
                plans.append(plan)
        else:
            plans.append(TargetPlan(target.spec))
    if errors:
        raise ManifestError(errors)
    m = resolved.manifest
    return Plan(m.name, str(resolved.file), tuple(plans), m.notes)


def compile_manifest(ref: str, overrides: list[str] | None = None,
                     target: str | None = None) -> tuple[ResolvedManifest, Plan]:
    """Parse, resolve, validate and lower in one call (the CLI's `compile`)."""
    resolved = load_manifest(ref, overrides, target)
    return resolved, lower(resolved, target)
