"""The language model: token embedder, then a topology that ends in the vocabulary head."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from caramba.errors import InputError
from caramba.layers.base import ForwardContext, NodeConfig
from caramba.layers.linear import LinearLayer
from caramba.models.builder import build_node
from caramba.registry import EMBEDDERS
from caramba.topologies.nested import NestedTopology
from caramba.topologies.stacked import StackedTopology


class TiedEmbeddingsError(InputError, ValueError):
    """tie_embeddings set on a model whose topology does not end in a matching LinearLayer.

    Also a ValueError, so the manifest compiler reports it at the model's location.
    """


def output_head(topology: nn.Module) -> nn.Module:
    """The module that produces the topology's output: the last child, through Stacked/Nested."""
    module = topology
    while isinstance(module, (StackedTopology, NestedTopology)):
        module = module.layers[-1]
    return module


class LanguageModel(nn.Module):
    """logits (B, T, vocab) = topology(embedder(tokens)).

    The topology owns everything after the embedding, final norm and vocabulary projection
    included, so a manifest spells the whole network out. With `tie_embeddings` the head's
    weight *is* the embedding table (Press & Wolf, 2017): one (vocab, d_model) matrix fewer.
    """

    def __init__(self, embedder: nn.Module, topology: nn.Module, tie_embeddings: bool = False):
        super().__init__()
        self.embedder = embedder
        self.topology = topology
        self.tie_embeddings = tie_embeddings
        if tie_embeddings:
            self._tie()

    def _tie(self) -> None:
        vocab, d_model = self.embedder.weight.shape
        head = output_head(self.topology)
        if not (isinstance(head, LinearLayer) and head.weight.shape == (vocab, d_model)):
            found = (
                f"a LinearLayer with d_in={head.in_features}, d_out={head.out_features}"
                if isinstance(head, LinearLayer)
                else type(head).__name__
            )
            raise TiedEmbeddingsError(
                "tie_embeddings needs the topology's last layer to be a LinearLayer with "
                f"d_in == d_model ({d_model}) and d_out == vocab_size ({vocab}); found {found}.",
                hint="end the topology with that LinearLayer, or set tie_embeddings: false.",
            )
        head.weight = self.embedder.weight

    def forward(self, tokens: torch.Tensor, ctx: ForwardContext | None = None) -> torch.Tensor:
        return self.topology(self.embedder(tokens, ctx), ctx)

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue `tokens` (B, T) by `max_new_tokens`; returns (B, T + max_new_tokens).

        Prefills the prompt once, then feeds one token per step against the layers' caches.
        temperature 0 is greedy; top_k None or 0 samples from the whole vocabulary. Call
        `.eval()` first if the model has dropout.
        """
        ctx = ForwardContext(position=0, state={})
        logits = self(tokens, ctx)[:, -1]
        out = [tokens]
        for step in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, generator)
            out.append(token)
            if step + 1 < max_new_tokens:
                ctx.position = tokens.shape[1] + step
                logits = self(token, ctx)[:, -1]
        return torch.cat(out, dim=1)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits (B, V), as a (B, 1) tensor."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


class ModelSpec(Protocol):
    """What `build` reads from the manifest's `system.config.model`, nodes validated."""

    embedder: NodeConfig
    topology: NodeConfig
    tie_embeddings: bool


class LanguageModelSystem:
    """The `system.language_model` entry: builds a LanguageModel from a validated model spec."""

    @classmethod
    def build(cls, model_spec: ModelSpec) -> LanguageModel:
        embedder_config = model_spec.embedder
        embedder = EMBEDDERS.get(embedder_config.type).from_config(
            embedder_config, lambda child, _index: build_node(child)
        )
        topology = build_node(model_spec.topology)
        return LanguageModel(embedder, topology, tie_embeddings=model_spec.tie_embeddings)
