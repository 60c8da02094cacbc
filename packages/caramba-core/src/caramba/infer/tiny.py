"""Small Llama-style language models trained in seconds on real English.

For tests, cache-quality probes and benchmarks that need a model whose predictions mean
something (perplexity on held-out text far below the vocabulary size) without a download.
Trained weights are cached under `caramba.paths.cache_dir()/tiny-models/`, keyed by the
architecture and training settings, so only the first use pays for training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
import torch.nn.functional as F

from caramba.data.tokens import TokenData, TokenDatasetSource
from caramba.layers.attention import AttentionLayer
from caramba.layers.embedding import TokenEmbedder
from caramba.layers.glu import SwiGLULayer
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.models.definition import ModelDefinition
from caramba.models.language_model import LanguageModel, LanguageModelSystem
from caramba.paths import cache_dir
from caramba.topologies.nested import NestedTopology
from caramba.topologies.residual import ResidualTopology
from caramba.topologies.stacked import StackedTopology

log = logging.getLogger("caramba.infer")

CORPUS = "corpus:english"


@dataclass(frozen=True)
class TinyConfig:
    """Architecture (mode standard/gqa/dba) and training budget of a tiny model."""

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    n_kv_heads: int = 1
    mode: str = "gqa"
    sem_dim: int | None = None
    geo_dim: int | None = None
    attn_dim: int | None = None
    d_ff: int = 256
    vocab_size: int = 8192
    steps: int = 120
    batch_size: int = 16
    block_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# The models tests and benchmarks share (trained once, then loaded from the cache).
STANDARD = TinyConfig()  # GQA, 2 heads of 64, 1 KV head
DBA = TinyConfig(mode="dba", sem_dim=64, geo_dim=128, attn_dim=128)  # per head 32 + 64, v 64
DRAFT = TinyConfig(d_model=64, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=128)


def definition(cfg: TinyConfig) -> ModelDefinition:
    attention = AttentionLayer.Config(
        d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, mode=cfg.mode,
        sem_dim=cfg.sem_dim, geo_dim=cfg.geo_dim, attn_dim=cfg.attn_dim)
    block = (
        ResidualTopology.Config(layers=(RMSNormLayer.Config(d_model=cfg.d_model), attention)),
        ResidualTopology.Config(layers=(RMSNormLayer.Config(d_model=cfg.d_model),
                                        SwiGLULayer.Config(d_model=cfg.d_model, d_ff=cfg.d_ff))),
    )
    topology = StackedTopology.Config(layers=(
        NestedTopology.Config(layers=block, repeat=cfg.n_layers),
        RMSNormLayer.Config(d_model=cfg.d_model),
        LinearLayer.Config(d_in=cfg.d_model, d_out=cfg.vocab_size),
    ))
    embedder = TokenEmbedder.Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model)
    return ModelDefinition(embedder, topology, tie_embeddings=True)


def english(vocab_size: int = 8192) -> TokenData:
    """The built-in real-English corpus (KJV, Shakespeare, Python docs) and its tokenizer."""
    return TokenDatasetSource.open({"path": CORPUS, "vocab_size": vocab_size}, Path("."))


def tiny_model(cfg: TinyConfig = TinyConfig(), *, data: TokenData | None = None,
               use_cache: bool = True) -> LanguageModel:
    """A TinyConfig model trained on the English corpus (weights cached on disk), in eval mode."""
    torch.manual_seed(cfg.seed)
    model = LanguageModelSystem.build(definition(cfg))
    path = cache_dir() / "tiny-models" / f"{cfg.mode}-{cfg.key()}.safetensors"
    if use_cache and path.is_file():
        try:
            load_model(model, str(path))  # safetensors: no pickle, shared (tied) tensors handled
            return model.eval()
        except (RuntimeError, OSError, ValueError, SafetensorError) as exc:
            log.warning("tiny model cache %s unreadable (%s); retraining", path, exc)
    data = data or english(cfg.vocab_size)
    train(model, data, cfg)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{id(model)}")
        save_model(model, str(tmp))
        tmp.replace(path)
    return model.eval()


def train(model: LanguageModel, data: TokenData, cfg: TinyConfig) -> list[float]:
    """AdamW with a short warmup and cosine decay; returns the loss of every step."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 10)
    losses = []
    model.train()
    for step in range(cfg.steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + torch.cos(
            torch.tensor(torch.pi * step / cfg.steps)).item())
        for group in opt.param_groups:
            group["lr"] = cfg.lr * max(scale, 0.05)
        inputs, targets = data.train.batch(cfg.batch_size, cfg.block_size, g)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def validation_tokens(data: TokenData, n: int | None = None) -> torch.Tensor:
    """The first n held-out tokens as a 1-D long tensor."""
    array = data.val.data if n is None else data.val.data[:n]
    return torch.as_tensor(array.astype("int64"))
