"""`caramba agents ...`, plugged into the caramba CLI through `caramba.commands`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caramba_agents.process import ManifestReadError, read_process_targets

app = typer.Typer(help="Research agents for a manifest's process targets.", no_args_is_help=True)


@app.command("list")
def list_processes(manifest: Annotated[Path, typer.Argument(help="Manifest file.")]) -> None:
    """List the process targets of a manifest and the team each one declares."""
    try:
        targets = read_process_targets(manifest)
    except ManifestReadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not targets:
        typer.echo(f"{manifest}: no process targets")
        return
    for t in targets:
        team = ", ".join(f"{k}={v}" for k, v in t.team.items()) or "no team"
        typer.echo(f"{t.name}: {t.kind} ({team}) {t.description}".rstrip())
