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
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from caramba.atomic import atomic_write_file
from caramba.build_lock import building
from caramba.data.tokens import TokenData, TokenDatasetSource
from caramba.layers.attention import AttentionLayer
from caramba.layers.embedding import TokenEmbedder
from caramba.layers.glu import SwiGLULayer
from caramba.layers.linear import LinearLayer
from caramba.layers.norm import RMSNormLayer
from caramba.manifest.schema import RunSpec, RuntimeConfig, TrainConfig
from caramba.models.definition import ModelDefinition
from caramba.models.language_model import LanguageModel, LanguageModelSystem
from caramba.paths import cache_dir
from caramba.topologies.nested import NestedTopology
from caramba.topologies.residual import ResidualTopology
from caramba.topologies.stacked import StackedTopology
from caramba.training.objectives import NextTokenCrossEntropy
from caramba.training.standard import RunResult, StandardTrainer, TrainerContext

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
    head_vocab: int | None = None  # a head smaller than the input vocabulary (untied)
    steps: int = 120
    batch_size: int = 16
    block_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        # The trainer is part of the key: weights trained by another loop are not these.
        text = json.dumps({**asdict(self), "trainer": "standard"}, sort_keys=True)
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
        LinearLayer.Config(d_in=cfg.d_model, d_out=cfg.head_vocab or cfg.vocab_size),
    ))
    embedder = TokenEmbedder.Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model)
    return ModelDefinition(embedder, topology, tie_embeddings=cfg.head_vocab is None)


def english(vocab_size: int = 8192) -> TokenData:
    """The built-in real-English corpus (KJV, Shakespeare, Python docs) and its tokenizer."""
    return TokenDatasetSource.open({"path": CORPUS, "vocab_size": vocab_size}, Path("."))


def tiny_model(cfg: TinyConfig = TinyConfig(), *, data: TokenData | None = None,
               use_cache: bool = True) -> LanguageModel:
    """A TinyConfig model trained on the English corpus (weights cached on disk), in eval mode."""
    torch.manual_seed(cfg.seed)
    model = LanguageModelSystem.build(definition(cfg))
    if not use_cache:
        train(model, data or english(cfg.vocab_size), cfg)
        return model.eval()
    path = cache_dir() / "tiny-models" / f"{cfg.mode}-{cfg.key()}.safetensors"
    with building(path):  # a process training the same model meanwhile: wait for its file
        if path.is_file():
            try:
                load_model(model, str(path))  # safetensors: no pickle, tied tensors handled
                return model.eval()
            except (RuntimeError, OSError, ValueError, SafetensorError) as exc:
                log.warning("tiny model cache %s unreadable (%s); retraining", path, exc)
        train(model, data or english(cfg.vocab_size), cfg)
        atomic_write_file(path, lambda name: save_model(model, name))
    return model.eval()


def train(model: torch.nn.Module, data: TokenData, cfg: TinyConfig, *,
          objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
          ) -> RunResult:
    """Train with caramba's standard trainer (AdamW, warmup then cosine to 5% of lr, no
    weight decay, clipping at 1) in a throw-away run folder; returns its result.

    `data` is anything with the TokenData interface (`.train.batch`, `.val`,
    `check_block_size`), so a draft can train on a teacher's labels (see infer.distill).
    """
    run = RunSpec(id="tiny", seed=cfg.seed, steps=cfg.steps, train=TrainConfig(
        batch_size=cfg.batch_size, block_size=cfg.block_size, lr=cfg.lr,
        warmup_steps=max(1, cfg.steps // 10), min_lr_ratio=0.05, weight_decay=0.0,
        betas=(0.9, 0.999), grad_clip=1.0, device="cpu", dtype="float32"))
    runtime = RuntimeConfig(eval_every=0, eval_batches=2, log_every=max(1, cfg.steps))
    with tempfile.TemporaryDirectory(prefix="caramba-tiny-") as tmp:
        ctx = TrainerContext(model=model, objective=objective or NextTokenCrossEntropy(),
                             data=data, runtime=runtime, run_dir=Path(tmp),
                             plan_hash=f"tiny-{cfg.key()}", instrument="none",
                             keep_checkpoints=1)
        result = StandardTrainer(ctx).run(run)
    log.info("trained %s: %d steps, final train loss %.3f, val loss %.3f, %.0f tokens/s",
             cfg.key(), result.steps, result.final_train_loss, result.final_val_loss,
             result.tokens_per_s)
    model.eval()
    return result


def validation_tokens(data: TokenData, n: int | None = None) -> torch.Tensor:
    """The first n held-out tokens as a 1-D long tensor."""
    array = data.val.data if n is None else data.val.data[:n]
    return torch.as_tensor(array.astype("int64"))
