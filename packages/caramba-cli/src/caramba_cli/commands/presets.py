"""`caramba presets`: the manifests shipped with caramba-core."""

from __future__ import annotations

from caramba_cli.guard import guarded


def presets_command() -> None:
    """List shipped presets; run one with `caramba run preset:<name>`."""

    def work() -> None:
        from rich.console import Console
        from rich.table import Table

        from caramba.preset_catalog import list_presets

        table = Table(title="caramba presets (run with: caramba run preset:<name>)")
        table.add_column("name", style="cyan")
        table.add_column("notes")
        for preset in list_presets():
            table.add_row(preset.name, preset.notes)
        Console().print(table)

    guarded(work)
