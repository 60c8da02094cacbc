"""What every loader returns: a ready model, its tokenizer and where they came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from caramba.data.tokenizer import Tokenizer
from caramba.errors import CheckpointError
from caramba.loaders.llama import (
    LlamaArchitecture,
    build_model,
    model_config,
    model_definition,
)
from caramba.models.definition import ModelDefinition
from caramba.models.language_model import LanguageModel


@dataclass(eq=False)
class Pretrained:
    """A pretrained model as caramba modules.

    model_config: the manifest `system.config.model` mapping that builds this architecture
        (same parameter names), so a manifest or preset can describe the model exactly.
    definition: that mapping validated by the manifest's node validator.
    metadata: what the file says beyond the architecture (name, quantization, special
        token ids, chat template, ...).
    """

    model: LanguageModel
    tokenizer: Tokenizer
    architecture: LlamaArchitecture
    model_config: dict[str, Any]
    definition: ModelDefinition
    source: Path
    format: Literal["gguf", "hf"]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        """Longest context the model was trained for (tokens)."""
        return self.architecture.context_length

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token across all layers in fp16 (keys + values)."""
        return self.architecture.kv_bytes_per_token(2)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        a = self.architecture
        return (
            f"Pretrained({self.format}: {self.source.name}, {a.n_layers} layers, "
            f"d_model={a.d_model}, heads={a.n_heads}/{a.n_kv_heads}, vocab={a.vocab_size}, "
            f"{self.n_parameters / 1e6:.1f}M parameters)"
        )


def assemble(
    arch: LlamaArchitecture,
    tensors: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer,
    source: Path,
    format: Literal["gguf", "hf"],
    metadata: dict[str, Any],
    dtype: torch.dtype,
) -> Pretrained:
    """Generate the architecture's node tree, build it and load `tensors` (HF names) into it."""
    if tokenizer.vocab_size > arch.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the embedding only "
            f"{arch.vocab_size} rows; the tokenizer does not belong to these weights."
        )
    config = model_config(arch)
    definition = model_definition(config, str(source))
    model = build_model(definition, tensors, dtype)
    return Pretrained(model, tokenizer, arch, config, definition, source, format, metadata)
