"""Llama-family checkpoints as caramba models: the generated node tree and the weight map.

A pretrained Llama is not a hand-written class here. Its hyperparameters generate the same
node-config tree a manifest would spell out (token embedder, then
Stacked[Nested(repeat=n_layers)[Residual[RMSNorm, Attention], Residual[RMSNorm, SwiGLU]],
RMSNorm, Linear head]), which is validated by the manifest's node validator and built
through the registries. Checkpoint readers hand over tensors under Hugging Face names
(`model.layers.3.self_attn.q_proj.weight`, rotate-half RoPE layout); `HF_TO_CARAMBA` maps
them onto that tree's parameter names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from caramba.errors import CheckpointError
from caramba.layers.rotary import RopeScaling
from caramba.manifest.nodes import NodeValidator
from caramba.manifest.schema import ModelSpec
from caramba.manifest.source import SourceMap
from caramba.models.definition import ModelDefinition
from caramba.models.language_model import LanguageModel, output_head
from caramba.registry import SYSTEMS

SYSTEM = "system.language_model"


@dataclass(frozen=True)
class LlamaArchitecture:
    """Hyperparameters of a Llama-style decoder, as read from a checkpoint's metadata."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rope_base: float
    rms_norm_eps: float
    context_length: int
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_scaling: RopeScaling | None = field(default=None, hash=False)

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """KV-cache bytes one token costs across all layers (keys and values; fp16 default)."""
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim * bytes_per_element

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.rope_scaling is not None:
            out["rope_scaling"] = self.rope_scaling.model_dump()
        return out


def model_config(arch: LlamaArchitecture) -> dict[str, Any]:
    """The manifest `system.config.model` mapping that describes this architecture.

    Paste it (as YAML) into a manifest and the manifest builds the same model, parameter
    names included, so a checkpoint's weights load into it.
    """
    d = arch.d_model
    attention: dict[str, Any] = {
        "type": "AttentionLayer",
        "d_model": d,
        "n_heads": arch.n_heads,
        "n_kv_heads": arch.n_kv_heads,
        "mode": "gqa" if arch.n_kv_heads != arch.n_heads else "standard",
        "rope": True,
        "rope_base": arch.rope_base,
        "bias": arch.attention_bias,
    }
    if arch.rope_scaling is not None:
        attention["rope_scaling"] = arch.rope_scaling.model_dump()
    if arch.head_dim * arch.n_heads != d:
        attention["head_dim"] = arch.head_dim
    norm = {"type": "RMSNormLayer", "d_model": d, "eps": arch.rms_norm_eps}
    ffn = {"type": "SwiGLULayer", "d_model": d, "d_ff": arch.d_ff, "bias": arch.mlp_bias}
    return {
        "type": "LanguageModel",
        "embedder": {"type": "token", "vocab_size": arch.vocab_size, "d_model": d},
        "topology": {
            "type": "StackedTopology",
            "layers": [
                {
                    "type": "NestedTopology",
                    "repeat": arch.n_layers,
                    "layers": [
                        {"type": "ResidualTopology", "layers": [dict(norm), attention]},
                        {"type": "ResidualTopology", "layers": [dict(norm), ffn]},
                    ],
                },
                dict(norm),
                {"type": "LinearLayer", "d_in": d, "d_out": arch.vocab_size, "bias": False},
            ],
        },
        "tie_embeddings": arch.tie_embeddings,
    }


def model_definition(config: Mapping[str, Any], source: str) -> ModelDefinition:
    """Validate a `model` mapping exactly as a manifest's would be, into a ModelDefinition."""
    spec = ModelSpec.model_validate(dict(config))
    validator = NodeValidator(SourceMap(f"<model generated from {source}>"))
    embedder = validator.embedder(spec.embedder, ("model", "embedder"))
    topology = validator.node(spec.topology, ("model", "topology"))
    if validator.errors or embedder is None or topology is None:
        details = "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.errors)
        raise CheckpointError(
            f"{source}: its metadata describes a model caramba's layers cannot express: {details}"
        )
    return ModelDefinition(embedder, topology, spec.tie_embeddings)


# Hugging Face Llama tensor names -> parameter names of the generated tree. Block i's
# attention residual is `topology.layers.0.layers.{2i}`, its feed-forward one `{2i+1}`; in
# each, child 0 is the RMSNorm and child 1 the attention or SwiGLU.
_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)")
_BLOCK_PARTS: dict[str, tuple[int, str]] = {
    "input_layernorm.weight": (0, "layers.0.weight"),
    "self_attn.q_proj.weight": (0, "layers.1.wq.weight"),
    "self_attn.k_proj.weight": (0, "layers.1.wk.weight"),
    "self_attn.v_proj.weight": (0, "layers.1.wv.weight"),
    "self_attn.o_proj.weight": (0, "layers.1.wo.weight"),
    "self_attn.q_proj.bias": (0, "layers.1.wq.bias"),
    "self_attn.k_proj.bias": (0, "layers.1.wk.bias"),
    "self_attn.v_proj.bias": (0, "layers.1.wv.bias"),
    "self_attn.o_proj.bias": (0, "layers.1.wo.bias"),
    "post_attention_layernorm.weight": (1, "layers.0.weight"),
    "mlp.gate_proj.weight": (1, "layers.1.w1.weight"),
    "mlp.up_proj.weight": (1, "layers.1.w3.weight"),
    "mlp.down_proj.weight": (1, "layers.1.w2.weight"),
    "mlp.gate_proj.bias": (1, "layers.1.w1.bias"),
    "mlp.up_proj.bias": (1, "layers.1.w3.bias"),
    "mlp.down_proj.bias": (1, "layers.1.w2.bias"),
}
_GLOBAL = {
    "model.embed_tokens.weight": "embedder.weight",
    "model.norm.weight": "topology.layers.1.weight",
    "lm_head.weight": "topology.layers.2.weight",
}
_GLOBAL_BACK = {v: k for k, v in _GLOBAL.items()}
_CARAMBA_BLOCK = re.compile(r"topology\.layers\.0\.layers\.(\d+)\.(.+)")
_BLOCK_BACK = {(sub, suffix): name for name, (sub, suffix) in _BLOCK_PARTS.items()}


def caramba_name(hf_name: str) -> str | None:
    """The generated model's parameter name for a Hugging Face Llama tensor name."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    match = _BLOCK.fullmatch(hf_name)
    if match is None or match.group(2) not in _BLOCK_PARTS:
        return None
    sub, suffix = _BLOCK_PARTS[match.group(2)]
    return f"topology.layers.0.layers.{2 * int(match.group(1)) + sub}.{suffix}"


def hf_name(caramba: str) -> str | None:
    """Inverse of `caramba_name`."""
    if caramba in _GLOBAL_BACK:
        return _GLOBAL_BACK[caramba]
    match = _CARAMBA_BLOCK.fullmatch(caramba)
    if match is None:
        return None
    index = int(match.group(1))
    part = _BLOCK_BACK.get((index % 2, match.group(2)))
    return None if part is None else f"model.layers.{index // 2}.{part}"


def expected_tensors(arch: LlamaArchitecture) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `arch` must hold, by Hugging Face name, with its shape."""
    d, q, kv = arch.d_model, arch.n_heads * arch.head_dim, arch.n_kv_heads * arch.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (arch.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not arch.tie_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, d)
    for i in range(arch.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        for proj, shape in (("q", (q, d)), ("k", (kv, d)), ("v", (kv, d)), ("o", (d, q))):
            shapes[p + f"self_attn.{proj}_proj.weight"] = shape
            if arch.attention_bias:
                shapes[p + f"self_attn.{proj}_proj.bias"] = shape[:1]
        for proj, shape in (("gate", (arch.d_ff, d)), ("up", (arch.d_ff, d)),
                            ("down", (d, arch.d_ff))):
            shapes[p + f"mlp.{proj}_proj.weight"] = shape
            if arch.mlp_bias:
                shapes[p + f"mlp.{proj}_proj.bias"] = shape[:1]
    return shapes


def check_tensors(
    arch: LlamaArchitecture,
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    display: Callable[[str], str] = str,
    ignore: Callable[[str], bool] = lambda _name: False,
) -> None:
    """Raise a CheckpointError naming the file and tensor for a missing, unexpected or
    misshapen tensor. `shapes` is keyed by Hugging Face name; `display` turns such a name
    into the file's own spelling for the message."""
    # First the blocks that are absent altogether, without listing every expected tensor: a
    # corrupt layer count (say 10^9) must not make this check allocate without bound.
    present = {int(m.group(1)) for n in shapes if (m := _BLOCK.fullmatch(n))}
    first_absent = min(set(range(len(present) + 1)) - present)
    if first_absent < arch.n_layers:
        raise CheckpointError(
            f"{source}: tensor "
            f"{display(f'model.layers.{first_absent}.input_layernorm.weight')!r} is missing, "
            f"with every other tensor of block {first_absent}; the metadata says "
            f"{arch.n_layers:,} layers. The file is incomplete, its metadata is corrupt, or "
            "it is not a Llama checkpoint."
        )
    expected = expected_tensors(arch)
    missing = [n for n in expected if n not in shapes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{source}: tensor {display(missing[0])!r}{more} is missing; a Llama with "
            f"{arch.n_layers} layers needs it. The file is incomplete or not a Llama checkpoint."
        )
    unexpected = [n for n in shapes if n not in expected and not ignore(n)]
    if unexpected:
        raise CheckpointError(
            f"{source}: tensor {display(unexpected[0])!r} is not part of a Llama model with "
            f"this file's metadata ({len(unexpected)} such tensors); caramba does not know "
            "where it goes."
        )
    for name, shape in expected.items():
        found = tuple(shapes[name])
        if found != shape:
            raise CheckpointError(
                f"{source}: tensor {display(name)!r} has shape {list(found)}, but the "
                f"architecture in the file's metadata (d_model={arch.d_model}, "
                f"n_heads={arch.n_heads}, n_kv_heads={arch.n_kv_heads}, d_ff={arch.d_ff}, "
                f"vocab_size={arch.vocab_size}) needs {list(shape)}."
            )


def build_model(
    definition: ModelDefinition,
    tensors: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> LanguageModel:
    """Build the model through the registries and fill it with `tensors` (HF names, already
    checked by `check_tensors`).

    The modules are created on the meta device, so no memory or time goes into a random
    initialization that the checkpoint overwrites at once.
    """
    with torch.device("meta"):
        model = SYSTEMS.get(SYSTEM).build(definition)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        key = caramba_name(name)
        if key is not None:
            state[key] = tensor.to(dtype)
    if definition.tie_embeddings:
        head_key = _GLOBAL["lm_head.weight"]
        state[head_key] = state[_GLOBAL["model.embed_tokens.weight"]]
    model.load_state_dict(state, strict=True, assign=True)
    if definition.tie_embeddings:
        # assign=True gave the head its own Parameter object: share the embedding's again.
        output_head(model.topology).weight = model.embedder.weight
    return model.eval()


def hf_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face Llama names (tied head left out)."""
    out: dict[str, torch.Tensor] = {}
    tied = getattr(model, "tie_embeddings", False)
    for key, tensor in model.state_dict().items():
        name = hf_name(key)
        if name is None:
            raise CheckpointError(f"parameter {key!r} has no Hugging Face Llama name")
        if tied and name == "lm_head.weight":
            continue
        out[name] = tensor
    return out
