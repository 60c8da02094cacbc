"""Token embedder: token ids (B, T) to vectors (B, T, d_model)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from caramba.layers.base import BuildChild, ForwardContext, LayerConfig


class TokenEmbedderConfig(LayerConfig):
    type: Literal["token"] = "token"
    vocab_size: int = Field(..., gt=0, description="number of token ids")
    d_model: int = Field(..., gt=0, description="embedding features")


class TokenEmbedder(nn.Embedding):
    """`nn.Embedding` with the node contract; the table is `weight` (vocab_size, d_model).

    Initialized N(0, 0.02) as in GPT-2/nanoGPT rather than torch's N(0, 1): with a tied output
    head, unit-variance embeddings would make the initial logits far too large.
    """

    Config = TokenEmbedderConfig

    @classmethod
    def from_config(cls, config: TokenEmbedderConfig, build: BuildChild) -> TokenEmbedder:
        return cls(config.vocab_size, config.d_model)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return super().forward(tokens)
