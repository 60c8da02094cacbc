"""Rich views of a Plan: a table of targets and runs, and the model as a tree."""

from __future__ import annotations

from typing import Any

from rich.tree import Tree


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _model_tree(node: Any, tree: Tree, depth: int = 0, max_depth: int = 6) -> None:
    for child in node.children:
        label = f"[cyan]{child.type}[/] [dim]{child.name}[/] {human_count(child.params)}"
        branch = tree.add(label)
        if depth < max_depth:
            _model_tree(child, branch, depth + 1, max_depth)


def render_plan(plan: Any) -> Tree:
    """The plan as one tree: targets, their runs (with memory estimates) and model."""
    root = Tree(f"[bold]Plan {plan.manifest_name}[/]  [dim]hash {plan.hash}[/]")
    for target in plan.targets:
        if target.kind != "experiment":
            root.add(f"[bold]{target.name}[/] [dim](process: "
                     f"{target.spec.process.get('type', '?')})[/]")
            continue
        data = target.data_config.model_dump() if target.data_config is not None else {}
        node = root.add(f"[bold]{target.name}[/] (experiment) · "
                        f"{human_count(target.param_count)} parameters · data {data.get('path')}"
                        f" · trainer {target.spec.trainer}")
        runs = node.add("runs")
        for run in target.runs:
            t = run.spec.train
            memory = human_bytes(run.memory.total) if run.memory else "?"
            runs.add(f"[cyan]{run.spec.id}[/]: {run.spec.steps} steps · batch "
                     f"{t.batch_size}×{t.block_size} · lr {t.lr:g} · {t.device}/{t.dtype} · "
                     f"est. memory {memory}")
        model = node.add(f"model · {human_count(target.param_count)} parameters")
        _model_tree(target.model, model)
    return root
