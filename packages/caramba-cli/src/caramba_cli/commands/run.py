"""`caramba run`: the whole pipeline for a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caramba_cli.commands.compile import DebugOpt, ManifestArg, OverridesArg, TargetOpt
from caramba_cli.guard import guarded


def run_command(
    manifest: ManifestArg,
    overrides: OverridesArg = None,
    target: TargetOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; run nothing.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoints.")
    ] = False,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where artifacts go: <runs-dir>/<name>/<target>/.")
    ] = Path("runs"),
    debug: DebugOpt = False,
) -> None:
    """Compile the manifest, then train, sample, evaluate and write artifacts per target."""

    def work() -> None:
        from rich.console import Console

        from caramba.compiler.lower import compile_manifest
        from caramba_cli.render import render_plan

        resolved, plan = compile_manifest(manifest, overrides or [], target)
        if dry_run:
            Console().print(render_plan(plan))
            return
        from caramba.runner.pipeline import RunOptions, run_plan

        run_plan(resolved, plan, RunOptions(runs_dir=runs_dir, resume=resume))

    guarded(work, debug)
