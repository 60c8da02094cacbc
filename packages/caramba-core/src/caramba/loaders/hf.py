"""Load a Hugging Face Llama folder (config.json + safetensors + tokenizer.json), locally or
as `hf://org/model[@revision]` from the local Hugging Face cache.

`hf://` never touches the network: it looks the files up with
`hf_hub_download(..., local_files_only=True)` in the cache named by HF_HUB_CACHE (or
HF_HOME/hub, read when the call is made), and a miss is an InputError that says which files
were looked for and the command that fetches them on a machine with network.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from caramba.data.tokenizer import Tokenizer
from caramba.errors import CheckpointError, DataError, InputError
from caramba.loaders.llama import LlamaArchitecture, check_tensors
from caramba.loaders.pretrained import Pretrained, assemble
from caramba.loaders.rope_scaling import from_hf_config

HF_PREFIX = "hf://"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
SUPPORTED_MODEL_TYPES = ("llama",)


def parse_hf_ref(ref: str) -> tuple[str, str | None]:
    """`hf://org/model@rev` -> ("org/model", "rev"); the revision is None when absent."""
    body = ref[len(HF_PREFIX):] if ref.startswith(HF_PREFIX) else ref
    repo, at, revision = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise InputError(
            f"{ref!r} is not a Hugging Face model reference; write hf://org/model or "
            "hf://org/model@revision (a branch, tag or commit hash)."
        )
    return repo, revision or None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_hf(ref: str) -> Path:
    """The cached snapshot folder of `hf://org/model[@revision]`, holding all needed files."""
    from huggingface_hub import hf_hub_download

    repo, revision = parse_hf_ref(ref)
    cache = hub_cache_dir()

    def cached(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache,
                                        local_files_only=True))
        except (OSError, ValueError):  # LocalEntryNotFoundError is a FileNotFoundError
            return None

    config = cached(CONFIG)
    weights = cached(WEIGHTS) or cached(WEIGHTS_INDEX)
    tokenizer = cached(TOKENIZER)
    missing = [name for name, found in ((CONFIG, config), (f"{WEIGHTS} (or {WEIGHTS_INDEX} "
               "and its shards)", weights), (TOKENIZER, tokenizer)) if found is None]
    if weights is not None and weights.name == WEIGHTS_INDEX:
        missing += [s for s in _shards(weights) if cached(s) is None]
    if missing:
        rev = f" --revision {revision}" if revision else ""
        raise InputError(
            f"{ref}: not in the local Hugging Face cache {cache} (revision "
            f"{revision or 'main'}); missing {', '.join(missing)}. caramba reads pretrained "
            "weights only from disk, never from the network.",
            hint=f"on a machine with network run `hf download {repo}{rev} --include "
            f"'{CONFIG}' '*.safetensors' '{WEIGHTS_INDEX}' '{TOKENIZER}'` (older "
            f"huggingface_hub: `huggingface-cli download {repo}{rev}`; gated models need "
            "`hf auth login` first) and copy its cache folder here, or set HF_HUB_CACHE "
            "(or HF_HOME) to a cache that has the model.",
        )
    assert config is not None
    return config.parent


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc}).") from exc


def _shards(index: Path) -> list[str]:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no `weight_map`; not a safetensors index.")
    return sorted(set(weight_map.values()))


def architecture(config: dict[str, Any], path: Path) -> LlamaArchitecture:
    """Llama hyperparameters from a Hugging Face config.json."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not supported; caramba loads Hugging Face "
            f"models of type {', '.join(map(repr, SUPPORTED_MODEL_TYPES))}."
        )
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{path}: hidden_act {config['hidden_act']!r}; caramba's Llama "
                              "uses SwiGLU (silu).")
    rope_scaling = from_hf_config(config, path)

    def get(key: str, default: Any = None) -> Any:
        value = config.get(key, default)
        if value is None:
            raise CheckpointError(f"{path}: `{key}` is missing.")
        return value

    d_model, n_heads = int(get("hidden_size")), int(get("num_attention_heads"))
    return LlamaArchitecture(
        vocab_size=int(get("vocab_size")),
        d_model=d_model,
        n_layers=int(get("num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads", n_heads)),
        head_dim=int(config.get("head_dim") or d_model // n_heads),
        d_ff=int(get("intermediate_size")),
        rope_base=float(config.get("rope_theta") or _rope_parameters(config).get("rope_theta")
                        or 10000.0),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        context_length=int(get("max_position_embeddings", 2048)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        rope_scaling=rope_scaling,
    )


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers v5 moved rope_theta (and the scaling) into `rope_parameters`."""
    params = config.get("rope_parameters")
    return params if isinstance(params, dict) else {}


def _open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (listed by the model's weight index).")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError, not an OSError
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupt. "
            "Copy or download it again."
        ) from exc


def load_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32) -> Pretrained:
    """Load a Hugging Face Llama folder: config.json, model.safetensors (or an index and its
    shards) and tokenizer.json."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise InputError(f"{folder}: no {CONFIG}; not a Hugging Face model folder.")
    config = _read_json(folder / CONFIG)
    arch = architecture(config, folder / CONFIG)

    if (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    elif (folder / WEIGHTS_INDEX).is_file():
        files = [folder / s for s in _shards(folder / WEIGHTS_INDEX)]
    else:
        raise InputError(f"{folder}: neither {WEIGHTS} nor {WEIGHTS_INDEX} is there.")
    handles = {f: _open_safetensors(f) for f in files}
    where: dict[str, Path] = {}
    for f, h in handles.items():
        for name in h.keys():
            where[name] = f
    shapes = {n: tuple(handles[f].get_slice(n).get_shape()) for n, f in where.items()}
    source = str(files[0]) if len(files) == 1 else str(folder)
    display = str if len(files) == 1 else (lambda n: f"{n} in {where[n].name}" if n in where else n)
    check_tensors(
        arch, shapes, source, display=display,
        # Tied checkpoints sometimes store the head anyway; RoPE tables are recomputed.
        ignore=lambda n: (arch.tie_embeddings and n == "lm_head.weight")
        or n.endswith("rotary_emb.inv_freq"),
    )
    tensors: dict[str, torch.Tensor] = {}
    for name, f in where.items():
        if arch.tie_embeddings and name == "lm_head.weight" or name.endswith("inv_freq"):
            continue
        try:
            tensor = handles[f].get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{f}: cannot read tensor {name!r} ({exc}).") from exc
        if tensor.is_floating_point() and not math.isfinite(tensor.float().sum().item()):
            raise CheckpointError(f"{f}: tensor {name!r} holds NaN or infinite values.")
        tensors[name] = tensor

    tokenizer = _tokenizer(folder, config)
    info = {
        "name": config.get("_name_or_path") or folder.name,
        "architecture": config.get("model_type"),
        "torch_dtype": config.get("torch_dtype"),
        "special_ids": {k: v for k, v in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id))
                        if v is not None},
        "chat_template": _read_json(folder / "tokenizer_config.json").get("chat_template")
        if (folder / "tokenizer_config.json").is_file() else None,
    }
    return assemble(arch, tensors, tokenizer, folder, "hf", info, dtype)


def _tokenizer(folder: Path, config: dict[str, Any]) -> Tokenizer:
    try:
        tokenizer = Tokenizer.load(folder / TOKENIZER)
    except DataError as exc:
        raise CheckpointError(exc.message) from exc
    # config.json (or generation_config.json) names the special ids; trust them over
    # Tokenizer's guess from token spellings.
    generation = folder / "generation_config.json"
    sources = [config] + ([_read_json(generation)] if generation.is_file() else [])
    for src in sources:
        for attr, key in (("eos_id", "eos_token_id"), ("bos_id", "bos_token_id")):
            value = src.get(key)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                setattr(tokenizer, attr, int(value))
    return tokenizer
