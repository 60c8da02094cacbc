"""`caramba compile`: parse → resolve → validate → lower, without running anything."""

from __future__ import annotations

from typing import Annotated

import typer

from caramba_cli.guard import echo_out, guarded

ManifestArg = Annotated[str, typer.Argument(help="Manifest file, or preset:<name>.")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="key.path=value overrides, e.g. runs.0.steps=50 trainer.lr=3e-4."),
]
TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Only this target.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


def compile_command(
    manifest: ManifestArg,
    overrides: OverridesArg = None,
    target: TargetOpt = None,
    print_plan: Annotated[bool, typer.Option("--print-plan", help="Print the plan.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Validate a manifest and lower it to a plan (exit 2 with located errors if invalid)."""

    def work() -> None:
        from rich.console import Console

        from caramba.compiler.lower import compile_manifest
        from caramba_cli.render import render_plan

        _, plan = compile_manifest(manifest, overrides or [], target)
        if json_out:
            echo_out(plan.to_json())
        elif print_plan:
            Console().print(render_plan(plan))
        else:
            names = ", ".join(t.name for t in plan.targets)
            echo_out(f"ok: {plan.manifest_name} ({names}) plan {plan.hash}")

    guarded(work, debug)
