"""The `caramba` command: sub-commands from this package plus any registered through the
entry point group `caramba.commands`. Importing this module must not import torch, so
`caramba --help` answers instantly."""

from __future__ import annotations

import importlib.metadata as metadata
from typing import Annotated

import typer

from caramba_cli import __version__
from caramba_cli.commands import data as data_commands
from caramba_cli.commands.chat import chat_command
from caramba_cli.commands.compile import compile_command
from caramba_cli.commands.generate import generate_command
from caramba_cli.commands.presets import presets_command
from caramba_cli.commands.run import run_command
from caramba_cli.guard import DEBUG, stderr

app = typer.Typer(
    name="caramba",
    help="caramba: one YAML manifest → a trained model, verification, benchmarks and a report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.command("compile")(compile_command)
app.command("presets")(presets_command)
app.command("generate")(generate_command)
app.command("chat")(chat_command)
app.add_typer(data_commands.app, name="data")


def _version(value: bool) -> None:
    if value:
        try:
            core = metadata.version("caramba-core")
        except metadata.PackageNotFoundError:
            core = "not installed"
        typer.echo(f"caramba-cli {__version__} (caramba-core {core})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show versions.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """caramba: one YAML manifest → a trained model, verification, benchmarks and a report."""
    DEBUG["enabled"] = debug


def _load_plugins() -> None:
    for ep in metadata.entry_points(group="caramba.commands"):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            stderr.print(f"[yellow]warning:[/] command plugin {ep.name!r} ({ep.value}) "
                         f"failed to load: {exc}")
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=ep.name)
        elif callable(obj):
            app.command(ep.name)(obj)


def main() -> None:
    _load_plugins()
    app()


if __name__ == "__main__":
    main()
