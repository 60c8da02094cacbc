"""`caramba data`: the built-in real-text corpora and token datasets built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caramba_cli.guard import echo_out, guarded

app = typer.Typer(help="Built-in corpora and token datasets.", no_args_is_help=True)


@app.command("list")
def list_corpora() -> None:
    """The corpora caramba ships (source, license, size); use them as `path: corpus:<name>`."""

    def work() -> None:
        from rich.console import Console
        from rich.table import Table

        from caramba.data.corpora import CORPORA

        table = Table(title="corpora (data.config.path: corpus:<name>)")
        for column in ("name", "documents", "bytes", "source", "license"):
            table.add_column(column, overflow="fold")
        for info in CORPORA.values():
            table.add_row(info.name, str(info.documents), f"{info.bytes:,}", info.source,
                          info.license)
        Console().print(table)

    guarded(work)


@app.command("build")
def build(
    corpus: Annotated[str, typer.Option(help="Corpus name (see `caramba data list`).")] = "english",
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 8192,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the cache).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Tokenize a corpus into train.npy, val.npy, tokenizer.json and meta.json."""

    def work() -> None:
        from caramba.data.build import build_token_dataset, ensure_corpus_dataset
        from caramba.data.corpora import CORPORA
        from caramba.errors import InputError, did_you_mean

        if corpus not in CORPORA:
            hint = did_you_mean(corpus, CORPORA)
            raise InputError(f"unknown corpus {corpus!r}"
                             + (f" — did you mean {hint!r}?" if hint else "")
                             + f" Known: {', '.join(CORPORA)}.")
        path = (ensure_corpus_dataset(corpus, vocab_size) if out is None
                else build_token_dataset(corpus, out, vocab_size, overwrite=force))
        echo_out(str(path))

    guarded(work)
