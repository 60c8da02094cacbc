"""An offline tokenizer: byte-level BPE trained with the `tokenizers` library.

`tiktoken` and the Hub download their vocabularies at run time; training our own BPE on the
corpus takes about a second and needs nothing from the network. Byte-level means every string
encodes (no unknown token) and `decode(encode(text)) == text` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from caramba.errors import DataError

EOS_TOKEN = "<|endoftext|>"

# Special-token spellings of other tokenizer families, tried in order when loading a
# tokenizer.json that was not trained here (the JSON does not say which token is EOS).
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>")

# Byte-level BPE needs its 256 byte symbols plus the EOS token before the first merge.
MIN_VOCAB_SIZE = 257


class Tokenizer:
    """A `tokenizers.Tokenizer` with the few operations caramba needs."""

    def __init__(self, inner: tokenizers.Tokenizer) -> None:
        self.inner = inner
        self.eos_id = _first_id(inner, _EOS_CANDIDATES)
        self.bos_id = _first_id(inner, _BOS_CANDIDATES)

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts on all cores (the Rust side releases the GIL)."""
        return [e.ids for e in self.inner.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        # Special tokens are kept so that decode(encode(text)) == text even across documents.
        return self.inner.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return self.inner.to_str()

    def save(self, path: Path) -> None:
        """Write `tokenizer.json` (the `tokenizers` format, loadable by HF tooling)."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Load a tokenizer.json, or the tokenizer.json inside a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(
                f"tokenizer file {path} does not exist; point to a tokenizer.json written by "
                f"`python -m caramba.data.build` or by Hugging Face `tokenizers`."
            )
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(
                f"{path} is not a valid tokenizer.json ({exc}); rebuild it with "
                f"`python -m caramba.data.build` or point to another file."
            ) from exc

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train byte-level BPE with `<|endoftext|>` as id 0; deterministic for the same texts.

    Pass only training text: a tokenizer that has seen the validation set flatters its
    perplexity a little.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
            f"{MIN_VOCAB_SIZE} (256 bytes + {EOS_TOKEN}). Use 8192 for the built-in corpora."
        )
    inner = tokenizers.Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        # All 256 bytes, even unseen ones, so that any string encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    inner.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(inner)


def _first_id(inner: tokenizers.Tokenizer, candidates: Sequence[str]) -> int | None:
    # Only added (special) tokens count: a BPE merge that happens to spell "<s>" is text.
    added = {tok.content: i for i, tok in inner.get_added_tokens_decoder().items()}
    return next((added[token] for token in candidates if token in added), None)
