"""Turn errors into one paragraph on stderr and an exit code; tracebacks only with --debug.

Exit codes: 0 success, 1 the job failed, 2 bad usage or input (manifest, files, arguments).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

T = TypeVar("T")

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
DEBUG = {"enabled": False}


def guarded(fn: Callable[[], T], debug: bool = False) -> T:
    from caramba.errors import CarambaError

    debug = debug or DEBUG["enabled"]
    try:
        return fn()
    except CarambaError as exc:
        if debug:
            raise
        stderr.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
        if exc.hint:
            stderr.print(f"[dim]hint:[/] {exc.hint}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("interrupted: checkpoints written so far are intact; resume with --resume")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence for the user
        if debug:
            raise
        stderr.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}")
        stderr.print("[dim]this is a bug in caramba; rerun with --debug for the traceback "
                     "and report it.[/]")
        raise typer.Exit(1) from None


def echo_out(text: str) -> None:
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
