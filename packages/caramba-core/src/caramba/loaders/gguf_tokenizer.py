"""The tokenizer stored in a GGUF file's metadata, rebuilt with the `tokenizers` library.

GGUF keeps a byte-level BPE vocabulary as `tokenizer.ggml.tokens` (GPT-2 byte alphabet, so
" the" is "Ġthe"), `tokenizer.ggml.merges` ("Ġ t" pairs in priority order),
`tokenizer.ggml.token_type` (1 normal, 3 control, 4 user-defined, ...) and the special ids.
How text is split before BPE is not stored as a regex, only as a name
(`tokenizer.ggml.pre`); `PRE_TOKENIZERS` mirrors llama.cpp's table (src/llama-vocab.cpp) for
the names we support, using the Hugging Face pre-tokenizers those models ship with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from caramba.data.tokenizer import Tokenizer
from caramba.errors import CheckpointError

# llama_token_type in llama.cpp.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    # GPT-2's regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    # llama.cpp: "\p{N}" first (every digit its own word), then the GPT-2 regex.
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _gpt2()]
    )


def _llama3() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# tokenizer.ggml.pre -> (pre-tokenizer, ignore_merges). llama.cpp sets ignore_merges (a word
# that is itself a token is not split by merges) for the Llama 3 family only.
PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "gpt-2": (_gpt2, False),
    "smollm": (_digits_then_gpt2, False),
    "starcoder": (_digits_then_gpt2, False),
    "refact": (_digits_then_gpt2, False),
    "llama-bpe": (_llama3, True),
    "llama3": (_llama3, True),
}


def tokenizer_from_gguf(meta: Mapping[str, Any], source: str) -> Tokenizer:
    """Build the exact tokenizer described by GGUF metadata (`tokenizer.ggml.*` values)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{source}: tokenizer model {kind!r} is not supported; caramba rebuilds byte-level "
            "BPE tokenizers (tokenizer.ggml.model = 'gpt2', as in Llama 3, SmolLM, StarCoder). "
            "SentencePiece ('llama') vocabularies are not supported yet."
        )
    pre = str(meta.get("tokenizer.ggml.pre", "gpt-2"))
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; "
            f"supported: {', '.join(sorted(PRE_TOKENIZERS))}."
        )
    if not isinstance(meta.get("tokenizer.ggml.tokens"), list):
        raise CheckpointError(
            f"{source}: metadata key 'tokenizer.ggml.tokens' (the vocabulary) is missing; the "
            "file is corrupt or carries no tokenizer."
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges: list[str] = list(meta.get("tokenizer.ggml.merges", []))
    types: list[int] = list(meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{source}: tokenizer.ggml.tokens holds duplicate tokens")
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or left not in vocab or right not in vocab or " " in right:
            raise CheckpointError(
                f"{source}: malformed BPE merge {merge!r} in tokenizer.ggml.merges"
            )
        pairs.append((left, right))

    make_pre, ignore_merges = PRE_TOKENIZERS[pre]
    inner = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False,
                   ignore_merges=ignore_merges)
    )
    inner.pre_tokenizer = make_pre()
    inner.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, <|endoftext|>, ...) are matched in text as whole tokens
    # and marked special; user-defined ones are matched too but decode as text.
    inner.add_special_tokens([
        AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types) if t in (CONTROL, UNKNOWN)
    ])
    inner.add_tokens([
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types) if t == USER_DEFINED
    ])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        inner.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], int(bos))],
        )
    if inner.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise CheckpointError(
            f"{source}: rebuilding the tokenizer gave {inner.get_vocab_size()} tokens instead "
            f"of {len(tokens)}; its special tokens collide with normal ones."
        )
    tokenizer = Tokenizer(inner)
    # The file says which ids are special; Tokenizer's guess by spelling is only a fallback.
    eos = meta.get("tokenizer.ggml.eos_token_id")
    tokenizer.eos_id = int(eos) if eos is not None else tokenizer.eos_id
    tokenizer.bos_id = int(bos) if bos is not None else tokenizer.bos_id
    return tokenizer


def special_ids(meta: Mapping[str, Any]) -> dict[str, int]:
    """bos/eos/unk/pad ids named in the metadata."""
    out = {}
    for name in ("bos", "eos", "unknown", "padding", "eot"):
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            out[name] = int(value)
    return out
