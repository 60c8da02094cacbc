"""Rich views of a Plan: a table of targets and runs, and the model as a tree."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
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


def render_plan(plan: Any) -> Group:
    parts: list[Any] = []
    head = Table(title=f"Plan {plan.manifest_name}  [dim]hash {plan.hash}[/]", show_lines=False)
    for col in ("target", "type", "run", "steps", "batch×block", "lr", "device/dtype",
                "params", "est. memory"):
        head.add_column(col)
    for target in plan.targets:
        if target.kind != "experiment":
            head.add_row(target.name, target.kind, "-", "-", "-", "-", "-", "-", "-")
            continue
        for i, run in enumerate(target.runs):
            t = run.spec.train
            head.add_row(
                target.name if i == 0 else "", target.kind if i == 0 else "", run.spec.id,
                str(run.spec.steps), f"{t.batch_size}×{t.block_size}", f"{t.lr:g}",
                f"{t.device}/{t.dtype}", human_count(target.param_count) if i == 0 else "",
                human_bytes(run.memory.total) if run.memory else "-",
            )
    parts.append(head)
    for target in plan.targets:
        if target.model is None:
            continue
        tree = Tree(f"[bold]{target.name}[/] model: {human_count(target.param_count)} parameters")
        _model_tree(target.model, tree)
        parts.append(tree)
    return Group(*parts)
