"""Load a llama.cpp GGUF file (any quantization `gguf.quants` can dequantize) into caramba.

Weights are dequantized to float32 and renamed to Hugging Face Llama names. One layout
difference is undone on the way: llama.cpp's converter permutes the rows of attn_q/attn_k
so that its RoPE can rotate adjacent pairs (2i, 2i+1) of each head; caramba, like Hugging
Face, rotates feature i with i + head_dim/2 (`caramba.layers.rotary`). `unpermute_qk` puts
the rows back. Without it the model still writes text-like output, but its perplexity is
several times worse (a test pins this down). Llama 3.x files also hold `rope_freqs.weight`,
per-frequency RoPE divisors; they become the attention layers' `rope_scaling`
(`caramba.loaders.rope_scaling`), not a weight.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caramba.errors import CheckpointError, InputError
from caramba.loaders.gguf_file import (
    GGUF_MAGIC,
    GGUFFile,
    GGUFTensor,
    HeaderError,
    StringError,
    TruncatedError,
    read_gguf,
)
from caramba.loaders.gguf_tokenizer import special_ids, tokenizer_from_gguf
from caramba.loaders.llama import LlamaArchitecture, check_tensors
from caramba.loaders.pretrained import Pretrained, assemble
from caramba.loaders.rope_scaling import ROPE_FREQS, from_gguf

SUPPORTED_ARCHITECTURES = ("llama",)
INSTALL_GGUF = "pip install gguf"

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
_GLOBAL_BACK = {v: k for k, v in _GLOBAL.items()}


def hf_name_for(gguf_name: str) -> str:
    """The Hugging Face Llama name of a GGUF tensor (unknown names are returned unchanged)."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    match = _GGUF_BLOCK.fullmatch(gguf_name)
    if match and match.group(2) in _BLOCK:
        return f"model.layers.{match.group(1)}.{_BLOCK[match.group(2)]}.{match.group(3)}"
    return gguf_name


def gguf_name_for(hf_name: str) -> str:
    """Inverse of `hf_name_for`."""
    if hf_name in _GLOBAL_BACK:
        return _GLOBAL_BACK[hf_name]
    match = _HF_BLOCK.fullmatch(hf_name)
    if match and match.group(2) in _BLOCK_BACK:
        return f"blk.{match.group(1)}.{_BLOCK_BACK[match.group(2)]}.{match.group(3)}"
    return hf_name


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face (rotate-half) row order -> llama.cpp's, as `convert_hf_to_gguf.py` does.

    Within each head, rows (i, i + d/2) become rows (2i, 2i + 1). Works on weights (out, in)
    and biases (out,). For attn_k pass the number of KV heads.
    """
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's row order -> Hugging Face (rotate-half): the inverse of `permute_qk`."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "reading GGUF files needs the `gguf` package, which is not installed.",
            hint=INSTALL_GGUF,
        ) from exc
    return gguf


def open_gguf(path: Path) -> GGUFFile:
    """The parsed GGUF file at `path`; a missing, truncated or corrupt file is a
    CheckpointError naming the file (and the tensor, when tensor data is cut off; the key,
    when a metadata string is not UTF-8)."""
    gguf = _gguf_module()
    if not path.is_file():
        raise InputError(f"GGUF file {path} does not exist.")
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CheckpointError(
            f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}."
        )
    try:
        return read_gguf(path, gguf.GGMLQuantizationType, gguf.GGML_QUANT_SIZES)
    except TruncatedError as exc:
        raise CheckpointError(
            f"{path}: tensor {exc.name!r} ends at byte {exc.end:,} but the file has only "
            f"{size:,} bytes: the file is truncated. Copy or download it again."
        ) from exc
    except StringError as exc:
        raise CheckpointError(
            f"{path}: metadata key {exc.key!r} cannot be decoded ({exc}); the file is corrupt. "
            "Copy or download it again."
        ) from exc
    except HeaderError as exc:
        raise CheckpointError(
            f"{path}: cannot read the GGUF header ({exc}); the file ({size:,} bytes) is "
            "truncated or corrupt. Copy or download it again."
        ) from exc


def architecture(
    meta: dict[str, Any], tensor_names: set[str], path: Path,
    rope_freqs: torch.Tensor | None = None,
) -> LlamaArchitecture:
    """The Llama hyperparameters in GGUF metadata; anything caramba cannot build is an error.

    rope_freqs: the values of the `rope_freqs.weight` tensor (Llama 3.x RoPE scaling), which
    must be given when `tensor_names` holds it.
    """
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{path}: architecture {arch!r} is not supported; caramba loads GGUF files of "
            f"architecture {', '.join(map(repr, SUPPORTED_ARCHITECTURES))} (Llama-style "
            "decoders such as SmolLM2 and Llama 3.x, with a byte-level BPE vocabulary)."
        )

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise CheckpointError(f"{path}: metadata key '{arch}.{key}' is missing.")
        if isinstance(value, list):
            raise CheckpointError(
                f"{path}: '{arch}.{key}' varies per layer ({value[:4]}...); caramba's "
                "generated Llama repeats one block."
            )
        return value

    if meta.get(f"{arch}.expert_count", 0):
        raise CheckpointError(f"{path}: mixture-of-experts Llama GGUF files are not supported.")
    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", n_heads))
    head_dim = int(get("attention.key_length", d_model // n_heads))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise CheckpointError(f"{path}: key and value head sizes differ; not supported.")
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise CheckpointError(
            f"{path}: RoPE covers {get('rope.dimension_count')} of {head_dim} head features; "
            "partial rotary embeddings are not supported."
        )
    if ROPE_FREQS in tensor_names and rope_freqs is None:
        raise ValueError(f"{path} has {ROPE_FREQS!r}: pass its values as rope_freqs")
    rope_base = _float32(get("rope.freq_base", 10000.0))
    scaling = from_gguf(meta, arch, rope_freqs, head_dim, rope_base, path)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size", len(tokens) if tokens else None)
    return LlamaArchitecture(
        vocab_size=int(get("vocab_size", vocab)),
        d_model=d_model,
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_ff=int(get("feed_forward_length")),
        rope_base=rope_base,
        rms_norm_eps=_float32(get("attention.layer_norm_rms_epsilon")),
        context_length=int(get("context_length")),
        tie_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in tensor_names,
        rope_scaling=scaling,
    )


def _float32(x: Any) -> float:
    # GGUF stores these as float32: 1e-5 arrives as 9.99999974e-06. Seven significant digits
    # give back the number the model was configured with.
    return float(f"{float(x):.7g}")


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> Pretrained:
    """Load a llama GGUF file: model (dequantized), tokenizer, generated config, metadata."""
    path = Path(path)
    gguf = _gguf_module()
    reader = open_gguf(path)
    meta = reader.metadata
    by_name = {t.name: t for t in reader.tensors}
    rope_freqs = _dequantize(path, gguf, by_name[ROPE_FREQS]) if ROPE_FREQS in by_name else None
    arch = architecture(meta, set(by_name), path, rope_freqs)
    shapes = {hf_name_for(n): tuple(int(d) for d in reversed(t.shape)) for n, t in by_name.items()}
    # rope_freqs is not a weight: it became the attention layers' rope_scaling.
    check_tensors(arch, shapes, str(path), display=gguf_name_for,
                  ignore=lambda n: n == ROPE_FREQS)

    tensors: dict[str, torch.Tensor] = {}
    for name, t in by_name.items():
        if name == ROPE_FREQS:
            continue
        tensor = _dequantize(path, gguf, t)
        hf = hf_name_for(name)
        if hf.startswith("model.layers.") and ".self_attn.q_proj." in hf:
            tensor = unpermute_qk(tensor, arch.n_heads)
        elif hf.startswith("model.layers.") and ".self_attn.k_proj." in hf:
            tensor = unpermute_qk(tensor, arch.n_kv_heads)
        tensors[hf] = tensor.reshape(shapes[hf])

    tokenizer = tokenizer_from_gguf(meta, str(path))
    info = {
        "name": meta.get("general.name"),
        "architecture": meta.get("general.architecture"),
        "file_type": meta.get("general.file_type"),
        "tensor_types": _count_types(reader.tensors),
        "special_ids": special_ids(meta),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "chat_template": meta.get("tokenizer.chat_template"),
        "license": meta.get("general.license"),
    }
    return assemble(arch, tensors, tokenizer, path, "gguf", info, dtype)


def _dequantize(path: Path, gguf: Any, t: Any) -> torch.Tensor:
    """One GGUF tensor as a writable float32 torch tensor (flat or in GGUF's shape)."""
    try:
        array = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as exc:
        raise CheckpointError(
            f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which the installed "
            f"gguf package cannot dequantize ({exc})."
        ) from exc
    if array.dtype != np.float32 or not array.flags.writeable:  # F32/F16: views of the file
        array = np.array(array, dtype=np.float32)
    # One reduction finds NaN/inf anywhere (a sum of finite weights does not overflow).
    if not math.isfinite(float(array.sum(dtype=np.float64))):
        raise CheckpointError(
            f"{path}: tensor {t.name!r} holds NaN or infinite values; the file is corrupt."
        )
    return torch.from_numpy(array)


def _count_types(tensors: list[GGUFTensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
